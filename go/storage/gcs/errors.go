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
	"strconv"
	"strings"
	"syscall"
	"time"

	"cloud.google.com/go/auth"
	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"

	"github.com/model-streamer/model-streamer/go/storage"
)

// HTTPError is the HTTP status of a failed request, with the service's
// reason and message; its Err is the SDK's error (a *googleapi.Error when
// the service answered with an error body).
type HTTPError struct {
	StatusCode int
	Reason     string // e.g. "notFound" (JSON API) or "NoSuchKey" (XML API)
	Message    string
	Err        error
}

func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	} else if t := http.StatusText(e.StatusCode); t != "" {
		b.WriteString(": ")
		b.WriteString(t)
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, " (%s)", e.Reason)
	}
	return b.String()
}

func (e *HTTPError) Unwrap() error { return e.Err }

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
		e.RetryAfter = retryAfter(ge.Header)
		reason, msg := describe(ge)
		e.Err = &HTTPError{StatusCode: ge.Code, Reason: reason, Message: msg, Err: err}
	case errors.Is(err, gcs.ErrObjectNotExist), errors.Is(err, gcs.ErrBucketNotExist):
		e.Code = storage.NotFound
		msg := "no such object"
		if errors.Is(err, gcs.ErrBucketNotExist) {
			msg = "no such bucket"
		} else if op == "read" {
			msg = "no such object (deleted or replaced since it was opened)"
		}
		e.Err = &HTTPError{StatusCode: http.StatusNotFound, Message: msg, Err: err}
	case errors.As(err, &ae):
		// Fetching a token failed.
		e.Code = storage.Unavailable
		if r := ae.Response; r != nil {
			switch {
			case r.StatusCode == http.StatusTooManyRequests || r.StatusCode >= 500:
				e.RetryAfter = retryAfter(r.Header)
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

// retryAfter parses a Retry-After header (seconds or an HTTP date).
func retryAfter(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
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
