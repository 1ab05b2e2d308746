package storage

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestHTTPErrorMessage(t *testing.T) {
	inner := errors.New("sdk")
	for _, c := range []struct {
		e    HTTPError
		want string
	}{
		{HTTPError{Status: 404}, "HTTP 404: Not Found"},
		{HTTPError{Status: 404, Code: "NoSuchKey", Message: "The specified key does not exist."}, "HTTP 404 NoSuchKey: The specified key does not exist."},
		{HTTPError{Status: 403, Code: "AuthorizationFailure"}, "HTTP 403 AuthorizationFailure"},
		{HTTPError{Status: 503, Code: "SlowDown", Message: "Reduce your request rate.", RequestID: "R1"}, "HTTP 503 SlowDown: Reduce your request rate. (request ID R1)"},
		{HTTPError{Status: 599}, "HTTP 599"},
		{HTTPError{Status: 410, Message: "gone since it was opened", Err: inner}, "HTTP 410: gone since it was opened"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("%+v.Error() = %q, want %q", c.e, got, c.want)
		}
	}
	err := error(&Error{Op: "open", URI: "x", Code: NotFound, Err: &HTTPError{Status: 404, Err: inner}})
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != 404 || !errors.Is(err, inner) {
		t.Errorf("errors.As/Is through *Error: %v", err)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{}, 0},
		{http.Header{"Retry-After": {"3"}}, 3 * time.Second},
		{http.Header{"Retry-After": {"0.5"}}, 500 * time.Millisecond},
		{http.Header{"Retry-After": {"0"}}, 0},
		{http.Header{"Retry-After": {"-1"}}, 0},
		{http.Header{"Retry-After": {"soon"}}, 0},
		{http.Header{"Retry-After": {"Fri, 02 Jan 2026 03:04:15 GMT"}}, 10 * time.Second},
		{http.Header{"Retry-After": {"Fri, 02 Jan 2026 03:04:00 GMT"}}, 0},
		{http.Header{"Retry-After-Ms": {"1500"}, "Retry-After": {"9"}}, 1500 * time.Millisecond},
		{http.Header{"X-Ms-Retry-After-Ms": {"250"}}, 250 * time.Millisecond},
		{http.Header{"X-Ms-Retry-After-Ms": {"x"}, "Retry-After": {"2"}}, 2 * time.Second},
	} {
		if got := RetryAfter(c.h, now); got != c.want {
			t.Errorf("RetryAfter(%v) = %v, want %v", c.h, got, c.want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		v                 string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-9/100", 0, 9, 100, true},
		{"bytes 10-19/*", 10, 19, -1, true},
		{" bytes 0-0/1 ", 0, 0, 1, true},
		{"bytes */100", 0, 0, 0, false},
		{"items 0-9/100", 0, 0, 0, false},
		{"bytes 0-x/100", 0, 0, 0, false},
		{"bytes 9-0/100", 0, 0, 0, false},
		{"bytes 0-99/50", 0, 0, 0, false},
		{"bytes 0-9", 0, 0, 0, false},
	} {
		s, e, n, err := ParseContentRange(c.v)
		if (err == nil) != c.ok || (c.ok && (s != c.start || e != c.end || n != c.total)) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %d, %v", c.v, s, e, n, err)
		}
	}
}
