package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

const objectSize = 1 << 20

var object = func() []byte {
	b := make([]byte, objectSize)
	for i := range b {
		b[i] = byte(i ^ i>>9)
	}
	return b
}()

// upstream is a tiny origin on 127.0.0.1: GET/HEAD /object serves object
// with Range support and echoes what it received in headers; PUT /echo
// returns the request body.
func upstream(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/object", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-User-Agent", r.Header.Get("User-Agent"))
		w.Header().Set("X-Seen-Accept-Encoding", r.Header.Get("Accept-Encoding"))
		w.Header().Set("X-Seen-Custom", r.Header.Get("X-Custom"))
		w.Header().Set("X-Seen-Query", r.URL.RawQuery)
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "object", time.Unix(1e9, 0), bytes.NewReader(object))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Length", fmt.Sprint(r.ContentLength))
		w.Header()["Content-Type"] = nil // no sniffing
		if r.URL.Query().Has("nodate") {
			w.Header()["Date"] = nil
		}
		// The whole body before any of the response: an HTTP/1.1 server
		// may stop reading a request body once its response is flushed,
		// which cut this echo short once in ~20 runs.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Write(body)
	})
	// /chunked streams object without a Content-Length.
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		for off := 0; off < len(object); off += 100 << 10 {
			w.Write(object[off:min(off+100<<10, len(object))])
			rc.Flush()
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("upstream not on 127.0.0.1: %s", srv.URL)
	}
	return srv
}

func client() *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: nil, DisableCompression: true}, Timeout: 30 * time.Second}
}

type result struct {
	status int
	header http.Header
	body   []byte
	err    error // from reading the body
}

func do(t *testing.T, c *http.Client, method, url string, h http.Header, body []byte) result {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

func ranged(from, to int) http.Header {
	return http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", from, to)}}
}

func stats(t *testing.T, p *Proxy, wantReq, wantFaults int) {
	t.Helper()
	if r, f := p.Stats(); r != wantReq || f != wantFaults {
		t.Errorf("Stats() = %d requests, %d faults; want %d, %d", r, f, wantReq, wantFaults)
	}
}

func TestForwardsFaithfully(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	if !strings.HasPrefix(p.URL(), "http://127.0.0.1:") {
		t.Fatalf("proxy URL %s", p.URL())
	}
	c := client()

	h := ranged(1000, 300000)
	h.Set("X-Custom", "kept")
	h.Set("Accept-Encoding", "identity")
	r := do(t, c, http.MethodGet, p.URL()+"/object?a=1&b=%2F", h, nil)
	if r.err != nil || r.status != http.StatusPartialContent || !bytes.Equal(r.body, object[1000:300001]) {
		t.Fatalf("ranged GET: %d %v, %d bytes", r.status, r.err, len(r.body))
	}
	for k, want := range map[string]string{
		"X-Seen-Host":            p.Addr(), // the Host the client sent
		"X-Seen-Custom":          "kept",
		"X-Seen-Accept-Encoding": "identity",
		"X-Seen-Query":           "a=1&b=%2F",
		"X-Seen-User-Agent":      "Go-http-client/1.1",
		"Content-Range":          fmt.Sprintf("bytes 1000-300000/%d", objectSize),
		"Etag":                   `"v1"`,
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}

	// Nothing added: the origin's /echo sets no Content-Type or Date.
	r = do(t, c, http.MethodPut, p.URL()+"/echo?nodate=1", nil, []byte("<html>sniff me</html>"))
	if ct, ok := r.header["Content-Type"]; ok {
		t.Errorf("proxy added Content-Type %q", ct)
	}
	if d, ok := r.header["Date"]; ok {
		t.Errorf("proxy added Date %q", d)
	}

	r = do(t, c, http.MethodHead, p.URL()+"/object", nil, nil)
	if r.status != http.StatusOK || r.header.Get("Content-Length") != fmt.Sprint(objectSize) {
		t.Errorf("HEAD: %d, Content-Length %q", r.status, r.header.Get("Content-Length"))
	}

	big := object[:700<<10]
	r = do(t, c, http.MethodPut, p.URL()+"/echo", nil, big)
	if r.err != nil || !bytes.Equal(r.body, big) || r.header.Get("X-Seen-Length") != fmt.Sprint(len(big)) {
		t.Errorf("PUT echo: %v, %d bytes, upstream saw length %s", r.err, len(r.body), r.header.Get("X-Seen-Length"))
	}
	r = do(t, c, http.MethodPut, p.URL()+"/echo", nil, []byte{})
	if r.err != nil || len(r.body) != 0 || r.header.Get("X-Seen-Length") != "0" {
		t.Errorf("empty PUT: %v, upstream saw length %s", r.err, r.header.Get("X-Seen-Length"))
	}

	r = do(t, c, http.MethodGet, p.URL()+"/chunked", nil, nil)
	if r.err != nil || !bytes.Equal(r.body, object) {
		t.Errorf("chunked GET: %v, %d bytes", r.err, len(r.body))
	}
	stats(t, p, 6, 0)
	// Bodies passed on: the ranged GET, the two echoes (one with the sniff
	// body), the chunked GET; HEAD has none.
	if want := int64(300001 - 1000 + len("<html>sniff me</html>") + len(big) + len(object)); p.BodyBytes() != want {
		t.Errorf("BodyBytes = %d, want %d", p.BodyBytes(), want)
	}
}

func TestStatus(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	c := client()
	p.Set(Fault{Status: http.StatusServiceUnavailable, StatusCount: 2, RetryAfter: 1500 * time.Millisecond})

	// Not a data read: unaffected by the default Match.
	if r := do(t, c, http.MethodGet, p.URL()+"/object", nil, nil); r.status != http.StatusOK {
		t.Fatalf("unranged GET: status %d", r.status)
	}
	for i := range 2 {
		r := do(t, c, http.MethodGet, p.URL()+"/bucket/key", ranged(0, 9), nil)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("request %d: status %d, want 503", i, r.status)
		}
		if got := r.header.Get("Retry-After"); got != "2" {
			t.Errorf("Retry-After %q, want 2 (1.5 s rounded up)", got)
		}
		if !bytes.Contains(r.body, []byte("<Code>SlowDown</Code>")) || !bytes.Contains(r.body, []byte("<Resource>/bucket/key</Resource>")) {
			t.Errorf("body %s", r.body)
		}
	}
	if r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, 9), nil); r.status != http.StatusPartialContent {
		t.Fatalf("after the count: status %d, want 206", r.status)
	}
	stats(t, p, 4, 2)

	// Count 0 with a status: every matching request.
	p.Set(Fault{Status: http.StatusInternalServerError})
	for range 3 {
		r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, 9), nil)
		if r.status != 500 || !bytes.Contains(r.body, []byte("InternalError")) || r.header.Get("Retry-After") != "" {
			t.Fatalf("Always 500: %d %q %s", r.status, r.header.Get("Retry-After"), r.body)
		}
	}
	p.Clear()
	if r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, 9), nil); r.status != http.StatusPartialContent {
		t.Fatalf("after Clear: status %d", r.status)
	}
	stats(t, p, 8, 5)
}

