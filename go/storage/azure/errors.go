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
		se := &storage.HTTPError{Status: re.StatusCode, Code: re.ErrorCode, Err: re}
		if re.RawResponse != nil {
			se.Message = statusText(re.RawResponse)
			e.RetryAfter = storage.RetryAfter(re.RawResponse.Header, time.Now())
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
