package tracelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

const (
	querySecret = "sig=QUERY-SECRET-1f2e3d"
	authSecret  = "Bearer AUTH-SECRET-9a8b7c"
)

// traceLog turns tracing on with the working directory a fresh temporary
// directory, and returns the log and the trace file's path.
func traceLog(t *testing.T) (*Log, string) {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	l, err := FromSettings(storage.Settings{Setting: "1"})
	if err != nil || l == nil {
		t.Fatalf("FromSettings: %v, %v", l, err)
	}
	return l, filepath.Join(dir, FileName())
}

// line is one parsed trace line.
type line struct {
	time                 time.Time
	backend, method, url string
	kv                   map[string]string
	raw                  string
}

// parseLines parses every line of the trace file, failing t on a malformed
// one.
func parseLines(t *testing.T, path string) []line {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("trace does not end with a newline: %q", data)
	}
	var out []line
	for _, raw := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if raw == "" {
			continue
		}
		out = append(out, parseLine(t, raw))
	}
	return out
}

func parseLine(t *testing.T, raw string) line {
	t.Helper()
	f := strings.SplitN(raw, " ", 5)
	if len(f) != 5 {
		t.Fatalf("malformed line %q", raw)
	}
	ts, err := time.Parse(time.RFC3339Nano, f[0])
	if err != nil {
		t.Fatalf("line %q: time: %v", raw, err)
	}
	l := line{time: ts, backend: f[1], method: f[2], url: f[3], kv: map[string]string{}, raw: raw}
	rest := f[4]
	for rest != "" {
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			t.Fatalf("line %q: malformed field at %q", raw, rest)
		}
		if strings.HasPrefix(v, `"`) {
			q, err := strconv.QuotedPrefix(v)
			if err != nil {
				t.Fatalf("line %q: field %s: %v", raw, k, err)
			}
			rest = v[len(q):]
			v, _ = strconv.Unquote(q)
		} else {
			v, rest, _ = strings.Cut(v, " ")
			rest = " " + rest
		}
		l.kv[k] = v
		rest = strings.TrimPrefix(rest, " ")
	}
	for _, k := range []string{"range", "status", "bytes", "headers", "total"} {
		if _, ok := l.kv[k]; !ok {
			t.Fatalf("line %q: no %s", raw, k)
		}
	}
	return l
}

// noSecrets fails t if the trace file holds a secret or a header name that
// must never be written.
func noSecrets(t *testing.T, path string, secrets ...string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(secrets, "Authorization", "?") {
		if bytes.Contains(data, []byte(s)) {
			t.Errorf("trace holds %q:\n%s", s, data)
		}
	}
}

func newServer(t *testing.T, content []byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.Error(w, "no such object", http.StatusNotFound)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFromSettings(t *testing.T) {
	for _, tc := range []struct {
		value string
		set   bool // present in Settings at all
		on    bool
		err   bool
	}{
		{set: false},
		{value: "", set: true},
		{value: "0", set: true},
		{value: "false", set: true},
		{value: "OFF", set: true},
		{value: "no", set: true},
		{value: "1", set: true, on: true},
		{value: "true", set: true, on: true},
		{value: " Yes ", set: true, on: true},
		{value: "ON", set: true, on: true},
		{value: "2", set: true, err: true},
		{value: "debug", set: true, err: true},
	} {
		t.Run(fmt.Sprintf("%q/set=%v", tc.value, tc.set), func(t *testing.T) {
			dir := t.TempDir()
			t.Chdir(dir)
			s := storage.Settings{}
			if tc.set {
				s[Setting] = tc.value
			}
			l, err := FromSettings(s)
			switch {
			case tc.err:
				if !errors.Is(err, storage.ErrInvalidArgument) || !strings.Contains(err.Error(), Setting) || l != nil {
					t.Fatalf("FromSettings = %v, %v; want an invalid argument error naming %s", l, err, Setting)
				}
				t.Logf("error: %v", err)
			case err != nil:
				t.Fatalf("FromSettings: %v", err)
			case tc.on != (l != nil):
				t.Fatalf("FromSettings = %v, want on=%v", l, tc.on)
			}
			_, statErr := os.Stat(filepath.Join(dir, FileName()))
			if tc.on != (statErr == nil) {
				t.Fatalf("trace file exists=%v, want %v", statErr == nil, tc.on)
			}
			if tc.on {
				// Every backend of the process shares the one file.
				if again, err := FromSettings(s); again != l || err != nil {
					t.Fatalf("second FromSettings = %p, %v; want the same log %p", again, err, l)
				}
			}
		})
	}
}

func TestOpenFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, dir string)
		code    storage.Code
	}{
		{"read-only directory", func(t *testing.T, dir string) {
			if os.Geteuid() == 0 {
				t.Skip("root may write to a read-only directory")
			}
			if err := os.Chmod(dir, 0o555); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(dir, 0o755) })
		}, storage.PermissionDenied},
		{"name taken by a directory", func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, FileName()), 0o755); err != nil {
				t.Fatal(err)
			}
		}, storage.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.prepare(t, dir)
			t.Chdir(dir)
			l, err := FromSettings(storage.Settings{Setting: "1"})
			if l != nil || storage.CodeOf(err) != tc.code || !strings.Contains(err.Error(), FileName()) {
				t.Fatalf("FromSettings = %v, %v; want a %v error naming the file", l, err, tc.code)
			}
			t.Logf("error: %v", err)
		})
	}
}