func TestStatusDialects(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	c := client()
	p.Set(Fault{Status: http.StatusTooManyRequests, Match: func(*http.Request) bool { return true }})

	r := do(t, c, http.MethodGet, p.URL()+"/storage/v1/b/bkt/o/obj?alt=media", nil, nil)
	if r.status != 429 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") ||
		!bytes.Contains(r.body, []byte(`"rateLimitExceeded"`)) || !bytes.Contains(r.body, []byte(`"code":429`)) {
		t.Errorf("GCS: %d %s", r.status, r.body)
	}
	r = do(t, c, http.MethodGet, p.URL()+"/devstoreaccount1/c/b", http.Header{"X-Ms-Version": {"2021-12-02"}}, nil)
	if r.status != 429 || r.header.Get("X-Ms-Error-Code") != "ServerBusy" || !bytes.Contains(r.body, []byte("<Code>ServerBusy</Code>")) {
		t.Errorf("Azure: %d %q %s", r.status, r.header.Get("X-Ms-Error-Code"), r.body)
	}
	r = do(t, c, http.MethodHead, p.URL()+"/bucket/key", nil, nil)
	if r.status != 429 || len(r.body) != 0 {
		t.Errorf("HEAD: %d, %d body bytes", r.status, len(r.body))
	}
	stats(t, p, 3, 3)
}

// isReset reports whether err is a connection reset as the client sees it.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || strings.Contains(fmt.Sprint(err), "connection reset")
}

