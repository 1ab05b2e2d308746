package azure

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/model-streamer/model-streamer/go/storage"
)

// StatusError is an HTTP failure as this package reports it: the status,
// the service's error code and its message. It unwraps to the SDK's
// *azcore.ResponseError.
type StatusError struct {
	StatusCode int
	ErrorCode  string // x-ms-error-code: BlobNotFound, AuthenticationFailed, ...
	Message    string // the status line's text
	resp       *azcore.ResponseError
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
	if e.ErrorCode != "" {
		b.WriteString(" ")
		b.WriteString(e.ErrorCode)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

func (e *StatusError) Unwrap() error { return e.resp }

// classify turns an SDK or transport error into a *storage.Error. ctx is
// the caller's context: its cancellation is Canceled.
func classify(op, uri string, off, n int64, ctx context.Context, err error) error {
	e := &storage.Error{Op: op, URI: uri, Off: off, Len: n, Err: err}
	var re *azcore.ResponseError
	var te *tokenError
	var af *azidentity.AuthenticationFailedError
	switch {
	case ctx.Err() != nil:
		e.Code, e.Err = storage.Canceled, ctx.Err()
	case errors.As(err, &re):
		se := &StatusError{StatusCode: re.StatusCode, ErrorCode: re.ErrorCode, resp: re}
		if re.RawResponse != nil {
			se.Message = statusText(re.RawResponse)
			e.RetryAfter = retryAfter(re.RawResponse.Header)
		}
		e.Err = se
		e.Code = codeForStatus(re.StatusCode, op)
		if re.StatusCode == http.StatusPreconditionFailed && op == "read" {
			e.Err = fmt.Errorf("the blob changed since it was opened (ETag mismatch): %w", se)
		}
	case errors.As(err, &te), errors.As(err, &af):
		e.Code = storage.PermissionDenied
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// A per-try timeout of the SDK's retry policy, the caller's context
		// being alive: the service did not answer in time.
		e.Code, e.Err = storage.Unavailable, fmt.Errorf("no response in time: %w", redact(err))
	default:
		e.Code, e.Err = codeForNetError(err), redact(err)
	}
	return e
}

func codeForStatus(status int, op string) storage.Code {
	if status == http.StatusPreconditionFailed && op == "read" {
		return storage.NotFound // the version that was opened is gone
	}
	return storage.CodeForHTTPStatus(status) // Internal for an unexpected 1xx, 2xx or 3xx
}

// codeForNetError classifies a failure without an HTTP response.
func codeForNetError(err error) storage.Code {
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return storage.NotFound // no such host: no such storage account
	}
	var (
		cve *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		hn  x509.HostnameError
		ci  x509.CertificateInvalidError
		rhe tls.RecordHeaderError
	)
	if errors.As(err, &cve) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) || errors.As(err, &rhe) {
		return storage.InvalidArgument // the endpoint is not what the settings say
	}
	return storage.Unavailable
}

// statusText is the reason phrase of the status line ("The specified blob
// does not exist." for the blob service, "Service Unavailable" elsewhere).
func statusText(r *http.Response) string {
	s := strings.TrimSpace(r.Status)
	if code, rest, ok := strings.Cut(s, " "); ok && code == strconv.Itoa(r.StatusCode) {
		s = strings.TrimSpace(rest)
	}
	if s == "" {
		s = http.StatusText(r.StatusCode)
	}
	return s
}

// retryAfter reads the wait the server asked for: retry-after-ms,
// x-ms-retry-after-ms, or Retry-After in seconds or as an HTTP date.
func retryAfter(h http.Header) time.Duration {
	for _, k := range []string{"Retry-After-Ms", "X-Ms-Retry-After-Ms"} {
		if v := strings.TrimSpace(h.Get(k)); v != "" {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s > 0 {
			return time.Duration(s) * time.Second
		}
		return 0
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// redact removes the query string (which may hold a SAS token) from the
// URL of a transport error.
func redact(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil || u.RawQuery == "" {
		return err
	}
	u.RawQuery = ""
	return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
}

func sortInfos(s []storage.ObjectInfo) {
	sort.Slice(s, func(i, j int) bool { return s[i].URI < s[j].URI })
}