func TestNilLogChangesNothing(t *testing.T) {
	var l *Log
	base := &http.Transport{}
	if got := l.Transport("s3", base); got != http.RoundTripper(base) {
		t.Fatalf("nil Log: Transport = %T, want base", got)
	}
	c := &http.Client{}
	if got := l.Client("s3", c); got != Doer(c) {
		t.Fatalf("nil Log: Client = %T, want c", got)
	}
}

func TestExchanges(t *testing.T) {
	l, path := traceLog(t)
	content := bytes.Repeat([]byte("0123456789"), 1000)
	srv := newServer(t, content)
	tr := &http.Client{Transport: l.Transport("gcs", http.DefaultTransport)}
	az := &http.Client{Transport: l.Transport("azure", http.DefaultTransport)}
	doer := l.Client("s3", &http.Client{Transport: http.DefaultTransport})

	for _, tc := range []struct {
		name       string
		do         func(*http.Request) (*http.Response, error)
		method     string
		path       string
		rng        string
		rngHeader  string // the header the range goes in: Range unless set
		readN      int    // bytes to read before Close; -1: to the end
		backend    string
		wantStatus string
		wantBytes  string
	}{
		{"range", tr.Do, "GET", "/bucket/model.bin", "bytes=10-19", "", -1, "gcs", "206", "10"},
		{"whole", tr.Do, "GET", "/bucket/model.bin", "", "", -1, "gcs", "200", strconv.Itoa(len(content))},
		{"partial read", tr.Do, "GET", "/bucket/model.bin", "bytes=0-999", "", 100, "gcs", "206", "100"},
		{"head", tr.Do, "HEAD", "/bucket/model.bin", "", "", -1, "gcs", "200", "0"},
		{"not found", tr.Do, "GET", "/missing", "", "", -1, "gcs", "404", strconv.Itoa(len("no such object\n"))},
		{"client", doer.Do, "GET", "/bucket/other.bin", "bytes=5-9", "", -1, "s3", "206", "5"},
		// As azblob sends it: the server ignores it and sends everything.
		{"x-ms-range", az.Do, "GET", "/c/blob", "bytes=0-9", "x-ms-range", -1, "azure", "200", strconv.Itoa(len(content))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(parseLines(t, path))
			req, err := http.NewRequest(tc.method, srv.URL+tc.path+"?x-id=GetObject&"+querySecret, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", authSecret)
			req.Header.Set("X-Amz-Security-Token", authSecret)
			switch {
			case tc.rng == "":
			case tc.rngHeader != "":
				req.Header[tc.rngHeader] = []string{tc.rng}
			default:
				req.Header.Set("Range", tc.rng)
			}
			resp, err := tc.do(req)
			if err != nil {
				t.Fatal(err)
			}
			if tc.readN < 0 {
				io.Copy(io.Discard, resp.Body)
			} else {
				io.CopyN(io.Discard, resp.Body, int64(tc.readN))
			}
			resp.Body.Close()

			lines := parseLines(t, path)
			if len(lines) != before+1 {
				t.Fatalf("%d new lines, want 1", len(lines)-before)
			}
			got := lines[len(lines)-1]
			t.Logf("%s", got.raw)
			want := line{backend: tc.backend, method: tc.method, url: srv.URL + tc.path}
			if got.backend != want.backend || got.method != want.method || got.url != want.url {
				t.Errorf("line %q: want backend %s, method %s, URL %s", got.raw, want.backend, want.method, want.url)
			}
			for k, v := range map[string]string{"range": tc.rng, "status": tc.wantStatus, "bytes": tc.wantBytes} {
				if got.kv[k] != v {
					t.Errorf("line %q: %s=%q, want %q", got.raw, k, got.kv[k], v)
				}
			}
			if _, ok := got.kv["error"]; ok {
				t.Errorf("line %q: an error for a successful exchange", got.raw)
			}
			hdr, err1 := time.ParseDuration(got.kv["headers"])
			total, err2 := time.ParseDuration(got.kv["total"])
			if err1 != nil || err2 != nil || hdr > total || time.Since(got.time) < total {
				t.Errorf("line %q: implausible times", got.raw)
			}
		})
	}
	noSecrets(t, path, querySecret, authSecret, "x-id")
}

