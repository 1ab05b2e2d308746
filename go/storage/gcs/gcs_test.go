package gcs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
)

const bucket = "test-bucket"

const mib = 1 << 20

// env is a fake-gcs-server with one bucket.
type env struct {
	srv *testserver.GCSServer
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := testserver.FakeGCS(t)
	srv.CreateBucket(t, bucket)
	return &env{srv: srv}
}

func (e *env) put(t testing.TB, name string, data []byte) string {
	t.Helper()
	e.srv.PutObject(t, bucket, name, data)
	return "gs://" + bucket + "/" + name
}

// backend returns a backend for endpoint (the server's when empty) with
// extra settings.
func (e *env) backend(t testing.TB, endpoint string, kv ...string) storage.Backend {
	t.Helper()
	if endpoint == "" {
		endpoint = e.srv.Endpoint
	}
	s := storage.Settings{SettingEndpoint: endpoint}
	for i := 0; i+1 < len(kv); i += 2 {
		s[kv[i]] = kv[i+1]
	}
	b, err := New(s)
	if err != nil {
		t.Fatalf("New(%v): %v", s, err)
	}
	return b
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func open(t testing.TB, b storage.Backend, uri string) storage.Object {
	t.Helper()
	obj, err := b.Open(ctxT(t), uri)
	if err != nil {
		t.Fatalf("Open(%q): %v", uri, err)
	}
	t.Cleanup(func() { obj.Close() })
	return obj
}

func checkBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("%s: byte %d = %#x, want %#x", what, i, got[i], want[i])
			}
		}
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
}

func TestConformance(t *testing.T) {
	e := newEnv(t)
	storagetest.Run(t, storagetest.Fixture{
		Backend: e.backend(t, ""),
		Put: func(t testing.TB, name string, data []byte) string {
			return e.put(t, "conformance/"+name, data)
		},
		Missing: func(t testing.TB) string { return "gs://" + bucket + "/conformance/no-such-object" },
	})
}

func TestEmulatorHostSetting(t *testing.T) {
	e := newEnv(t)
	data := storagetest.Bytes(100_000, 1)
	uri := e.put(t, "emulator/a.bin", data)
	for _, host := range []string{e.srv.Host, "http://" + e.srv.Host, "http://" + e.srv.Host + "/ignored/path"} {
		t.Run(host, func(t *testing.T) {
			b, err := New(storage.Settings{SettingEmulatorHost: host})
			if err != nil {
				t.Fatal(err)
			}
			obj := open(t, b, uri)
			dst := make([]byte, 1000)
			if n, err := obj.ReadAt(ctxT(t), dst, 500); n != len(dst) || err != nil {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			checkBytes(t, "ReadAt", dst, data[500:1500])
		})
	}
	// An endpoint URL without a path gets /storage/v1/.
	b := e.backend(t, "http://"+e.srv.Host)
	if obj := open(t, b, uri); obj.Size() != int64(len(data)) {
		t.Fatalf("Size = %d, want %d", obj.Size(), len(data))
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "")
	for _, uri := range []string{
		"gs://" + bucket + "/no/such/object",
		"gs://no-such-bucket-here/object",
	} {
		t.Run(uri, func(t *testing.T) {
			_, err := b.Open(ctxT(t), uri)
			if !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Open(%q) = %v (code %v); want NotFound", uri, err, storage.CodeOf(err))
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, uri+": open: not found: HTTP 404") {
				t.Errorf("error %q: want it to start %q", msg, uri+": open: not found: HTTP 404")
			}
			var he *storage.HTTPError
			if !errors.As(err, &he) || he.Status != 404 {
				t.Errorf("error %q: no *HTTPError with status 404", msg)
			}
			t.Logf("%v", err)
		})
	}
	t.Run("List missing bucket", func(t *testing.T) {
		_, err := b.(storage.Lister).List(ctxT(t), "gs://no-such-bucket-here/dir", true)
		if !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), "gs://no-such-bucket-here/dir") {
			t.Fatalf("List = %v (code %v); want NotFound naming the URI", err, storage.CodeOf(err))
		}
	})
	t.Run("deleted after open", func(t *testing.T) {
		data := storagetest.Bytes(4096, 2)
		uri := e.put(t, "deleted.bin", data)
		obj := open(t, b, uri)
		req, _ := http.NewRequest(http.MethodDelete, e.srv.Endpoint+"b/"+bucket+"/o/deleted.bin", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		n, err := obj.ReadAt(ctxT(t), make([]byte, 100), 0)
		if n != 0 || !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("ReadAt after delete = %d, %v; want 0, NotFound", n, err)
		}
		t.Logf("%v", err)
	})
	t.Run("replaced after open", func(t *testing.T) {
		// The read is pinned to the generation Open saw: the new version's
		// bytes are never mixed in.
		uri := e.put(t, "replaced.bin", storagetest.Bytes(4096, 3))
		obj := open(t, b, uri)
		e.put(t, "replaced.bin", storagetest.Bytes(8192, 4))
		n, err := obj.ReadAt(ctxT(t), make([]byte, 100), 0)
		if n != 0 || !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("ReadAt after replace = %d, %v; want 0, NotFound", n, err)
		}
	})
}

