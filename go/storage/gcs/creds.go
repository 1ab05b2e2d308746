package gcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

// Credentials come from golang.org/x/oauth2/google: it reads every
// credentials file type Application Default Credentials know
// (service_account, authorized_user, external_account,
// external_account_authorized_user, impersonated_service_account,
// gdch_service_account) and the metadata server, and links less than
// cloud.google.com/go/auth (docs/benchmarks.md, "Fixed cost"); neither
// links gRPC as long as no transport package of theirs is used, so the
// Authorization header is set here.

// defaultUniverse is the only universe domain this backend talks to.
const defaultUniverse = "googleapis.com"

// tokenTimeout bounds one token request (what cloud.google.com/go/auth's
// default client allows).
const tokenTimeout = 30 * time.Second

// authorizer adds credentials to a request; a nil *authorizer adds none.
type authorizer struct {
	creds *google.Credentials
}

// authorize sets the request's Authorization header from the cached
// token, fetching one when there is none or it is about to expire.
// oauth2's Token takes no context, so it runs on a goroutine of its own and
// the request's context (the caller's cancellation, the stall watchdog)
// still ends the wait; an abandoned fetch ends within tokenTimeout.
func (a *authorizer) authorize(req *http.Request) error {
	if a == nil {
		return nil
	}
	type result struct {
		tok *oauth2.Token
		err error
	}
	ch := make(chan result, 1)
	go func() {
		tok, err := a.creds.TokenSource.Token()
		ch <- result{tok, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-req.Context().Done():
		return context.Cause(req.Context())
	}
	if r.err != nil {
		return &tokenError{err: r.err}
	}
	// As the SDK's transport did: a token from the metadata server is of
	// the machine's universe by definition; any other credentials must
	// name ours (read from their JSON, no request).
	if r.tok.Extra("oauth2.google.tokenSource") != "compute-metadata" {
		ud, err := a.creds.GetUniverseDomain()
		if err != nil {
			return &tokenError{err: err}
		}
		if ud != defaultUniverse {
			return &tokenError{err: fmt.Errorf("the credentials belong to universe domain %q; this backend only talks to %q", ud, defaultUniverse)}
		}
	}
	r.tok.SetAuthHeader(req)
	return nil
}

// tokenError is a failure to obtain an access token: no request was sent.
type tokenError struct{ err error }

func (e *tokenError) Error() string {
	// oauth2's own message quotes the whole answer over two lines; the
	// OAuth error code and description say it in one.
	var re *oauth2.RetrieveError
	if errors.As(e.err, &re) && re.Response != nil {
		code, desc := re.ErrorCode, re.ErrorDescription
		if code == "" { // the JWT flow leaves them unparsed
			var j struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
			}
			if json.Unmarshal(re.Body, &j) == nil {
				code, desc = j.Error, j.Description
			}
		}
		if code != "" {
			msg := "getting an access token: the token endpoint answered " + re.Response.Status + ": " + code
			if desc != "" {
				msg += " (" + desc + ")"
			}
			return msg
		}
	}
	return "getting an access token: " + e.err.Error()
}

func (e *tokenError) Unwrap() error { return e.err }

// tokenStatus is the HTTP answer of a token endpoint that refused, when
// there was one.
func tokenStatus(err error) *http.Response {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.Response
	}
	return nil
}

// tokenContext is the context the credentials keep for their token
// requests: it names the HTTP client they use (bounded; a token endpoint
// is not the storage endpoint, so not our transport).
func tokenContext() context.Context {
	return context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Timeout: tokenTimeout})
}

// fileAuthorizer loads a credentials JSON file of whichever type it
// declares, for scope.
func fileAuthorizer(path, scope string) (*authorizer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("not a credentials JSON file: %w", err)
	}
	if f.Type == "" {
		return nil, errors.New(`not a credentials JSON file: no "type"`)
	}
	creds, err := google.CredentialsFromJSONWithType(tokenContext(), b, google.CredentialsType(f.Type), scope)
	if err != nil {
		return nil, err
	}
	return &authorizer{creds: creds}, nil
}

// defaultAuthorizer runs the Application Default Credentials chain
// (GOOGLE_APPLICATION_CREDENTIALS of the process environment, the gcloud
// well-known file, then the metadata server), for scope.
func defaultAuthorizer(scope string) (*authorizer, error) {
	creds, err := google.FindDefaultCredentials(tokenContext(), scope)
	if err != nil {
		return nil, err
	}
	return &authorizer{creds: creds}, nil
}
