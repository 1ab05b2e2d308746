// Package tracelog writes a line for every HTTP exchange the object-storage
// backends (s3, gcs, azure) and the http(s) backend make, for diagnosing
// slow or failing loads.
//
// Tracing is off unless RUNAI_STREAMER_S3_TRACE is set to 1 (or true, yes,
// on); the name is the one the streamer's documentation gives for the object
// storage SDK trace, and it covers every HTTP backend, not only S3. When it
// is on, the trace goes to model-streamer-trace-<pid>.log in the process's
// working directory, opened for appending: one file per process (per
// working directory, should the process change it), shared by every backend
// and stream, each line written whole. When it is off the backends' HTTP
// clients are exactly what they would be without this package.
//
// A line is written when the exchange ends: when its response body is read
// to the end, fails or is closed, or when the request fails without a
// response. It holds, separated by spaces:
//
//	2025-01-02T03:04:05.123456789Z s3 GET https://host/bucket/key range="bytes=0-1023" status=206 bytes=1024 headers=12.3ms total=15.1ms
//
// the time the request was sent (UTC); the backend; the method; the URL as
// sent (escaped: the GCS and Azure SDKs send a "/" in an object name as
// %2F) without its query string; the requested range (Range, or Azure's
// x-ms-range; "" when none); the response status ("-" when none came); the
// body bytes the caller read; the time until the response headers arrived
// ("-" when none came); the time until the exchange ended; and, when it
// failed, error="...". Every attempt is its own line, so the SDKs' retries
// and the engine's show up as such.
//
// The trace never holds a secret: the query string (presigned URLs, SAS
// tokens) is dropped, the URL's user information too, and no header but the
// range is written (not Authorization, x-amz-security-token nor any other).
// Failures to write the trace are ignored: tracing never fails a read.
package tracelog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Setting is the name of the setting that turns tracing on.
const Setting = "RUNAI_STREAMER_S3_TRACE"

// FileName is the name of this process's trace file, which FromSettings
// creates in the working directory.
func FileName() string { return fmt.Sprintf("model-streamer-trace-%d.log", os.Getpid()) }

// Log is a trace destination. A nil *Log traces nothing: its Transport and
// Client return what they are given, so a backend wires tracing in
// unconditionally and pays nothing when it is off.
type Log struct {
	mu sync.Mutex // one Write per line, so concurrent lines never interleave
	w  io.Writer
}

// FromSettings returns the process's trace log when s turns tracing on, and
// nil when it does not. An unrecognised value is a storage.InvalidArgument
// error; a trace file that cannot be created fails too, since the caller
// asked for a trace and would otherwise look for it in vain.
func FromSettings(s storage.Settings) (*Log, error) {
	v := strings.TrimSpace(s[Setting])
	switch strings.ToLower(v) {
	case "", "0", "false", "no", "off":
		return nil, nil
	case "1", "true", "yes", "on":
		return openFile()
	}
	return nil, &storage.Error{Op: "configure trace", Code: storage.InvalidArgument,
		Err: fmt.Errorf("%s=%q: want 1 to trace HTTP requests to a file, or 0", Setting, v)}
}

// files holds the open trace files by path. It is keyed by path rather than
// opened once because the working directory is read at each call: a process
// (a test binary run with -count=2, say) that moves elsewhere gets a file
// there instead of writing to one in a directory that may be gone.
var files struct {
	mu     sync.Mutex
	byPath map[string]*Log
}

func openFile() (*Log, error) {
	dir, err := os.Getwd()
	if err != nil {
		return nil, &storage.Error{Op: "open trace log", URI: FileName(), Code: fileCode(err), Err: err}
	}
	path := filepath.Join(dir, FileName())
	files.mu.Lock()
	defer files.mu.Unlock()
	if l := files.byPath[path]; l != nil {
		return l, nil
	}
	// Never closed: it lives as long as the backends that write to it,
	// which is the process.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is the Error's URI
		}
		return nil, &storage.Error{Op: "open trace log", URI: path, Code: fileCode(err), Err: err}
	}
	l := &Log{w: f}
	if files.byPath == nil {
		files.byPath = map[string]*Log{}
	}
	files.byPath[path] = l
	return l, nil
}

func fileCode(err error) storage.Code {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return storage.PermissionDenied
	case errors.Is(err, fs.ErrNotExist):
		return storage.NotFound
	}
	return storage.Internal
}

func (l *Log) write(line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(line) // a trace that cannot be written must not fail the read
}

// Transport returns base with every exchange traced under the backend's
// name; with a nil l, base itself.
func (l *Log) Transport(backend string, base http.RoundTripper) http.RoundTripper {
	if l == nil {
		return base
	}
	return &transport{log: l, backend: backend, base: base}
}