// TestFailures covers exchanges that end in an error: no connection, and a
// body cut short.
func TestFailures(t *testing.T) {
	l, path := traceLog(t)

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()

	// A server that promises 1000 bytes and sends 100.
	short := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusPartialContent)
		w.Write(make([]byte, 100))
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(short.Close)

	tr := l.Transport("azure", http.DefaultTransport)
	doer := l.Client("s3", &http.Client{Transport: &http.Transport{}})
	for _, tc := range []struct {
		name       string
		do         func(*http.Request) (*http.Response, error)
		url        string
		wantStatus string
		wantBytes  string
		wantErr    string
	}{
		{"refused", tr.RoundTrip, deadURL, "-", "0", "refused"},
		{"refused via client", doer.Do, deadURL, "-", "0", "refused"},
		{"short body", tr.RoundTrip, short.URL, "206", "100", "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(parseLines(t, path))
			req, err := http.NewRequest("GET", tc.url+"/c/blob?"+querySecret, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", authSecret)
			req.Header.Set("Range", "bytes=0-999")
			resp, err := tc.do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err == nil {
				t.Fatal("no error")
			}
			lines := parseLines(t, path)
			if len(lines) != before+1 {
				t.Fatalf("%d new lines, want 1", len(lines)-before)
			}
			got := lines[len(lines)-1]
			t.Logf("%s", got.raw)
			if got.url != tc.url+"/c/blob" || got.kv["status"] != tc.wantStatus || got.kv["bytes"] != tc.wantBytes ||
				got.kv["range"] != "bytes=0-999" || !strings.Contains(got.kv["error"], tc.wantErr) {
				t.Errorf("line %q: want URL %s/c/blob, status=%s bytes=%s, an error with %q",
					got.raw, tc.url, tc.wantStatus, tc.wantBytes, tc.wantErr)
			}
			if tc.wantStatus == "-" && got.kv["headers"] != "-" {
				t.Errorf("line %q: headers time without a response", got.raw)
			}
		})
	}
	noSecrets(t, path, querySecret, authSecret)
}

// TestConcurrentLines checks that lines of concurrent exchanges never mix.
func TestConcurrentLines(t *testing.T) {
	l, path := traceLog(t)
	content := bytes.Repeat([]byte("x"), 64<<10)
	srv := newServer(t, content)
	c := &http.Client{Transport: l.Transport("s3", http.DefaultTransport)}
	const workers, each = 16, 25
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				req, _ := http.NewRequest("GET", fmt.Sprintf("%s/w%d/r%d?%s", srv.URL, w, i, querySecret), nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", i, i+1000*w))
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	lines := parseLines(t, path)
	if len(lines) != workers*each {
		t.Fatalf("%d lines, want %d", len(lines), workers*each)
	}
	seen := map[string]bool{}
	for _, ln := range lines {
		var w, i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(ln.url, srv.URL), "/w%d/r%d", &w, &i); err != nil {
			t.Fatalf("line %q: URL %q", ln.raw, ln.url)
		}
		wantRange := fmt.Sprintf("bytes=%d-%d", i, i+1000*w)
		if ln.kv["range"] != wantRange || ln.kv["status"] != "206" || ln.kv["bytes"] != strconv.Itoa(1000*w+1) {
			t.Fatalf("line %q: want range %s, status 206, %d bytes", ln.raw, wantRange, 1000*w+1)
		}
		seen[ln.url] = true
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct requests traced, want %d", len(seen), workers*each)
	}
	noSecrets(t, path, querySecret)
}
