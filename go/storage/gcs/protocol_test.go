package gcs

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
)

// stub is a GCS endpoint answering Open's attribute request for one
// object and its reads with read, for answers fake-gcs-server never gives.
func stub(t *testing.T, data []byte, read http.HandlerFunc) (storage.Backend, string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/storage/v1/b/") {
			fmt.Fprintf(w, `{"name":"o.bin","size":"%d","generation":"7"}`, len(data))
			return
		}
		read(w, r)
	}))
	t.Cleanup(srv.Close)
	b, err := New(storage.Settings{SettingEndpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return b, "gs://bk/o.bin"
}

// TestRangeIgnored checks that an answer not starting at the requested
// offset fails the read instead of filling it with other bytes.
func TestRangeIgnored(t *testing.T) {
	data := storagetest.Bytes(10_000, 11)
	for _, c := range []struct {
		name string
		h    http.HandlerFunc
	}{
		{"200 whole object", func(w http.ResponseWriter, r *http.Request) { w.Write(data) }},
		{"206 elsewhere", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-99/%d", len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[:100])
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, uri := stub(t, data, c.h)
			obj := open(t, b, uri)
			n, err := obj.ReadAt(ctxT(t), make([]byte, 100), 500)
			if n != 0 || storage.CodeOf(err) != storage.Internal || !errors.Is(err, errRangeIgnored) {
				t.Fatalf("ReadAt = %d, %v; want 0, Internal: range ignored", n, err)
			}
		})
	}
	// From byte 0 the whole object is the right answer.
	b, uri := stub(t, data, func(w http.ResponseWriter, r *http.Request) { w.Write(data) })
	dst := make([]byte, 100)
	if n, err := open(t, b, uri).ReadAt(ctxT(t), dst, 0); n != 100 || err != nil {
		t.Fatalf("ReadAt(off 0) from a 200 = %d, %v", n, err)
	}
	checkBytes(t, "ReadAt", dst, data[:100])
}

// TestReadRequest checks what a read asks for: the generation Open saw,
// the range, and the stored bytes (Accept-Encoding: gzip); and that an
// answer decompressed anyway is refused.
func TestReadRequest(t *testing.T) {
	data := storagetest.Bytes(1000, 12)
	var seen atomic.Value
	b, uri := stub(t, data, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Method + " " + r.URL.RequestURI() + " range=" + r.Header.Get("Range") + " ae=" + r.Header.Get("Accept-Encoding"))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 10-19/%d", len(data)))
		w.Header().Set("X-Goog-Stored-Content-Encoding", "gzip")
		if r.URL.Query().Get("transcode") == "" {
			w.Header().Set("Content-Encoding", "gzip")
		}
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[10:20])
	})
	obj := open(t, b, uri)
	if n, err := obj.ReadAt(ctxT(t), make([]byte, 10), 10); n != 10 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if got, want := seen.Load(), "GET /bk/o.bin?generation=7 range=bytes=10-19 ae=gzip"; got != want {
		t.Errorf("request %q, want %q", got, want)
	}
	if v := obj.(storage.Versioned).Version(); v != "generation=7" {
		t.Errorf("Version = %q", v)
	}

	o := obj.(*object)
	o.media += "&transcode=1"
	if n, err := o.ReadAt(ctxT(t), make([]byte, 10), 10); n != 0 || storage.CodeOf(err) != storage.Internal ||
		!strings.Contains(err.Error(), "decompressed") {
		t.Fatalf("ReadAt of a transcoded answer = %d, %v; want 0, Internal", n, err)
	}
}

