package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
)

// TestMain keeps the SDK away from anything but the loopback servers the
// tests start: no AWS_* variable of the caller's environment, no shared
// config files, no instance metadata service.
func TestMain(m *testing.M) {
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AWS_") {
			os.Unsetenv(k)
		}
	}
	dir, err := os.MkdirTemp("", "s3test")
	if err != nil {
		panic(err)
	}
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-config"))
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-credentials"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one MinIO server with a bucket.
type env struct {
	srv    *testserver.MinIOServer
	bucket string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := testserver.MinIO(t)
	e := &env{srv: srv, bucket: "models"}
	srv.CreateBucket(t, e.bucket)
	return e
}

// settings addresses endpoint (MinIO or a proxy in front of it) with the
// server's keys, path style, no instance metadata.
func (e *env) settings(endpoint string, extra ...string) storage.Settings {
	s := storage.Settings{
		SettingEndpoint:        endpoint,
		SettingAccessKeyID:     e.srv.AccessKey,
		SettingSecretAccessKey: e.srv.SecretKey,
		SettingRegion:          e.srv.Region,
		SettingIMDSDisabled:    "true",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		s[extra[i]] = extra[i+1]
	}
	return s
}

func (e *env) backend(t testing.TB, endpoint string, extra ...string) *backend {
	t.Helper()
	b, err := New(e.settings(endpoint, extra...))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b.(*backend)
}

// put stores random bytes as key and returns them.
func (e *env) put(t testing.TB, key string, n int) []byte {
	t.Helper()
	data := randomBytes(n, uint64(len(key))*7919+uint64(n))
	e.srv.PutObject(t, e.bucket, key, data)
	return data
}

func (e *env) uri(key string) string { return "s3://" + e.bucket + "/" + key }

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func open(t testing.TB, b storage.Backend, uri string) storage.Object {
	t.Helper()
	o, err := b.Open(context.Background(), uri)
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// wantErr checks err is a *storage.Error of code whose message holds every
// string in parts.
func wantErr(t testing.TB, err error, code storage.Code, parts ...string) *storage.Error {
	t.Helper()
	var se *storage.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T): want a *storage.Error", err, err)
	}
	if se.Code != code {
		t.Fatalf("error %q: code %v, want %v", err, se.Code, code)
	}
	t.Logf("error: %v", err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q: does not mention %q", err, p)
		}
	}
	return se
}

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		uri, scheme, bucket, key string
		ok                       bool
	}{
		{"s3://b/k", "s3", "b", "k", true},
		{"s3://b/dir/k.safetensors", "s3", "b", "dir/k.safetensors", true},
		{"gs://b/a b?c#d", "gs", "b", "a b?c#d", true},
		{"s3://b", "s3", "b", "", true},
		{"s3://b/", "s3", "b", "", true},
		{"s3:///k", "", "", "", false},
		{"az://b/k", "", "", "", false},
		{"/local/path", "", "", "", false},
	} {
		scheme, bucket, key, err := parseURI(c.uri)
		if (err == nil) != c.ok || scheme != c.scheme || bucket != c.bucket || key != c.key {
			t.Errorf("parseURI(%q) = %q, %q, %q, %v", c.uri, scheme, bucket, key, err)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		status int
		code   string
		want   storage.Code
	}{
		{404, "NoSuchKey", storage.NotFound},
		{404, "NoSuchBucket", storage.NotFound},
		{404, "", storage.NotFound},
		{403, "AccessDenied", storage.PermissionDenied},
		{403, "InvalidAccessKeyId", storage.PermissionDenied},
		{403, "SignatureDoesNotMatch", storage.PermissionDenied},
		{400, "ExpiredToken", storage.PermissionDenied},
		{400, "RequestTimeout", storage.Unavailable},
		{400, "InvalidArgument", storage.InvalidArgument},
		{400, "", storage.InvalidArgument},
		{301, "PermanentRedirect", storage.InvalidArgument},
		{412, "PreconditionFailed", storage.InvalidArgument},
		{429, "", storage.Unavailable},
		{503, "SlowDown", storage.Unavailable},
		{500, "InternalError", storage.Unavailable},
		{502, "", storage.Unavailable},
	} {
		if got := classify(c.status, c.code); got != c.want {
			t.Errorf("classify(%d, %q) = %v, want %v", c.status, c.code, got, c.want)
		}
	}
}