func TestInvalidURIs(t *testing.T) {
	b, err := New(storage.Settings{SettingEndpoint: "http://127.0.0.1:1/storage/v1/"})
	if err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{"gs://", "gs:///object", "gs://bucket", "gs://bucket/", "s3://bucket/object"} {
		if _, err := b.Open(context.Background(), uri); storage.CodeOf(err) != storage.InvalidArgument || !strings.Contains(err.Error(), uri) {
			t.Errorf("Open(%q) = %v; want InvalidArgument naming the URI", uri, err)
		}
	}
	if _, err := b.(storage.Lister).List(context.Background(), "gs://", false); storage.CodeOf(err) != storage.InvalidArgument {
		t.Errorf("List(gs://) = %v; want InvalidArgument", err)
	}
}

func TestSettingsErrors(t *testing.T) {
	dir := t.TempDir()
	notJSON := filepath.Join(dir, "bad.json")
	os.WriteFile(notJSON, []byte("not json"), 0o600)
	for _, c := range []struct {
		s    storage.Settings
		code storage.Code
		want string
	}{
		{storage.Settings{SettingEndpoint: "127.0.0.1:4443"}, storage.InvalidArgument, SettingEndpoint},
		{storage.Settings{SettingEndpoint: "ftp://x/"}, storage.InvalidArgument, SettingEndpoint},
		{storage.Settings{SettingEmulatorHost: "http://"}, storage.InvalidArgument, SettingEmulatorHost},
		{storage.Settings{SettingEmulatorHost: "127.0.0.1:1", SettingStallTimeoutMS: "-1"}, storage.InvalidArgument, SettingStallTimeoutMS},
		{storage.Settings{SettingEmulatorHost: "127.0.0.1:1", SettingStallTimeoutMS: "soon"}, storage.InvalidArgument, SettingStallTimeoutMS},
		{storage.Settings{SettingCredentialFile: filepath.Join(dir, "missing.json")}, storage.InvalidArgument, SettingCredentialFile},
		{storage.Settings{SettingADCFile: notJSON}, storage.InvalidArgument, SettingADCFile},
	} {
		_, err := New(c.s)
		if storage.CodeOf(err) != c.code || !strings.Contains(fmt.Sprint(err), c.want) {
			t.Errorf("New(%v) = %v; want %v naming %s", c.s, err, c.code, c.want)
		}
	}
	b, err := New(storage.Settings{SettingEmulatorHost: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if tb := b.(storage.Tuned); tb.DefaultChunkBytes() != ChunkBytes || tb.DefaultConcurrency() != Concurrency {
		t.Errorf("Tuned = %d, %d", tb.DefaultChunkBytes(), tb.DefaultConcurrency())
	}
}

// TestCredentialFile checks that a service-account key file authenticates
// requests to a custom endpoint: the token comes from the key's token_uri
// (a loopback server here) and every request, metadata and data, carries it.
func TestCredentialFile(t *testing.T) {
	e := newEnv(t)
	data := storagetest.Bytes(300_000, 5)
	uri := e.put(t, "auth/a.bin", data)

	var tokens atomic.Int32
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"tok-123","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(tokenSrv.Close)

	target, _ := url.Parse("http://" + e.srv.Host)
	var mu sync.Mutex
	var auths []string
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	file := serviceAccountFile(t, tokenSrv.URL+"/token")
	for _, setting := range []string{SettingCredentialFile, SettingADCFile} {
		t.Run(setting, func(t *testing.T) {
			mu.Lock()
			auths = nil
			mu.Unlock()
			b := e.backend(t, front.URL+"/storage/v1/", setting, file)
			obj := open(t, b, uri)
			dst := make([]byte, len(data))
			if n, err := obj.ReadAt(ctxT(t), dst, 0); n != len(data) || err != nil {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			checkBytes(t, "ReadAt", dst, data)
			mu.Lock()
			defer mu.Unlock()
			if len(auths) < 2 {
				t.Fatalf("requests seen: %q; want a metadata and a data request", auths)
			}
			for _, a := range auths {
				if !strings.HasSuffix(a, " Bearer tok-123") {
					t.Errorf("request %q: no bearer token", a)
				}
			}
		})
	}
	if tokens.Load() == 0 {
		t.Error("the token endpoint was never called")
	}
}

// serviceAccountFile writes a service-account key file whose tokens come
// from tokenURL and returns its path.
func serviceAccountFile(t testing.TB, tokenURL string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))})
	js, _ := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     "test-project",
		"private_key_id": "key-1",
		"private_key":    string(pemKey),
		"client_email":   "reader@test-project.iam.gserviceaccount.com",
		"client_id":      "1",
		"token_uri":      tokenURL,
	})
	file := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(file, js, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestGzipObject checks that an object stored with Content-Encoding gzip is
// read as stored: Size and every range are the compressed bytes.
func TestGzipObject(t *testing.T) {
	e := newEnv(t)
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(bytes.Repeat([]byte("model-streamer "), 200_000))
	zw.Write(storagetest.Bytes(1*mib, 6))
	zw.Close()
	stored := zb.Bytes()

	q := url.Values{"uploadType": {"media"}, "name": {"gzip/z.bin"}, "contentEncoding": {"gzip"}}
	resp, err := http.Post("http://"+e.srv.Host+"/upload/storage/v1/b/"+bucket+"/o?"+q.Encode(), "application/octet-stream", bytes.NewReader(stored))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"contentEncoding":"gzip"`) {
		t.Fatalf("upload: %s: %s", resp.Status, body)
	}
	b := e.backend(t, "")
	obj := open(t, b, "gs://"+bucket+"/gzip/z.bin")
	if obj.Size() != int64(len(stored)) {
		t.Fatalf("Size = %d, want the stored size %d", obj.Size(), len(stored))
	}
	for _, r := range [][2]int{{0, 100}, {1000, 5000}, {len(stored) - 10, 10}, {0, len(stored)}} {
		dst := make([]byte, r[1])
		n, err := obj.ReadAt(ctxT(t), dst, int64(r[0]))
		if n != r[1] || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt(len %d, off %d) = %d, %v", r[1], r[0], n, err)
		}
		checkBytes(t, fmt.Sprintf("ReadAt(len %d, off %d)", r[1], r[0]), dst, stored[r[0]:r[0]+r[1]])
	}
}

func TestListShapes(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, "").(storage.Lister)
	for _, n := range []string{"top.bin", "m/a.bin", "m/sub/b.bin", "m/folder/", "mx/c.bin"} {
		e.put(t, n, []byte(n))
	}
	u := func(names ...string) string {
		var s []string
		for _, n := range names {
			s = append(s, "gs://"+bucket+"/"+n)
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		uri       string
		recursive bool
		want      string
	}{
		{"gs://" + bucket, false, u("top.bin")},
		{"gs://" + bucket + "/", true, u("m/a.bin", "m/sub/b.bin", "mx/c.bin", "top.bin")},
		{"gs://" + bucket + "/m", false, u("m/a.bin")},
		{"gs://" + bucket + "/m/", true, u("m/a.bin", "m/sub/b.bin")},
		{"gs://" + bucket + "/nothing/here", true, ""},
	} {
		got, err := b.List(ctxT(t), c.uri, c.recursive)
		if err != nil {
			t.Fatalf("List(%q, %v): %v", c.uri, c.recursive, err)
		}
		var s []string
		for _, o := range got {
			s = append(s, o.URI)
		}
		if strings.Join(s, " ") != c.want {
			t.Errorf("List(%q, %v) = %q, want %q", c.uri, c.recursive, s, c.want)
		}
	}
}

// faultEnv is a server behind a fault proxy, with a backend pointed at the
// proxy and one object.
type faultEnv struct {
	*env
	proxy *faultproxy.Proxy
	b     storage.Backend
	data  []byte
	uri   string
}

func newFaultEnv(t *testing.T, size int, kv ...string) *faultEnv {
	t.Helper()
	e := newEnv(t)
	p := faultproxy.Start(t, "http://"+e.srv.Host)
	f := &faultEnv{env: e, proxy: p, data: storagetest.Bytes(size, 7)}
	f.uri = e.put(t, "faults/object.bin", f.data)
	f.b = e.backend(t, p.URL()+"/storage/v1/", kv...)
	return f
}

// isMetadata matches the JSON API's object GET (Open).
func isMetadata(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/storage/v1/b/")
}

func TestFaults503RetryAfter(t *testing.T) {
	f := newFaultEnv(t, 4*mib)
	obj := open(t, f.b, f.uri)
	f.proxy.Set(faultproxy.Fault{Status: http.StatusServiceUnavailable, StatusCount: 2, RetryAfter: time.Second})

	dst := make([]byte, 2*mib)
	n, err := obj.ReadAt(ctxT(t), dst, 1000)
	var se *storage.Error
	if n != 0 || !errors.As(err, &se) || se.Code != storage.Unavailable {
		t.Fatalf("ReadAt under 503 = %d, %v; want 0, Unavailable", n, err)
	}
	if se.RetryAfter != time.Second {
		t.Errorf("RetryAfter = %v, want 1s", se.RetryAfter)
	}
	if !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("error %q does not carry the status", err)
	}
	t.Logf("%v", err)

	// The engine's retry loop: one more 503, then the data.
	var retries int
	began := time.Now()
	got, err := storage.ReadRange(ctxT(t), obj, dst, 1000, int64(len(dst)),
		storage.RetryPolicy{MaxRetries: 5, BaseDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond},
		func(error) { retries++ })
	if err != nil || got != int64(len(dst)) {
		t.Fatalf("ReadRange = %d, %v", got, err)
	}
	if retries != 1 || time.Since(began) < time.Second {
		t.Errorf("retries = %d in %v; want 1 after honouring Retry-After 1s", retries, time.Since(began))
	}
	checkBytes(t, "ReadRange", dst, f.data[1000:1000+len(dst)])
	if req, inj := f.proxy.Stats(); inj != 2 {
		t.Errorf("proxy: %d requests, %d faults; want 2 faults", req, inj)
	}
}

func TestFaultsOpenRetries(t *testing.T) {
	f := newFaultEnv(t, 1000)
	f.proxy.Set(faultproxy.Fault{Status: http.StatusServiceUnavailable, StatusCount: 2, Match: isMetadata})
	obj := open(t, f.b, f.uri)
	if obj.Size() != 1000 {
		t.Fatalf("Size = %d", obj.Size())
	}
	req0, _ := f.proxy.Stats()

	f.proxy.Set(faultproxy.Fault{Status: http.StatusServiceUnavailable, RetryAfter: 2 * time.Second, Match: isMetadata})
	_, err := f.b.Open(ctxT(t), f.uri)
	var se *storage.Error
	if !errors.As(err, &se) || se.Code != storage.Unavailable || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("Open under persistent 503 = %v; want Unavailable with HTTP 503", err)
	}
	if se.RetryAfter != 2*time.Second {
		t.Errorf("RetryAfter = %v, want 2s", se.RetryAfter)
	}
	if req, _ := f.proxy.Stats(); req-req0 != MetadataAttempts {
		t.Errorf("Open made %d requests, want %d (MetadataAttempts)", req-req0, MetadataAttempts)
	}
	t.Logf("%v", err)
}

func TestFaultsPermanent(t *testing.T) {
	f := newFaultEnv(t, 2*mib)
	obj := open(t, f.b, f.uri)
	for _, c := range []struct {
		status int
		code   storage.Code
	}{
		{http.StatusNotFound, storage.NotFound},
		{http.StatusForbidden, storage.PermissionDenied},
		{http.StatusUnauthorized, storage.PermissionDenied},
		{http.StatusBadRequest, storage.InvalidArgument},
	} {
		t.Run(fmt.Sprint(c.status), func(t *testing.T) {
			f.proxy.Set(faultproxy.Fault{Status: c.status, Match: func(*http.Request) bool { return true }})
			defer f.proxy.Clear()
			req0, _ := f.proxy.Stats()
			began := time.Now()
			dst := make([]byte, mib)
			n, err := storage.ReadRange(ctxT(t), obj, dst, 0, mib, storage.DefaultRetryPolicy, nil)
			if n != 0 || storage.CodeOf(err) != c.code {
				t.Fatalf("ReadRange = %d, %v; want 0, %v", n, err, c.code)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", c.status)) || !strings.Contains(err.Error(), f.uri) {
				t.Errorf("error %q: want the status and the URI", err)
			}
			if req, _ := f.proxy.Stats(); req-req0 != 1 || time.Since(began) > time.Second {
				t.Errorf("%d requests in %v; want 1, fast", req-req0, time.Since(began))
			}
			t.Logf("read: %v", err)

			req0, _ = f.proxy.Stats()
			_, err = f.b.Open(ctxT(t), f.uri)
			if storage.CodeOf(err) != c.code || !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", c.status)) {
				t.Fatalf("Open = %v; want %v with HTTP %d", err, c.code, c.status)
			}
			if req, _ := f.proxy.Stats(); req-req0 != 1 {
				t.Errorf("Open made %d requests, want 1", req-req0)
			}
			t.Logf("open: %v", err)
		})
	}
}

func TestFaultsReset(t *testing.T) {
	f := newFaultEnv(t, 16*mib)
	obj := open(t, f.b, f.uri)
	const cut = 3 * mib
	f.proxy.Set(faultproxy.Fault{ResetAfterBytes: cut, ResetCount: 1})

	off := int64(mib + 5)
	dst := make([]byte, 8*mib)
	n, err := obj.ReadAt(ctxT(t), dst, off)
	if storage.CodeOf(err) != storage.Unavailable || n > cut {
		t.Fatalf("ReadAt with a reset after %d bytes = %d, %v; want <= %d, Unavailable", cut, n, err, cut)
	}
	checkBytes(t, "bytes before the reset", dst[:n], f.data[off:off+int64(n)])
	t.Logf("got %d bytes, then %v", n, err)
	if req, _ := f.proxy.Stats(); req != 2 {
		t.Errorf("proxy saw %d requests, want 2 (open, one read: the SDK must not reopen)", req)
	}

	// Resume from the last byte received.
	m, err := obj.ReadAt(ctxT(t), dst[n:], off+int64(n))
	if err != nil || n+m != len(dst) {
		t.Fatalf("resumed ReadAt = %d, %v; want %d, nil", m, err, len(dst)-n)
	}
	checkBytes(t, "resumed read", dst, f.data[off:off+int64(len(dst))])

	// Several resets in a row through the engine's retry loop.
	f.proxy.Set(faultproxy.Fault{ResetAfterBytes: mib, ResetCount: 3})
	clear(dst)
	var retries int
	got, err := storage.ReadRange(ctxT(t), obj, dst, off, int64(len(dst)),
		storage.RetryPolicy{MaxRetries: 5, BaseDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond}, func(error) { retries++ })
	if err != nil || got != int64(len(dst)) || retries != 3 {
		t.Fatalf("ReadRange = %d, %v after %d retries; want %d, nil, 3", got, err, retries, len(dst))
	}
	checkBytes(t, "ReadRange", dst, f.data[off:off+int64(len(dst))])
}

func TestFaultsStall(t *testing.T) {
	f := newFaultEnv(t, 8*mib, SettingStallTimeoutMS, "300")
	obj := open(t, f.b, f.uri)
	f.proxy.Set(faultproxy.Fault{StallAfterBytes: mib, StallFor: 20 * time.Second, StallCount: 1})

	dst := make([]byte, 4*mib)
	began := time.Now()
	n, err := obj.ReadAt(ctxT(t), dst, 100)
	el := time.Since(began)
	if storage.CodeOf(err) != storage.Unavailable || n > mib {
		t.Fatalf("ReadAt with a stall = %d, %v; want <= 1 MiB, Unavailable", n, err)
	}
	if el > 5*time.Second {
		t.Errorf("stall detected after %v; want about 300ms", el)
	}
	if !strings.Contains(err.Error(), "stalled") {
		t.Errorf("error %q does not say the transfer stalled", err)
	}
	checkBytes(t, "bytes before the stall", dst[:n], f.data[100:100+n])
	t.Logf("after %v: %d bytes, %v", el.Round(time.Millisecond), n, err)

	m, err := obj.ReadAt(ctxT(t), dst[n:], 100+int64(n))
	if err != nil || n+m != len(dst) {
		t.Fatalf("resumed ReadAt = %d, %v", m, err)
	}
	checkBytes(t, "resumed read", dst, f.data[100:100+len(dst)])

	// No response header within the stall timeout.
	f.proxy.Set(faultproxy.Fault{Latency: 3 * time.Second})
	began = time.Now()
	n, err = obj.ReadAt(ctxT(t), dst, 0)
	if storage.CodeOf(err) != storage.Unavailable || n != 0 || time.Since(began) > 2*time.Second {
		t.Fatalf("ReadAt with slow headers = %d, %v after %v; want 0, Unavailable, fast", n, err, time.Since(began))
	}
	t.Logf("slow headers: %v", err)
}

func TestCancelMidRead(t *testing.T) {
	f := newFaultEnv(t, 8*mib)
	obj := open(t, f.b, f.uri)
	f.proxy.Set(faultproxy.Fault{StallAfterBytes: mib, StallFor: 20 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	dst := make([]byte, 4*mib)
	began := time.Now()
	n, err := obj.ReadAt(ctx, dst, 0)
	if storage.CodeOf(err) != storage.Canceled || !errors.Is(err, context.Canceled) || time.Since(began) > 5*time.Second {
		t.Fatalf("canceled ReadAt = %d, %v after %v; want Canceled, fast", n, err, time.Since(began))
	}
	checkBytes(t, "bytes before the cancel", dst[:n], f.data[:n])
}

// BenchmarkReadAt reads an object in 8 MiB ranges against fake-gcs-server
// on loopback, at several concurrencies; each op is one range.
func BenchmarkReadAt(b *testing.B) {
	benchmarkRanges(b, []int64{8 * mib}, []int{1, 16, 32})
}

// BenchmarkRawHTTP is BenchmarkReadAt's baseline: the same ranged GETs with
// plain net/http and no SDK, to show what the backend itself costs.
func BenchmarkRawHTTP(b *testing.B) {
	e := newEnv(b)
	const size, chunk = 256 * mib, 8 * mib
	e.put(b, "bench/object.bin", storagetest.Bytes(size, 8))
	hc := &http.Client{Transport: newTransport(time.Minute)}
	u := "http://" + e.srv.Host + "/" + bucket + "/bench/object.bin"
	for _, conc := range []int{1, 16, 32} {
		b.Run(fmt.Sprintf("chunk=8MiB/conc=%d", conc), func(b *testing.B) {
			storagetest.ReadRanges(b, size, chunk, conc, func(dst []byte, off int64) error {
				return storagetest.GetRange(hc, u, dst, off)
			})
		})
	}
}

// BenchmarkTuning compares chunk sizes and concurrencies (the Tuned
// defaults); run with -bench Tuning -benchtime 64x.
func BenchmarkTuning(b *testing.B) {
	benchmarkRanges(b, []int64{4 * mib, 8 * mib, 16 * mib, 32 * mib}, []int{1, 16, 32, 64})
}

func benchmarkRanges(b *testing.B, chunks []int64, concs []int) {
	e := newEnv(b)
	const size = 256 * mib
	data := storagetest.Bytes(size, 8)
	uri := e.put(b, "bench/object.bin", data)
	be := e.backend(b, "")
	obj := open(b, be, uri)
	for _, chunk := range chunks {
		for _, conc := range concs {
			b.Run(fmt.Sprintf("chunk=%dMiB/conc=%d", chunk/mib, conc), func(b *testing.B) {
				storagetest.ReadRanges(b, size, chunk, conc, func(dst []byte, off int64) error {
					if n, err := obj.ReadAt(context.Background(), dst, off); err != nil || n != len(dst) {
						return fmt.Errorf("ReadAt = %d, %v", n, err)
					}
					return nil
				})
			})
		}
	}
}

// TestConnectionReuse checks that reads that complete return their
// connection to the pool: sequential reads use one connection.
func TestConnectionReuse(t *testing.T) {
	e := newEnv(t)
	data := storagetest.Bytes(4*mib, 9)
	uri := e.put(t, "reuse.bin", data)
	target, _ := url.Parse("http://" + e.srv.Host)
	var conns atomic.Int32
	front := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	front.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	front.Start()
	t.Cleanup(front.Close)
	obj := open(t, e.backend(t, front.URL+"/storage/v1/"), uri)
	dst := make([]byte, 256<<10)
	for i := range 20 {
		off := int64(i) * 200_000
		if n, err := obj.ReadAt(ctxT(t), dst, off); n != len(dst) || err != nil {
			t.Fatalf("ReadAt(off %d) = %d, %v", off, n, err)
		}
		checkBytes(t, "ReadAt", dst, data[off:off+int64(len(dst))])
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("21 sequential requests used %d connections, want 1", n)
	}
}