// TestListPages checks that List follows nextPageToken to the last page.
func TestListPages(t *testing.T) {
	var tokens []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		tokens = append(tokens, q.Get("pageToken"))
		if r.URL.Path != "/storage/v1/b/bk/o" || q.Get("prefix") != "m/" || q.Get("delimiter") != "/" {
			http.Error(w, "unexpected "+r.URL.String(), http.StatusBadRequest)
			return
		}
		page, _ := strconv.Atoi(q.Get("pageToken"))
		next := ""
		if page < 2 {
			next = strconv.Itoa(page + 1)
		}
		fmt.Fprintf(w, `{"items":[{"name":"m/%d.bin","size":"%d"},{"name":"m/dir/"}],"prefixes":["m/sub/"],"nextPageToken":%q}`, 2-page, page, next)
	}))
	t.Cleanup(srv.Close)
	b, err := New(storage.Settings{SettingEndpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.(storage.Lister).List(ctxT(t), "gs://bk/m", false)
	if err != nil {
		t.Fatal(err)
	}
	want := []storage.ObjectInfo{{URI: "gs://bk/m/0.bin", Size: 2}, {URI: "gs://bk/m/1.bin", Size: 1}, {URI: "gs://bk/m/2.bin", Size: 0}}
	if fmt.Sprint(got) != fmt.Sprint(want) || strings.Join(tokens, ",") != ",1,2" {
		t.Errorf("List = %v after page tokens %q; want %v after \",1,2\"", got, tokens, want)
	}
}

// TestTokenFailures checks how a token endpoint's failures surface: a
// refusal is PermissionDenied at once, a token endpoint that never answers
// is a stall (Unavailable) within the stall timeout.
func TestTokenFailures(t *testing.T) {
	data := storagetest.Bytes(100, 13)
	var storageRequests atomic.Int32
	gcsSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageRequests.Add(1)
		fmt.Fprintf(w, `{"name":"o.bin","size":"%d","generation":"7"}`, len(data))
	}))
	t.Cleanup(gcsSrv.Close)

	var refusals atomic.Int32
	release := make(chan struct{})
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			refusals.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`)
			return
		}
		select { // hang
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(tokenSrv.Close)
	t.Cleanup(func() { close(release) })

	b, err := New(storage.Settings{SettingEndpoint: gcsSrv.URL, SettingCredentialFile: serviceAccountFile(t, tokenSrv.URL+"/refuse")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Open(ctxT(t), "gs://bk/o.bin")
	if storage.CodeOf(err) != storage.PermissionDenied || !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("Open with a refused token = %v; want PermissionDenied naming the reason", err)
	}
	if refusals.Load() != 1 || storageRequests.Load() != 0 {
		t.Errorf("%d token requests, %d storage requests; want 1, 0", refusals.Load(), storageRequests.Load())
	}
	t.Logf("refused: %v", err)

	b, err = New(storage.Settings{SettingEndpoint: gcsSrv.URL, SettingStallTimeoutMS: "200",
		SettingCredentialFile: serviceAccountFile(t, tokenSrv.URL+"/hang")})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = b.Open(ctxT(t), "gs://bk/o.bin")
	if storage.CodeOf(err) != storage.Unavailable || !strings.Contains(err.Error(), "stalled") || time.Since(began) > 10*time.Second {
		t.Errorf("Open with a silent token endpoint = %v after %v; want Unavailable (stalled)", err, time.Since(began))
	}
	t.Logf("after %v: %v", time.Since(began).Round(time.Millisecond), err)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	b, _ = New(storage.Settings{SettingEndpoint: gcsSrv.URL, SettingCredentialFile: serviceAccountFile(t, tokenSrv.URL+"/hang")})
	if _, err = b.Open(ctx, "gs://bk/o.bin"); storage.CodeOf(err) != storage.Canceled {
		t.Errorf("Open canceled while waiting for a token = %v; want Canceled", err)
	}
}

// TestScopes checks that reads ask for read-only credentials and Put for
// read-write ones (a sidecar upload with a read-only token is refused by
// Cloud Storage).
func TestScopes(t *testing.T) {
	var scopes []string
	var mu sync.Mutex
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		// The JWT bearer grant: header.claims.signature, claims in base64url JSON.
		parts := strings.Split(r.PostForm.Get("assertion"), ".")
		var claims struct {
			Scope string `json:"scope"`
		}
		if len(parts) == 3 {
			if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
				_ = json.Unmarshal(b, &claims)
			}
		}
		mu.Lock()
		scopes = append(scopes, claims.Scope)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"Bearer","expires_in":3600}`, len(scopes))
	}))
	t.Cleanup(tokenSrv.Close)
	gcsSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, `{}`)
			return
		}
		fmt.Fprint(w, `{"name":"o.bin","size":"3","generation":"7"}`)
	}))
	t.Cleanup(gcsSrv.Close)

	b, err := New(storage.Settings{SettingEndpoint: gcsSrv.URL, SettingCredentialFile: serviceAccountFile(t, tokenSrv.URL)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(ctxT(t), "gs://bk/o.bin"); err != nil {
		t.Fatal(err)
	}
	if err := b.(storage.Putter).Put(ctxT(t), "gs://bk/o.bin.checksums.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(scopes) != 2 || scopes[0] != ReadOnlyScope || scopes[1] != ReadWriteScope {
		t.Errorf("token requests asked for scopes %q; want the read-only one for Open, read-write for Put", scopes)
	}
}