func TestSettings(t *testing.T) {
	for _, c := range []struct {
		name string
		s    storage.Settings
		ok   bool
	}{
		{"empty", storage.Settings{SettingIMDSDisabled: "true"}, true},
		{"endpoint without scheme", storage.Settings{SettingEndpoint: "127.0.0.1:9000"}, true},
		{"bad endpoint scheme", storage.Settings{SettingEndpoint: "ftp://host"}, false},
		{"half keys", storage.Settings{SettingAccessKeyID: "a"}, false},
		{"bad stall", storage.Settings{SettingStallTimeoutMS: "soon"}, false},
		{"zero stall disables detection", storage.Settings{SettingStallTimeoutMS: "0"}, true},
		{"negative stall", storage.Settings{SettingStallTimeoutMS: "-1"}, false},
		{"bad attempts", storage.Settings{SettingMaxAttempts: "x"}, false},
		{"missing CA bundle", storage.Settings{SettingCABundle: "/nonexistent/ca.pem"}, false},
		{"container http remote", storage.Settings{SettingContainerFull: "http://example.com/creds"}, false},
		{"container loopback", storage.Settings{SettingContainerFull: "http://127.0.0.1:1/creds"}, true},
	} {
		_, err := New(c.s)
		if (err == nil) != c.ok {
			t.Errorf("%s: New(%v) error %v, want ok=%v", c.name, c.s, err, c.ok)
		}
		if err != nil {
			wantErr(t, err, storage.InvalidArgument)
		}
	}
}

func TestTuned(t *testing.T) {
	b, err := New(storage.Settings{SettingIMDSDisabled: "true"})
	if err != nil {
		t.Fatal(err)
	}
	tu, ok := b.(storage.Tuned)
	if !ok {
		t.Fatal("backend is not storage.Tuned")
	}
	if tu.DefaultChunkBytes() != ChunkBytes || tu.DefaultConcurrency() != Concurrency {
		t.Fatalf("Tuned = %d, %d", tu.DefaultChunkBytes(), tu.DefaultConcurrency())
	}
	if _, ok := b.(storage.Lister); !ok {
		t.Fatal("backend is not storage.Lister")
	}
}

// TestAddressing checks which URL the client builds for each setting of
// RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING, by presigning (no request is
// sent: virtual-hosted names under 127.0.0.1 need DNS a test cannot have).
func TestAddressing(t *testing.T) {
	for _, c := range []struct {
		endpoint, virtual  string
		wantHost, wantPath string
	}{
		{"http://127.0.0.1:9000", "", "127.0.0.1:9000", "/bkt/dir/key"},
		{"http://127.0.0.1:9000", "0", "127.0.0.1:9000", "/bkt/dir/key"},
		{"http://store.test:9000", "1", "bkt.store.test:9000", "/dir/key"},
		{"", "", "bkt.s3.us-east-1.amazonaws.com", "/dir/key"},
		{"", "0", "s3.us-east-1.amazonaws.com", "/bkt/dir/key"},
	} {
		s := storage.Settings{SettingIMDSDisabled: "true", SettingAccessKeyID: "k", SettingSecretAccessKey: "s",
			SettingEndpoint: c.endpoint, SettingVirtualAddressing: c.virtual}
		b, err := New(s)
		if err != nil {
			t.Fatal(err)
		}
		be := b.(*backend)
		req, err := s3.NewPresignClient(be.client).PresignGetObject(context.Background(),
			&s3.GetObjectInput{Bucket: aws.String("bkt"), Key: aws.String("dir/key")})
		if err != nil {
			t.Fatalf("%+v: presign: %v", c, err)
		}
		u := req.URL
		if i := strings.Index(u, "?"); i >= 0 {
			u = u[:i]
		}
		if !strings.HasSuffix(u, c.wantHost+c.wantPath) {
			t.Errorf("endpoint %q virtual %q: URL %s, want host %s path %s", c.endpoint, c.virtual, u, c.wantHost, c.wantPath)
		}
		if want := c.endpoint == "" && c.virtual != "0" || c.virtual == "1"; be.pathStyle == want {
			t.Errorf("endpoint %q virtual %q: pathStyle %v", c.endpoint, c.virtual, be.pathStyle)
		}
	}
}

func TestConformance(t *testing.T) {
	e := newEnv(t)
	storagetest.Run(t, storagetest.Fixture{
		Backend: e.backend(t, e.srv.Endpoint),
		Put: func(t testing.TB, name string, data []byte) string {
			e.srv.PutObject(t, e.bucket, "conformance/"+name, data)
			return e.uri("conformance/" + name)
		},
		Missing: func(testing.TB) string { return e.uri("conformance/no-such-object") },
	})
}