// Doer is an HTTP client as the AWS SDK takes one (aws.HTTPClient).
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Client returns c with every exchange traced under the backend's name; with
// a nil l, c itself. It is for SDKs that take a client rather than a
// transport, where wrapping the client keeps the SDK's own transport setup
// (the AWS SDK's BuildableClient installs a CA bundle into its transport).
// A client that follows redirects is traced as one exchange per Do.
func (l *Log) Client(backend string, c Doer) Doer {
	if l == nil {
		return c
	}
	return &client{log: l, backend: backend, base: c}
}

type transport struct {
	log     *Log
	backend string
	base    http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.log.exchange(t.backend, req, t.base.RoundTrip)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach base.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

type client struct {
	log     *Log
	backend string
	base    Doer
}

func (c *client) Do(req *http.Request) (*http.Response, error) {
	return c.log.exchange(c.backend, req, c.base.Do)
}

// exchange sends req and arranges for its line to be written when the
// exchange ends.
func (l *Log) exchange(backend string, req *http.Request, send func(*http.Request) (*http.Response, error)) (*http.Response, error) {
	r := &record{
		log:     l,
		backend: backend,
		method:  req.Method,
		url:     redact(req.URL, req.Host),
		rng:     rangeOf(req.Header),
		start:   time.Now(),
	}
	resp, err := send(req)
	if resp != nil {
		r.status = resp.StatusCode
		r.headers = time.Since(r.start)
	}
	if err != nil || resp == nil || resp.Body == nil || resp.Body == http.NoBody {
		r.finish(0, err)
		return resp, err
	}
	resp.Body = &body{rc: resp.Body, rec: r}
	return resp, nil
}

// rangeOf returns the byte range a request asks for. Azure's SDK moves Range
// to x-ms-range (which the service prefers for ranges past 4 GiB), under that
// literal, non-canonical key.
func rangeOf(h http.Header) string {
	if v := h.Get("Range"); v != "" {
		return v
	}
	if v := h.Get("X-Ms-Range"); v != "" {
		return v
	}
	if v := h["x-ms-range"]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// redact returns the URL as scheme://host/path: the query string may carry a
// signature or a SAS token, the user information a password.
func redact(u *url.URL, host string) string {
	if u == nil {
		return "-"
	}
	if u.Host != "" {
		host = u.Host
	}
	return u.Scheme + "://" + host + u.EscapedPath()
}

// record is one exchange, until its line is written.
type record struct {
	log                  *Log
	backend, method, url string
	rng                  string
	start                time.Time
	status               int           // 0: no response
	headers              time.Duration // until the response headers
}

func (r *record) finish(n int64, err error) {
	total := time.Since(r.start)
	b := make([]byte, 0, 256)
	b = r.start.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, ' ')
	b = append(b, r.backend...)
	b = append(b, ' ')
	b = append(b, r.method...)
	b = append(b, ' ')
	b = append(b, r.url...)
	b = append(b, " range="...)
	b = strconv.AppendQuote(b, r.rng)
	b = append(b, " status="...)
	if r.status != 0 {
		b = strconv.AppendInt(b, int64(r.status), 10)
	} else {
		b = append(b, '-')
	}
	b = append(b, " bytes="...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, " headers="...)
	if r.status != 0 {
		b = append(b, r.headers.Round(time.Microsecond).String()...)
	} else {
		b = append(b, '-')
	}
	b = append(b, " total="...)
	b = append(b, total.Round(time.Microsecond).String()...)
	if err != nil {
		b = append(b, " error="...)
		b = strconv.AppendQuote(b, describe(err))
	}
	b = append(b, '\n')
	r.log.write(b)
}

// describe is err's message with the query string removed from the URL an
// http.Client quotes in its errors.
func describe(err error) string {
	s := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		clean := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			clean = redact(u, "")
		} else if i := strings.IndexByte(clean, '?'); i >= 0 {
			clean = clean[:i]
		}
		s = strings.ReplaceAll(s, strconv.Quote(ue.URL), strconv.Quote(clean))
	}
	return s
}

// body counts the bytes the caller reads and ends the record at the first
// of: the end of the body, a read error, Close.
type body struct {
	rc   io.ReadCloser
	rec  *record
	n    atomic.Int64
	done atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	if err != nil {
		b.end(err)
	}
	return n, err
}

func (b *body) Close() error {
	err := b.rc.Close()
	b.end(nil)
	return err
}

func (b *body) end(err error) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	if err == io.EOF {
		err = nil
	}
	b.rec.finish(b.n.Load(), err)
}
