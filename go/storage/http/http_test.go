package http

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

func testBackend(t *testing.T, s storage.Settings) *Backend {
	t.Helper()
	b, err := newBackend(s)
	if err != nil {
		t.Fatalf("New(%v): %v", s, err)
	}
	t.Cleanup(b.client.CloseIdleConnections)
	return b
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func wantErr(t *testing.T, err error, code storage.Code, parts ...string) *storage.Error {
	t.Helper()
	var se *storage.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T): want a *storage.Error", err, err)
	}
	if se.Code != code {
		t.Fatalf("error %q: code %v, want %v", err, se.Code, code)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q: does not mention %q", err, p)
		}
	}
	return se
}

// readAll reads obj in parallel chunks through storage.ReadRange (the
// engine's retry loop) and compares every byte with want.
func readAll(t *testing.T, obj storage.Object, want []byte, chunk int, p storage.RetryPolicy) error {
	t.Helper()
	if obj.Size() != int64(len(want)) {
		t.Fatalf("Size() = %d, want %d", obj.Size(), len(want))
	}
	got := make([]byte, len(want))
	var wg sync.WaitGroup
	errs := make(chan error, len(want)/chunk+1)
	for off := 0; off < len(want); off += chunk {
		n := min(chunk, len(want)-off)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := storage.ReadRange(ctx(t), obj, got[off:off+n], int64(off), int64(n), p, nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("byte %d differs from the file: got %#x, want %#x", i, got[i], want[i])
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

var fastRetry = storage.RetryPolicy{MaxRetries: 8, Timeout: time.Minute, BaseDelay: 10 * time.Millisecond, MaxDelay: 200 * time.Millisecond}

func TestConformance(t *testing.T) {
	srv := testserver.Nginx(t)
	for _, c := range []struct {
		name     string
		base     string
		settings storage.Settings
	}{
		{"http", srv.URL, nil},
		{"https", srv.TLSURL, storage.Settings{SettingSSLCertFile: srv.CAFile}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := testBackend(t, c.settings)
			storagetest.Run(t, storagetest.Fixture{
				Backend: b,
				Put: func(t testing.TB, name string, data []byte) string {
					srv.Put(t, c.name+"/"+name, data)
					return c.base + "/files/" + c.name + "/" + name
				},
				Missing: func(t testing.TB) string { return c.base + "/files/" + c.name + "/no-such-file" },
			})
		})
	}
}

func TestRedirects(t *testing.T) {
	srv := testserver.Nginx(t)
	data := storagetest.Bytes(3<<20+12345, 1)
	srv.Put(t, "model.safetensors", data)
	b := testBackend(t, nil)

	obj, err := b.Open(ctx(t), srv.URL+"/redirect/model.safetensors")
	if err != nil {
		t.Fatalf("Open through a presigned-style redirect: %v", err)
	}
	o := obj.(*object)
	if !strings.Contains(o.final.RawQuery, "Signature=sig1") || !strings.HasPrefix(o.final.Path, "/signed/") {
		t.Fatalf("final URL %v: want the redirect target", o.final)
	}
	if err := readAll(t, obj, data, 1<<20, fastRetry); err != nil {
		t.Fatal(err)
	}

	// The link expires: the target answers 403 until the original URL is
	// resolved again.
	srv.SetSignature(t, "sig2")
	if err := readAll(t, obj, data, 700<<10, fastRetry); err != nil {
		t.Fatalf("read after the redirect target expired: %v", err)
	}
	if !strings.Contains(o.final.RawQuery, "Signature=sig2") {
		t.Errorf("final URL %v after expiry: want the new signature", o.final)
	}

	// Redirects the backend refuses: a loop, and https to plain http.
	_, err = b.Open(ctx(t), srv.URL+"/loop/x")
	wantErr(t, err, storage.InvalidArgument, srv.URL+"/loop/x: open: invalid argument: stopped after 10 redirects")
	tb := testBackend(t, storage.Settings{SettingSSLCertFile: srv.CAFile})
	_, err = tb.Open(ctx(t), srv.TLSURL+"/downgrade/model.safetensors")
	wantErr(t, err, storage.InvalidArgument, "refusing a redirect from https to http ("+srv.URL+"/files/model.safetensors)")

	// A missing file behind the redirect names the URL, not the query.
	_, err = b.Open(ctx(t), srv.URL+"/redirect/missing.safetensors")
	se := wantErr(t, err, storage.NotFound, srv.URL+"/redirect/missing.safetensors: open: not found: HTTP 404",
		srv.URL+"/signed/missing.safetensors")
	if strings.Contains(err.Error(), "Signature") || strings.Contains(err.Error(), "sig2") {
		t.Errorf("error %q quotes the query string", err)
	}
	var he *storage.HTTPError
	if !errors.As(se, &he) || he.Status != 404 {
		t.Errorf("error %v: no *storage.HTTPError with status 404", err)
	}
}

// A URL presigned for GET answers HEAD with 403: Open learns the size
// from a ranged GET of byte 0 instead, and ranges still work.
func TestHeadRefused(t *testing.T) {
	srv := testserver.Nginx(t)
	data := storagetest.Bytes(2<<20+3, 9)
	srv.Put(t, "m.bin", data)
	b := testBackend(t, nil)
	obj, err := b.Open(ctx(t), srv.URL+"/getonly/m.bin")
	if err != nil {
		t.Fatalf("Open with HEAD refused: %v", err)
	}
	if o := obj.(*object); !o.ranges || o.etag == "" {
		t.Fatalf("after the ranged GET: ranges %v, ETag %q; want ranges and an ETag", o.ranges, o.etag)
	}
	if err := readAll(t, obj, data, 300<<10, fastRetry); err != nil {
		t.Fatal(err)
	}
	// Missing behind a HEAD that is refused anyway: the GET's 404 is the error.
	_, err = b.Open(ctx(t), srv.URL+"/getonly/missing.bin")
	wantErr(t, err, storage.NotFound, srv.URL+"/getonly/missing.bin: open: not found: HTTP 404")
}

func TestStatusErrors(t *testing.T) {
	srv := testserver.Nginx(t)
	srv.Put(t, "a.bin", []byte("data"))
	b := testBackend(t, nil)
	for _, c := range []struct {
		path   string
		code   storage.Code
		status string
	}{
		{"/files/missing.bin?X-Amz-Signature=topsecret&X-Amz-Credential=AKID", storage.NotFound, "HTTP 404"},
		{"/private/a.bin?token=topsecret", storage.PermissionDenied, "HTTP 403"},
		{"/signed/a.bin?Signature=topsecret", storage.PermissionDenied, "HTTP 403"},
	} {
		t.Run(c.path, func(t *testing.T) {
			_, err := b.Open(ctx(t), srv.URL+c.path+"#frag")
			name, _, _ := strings.Cut(srv.URL+c.path, "?")
			wantErr(t, err, c.code, name+": open: ", c.status)
			if strings.Contains(err.Error(), "topsecret") || strings.Contains(err.Error(), "?") {
				t.Errorf("error %q quotes the query string", err)
			}
		})
	}
	for _, c := range []struct {
		uri  string
		want string
	}{
		{srv.URL + "/files/", "names a directory"},
		{"ftp://127.0.0.1/a", "want http or https"},
		{"http:///a.bin", "no host"},
		{"http://user:pw@127.0.0.1:1/", "names a directory"},
	} {
		_, err := b.Open(ctx(t), c.uri)
		wantErr(t, err, storage.InvalidArgument, c.want)
		if strings.Contains(err.Error(), "pw@") {
			t.Errorf("error %q quotes the user information", err)
		}
	}
}

func TestCredentials(t *testing.T) {
	srv := testserver.Nginx(t)
	data := storagetest.Bytes(1<<20, 2)
	srv.Put(t, "m.bin", data)
	local := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	headers := "Authorization: Bearer " + srv.Token + "\nX-Api-Key: k1"
	for _, c := range []struct {
		name     string
		settings storage.Settings
		uri      string
		code     storage.Code // Unknown: success
	}{
		{"no header", nil, srv.URL + "/private/m.bin", storage.PermissionDenied},
		{"header", storage.Settings{SettingHeaders: headers}, srv.URL + "/private/m.bin", 0},
		{"JSON header", storage.Settings{SettingHeaders: `{"Authorization": "Bearer ` + srv.Token + `"}`}, srv.URL + "/private/m.bin", 0},
		// The redirect target (localhost) answers 400 to any credential.
		{"not forwarded to another host", storage.Settings{SettingHeaders: headers}, srv.URL + "/private-cross/m.bin", 0},
		{"hub token", storage.Settings{SettingHFToken: srv.HubToken, SettingHFEndpoint: srv.URL}, srv.URL + "/hub/m.bin", 0},
		{"hub token needs a hub host", storage.Settings{SettingHFToken: srv.HubToken}, srv.URL + "/hub/m.bin", storage.PermissionDenied},
		{"hub token not sent elsewhere", storage.Settings{SettingHFToken: srv.HubToken, SettingHFEndpoint: srv.URL}, local + "/noauth/m.bin", 0},
		{"hub token not forwarded", storage.Settings{SettingHFToken: srv.HubToken, SettingHFEndpoint: srv.URL}, srv.URL + "/cross/m.bin", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := testBackend(t, c.settings)
			obj, err := b.Open(ctx(t), c.uri)
			if c.code != 0 {
				wantErr(t, err, c.code)
				if strings.Contains(err.Error(), srv.Token) || strings.Contains(err.Error(), srv.HubToken) {
					t.Errorf("error %q quotes a credential", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%s): %v", c.uri, err)
			}
			if err := readAll(t, obj, data, 256<<10, fastRetry); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseHeaders(t *testing.T) {
	for _, c := range []struct {
		in   string
		want http.Header
		err  string
	}{
		{"", http.Header{}, ""},
		{"Authorization: Bearer x\n\nX-Api-Key:  k ", http.Header{"Authorization": {"Bearer x"}, "X-Api-Key": {"k"}}, ""},
		{`{"x-api-key": "k", "Authorization": "Basic y"}`, http.Header{"Authorization": {"Basic y"}, "X-Api-Key": {"k"}}, ""},
		{"no colon", nil, "line 1"},
		{"Bad Name: v", nil, "not a header name"},
		{"Range: bytes=0-1", nil, "set by the streamer"},
		{`{"a": 1}`, nil, "JSON object"},
	} {
		got, err := parseHeaders(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("parseHeaders(%q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("parseHeaders(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	_, err := newBackend(storage.Settings{SettingHeaders: "Authorization: Bearer s3cr3t\nbad"})
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("bad header setting: %v; want an error that does not quote the value", err)
	}
}

func TestTLS(t *testing.T) {
	srv := testserver.Nginx(t)
	data := storagetest.Bytes(2<<20, 3)
	srv.Put(t, "m.bin", data)
	caDir := t.TempDir()
	pem, err := os.ReadFile(srv.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caDir, "test-ca.pem"), pem, 0o644); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.TLSURL, "https://")
	uri := srv.TLSURL + "/files/m.bin"
	for _, c := range []struct {
		name     string
		settings storage.Settings
		ok       bool
	}{
		{"system roots", nil, false},
		{"SSL_CERT_FILE", storage.Settings{SettingSSLCertFile: srv.CAFile}, true},
		{"SSL_CERT_DIR", storage.Settings{SettingSSLCertDir: "/nonexistent:" + caDir}, true},
		{"CA bundle", storage.Settings{SettingCABundle: srv.CAFile}, true},
		{"other bundle", storage.Settings{SettingCABundle: "/etc/ssl/certs/ca-certificates.crt"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "other bundle" {
				if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err != nil {
					t.Skip("no system bundle")
				}
			}
			b := testBackend(t, c.settings)
			obj, err := b.Open(ctx(t), uri)
			if !c.ok {
				wantErr(t, err, storage.InvalidArgument, uri+": open: invalid argument: TLS: the certificate of "+host+" is not trusted", "SSL_CERT_FILE")
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if err := readAll(t, obj, data, 512<<10, fastRetry); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, s := range []storage.Settings{
		{SettingCABundle: "/nonexistent.pem"},
		{SettingSSLCertFile: "/nonexistent.pem"},
		{SettingCABundle: "/etc/hostname"},
	} {
		_, err := New(s)
		wantErr(t, err, storage.InvalidArgument, "configure http")
	}
	// Plain http spoken to the https port.
	b := testBackend(t, nil)
	_, err = b.Open(ctx(t), strings.Replace(uri, "https://", "http://", 1))
	if err == nil {
		t.Fatal("plain http to the TLS port succeeded")
	}
}

func TestIgnoredRange(t *testing.T) {
	srv := testserver.Nginx(t)
	small := storagetest.Bytes(1<<20+7, 4)
	srv.Put(t, "small.bin", small)
	b := testBackend(t, nil)
	obj, err := b.Open(ctx(t), srv.URL+"/norange/small.bin")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if obj.(*object).ranges {
		t.Fatal("the server ignores Range, but the object says it honours it")
	}
	if err := readAll(t, obj, small, 100<<10, fastRetry); err != nil {
		t.Fatal(err)
	}

	old := MaxWholeObjectBytes
	MaxWholeObjectBytes = 1 << 20
	t.Cleanup(func() { MaxWholeObjectBytes = old })
	_, err = b.Open(ctx(t), srv.URL+"/norange/small.bin")
	wantErr(t, err, storage.InvalidArgument, srv.URL+"/norange/small.bin: open", "ignores Range")
}

func TestReplacedWhileRead(t *testing.T) {
	srv := testserver.Nginx(t)
	for _, c := range []struct {
		name string
		path string
		size int // of the new version
	}{
		{"same size", "/files/", 2 << 20},
		{"other size", "/files/", 3 << 20},
		{"through a redirect", "/redirect/", 2 << 20},
		{"ranges ignored", "/norange/", 2 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := strings.ReplaceAll(c.name, " ", "-") + ".bin"
			v1 := storagetest.Bytes(2<<20, 5)
			srv.Put(t, name, v1)
			b := testBackend(t, nil)
			obj, err := b.Open(ctx(t), srv.URL+c.path+name)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			if _, err := obj.ReadAt(ctx(t), buf, 0); err != nil || !bytes.Equal(buf, v1[:1<<20]) {
				t.Fatalf("first read: %v", err)
			}
			srv.Put(t, name, storagetest.Bytes(c.size, 6))
			_, err = storage.ReadRange(ctx(t), obj, buf, 1<<20, 1<<20, fastRetry, nil)
			wantErr(t, err, storage.NotFound, "changed since it was opened")
		})
	}
}

func TestFaults(t *testing.T) {
	srv := testserver.Nginx(t)
	data := storagetest.Bytes(4<<20, 7)
	srv.Put(t, "m.bin", data)
	proxy := faultproxy.Start(t, srv.URL)
	b := testBackend(t, storage.Settings{SettingStallTimeoutMS: "300"})
	uri := proxy.URL() + "/files/m.bin"
	for _, c := range []struct {
		name  string
		fault faultproxy.Fault
	}{
		{"503", faultproxy.Fault{Status: 503, StatusCount: 3, RetryAfter: 0}},
		{"429 Retry-After", faultproxy.Fault{Status: 429, StatusCount: 1, RetryAfter: time.Second}},
		{"reset", faultproxy.Fault{ResetAfterBytes: 100 << 10, ResetCount: 3}},
		{"stall", faultproxy.Fault{StallAfterBytes: 200 << 10, StallFor: 10 * time.Second, StallCount: 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			obj, err := b.Open(ctx(t), uri)
			if err != nil {
				t.Fatal(err)
			}
			proxy.Set(c.fault)
			t.Cleanup(proxy.Clear)
			if err := readAll(t, obj, data, 1<<20, fastRetry); err != nil {
				t.Fatalf("read under %s: %v", c.name, err)
			}
			if _, injected := proxy.Stats(); injected == 0 {
				t.Fatal("no fault was injected")
			}
		})
	}
	t.Run("open under 503", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{Status: 503, StatusCount: 2, Match: func(*http.Request) bool { return true }})
		t.Cleanup(proxy.Clear)
		if _, err := b.Open(ctx(t), uri); err != nil {
			t.Fatalf("Open after two 503s: %v", err)
		}
	})
	t.Run("persistent 503", func(t *testing.T) {
		obj, err := b.Open(ctx(t), uri)
		if err != nil {
			t.Fatal(err)
		}
		proxy.Set(faultproxy.Fault{Status: 503, StatusCount: faultproxy.Always})
		t.Cleanup(proxy.Clear)
		p := fastRetry
		p.MaxRetries = 2
		_, err = storage.ReadRange(ctx(t), obj, make([]byte, 1000), 5, 1000, p, nil)
		wantErr(t, err, storage.Unavailable, uri+": read bytes [5, 1005): unavailable: HTTP 503")
	})
}

func TestTrace(t *testing.T) {
	srv := testserver.Nginx(t)
	data := storagetest.Bytes(1<<20, 8)
	srv.Put(t, "m.bin", data)
	t.Chdir(t.TempDir())
	b := testBackend(t, storage.Settings{tracelog.Setting: "1",
		SettingHeaders: "Authorization: Bearer " + srv.Token})
	obj, err := b.Open(ctx(t), srv.URL+"/redirect/m.bin?sig=querysecret")
	if err != nil {
		t.Fatal(err)
	}
	if err := readAll(t, obj, data, 256<<10, fastRetry); err != nil {
		t.Fatal(err)
	}
	trace, err := os.ReadFile(tracelog.FileName())
	if err != nil {
		t.Fatal(err)
	}
	if !storagetest.TraceHas(trace, srv.URL+"/signed/m.bin", "http GET", `range="bytes=0-262143"`, "status=206") {
		t.Errorf("trace has no ranged GET of the redirect target:\n%s", trace)
	}
	for _, secret := range []string{"querysecret", "Signature", "sig1", srv.Token} {
		if bytes.Contains(trace, []byte(secret)) {
			t.Errorf("trace holds %q:\n%s", secret, trace)
		}
	}
	storagetest.CheckTraceSettingRejected(t, New, nil)
}

func TestRedactText(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"s3://b/a?b: not found", "s3://b/a?b: not found"},
		{"http://h:1/f?Signature=x&Expires=2: invalid safetensors file: short", "http://h:1/f: invalid safetensors file: short"},
		{"https://h/f#frag", "https://h/f"},
		{`"https://h/a?sig=1" and http://h/b?x=y:z: end`, `"https://h/a" and http://h/b: end`},
		{"https://user:pw@h/f?q=1: x", "https://h/f: x"},
		{"https://h/plain: x", "https://h/plain: x"},
	} {
		if got := RedactText(c.in); got != c.want {
			t.Errorf("RedactText(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestNoListing(t *testing.T) {
	var b storage.Backend = testBackend(t, nil)
	if _, ok := b.(storage.Lister); ok {
		t.Fatal("the http backend claims to list")
	}
}