func TestMinIO(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, e.srv.Endpoint)

	t.Run("ReadAt", func(t *testing.T) {
		const size = 3<<20 + 12345
		data := e.put(t, "read/object.bin", size)
		o := open(t, b, e.uri("read/object.bin"))
		if o.Size() != size {
			t.Fatalf("Size = %d, want %d", o.Size(), size)
		}
		ctx := context.Background()
		for _, c := range []struct {
			off, n int64
			eof    bool
		}{
			{0, size, true},
			{0, 1, false},
			{1 << 20, 1 << 20, false},
			{size - 100, 100, true},
			{size - 100, 1000, true},
			{12345, 777, false},
		} {
			dst := make([]byte, c.n)
			n, err := o.ReadAt(ctx, dst, c.off)
			want := data[c.off:min(c.off+c.n, size)]
			if n != len(want) || !bytes.Equal(dst[:n], want) {
				t.Fatalf("ReadAt(%d, %d) = %d bytes (want %d), equal %v", c.off, c.n, n, len(want), bytes.Equal(dst[:n], want))
			}
			// The end is io.EOF only when the read was short.
			if c.eof && int64(len(want)) < c.n {
				if err != io.EOF {
					t.Fatalf("ReadAt(%d, %d): err %v, want io.EOF", c.off, c.n, err)
				}
			} else if err != nil && err != io.EOF {
				t.Fatalf("ReadAt(%d, %d): %v", c.off, c.n, err)
			}
		}
		// At and past the end: io.EOF without a request; empty reads: nothing.
		if n, err := o.ReadAt(ctx, make([]byte, 10), size); n != 0 || err != io.EOF {
			t.Fatalf("ReadAt(size) = %d, %v", n, err)
		}
		if n, err := o.ReadAt(ctx, make([]byte, 10), size+10); n != 0 || err != io.EOF {
			t.Fatalf("ReadAt(size+10) = %d, %v", n, err)
		}
		if n, err := o.ReadAt(ctx, nil, 5); n != 0 || err != nil {
			t.Fatalf("ReadAt(empty) = %d, %v", n, err)
		}
		if _, err := o.ReadAt(ctx, make([]byte, 1), -1); err == nil {
			t.Fatal("negative offset: no error")
		} else {
			wantErr(t, err, storage.InvalidArgument)
		}
		// Concurrent chunked reads reassemble the object.
		got := make([]byte, size)
		var wg sync.WaitGroup
		const chunk = 256 << 10
		errs := make(chan error, size/chunk+1)
		for off := int64(0); off < size; off += chunk {
			wg.Add(1)
			go func(off int64) {
				defer wg.Done()
				end := min(off+chunk, size)
				n, err := o.ReadAt(ctx, got[off:end], off)
				if err != nil && !(err == io.EOF && end == size) {
					errs <- err
				} else if n != int(end-off) {
					errs <- fmt.Errorf("short read at %d: %d", off, n)
				}
			}(off)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("concurrent reads: bytes differ")
		}
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_, err := o.ReadAt(canceled, make([]byte, 10), 0)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled ReadAt: %v", err)
		}
		wantErr(t, err, storage.Canceled)
		o.Close()
		_, err = o.ReadAt(ctx, make([]byte, 10), 0)
		wantErr(t, err, storage.InvalidArgument, "closed")
	})

	t.Run("ConnectionReuse", func(t *testing.T) {
		data := e.put(t, "reuse/object", 1<<20)
		o := open(t, b, e.uri("reuse/object"))
		var fresh, reused atomic.Int32
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) {
				if i.Reused {
					reused.Add(1)
				} else {
					fresh.Add(1)
				}
			},
		})
		dst := make([]byte, 256<<10)
		for i := range 10 {
			off := int64(i) * 50_000
			if n, err := o.ReadAt(ctx, dst, off); err != nil || !bytes.Equal(dst[:n], data[off:off+int64(n)]) {
				t.Fatalf("ReadAt: %d, %v", n, err)
			}
		}
		if fresh.Load() > 1 {
			t.Fatalf("%d new connections, %d reused for 10 sequential reads: connections are not going back to the pool", fresh.Load(), reused.Load())
		}
	})

	t.Run("EmptyObject", func(t *testing.T) {
		e.srv.PutObject(t, e.bucket, "read/empty", nil)
		o := open(t, b, e.uri("read/empty"))
		if o.Size() != 0 {
			t.Fatalf("Size = %d", o.Size())
		}
		if n, err := o.ReadAt(context.Background(), make([]byte, 8), 0); n != 0 || err != io.EOF {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
	})

	t.Run("GSScheme", func(t *testing.T) {
		data := e.put(t, "gs/object", 1000)
		o := open(t, b, "gs://"+e.bucket+"/gs/object")
		dst := make([]byte, 1000)
		if n, err := o.ReadAt(context.Background(), dst, 0); n != 1000 || (err != nil && err != io.EOF) || !bytes.Equal(dst, data) {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
		_, err := b.Open(context.Background(), "gs://"+e.bucket+"/gs/missing")
		if se := wantErr(t, err, storage.NotFound); se.URI != "gs://"+e.bucket+"/gs/missing" {
			t.Fatalf("URI %q", se.URI)
		}
	})

	t.Run("OpenErrors", func(t *testing.T) {
		ctx := context.Background()
		_, err := b.Open(ctx, e.uri("no/such/key"))
		wantErr(t, err, storage.NotFound, e.uri("no/such/key")+": open: not found: HTTP 404 NoSuchKey")
		if !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("errors.Is(ErrNotFound) false: %v", err)
		}
		_, err = b.Open(ctx, "s3://no-such-bucket/key")
		wantErr(t, err, storage.NotFound, "HTTP 404 NoSuchBucket")
		_, err = b.Open(ctx, "s3://"+e.bucket)
		wantErr(t, err, storage.InvalidArgument)
		_, err = b.Open(ctx, e.uri("dir/"))
		wantErr(t, err, storage.InvalidArgument)
		_, err = b.Open(ctx, "file:///tmp/x")
		wantErr(t, err, storage.InvalidArgument)
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_, err = b.Open(canceled, e.uri("read/object.bin"))
		wantErr(t, err, storage.Canceled)
	})

	t.Run("BadCredentials", func(t *testing.T) {
		e.put(t, "creds/object", 10)
		bad := e.backend(t, e.srv.Endpoint, SettingAccessKeyID, "nobody")
		_, err := bad.Open(context.Background(), e.uri("creds/object"))
		wantErr(t, err, storage.PermissionDenied, "HTTP 403 InvalidAccessKeyId")
		bad = e.backend(t, e.srv.Endpoint, SettingSecretAccessKey, "wrong-secret")
		_, err = bad.Open(context.Background(), e.uri("creds/object"))
		wantErr(t, err, storage.PermissionDenied, "HTTP 403 SignatureDoesNotMatch")
		_, err = bad.List(context.Background(), e.uri("creds"), true)
		wantErr(t, err, storage.PermissionDenied, "HTTP 403 SignatureDoesNotMatch")
	})

	t.Run("ObjectChanged", func(t *testing.T) {
		e.put(t, "changed/object", 4096)
		o := open(t, b, e.uri("changed/object"))
		e.srv.PutObject(t, e.bucket, "changed/object", randomBytes(4096, 99))
		_, err := o.ReadAt(context.Background(), make([]byte, 100), 0)
		wantErr(t, err, storage.InvalidArgument, "HTTP 412", "changed since it was opened")
	})

	t.Run("List", func(t *testing.T) {
		for _, k := range []string{"list/a", "list/b", "list/sub/c", "list/sub/deeper/d", "listx/e", "list-top"} {
			e.put(t, k, len(k))
		}
		e.srv.PutObject(t, e.bucket, "list/sub/", nil) // a directory marker
		l := storage.Lister(b)
		ctx := context.Background()
		check := func(uri string, recursive bool, want ...string) {
			t.Helper()
			got, err := l.List(ctx, uri, recursive)
			if err != nil {
				t.Fatalf("List(%s, %v): %v", uri, recursive, err)
			}
			var names []string
			for _, o := range got {
				names = append(names, o.URI)
				key := o.URI[strings.Index(o.URI, e.bucket+"/")+len(e.bucket)+1:]
				if want := int64(len(key)); o.Size != want {
					t.Errorf("%s: size %d, want %d", o.URI, o.Size, want)
				}
			}
			if strings.Join(names, " ") != strings.Join(want, " ") {
				t.Fatalf("List(%s, %v) = %v, want %v", uri, recursive, names, want)
			}
		}
		check(e.uri("list"), false, e.uri("list/a"), e.uri("list/b"))
		check(e.uri("list/"), false, e.uri("list/a"), e.uri("list/b"))
		check(e.uri("list"), true, e.uri("list/a"), e.uri("list/b"), e.uri("list/sub/c"), e.uri("list/sub/deeper/d"))
		check(e.uri("list/sub"), false, e.uri("list/sub/c"))
		check("gs://"+e.bucket+"/list", false, "gs://"+e.bucket+"/list/a", "gs://"+e.bucket+"/list/b")
		check(e.uri("nothing-here"), true)
		_, err := l.List(ctx, "s3://no-such-bucket/x", true)
		wantErr(t, err, storage.NotFound, "NoSuchBucket")
	})

	t.Run("ListPages", func(t *testing.T) {
		const n = 1010 // more than one page of 1000
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				e.srv.PutObject(t, e.bucket, fmt.Sprintf("many/%04d", i), []byte{byte(i)})
			}()
		}
		wg.Wait()
		got, err := storage.Lister(b).List(context.Background(), e.uri("many"), false)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Fatalf("listed %d objects, want %d", len(got), n)
		}
		for i, o := range got {
			if o.URI != e.uri(fmt.Sprintf("many/%04d", i)) || o.Size != 1 {
				t.Fatalf("entry %d: %+v", i, o)
			}
		}
	})

	t.Run("SharedCredentialsFile", func(t *testing.T) {
		data := e.put(t, "profile/object", 100)
		dir := t.TempDir()
		creds := filepath.Join(dir, "credentials")
		text := fmt.Sprintf("[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[minio]\naws_access_key_id = %s\naws_secret_access_key = %s\n",
			e.srv.AccessKey, e.srv.SecretKey)
		if err := os.WriteFile(creds, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		s := storage.Settings{SettingEndpoint: e.srv.Endpoint, SettingIMDSDisabled: "true",
			SettingCredentialsFile: creds, SettingConfigFile: filepath.Join(dir, "config"), SettingProfile: "minio"}
		pb, err := New(s)
		if err != nil {
			t.Fatal(err)
		}
		o := open(t, pb, e.uri("profile/object"))
		dst := make([]byte, 100)
		if n, err := o.ReadAt(context.Background(), dst, 0); n != 100 || (err != nil && err != io.EOF) || !bytes.Equal(dst, data) {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
		// AWS_DEFAULT_PROFILE, the older name, names it too.
		delete(s, SettingProfile)
		s[SettingDefaultProfile] = "minio"
		pb, err = New(s)
		if err != nil {
			t.Fatal(err)
		}
		open(t, pb, e.uri("profile/object"))
		delete(s, SettingDefaultProfile) // the default profile has wrong keys
		pb, err = New(s)
		if err != nil {
			t.Fatal(err)
		}
		_, err = pb.Open(context.Background(), e.uri("profile/object"))
		wantErr(t, err, storage.PermissionDenied, "InvalidAccessKeyId")
	})

	t.Run("ContainerCredentials", func(t *testing.T) {
		e.put(t, "container/object", 100)
		var calls atomic.Int32
		creds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if r.Header.Get("Authorization") != "token-123" {
				http.Error(w, "bad token", http.StatusUnauthorized)
				return
			}
			json.NewEncoder(w).Encode(map[string]string{
				"AccessKeyId":     e.srv.AccessKey,
				"SecretAccessKey": e.srv.SecretKey,
				"Token":           "",
				"Expiration":      time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			})
		}))
		defer creds.Close()
		s := storage.Settings{SettingEndpoint: e.srv.Endpoint, SettingIMDSDisabled: "true",
			SettingContainerFull: creds.URL + "/creds", SettingContainerToken: "token-123"}
		cb, err := New(s)
		if err != nil {
			t.Fatal(err)
		}
		open(t, cb, e.uri("container/object"))
		open(t, cb, e.uri("container/object"))
		if calls.Load() != 1 {
			t.Fatalf("credentials endpoint called %d times, want 1 (cached)", calls.Load())
		}
		// The token read from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE wins.
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte("token-123\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s[SettingContainerToken] = "wrong"
		s[SettingContainerTokenFile] = tokenFile
		cb, err = New(s)
		if err != nil {
			t.Fatal(err)
		}
		open(t, cb, e.uri("container/object"))
	})
}

