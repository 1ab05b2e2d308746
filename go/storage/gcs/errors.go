package gcs

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"cloud.google.com/go/auth"
	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"

	"github.com/model-streamer/model-streamer/go/storage"
)

// classify maps an SDK or transport error to a storage.Error. ctx is the
// caller's context: once it is done, the failure is a cancellation.
func classify(ctx context.Context, op, uri string, off, n int64, err error) *storage.Error {
	e := &storage.Error{Op: op, URI: uri, Off: off, Len: n, Err: err}
	if cerr := ctx.Err(); cerr != nil {
		e.Code = storage.Canceled
		if !errors.Is(err, cerr) {
			e.Err = fmt.Errorf("%w (%v)", cerr, err)
		}
		return e
	}
	var ge *googleapi.Error
	var ae *auth.Error
	var cve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ge):
		e.Code = codeOfStatus(ge.Code)
		e.RetryAfter = storage.RetryAfter(ge.Header, time.Now())
		reason, msg := describe(ge)
		e.Err = &storage.HTTPError{Status: ge.Code, Code: reason, Message: msg, Err: err}
	case errors.Is(err, gcs.ErrObjectNotExist), errors.Is(err, gcs.ErrBucketNotExist):
		e.Code = storage.NotFound
		msg := "no such object"
		if errors.Is(err, gcs.ErrBucketNotExist) {
			msg = "no such bucket"
		} else if op == "read" {
			msg = "no such object (deleted or replaced since it was opened)"
		}
		e.Err = &storage.HTTPError{Status: http.StatusNotFound, Message: msg, Err: err}
	case errors.As(err, &ae):
		// Fetching a token failed.
		e.Code = storage.Unavailable
		if r := ae.Response; r != nil {
			switch {
			case r.StatusCode == http.StatusTooManyRequests || r.StatusCode >= 500:
				e.RetryAfter = storage.RetryAfter(r.Header, time.Now())
			case r.StatusCode >= 400:
				e.Code = storage.PermissionDenied
			}
		}
	case errors.As(err, &cve):
		e.Code = storage.PermissionDenied
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// Not the caller's context: an internal timeout.
		e.Code = storage.Unavailable
	case transient(err):
		e.Code = storage.Unavailable
	default:
		e.Code = storage.Internal
	}
	return e
}

// codeOfStatus maps an HTTP status to a storage.Code.
func codeOfStatus(status int) storage.Code {
	if status == http.StatusGone {
		return storage.NotFound
	}
	return storage.CodeForHTTPStatus(status)
}

// transient reports connection-level failures worth retrying.
func transient(err error) bool {
	for _, target := range []error{io.ErrUnexpectedEOF, io.EOF, errReopenRefused, net.ErrClosed,
		syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE, syscall.ETIMEDOUT} {
		if errors.Is(err, target) {
			return true
		}
	}
	var ne net.Error // includes *url.Error, *net.OpError, timeouts
	return errors.As(err, &ne)
}

// describe returns the reason and message of an error answer: the JSON
// API's parsed error, or the XML API's <Error><Code/><Message/></Error>.
func describe(ge *googleapi.Error) (reason, msg string) {
	msg = ge.Message
	if len(ge.Errors) > 0 {
		reason = ge.Errors[0].Reason
		if msg == "" {
			msg = ge.Errors[0].Message
		}
	}
	if msg != "" || ge.Body == "" {
		return reason, msg
	}
	body := strings.TrimSpace(ge.Body)
	if strings.HasPrefix(body, "<") {
		var x struct {
			Code    string `xml:"Code"`
			Message string `xml:"Message"`
			Details string `xml:"Details"`
		}
		if xml.Unmarshal([]byte(body), &x) == nil && (x.Code != "" || x.Message != "") {
			msg = x.Message
			if x.Details != "" {
				msg = strings.TrimSpace(msg + " " + x.Details)
			}
			return x.Code, msg
		}
	}
	if len(body) > 200 {
		body = body[:200] + "..."
	}
	return reason, body
}
