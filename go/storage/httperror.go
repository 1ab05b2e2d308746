package storage

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// HTTPError is the cause (Error.Err) of a failure an HTTP server answered,
// the one type every HTTP-based backend (s3, gcs, azure, http) reports it
// with, so callers and tests look for one type whatever the store:
//
//	var he *storage.HTTPError
//	if errors.As(err, &he) && he.Status == 404 { ... }
//
// Its message is "HTTP <status>[ <code>][: <message>][ (request ID <id>)]",
// e.g. "HTTP 404 NoSuchKey: The specified key does not exist.".
type HTTPError struct {
	Status int
	// Code is the service's error code: S3's NoSuchKey, Azure's
	// x-ms-error-code (BlobNotFound), GCS's reason (notFound); "" for a
	// plain web server.
	Code      string
	Message   string
	RequestID string
	// Err is the SDK's error, when there is one.
	Err error
}

func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d", e.Status)
	if e.Code != "" {
		b.WriteString(" ")
		b.WriteString(e.Code)
	}
	msg := e.Message
	if msg == "" && e.Code == "" {
		msg = http.StatusText(e.Status)
	}
	if msg != "" {
		b.WriteString(": ")
		b.WriteString(msg)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request ID %s)", e.RequestID)
	}
	return b.String()
}

func (e *HTTPError) Unwrap() error { return e.Err }

// RetryAfter is the wait a response asks for before the next request:
// retry-after-ms or x-ms-retry-after-ms (Azure) in milliseconds, else
// Retry-After in seconds or as an HTTP date; 0 when it asks for none or
// the value is malformed or past.
func RetryAfter(h http.Header, now time.Time) time.Duration {
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
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// ParseContentRange parses a Content-Range header, "bytes START-END/TOTAL"
// (TOTAL may be "*", returned as -1).
func ParseContentRange(v string) (start, end, total int64, err error) {
	bad := fmt.Errorf("malformed Content-Range %q", v)
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil || start < 0 {
		return 0, 0, 0, bad
	}
	if end, err = strconv.ParseInt(e, 10, 64); err != nil || end < start {
		return 0, 0, 0, bad
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= end {
			return 0, 0, 0, bad
		}
	}
	return start, end, total, nil
}