// TestFaults injects faults with a proxy between the backend and MinIO.
func TestFaults(t *testing.T) {
	e := newEnv(t)
	proxy := faultproxy.Start(t, e.srv.Endpoint)
	const size = 4 << 20
	data := e.put(t, "faults/object", size)
	uri := e.uri("faults/object")
	stall := 400 * time.Millisecond
	b := e.backend(t, proxy.URL(), SettingStallTimeoutMS, strconv.Itoa(int(stall/time.Millisecond)),
		SettingMaxAttempts, "2")
	ctx := context.Background()
	o := open(t, b, uri)
	requests := func() int { n, _ := proxy.Stats(); return n }

	t.Run("RetryAfter", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{Status: 503, StatusCount: 2, RetryAfter: 2 * time.Second})
		defer proxy.Clear()
		dst := make([]byte, 1<<20)
		for i := 0; i < 2; i++ {
			before := requests()
			n, err := o.ReadAt(ctx, dst, 1000)
			se := wantErr(t, err, storage.Unavailable, "HTTP 503 SlowDown")
			if n != 0 || se.RetryAfter != 2*time.Second {
				t.Fatalf("attempt %d: n %d, RetryAfter %v", i, n, se.RetryAfter)
			}
			if got := requests() - before; got != 1 {
				t.Fatalf("attempt %d: %d requests, want 1 (the SDK must not retry a 503 read)", i, got)
			}
			if se.Off != 1000 || se.Len != 1<<20 {
				t.Fatalf("error range %d+%d", se.Off, se.Len)
			}
		}
		n, err := o.ReadAt(ctx, dst, 1000)
		if err != nil || n != len(dst) || !bytes.Equal(dst, data[1000:1000+len(dst)]) {
			t.Fatalf("third attempt: %d, %v", n, err)
		}
	})

	t.Run("ReadRangeHonoursRetryAfter", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{Status: 429, StatusCount: 1, RetryAfter: time.Second})
		defer proxy.Clear()
		dst := make([]byte, 3<<20)
		start := time.Now()
		n, err := storage.ReadRange(ctx, o, dst, 500, int64(len(dst)), storage.DefaultRetryPolicy, nil)
		if err != nil || n != int64(len(dst)) || !bytes.Equal(dst, data[500:500+len(dst)]) {
			t.Fatalf("ReadRange: %d, %v", n, err)
		}
		if d := time.Since(start); d < time.Second {
			t.Fatalf("ReadRange retried after %v, before the Retry-After of 1s", d)
		}
	})

	t.Run("ResetMidBody", func(t *testing.T) {
		const cut = 300_000
		proxy.Set(faultproxy.Fault{ResetAfterBytes: cut, ResetCount: 1})
		defer proxy.Clear()
		dst := make([]byte, 2<<20)
		const off = 4096
		n, err := o.ReadAt(ctx, dst, off)
		wantErr(t, err, storage.Unavailable, "broke off")
		if n <= 0 || n > cut {
			t.Fatalf("n = %d after a reset at %d", n, cut)
		}
		if !bytes.Equal(dst[:n], data[off:off+n]) {
			t.Fatal("bytes before the reset differ")
		}
		m, err := o.ReadAt(ctx, dst[n:], off+int64(n))
		if err != nil || n+m != len(dst) || !bytes.Equal(dst, data[off:off+len(dst)]) {
			t.Fatalf("resumed read: %d, %v", m, err)
		}
	})

	t.Run("StallMidBody", func(t *testing.T) {
		const at = 200_000
		proxy.Set(faultproxy.Fault{StallAfterBytes: at, StallFor: 10 * time.Second, StallCount: 1})
		defer proxy.Clear()
		dst := make([]byte, 1<<20)
		start := time.Now()
		n, err := o.ReadAt(ctx, dst, 0)
		took := time.Since(start)
		se := wantErr(t, err, storage.Unavailable, "stalled")
		var st *StallError
		if !errors.As(se, &st) {
			t.Fatalf("cause %T, want *StallError", se.Err)
		}
		if took < stall || took > stall+2*time.Second {
			t.Fatalf("stall reported after %v (timeout %v)", took, stall)
		}
		if n != at || !bytes.Equal(dst[:n], data[:n]) {
			t.Fatalf("n = %d, want %d correct bytes", n, at)
		}
		m, err := o.ReadAt(ctx, dst[n:], int64(n))
		if err != nil || n+m != len(dst) || !bytes.Equal(dst, data[:len(dst)]) {
			t.Fatalf("resumed read: %d, %v", m, err)
		}
	})

	t.Run("SlowButSteadyIsNoStall", func(t *testing.T) {
		// A pause shorter than the stall timeout is not a stall.
		proxy.Set(faultproxy.Fault{StallAfterBytes: 1000, StallFor: stall / 2, StallCount: 1})
		defer proxy.Clear()
		dst := make([]byte, 100_000)
		if n, err := o.ReadAt(ctx, dst, 0); err != nil || !bytes.Equal(dst[:n], data[:n]) || n != len(dst) {
			t.Fatalf("ReadAt: %d, %v", n, err)
		}
	})

	t.Run("StallBeforeHeaders", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{Latency: 10 * time.Second, Match: func(r *http.Request) bool { return r.Method == http.MethodHead }})
		defer proxy.Clear()
		start := time.Now()
		_, err := b.Open(ctx, uri)
		took := time.Since(start)
		wantErr(t, err, storage.Unavailable, "stalled")
		// Two attempts (AWS_MAX_ATTEMPTS=2), each cut at the stall timeout.
		if took > 2*stall+3*time.Second {
			t.Fatalf("Open took %v", took)
		}
	})

	t.Run("CancelDuringStall", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{StallAfterBytes: 1000, StallFor: 10 * time.Second, StallCount: 1})
		defer proxy.Clear()
		cctx, cancel := context.WithTimeout(ctx, stall/4)
		defer cancel()
		_, err := o.ReadAt(cctx, make([]byte, 100_000), 0)
		wantErr(t, err, storage.Canceled)
	})

	for _, c := range []struct {
		status int
		code   storage.Code
		text   string
	}{
		{403, storage.PermissionDenied, "HTTP 403 AccessDenied"},
		{404, storage.NotFound, "HTTP 404 NoSuchKey"},
		{400, storage.InvalidArgument, "HTTP 400"},
		{500, storage.Unavailable, "HTTP 500 InternalError"},
	} {
		t.Run(fmt.Sprintf("Read%d", c.status), func(t *testing.T) {
			proxy.Set(faultproxy.Fault{Status: c.status, StatusCount: faultproxy.Always})
			defer proxy.Clear()
			before := requests()
			start := time.Now()
			n, err := o.ReadAt(ctx, make([]byte, 1000), 0)
			wantErr(t, err, c.code, uri+": read bytes [0, 1000): ", c.text)
			if n != 0 || requests()-before != 1 || time.Since(start) > time.Second {
				t.Fatalf("n %d, %d requests, %v: want one fast failed request", n, requests()-before, time.Since(start))
			}
		})
	}

	t.Run("Open403", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{Status: 403, StatusCount: faultproxy.Always, Match: func(*http.Request) bool { return true }})
		defer proxy.Clear()
		start := time.Now()
		_, err := b.Open(ctx, uri)
		wantErr(t, err, storage.PermissionDenied, uri+": open: permission denied: HTTP 403")
		if time.Since(start) > time.Second {
			t.Fatalf("a 403 took %v: not retried", time.Since(start))
		}
	})

	t.Run("Open503ThenOK", func(t *testing.T) {
		proxy.Set(faultproxy.Fault{Status: 503, StatusCount: 1, Match: func(r *http.Request) bool { return r.Method == http.MethodHead }})
		defer proxy.Clear()
		o2, err := b.Open(ctx, uri)
		if err != nil {
			t.Fatalf("Open after one 503: %v (the SDK retries metadata requests)", err)
		}
		o2.Close()
	})

	t.Run("ConnectionRefused", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		addr := dead.URL
		dead.Close()
		db := e.backend(t, addr, SettingMaxAttempts, "1")
		_, err := db.Open(ctx, uri)
		wantErr(t, err, storage.Unavailable, "connection refused")
	})
}