func TestReset(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	c := client()
	p.Set(Fault{ResetAfterBytes: 100000, ResetCount: 2})

	// A body no longer than the offset is delivered whole and does not use
	// up a reset.
	if r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, 99999), nil); r.err != nil || len(r.body) != 100000 {
		t.Fatalf("short body: %v, %d bytes", r.err, len(r.body))
	}
	for _, path := range []string{"/object", "/chunked"} {
		h := ranged(0, objectSize-1)
		if path == "/chunked" {
			h = ranged(0, 0) // matches; the handler ignores it
		}
		r := do(t, c, http.MethodGet, p.URL()+path, h, nil)
		if r.err == nil {
			t.Fatalf("%s: read %d bytes without an error", path, len(r.body))
		}
		if !isReset(r.err) {
			t.Errorf("%s: error %v, want a connection reset", path, r.err)
		}
		if len(r.body) != 100000 || !bytes.Equal(r.body, object[:len(r.body)]) {
			t.Errorf("%s: got %d bytes before the reset, want 100000", path, len(r.body))
		}
	}
	if r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, objectSize-1), nil); r.err != nil || !bytes.Equal(r.body, object) {
		t.Fatalf("after the count: %v, %d bytes", r.err, len(r.body))
	}
	stats(t, p, 4, 2)

	// Reset before the first body byte.
	p.Set(Fault{ResetAfterBytes: 0, ResetCount: 1})
	r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, 999), nil)
	if r.err == nil || len(r.body) != 0 {
		t.Errorf("reset at 0: %v, %d bytes", r.err, len(r.body))
	}
}

func TestStall(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	c := client()
	const stall = 400 * time.Millisecond
	p.Set(Fault{StallAfterBytes: 5000, StallFor: stall, StallCount: 1})

	began := time.Now()
	r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, objectSize-1), nil)
	if el := time.Since(began); el < stall {
		t.Errorf("stalled response took %v, want at least %v", el, stall)
	}
	if r.err != nil || !bytes.Equal(r.body, object) {
		t.Fatalf("stalled response: %v, %d bytes", r.err, len(r.body))
	}

	// A client that gives up during a stall has the first bytes only.
	p.Set(Fault{StallAfterBytes: 5000, StallFor: 20 * time.Second, StallCount: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/object", nil)
	req.Header.Set("Range", "bytes=0-")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 5000)
	if _, err := io.ReadFull(resp.Body, first); err != nil || !bytes.Equal(first, object[:5000]) {
		t.Fatalf("bytes before the stall: %v", err)
	}
	time.AfterFunc(200*time.Millisecond, cancel)
	began = time.Now()
	b, err := io.ReadAll(resp.Body)
	if !errors.Is(err, context.Canceled) || len(b) != 0 {
		t.Errorf("read during stall: %v after %d more bytes, want canceled after none", err, len(b))
	}
	if el := time.Since(began); el > 5*time.Second {
		t.Errorf("gave up after %v", el)
	}
	stats(t, p, 2, 2)
}

func TestCloseEndsStall(t *testing.T) {
	up := upstream(t)
	p, err := New(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	p.Set(Fault{StallAfterBytes: 10, StallFor: time.Minute})
	done := make(chan result, 1)
	go func() { done <- do(t, client(), http.MethodGet, p.URL()+"/object", ranged(0, 999), nil) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, f := p.Stats(); f == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stall never began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	began := time.Now()
	p.Close()
	p.Close() // idempotent
	select {
	case r := <-done:
		if len(r.body) >= 1000 && r.err == nil {
			t.Errorf("stalled request completed whole after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client still waiting 10 s after Close")
	}
	if el := time.Since(began); el > CloseGrace+time.Second {
		t.Errorf("Close took %v", el)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Error("proxy still accepts connections after Close")
	}
}

func TestLatencyAndMatch(t *testing.T) {
	up := upstream(t)
	p := Start(t, up.URL)
	c := client()
	const lat = 300 * time.Millisecond
	p.Set(Fault{Latency: lat, Status: 503, StatusCount: 1,
		Match: func(r *http.Request) bool { return r.Method == http.MethodHead }})

	began := time.Now()
	if r := do(t, c, http.MethodHead, p.URL()+"/object", nil, nil); r.status != 503 {
		t.Errorf("matched HEAD: status %d", r.status)
	}
	if el := time.Since(began); el < lat {
		t.Errorf("matched request took %v, want at least %v", el, lat)
	}
	began = time.Now()
	if r := do(t, c, http.MethodHead, p.URL()+"/object", nil, nil); r.status != 200 {
		t.Errorf("second HEAD: status %d", r.status)
	}
	if el := time.Since(began); el < lat {
		t.Errorf("latency applies to every matching request: took %v", el)
	}
	began = time.Now()
	if r := do(t, c, http.MethodGet, p.URL()+"/object", ranged(0, 9), nil); r.status != 206 {
		t.Errorf("unmatched GET: status %d", r.status)
	}
	if el := time.Since(began); el >= lat {
		t.Errorf("unmatched request delayed: %v", el)
	}
	stats(t, p, 3, 1)
}
