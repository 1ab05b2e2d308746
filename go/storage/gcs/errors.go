package gcs

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// classify maps a failure that got no HTTP answer (a transport error, a
// stall, a token that could not be had) to a storage.Error. ctx is the
// caller's context: once it is done, the failure is a cancellation.
func classify(ctx context.Context, op, uri string, off, n int64, err error) *storage.Error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // net/http quotes the whole URL; the URI says which object
	}
	e := &storage.Error{Op: op, URI: uri, Off: off, Len: n, Err: err}
	if cerr := ctx.Err(); cerr != nil {
		e.Code = storage.Canceled
		if !errors.Is(err, cerr) {
			e.Err = fmt.Errorf("%w (%v)", cerr, err)
		}
		return e
	}
	var se *storage.Error
	var te *tokenError
	var stall *storage.StallError
	var cve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &se):
		return se // classified already (an error answer inside a retry)
	case errors.As(err, &stall):
		e.Code = storage.Unavailable
	case errors.As(err, &te):
		// Fetching a token failed: a refusal is final, anything else
		// (an unreachable or overloaded token endpoint) transient.
		e.Code = storage.Unavailable
		if r := tokenStatus(err); r != nil {
			switch {
			case r.StatusCode == http.StatusTooManyRequests || r.StatusCode >= 500:
				e.RetryAfter = storage.RetryAfter(r.Header, time.Now())
			case r.StatusCode >= 400 && r.StatusCode != http.StatusRequestTimeout:
				e.Code = storage.PermissionDenied
			}
		} else if !transient(err) && !errors.Is(err, context.DeadlineExceeded) {
			e.Code = storage.PermissionDenied
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
	for _, target := range []error{io.ErrUnexpectedEOF, io.EOF, net.ErrClosed,
		syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE, syscall.ETIMEDOUT} {
		if errors.Is(err, target) {
			return true
		}
	}
	var ne net.Error // includes *net.OpError, timeouts
	return errors.As(err, &ne)
}

// maxErrorBody bounds what is read of an error answer's body.
const maxErrorBody = 64 << 10

// statusError is the storage.Error of an answer with an error status: its
// code, its Retry-After, and a storage.HTTPError with the reason and
// message the body gives. A 404 to a read is an object deleted or replaced
// since Open (reads are pinned to its generation).
func statusError(ctx context.Context, op, uri string, off, n int64, resp *http.Response, w *storage.StallWatch) *storage.Error {
	body, _ := io.ReadAll(io.LimitReader(w.Reader(resp.Body), maxErrorBody))
	reason, msg := describe(body)
	if op == "read" && resp.StatusCode == http.StatusNotFound {
		if msg == "" || msg == http.StatusText(http.StatusNotFound) {
			msg = "no such object"
		}
		msg += " (deleted or replaced since it was opened)"
	}
	return &storage.Error{Op: op, URI: uri, Off: off, Len: n, Code: codeOfStatus(resp.StatusCode),
		RetryAfter: storage.RetryAfter(resp.Header, time.Now()),
		Err:        &storage.HTTPError{Status: resp.StatusCode, Code: reason, Message: msg}}
}

// describe returns the reason and message of an error answer's body: the
// JSON API's {"error": {"message", "errors": [{"reason"}]}}, or the XML
// API's <Error><Code/><Message/><Details/></Error>, or the start of a
// plain body.
func describe(b []byte) (reason, msg string) {
	body := strings.TrimSpace(string(b))
	switch {
	case body == "":
		return "", ""
	case strings.HasPrefix(body, "{"):
		var j struct {
			Error struct {
				Message string `json:"message"`
				Errors  []struct {
					Reason  string `json:"reason"`
					Message string `json:"message"`
				} `json:"errors"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &j) == nil {
			msg = j.Error.Message
			if len(j.Error.Errors) > 0 {
				reason = j.Error.Errors[0].Reason
				if msg == "" {
					msg = j.Error.Errors[0].Message
				}
			}
			if reason != "" || msg != "" {
				return reason, msg
			}
		}
	case strings.HasPrefix(body, "<"):
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
	return "", body
}