// fakeS3 serves one object, with misbehaviours a real server would not
// show: ignoring Range, a wrong Content-Range, a short range.
type fakeS3 struct {
	data []byte
	mode atomic.Value // string
	gets atomic.Int32
}

func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sum := sha256.Sum256(f.data)
	w.Header().Set("ETag", `"`+hex.EncodeToString(sum[:16])+`"`)
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Length", strconv.Itoa(len(f.data)))
		return
	}
	f.gets.Add(1)
	var start, end int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &start, &end); err != nil {
		http.Error(w, "no range", 400)
		return
	}
	mode, _ := f.mode.Load().(string)
	switch mode {
	case "ignore":
		w.Header().Set("Content-Length", strconv.Itoa(len(f.data)))
		w.Write(f.data)
		return
	case "wrong":
		start++
	case "short":
		end = start + (end-start)/2
	}
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(f.data)))
	w.Header().Set("Content-Length", strconv.Itoa(end-start+1))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(f.data[start : end+1])
}

func TestMisbehavingServer(t *testing.T) {
	f := &fakeS3{data: randomBytes(100_000, 7)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	b, err := New(storage.Settings{SettingEndpoint: srv.URL, SettingAccessKeyID: "k",
		SettingSecretAccessKey: "s", SettingIMDSDisabled: "true"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	o := open(t, b, "s3://bkt/obj")
	dst := make([]byte, 1000)

	f.mode.Store("ignore")
	for _, off := range []int64{0, 5000} {
		n, err := o.ReadAt(ctx, dst, off)
		if err != nil || n != len(dst) || !bytes.Equal(dst, f.data[off:off+1000]) {
			t.Fatalf("ignored Range, off %d: %d, %v", off, n, err)
		}
	}
	saved := maxIgnoredRangeSkip
	maxIgnoredRangeSkip = 1000
	_, err = o.ReadAt(ctx, dst, 5000)
	maxIgnoredRangeSkip = saved
	wantErr(t, err, storage.Internal, "ignored the Range header")

	f.mode.Store("wrong")
	_, err = o.ReadAt(ctx, dst, 10)
	wantErr(t, err, storage.Internal, "Content-Range")

	f.mode.Store("short")
	n, err := o.ReadAt(ctx, dst, 10)
	wantErr(t, err, storage.Unavailable)
	if n != 500 || !bytes.Equal(dst[:n], f.data[10:10+n]) {
		t.Fatalf("short range: n %d", n)
	}
	f.mode.Store("")
	got, err := storage.ReadRange(ctx, o, dst, 10, int64(len(dst)), storage.DefaultRetryPolicy, nil)
	if err != nil || got != 1000 || !bytes.Equal(dst, f.data[10:1010]) {
		t.Fatalf("ReadRange: %d, %v", got, err)
	}
}

// TestCABundle serves the fake store over HTTPS with a certificate only
// AWS_CA_BUNDLE makes trusted.
func TestCABundle(t *testing.T) {
	f := &fakeS3{data: randomBytes(1000, 3)}
	srv := httptest.NewTLSServer(f)
	defer srv.Close()
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(bundle, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	s := storage.Settings{SettingEndpoint: srv.URL, SettingAccessKeyID: "k", SettingSecretAccessKey: "s",
		SettingIMDSDisabled: "true", SettingMaxAttempts: "1"}
	plain, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	_, err = plain.Open(context.Background(), "s3://bkt/obj")
	wantErr(t, err, storage.InvalidArgument, "certificate")

	s[SettingCABundle] = bundle
	trusted, err := New(s)
	if err != nil {
		t.Fatal(err)
	}
	o := open(t, trusted, "s3://bkt/obj")
	dst := make([]byte, 1000)
	if n, err := o.ReadAt(context.Background(), dst, 0); n != 1000 || (err != nil && err != io.EOF) || !bytes.Equal(dst, f.data) {
		t.Fatalf("ReadAt over TLS: %d, %v", n, err)
	}

	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s[SettingCABundle] = notPEM
	if _, err := New(s); err == nil || !strings.Contains(err.Error(), SettingCABundle+"="+notPEM) ||
		!strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("New with a bundle holding no certificate = %v; want an error naming %s and the file", err, SettingCABundle)
	}
}

// BenchmarkReadAt reads 8 MiB ranges of a 512 MiB object from MinIO on
// loopback with 1 to 64 readers in flight; MB/s is the aggregate
// throughput, cpu-ns/B this process's CPU time per byte read (MinIO's
// not counted), the figure that decides on a machine the client shares
// with the server, and server-cpu-ns/B MinIO's. Each case runs twice, interleaved: "backend" through
// ReadAt, "raw" as the same SigV4-signed ranged GETs with plain net/http
// and no SDK, the limit the backend is measured against.
// S3_BENCH_SWEEP=1 adds 4, 16 and 32 MiB ranges; S3_BENCH_LATENCY=20ms puts
// a fault proxy in front of MinIO that delays every ranged GET, as a remote
// store's time to first byte would.
func BenchmarkReadAt(b *testing.B) {
	e := newEnv(b)
	const size = 512 << 20
	e.put(b, "bench/object", size)
	endpoint := e.srv.Endpoint
	if v := os.Getenv("S3_BENCH_LATENCY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		p := faultproxy.Start(b, endpoint)
		p.Set(faultproxy.Fault{Latency: d})
		endpoint = p.URL()
	}
	be := e.backend(b, endpoint)
	o := open(b, be, e.uri("bench/object"))
	raw := &rawObject{hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}},
		url: endpoint + "/" + e.bucket + "/bench/object", srv: e.srv}
	chunks := []int{8 << 20}
	if os.Getenv("S3_BENCH_SWEEP") != "" {
		chunks = []int{4 << 20, 8 << 20, 16 << 20, 32 << 20}
	}
	for _, chunk := range chunks {
		for _, conc := range []int{1, 4, 8, 16, 32, 64} {
			for _, c := range []struct {
				name string
				o    storage.Object
			}{{"backend", o}, {"raw", raw}} {
				b.Run(fmt.Sprintf("chunk=%dMiB/conc=%d/%s", chunk>>20, conc, c.name), func(b *testing.B) {
					benchReads(b, c.o, size, chunk, conc)
				})
			}
		}
	}
}

// rawObject reads with one SigV4-signed ranged GET per ReadAt through plain
// net/http: BenchmarkReadAt's baseline.
type rawObject struct {
	hc  *http.Client
	url string
	srv *testserver.MinIOServer
}

func (r *rawObject) Size() int64  { return -1 }
func (r *rawObject) Close() error { return nil }

func (r *rawObject) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+int64(len(dst))-1, 10))
	r.srv.Sign(req, nil)
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	n, err := io.ReadFull(resp.Body, dst)
	var probe [1]byte
	resp.Body.Read(probe[:])
	return n, err
}

func benchReads(b *testing.B, o storage.Object, size, chunk, conc int) {
	nchunks := int64(size / chunk)
	b.SetBytes(int64(chunk))
	b.ResetTimer()
	cpu0, srv0 := storagetest.ProcessCPU(), storagetest.ChildCPU("minio")
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range conc {
		buf := make([]byte, chunk)
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				off := (i % nchunks) * int64(chunk)
				if n, err := o.ReadAt(context.Background(), buf, off); err != nil && err != io.EOF || n != chunk {
					failed.Store(fmt.Sprintf("ReadAt(%d): %d, %v", off, n, err))
					return
				}
			}
		})
	}
	wg.Wait()
	if msg := failed.Load(); msg != nil {
		b.Fatal(msg)
	}
	moved := float64(int64(b.N) * int64(chunk))
	b.ReportMetric(float64(storagetest.ProcessCPU()-cpu0)/moved, "cpu-ns/B")
	b.ReportMetric(float64(storagetest.ChildCPU("minio")-srv0)/moved, "server-cpu-ns/B")
}
