package http

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	nethttp "net/http"
	"net/url"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// StallError is storage.StallError (its name here before it was shared).
type StallError = storage.StallError

// statusError is the error of a response with an error status, from the
// URL u (named when it is a redirect target, without its query).
func statusError(ctx context.Context, op, name string, off, n int64, resp *nethttp.Response, redirected *url.URL) *storage.Error {
	he := &storage.HTTPError{Status: resp.StatusCode}
	if redirected != nil {
		he.Message = nethttp.StatusText(resp.StatusCode) + " (at " + Redact(redirected) + ", where the URL redirected)"
	}
	code := storage.CodeForHTTPStatus(resp.StatusCode)
	if resp.StatusCode == nethttp.StatusGone {
		code = storage.NotFound
	}
	return &storage.Error{Op: op, URI: name, Off: off, Len: n, Code: code, Err: he,
		RetryAfter: storage.RetryAfter(resp.Header, time.Now())}
}

// transportError classifies a request that got no response: the caller's
// cancellation, a stall, an untrusted certificate, a refused redirect, a
// connection failure. The *url.Error net/http wraps it in quotes the URL
// with its query, so only its cause is kept.
func transportError(ctx context.Context, op, name string, off, n int64, err error, stall *StallError) *storage.Error {
	se := &storage.Error{Op: op, URI: name, Off: off, Len: n, Code: storage.Unavailable}
	if n == 0 {
		se.Off = 0
	}
	var ue *url.Error
	cause := err
	if errors.As(err, &ue) {
		cause = ue.Err
	}
	var (
		cve *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		hn  x509.HostnameError
		ci  x509.CertificateInvalidError
		rhe tls.RecordHeaderError
		dns *net.DNSError
		rd  *redirectError
	)
	switch {
	case ctx.Err() != nil:
		se.Code, se.Err = storage.Canceled, ctx.Err()
	case stall != nil:
		se.Err = stall
	case errors.As(cause, &cve) || errors.As(cause, &ua) || errors.As(cause, &hn) || errors.As(cause, &ci):
		host := ""
		if ue != nil {
			if u, perr := url.Parse(ue.URL); perr == nil {
				host = u.Host
			}
		}
		se.Code = storage.InvalidArgument
		se.Err = fmt.Errorf("TLS: the certificate of %s is not trusted (%w); trust its certificate authority with "+
			"SSL_CERT_FILE, SSL_CERT_DIR or %s", host, cause, SettingCABundle)
	case errors.As(cause, &rhe):
		se.Code = storage.InvalidArgument
		se.Err = fmt.Errorf("TLS handshake failed (is the server speaking plain http?): %w", cause)
	case errors.As(cause, &rd):
		se.Code, se.Err = storage.InvalidArgument, rd
	case errors.As(cause, &dns) && dns.IsNotFound:
		se.Code, se.Err = storage.NotFound, cause
	default:
		se.Err = cause
	}
	return se
}

// redirectError is a redirect the backend refuses to follow.
type redirectError struct{ msg string }

func (e *redirectError) Error() string { return e.msg }

// bodyError is a failure while reading a response body after got bytes.
func bodyError(ctx context.Context, op, name string, off, n int64, got int, err error, stall *StallError) *storage.Error {
	se := transportError(ctx, op, name, off, n, err, stall)
	if se.Code == storage.Unavailable {
		se.Err = fmt.Errorf("response body broke off after %d bytes: %w", got, se.Err)
	}
	return se
}
