package azure

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/sttest"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/storagetest"
	"github.com/model-streamer/model-streamer/go/stream"
)

// Tests run against a real Azurite on 127.0.0.1 (internal/testserver) and
// authenticate with the emulator's shared key or connection string only, so
// no request ever leaves the loopback interface and azidentity is never
// asked for a token.

func TestMain(m *testing.M) { testserver.Main(m) }

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
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

var containers atomic.Int64

// azurite returns the test binary's emulator and a container of t's own.
func azurite(t testing.TB) (*testserver.AzuriteServer, string) {
	t.Helper()
	srv := testserver.SharedAzurite(t)
	c := fmt.Sprintf("test-%d", containers.Add(1)) // 3 to 63 characters
	srv.CreateContainer(t, c)
	return srv, c
}

func connSettings(srv *testserver.AzuriteServer) storage.Settings {
	return storage.Settings{SettingConnectionString: srv.ConnectionString}
}

// uriIn returns a function that rewrites az://models to container c.
func uriIn(c string) func(string) string {
	return func(s string) string { return strings.ReplaceAll(s, "az://models", "az://"+c) }
}

// keySettings reaches the account at endpoint (Azurite or a proxy in front
// of it) with the shared key, the account name taken from the endpoint.
func keySettings(srv *testserver.AzuriteServer, endpoint string) storage.Settings {
	return storage.Settings{
		SettingEndpoint:   endpoint + "/" + srv.AccountName,
		SettingAccountKey: srv.AccountKey,
	}
}

func newTestBackend(t testing.TB, s storage.Settings) *Backend {
	t.Helper()
	b, err := newBackend(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func open(t testing.TB, b storage.Backend, uri string) storage.Object {
	t.Helper()
	obj, err := b.Open(context.Background(), uri)
	if err != nil {
		t.Fatalf("open %s: %v", uri, err)
	}
	t.Cleanup(func() { obj.Close() })
	return obj
}

// wantErr checks err's code and that its message holds every part.
func wantErr(t testing.TB, err error, code storage.Code, parts ...string) *storage.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	var se *storage.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %T %q is not a *storage.Error", err, err)
	}
	if se.Code != code {
		t.Fatalf("code %v, want %v: %v", se.Code, code, err)
	}
	t.Logf("%v error: %v", code, err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
	return se
}

func checkBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %d bytes differ from the %d expected, first at %d", what, len(got), len(want), i)
	}
}

// TestConformance runs the storage conformance suite, once with a
// connection string and once with shared key through a custom endpoint.
func TestConformance(t *testing.T) {
	srv, c := azurite(t)
	for name, s := range map[string]storage.Settings{
		"connection-string": connSettings(srv),
		"endpoint+key":      keySettings(srv, strings.TrimSuffix(srv.BlobEndpoint, "/"+srv.AccountName)),
	} {
		t.Run(name, func(t *testing.T) {
			storagetest.Run(t, storagetest.Fixture{
				Backend: newTestBackend(t, s),
				Put: func(t testing.TB, name string, data []byte) string {
					srv.PutBlob(t, c, "conformance/"+name, data)
					return "az://" + c + "/conformance/" + name
				},
				Missing: func(t testing.TB) string { return "az://" + c + "/conformance/no-such-blob" },
			})
		})
	}
}

func TestReadAt(t *testing.T) {
	srv, c := azurite(t)
	az := uriIn(c)
	data := randBytes(3<<20+123, 1)
	srv.PutBlob(t, c, "dir/sub/model.safetensors", data)
	srv.PutBlob(t, c, "empty", nil)
	srv.PutBlob(t, c, "odd name+%20 ü.bin", data[:1000])

	for name, s := range map[string]storage.Settings{
		"connection-string": connSettings(srv),
		"shared-key":        keySettings(srv, strings.TrimSuffix(srv.BlobEndpoint, "/"+srv.AccountName)),
	} {
		t.Run(name, func(t *testing.T) {
			b := newTestBackend(t, s)
			ctx := context.Background()
			obj := open(t, b, az("az://models/dir/sub/model.safetensors"))
			if obj.Size() != int64(len(data)) {
				t.Fatalf("size %d, want %d", obj.Size(), len(data))
			}
			// Whole, ranges, concurrently.
			var wg sync.WaitGroup
			for i, r := range [][2]int{{0, len(data)}, {1, 4096}, {1 << 20, 1<<20 + 1}, {len(data) - 1, len(data)}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, r[1]-r[0])
					n, err := obj.ReadAt(ctx, buf, int64(r[0]))
					if err != nil || n != len(buf) {
						t.Errorf("range %d %v: n=%d err=%v", i, r, n, err)
						return
					}
					checkBytes(t, fmt.Sprint("range ", r), buf, data[r[0]:r[1]])
				}()
			}
			wg.Wait()

			// Past the end: the bytes up to the end and io.EOF.
			buf := make([]byte, 1000)
			n, err := obj.ReadAt(ctx, buf, int64(len(data)-10))
			if n != 10 || err != io.EOF {
				t.Fatalf("read across the end: n=%d err=%v, want 10, EOF", n, err)
			}
			checkBytes(t, "tail", buf[:10], data[len(data)-10:])
			for _, off := range []int64{int64(len(data)), int64(len(data)) + 5} {
				if n, err := obj.ReadAt(ctx, buf, off); n != 0 || err != io.EOF {
					t.Fatalf("read at %d: n=%d err=%v, want 0, EOF", off, n, err)
				}
			}
			if n, err := obj.ReadAt(ctx, nil, 5); n != 0 || err != nil {
				t.Fatalf("empty read: n=%d err=%v", n, err)
			}
			_, err = obj.ReadAt(ctx, buf, -1)
			wantErr(t, err, storage.InvalidArgument, "negative offset")

			// Names with characters that need escaping.
			odd := open(t, b, az("az://models/odd name+%20 ü.bin"))
			buf = make([]byte, 1000)
			if n, err := odd.ReadAt(ctx, buf, 0); n != 1000 || err != nil {
				t.Fatalf("odd name: n=%d err=%v", n, err)
			}
			checkBytes(t, "odd name", buf, data[:1000])

			// An empty blob.
			empty := open(t, b, az("az://models/empty"))
			if empty.Size() != 0 {
				t.Fatalf("empty blob size %d", empty.Size())
			}
			if n, err := empty.ReadAt(ctx, buf, 0); n != 0 || err != io.EOF {
				t.Fatalf("empty blob: n=%d err=%v", n, err)
			}

			// Closed.
			obj.Close()
			_, err = obj.ReadAt(ctx, buf, 0)
			wantErr(t, err, storage.InvalidArgument, "closed")
		})
	}
}

func TestOpenErrors(t *testing.T) {
	srv, c := azurite(t)
	az := uriIn(c)
	srv.PutBlob(t, c, "blob", []byte("hello"))
	b := newTestBackend(t, connSettings(srv))
	ctx := context.Background()

	_, err := b.Open(ctx, az("az://models/missing.safetensors"))
	se := wantErr(t, err, storage.NotFound, az("az://models/missing.safetensors: open: not found: HTTP 404 BlobNotFound"))
	if !errors.Is(err, storage.ErrNotFound) {
		t.Error("errors.Is(err, storage.ErrNotFound) is false")
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 404 {
		t.Errorf("error does not unwrap to the SDK's ResponseError: %#v", se.Err)
	}
	_, err = b.Open(ctx, "az://nocontainer/blob")
	wantErr(t, err, storage.NotFound, "az://nocontainer/blob", "HTTP 404 ContainerNotFound")

	for _, uri := range []string{"az://", "az:///blob", az("az://models"), az("az://models/"), "s3://models/blob"} {
		_, err := b.Open(ctx, uri)
		wantErr(t, err, storage.InvalidArgument, uri)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = b.Open(cctx, az("az://models/blob"))
	wantErr(t, err, storage.Canceled)

	// A wrong key: the service refuses the signature.
	bad := keySettings(srv, strings.TrimSuffix(srv.BlobEndpoint, "/"+srv.AccountName))
	bad[SettingAccountKey] = "AAAA" + srv.AccountKey[4:]
	start := time.Now()
	_, err = newTestBackend(t, bad).Open(ctx, az("az://models/blob"))
	wantErr(t, err, storage.PermissionDenied, az("az://models/blob"), "HTTP 403")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("permission denied took %v: it must not be retried", d)
	}
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    storage.Settings
		want string // in the description, or the error when prefixed "error: "
	}{
		{"nothing", storage.Settings{}, "error: no storage account"},
		{"account", storage.Settings{SettingAccountName: "acct", SettingAccountKey: "a2V5"},
			"https://acct.blob.core.windows.net/ (shared key of account acct)"},
		{"account alias and key alias", storage.Settings{settingAccountAlias: "acct", settingKeyAlias: "a2V5"},
			"https://acct.blob.core.windows.net/ (shared key of account acct)"},
		{"private endpoint, account from host", storage.Settings{
			SettingEndpoint: "https://myacct.privatelink.blob.core.windows.net", SettingAccountKey: "a2V5"},
			"https://myacct.privatelink.blob.core.windows.net/ (shared key of account myacct)"},
		{"endpoint without scheme", storage.Settings{SettingEndpoint: "myacct.blob.core.windows.net", SettingAccountKey: "a2V5"},
			"https://myacct.blob.core.windows.net/ (shared key"},
		{"emulator endpoint, account from path", storage.Settings{
			SettingEndpoint: "http://127.0.0.1:1/devstoreaccount1", SettingAccountKey: "a2V5"},
			"http://127.0.0.1:1/devstoreaccount1/ (shared key of account devstoreaccount1)"},
		{"sas", storage.Settings{SettingAccountName: "acct", SettingSASToken: "?sv=2022-11-02&sig=s3cr3t"},
			"https://acct.blob.core.windows.net/ (SAS token)"},
		{"client secret", storage.Settings{SettingAccountName: "acct", SettingTenantID: "00000000-0000-0000-0000-000000000001",
			SettingClientID: "00000000-0000-0000-0000-000000000002", SettingClientSecret: "s3cr3t"}, "(client secret)"},
		{"workload identity", storage.Settings{SettingAccountName: "acct", SettingTenantID: "00000000-0000-0000-0000-000000000001",
			SettingClientID: "00000000-0000-0000-0000-000000000002", SettingFederatedTokenFile: "/nonexistent/token"}, "(workload identity)"},
		{"token over http", storage.Settings{SettingEndpoint: "http://127.0.0.1:1/acct"}, "error: only sent over https"},
		{"bad endpoint", storage.Settings{SettingEndpoint: "ftp://x/y", SettingAccountKey: "a2V5"}, "error: scheme must be https or http"},
		{"bad stall", storage.Settings{SettingAccountName: "acct", SettingAccountKey: "a2V5", SettingStallTimeoutMS: "soon"},
			"error: " + SettingStallTimeoutMS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := newBackend(tc.s)
			if want, ok := strings.CutPrefix(tc.want, "error: "); ok {
				wantErr(t, err, storage.InvalidArgument, want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(b.String(), tc.want) {
				t.Errorf("backend %q, want %q", b.String(), tc.want)
			}
			if strings.Contains(b.String(), "s3cr3t") || strings.Contains(b.String(), "a2V5") {
				t.Errorf("description %q shows a secret", b.String())
			}
		})
	}

	// The credential types chosen (constructed only: no token is asked for).
	tenant, client := "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
	cred, _, err := tokenCredential(storage.Settings{SettingTenantID: tenant, SettingClientID: client, SettingClientSecret: "s"}, policy.ClientOptions{})
	if _, ok := cred.(*azidentity.ClientSecretCredential); !ok || err != nil {
		t.Errorf("client secret settings gave %T, %v", cred, err)
	}
	cred, _, err = tokenCredential(storage.Settings{SettingTenantID: tenant, SettingClientID: client, SettingFederatedTokenFile: "/x"}, policy.ClientOptions{})
	if _, ok := cred.(*azidentity.WorkloadIdentityCredential); !ok || err != nil {
		t.Errorf("federated token settings gave %T, %v", cred, err)
	}

	// Stall timeout.
	b := newTestBackend(t, storage.Settings{SettingAccountName: "a", SettingAccountKey: "a2V5"})
	if b.stall != DefaultStallTimeout {
		t.Errorf("default stall timeout %v", b.stall)
	}
	b = newTestBackend(t, storage.Settings{SettingAccountName: "a", SettingAccountKey: "a2V5", SettingStallTimeoutMS: "250"})
	if b.stall != 250*time.Millisecond {
		t.Errorf("stall timeout %v, want 250ms", b.stall)
	}
	b = newTestBackend(t, storage.Settings{SettingAccountName: "a", SettingAccountKey: "a2V5", SettingStallTimeoutMS: "0"})
	if b.stall != 0 {
		t.Errorf("stall timeout %v, want 0 (off)", b.stall)
	}
	if b.DefaultChunkBytes() != defaultChunkBytes || b.DefaultConcurrency() != defaultConcurrency {
		t.Error("Tuned defaults")
	}
}

// TestSAS reads with a container SAS signed by the emulator's key.
func TestSAS(t *testing.T) {
	srv, c := azurite(t)
	az := uriIn(c)
	data := randBytes(100_000, 2)
	srv.PutBlob(t, c, "m/a.bin", data)
	cred, err := azblob.NewSharedKeyCredential(srv.AccountName, srv.AccountKey)
	if err != nil {
		t.Fatal(err)
	}
	q, err := sas.BlobSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		ExpiryTime:    time.Now().Add(time.Hour),
		ContainerName: c,
		Permissions:   (&sas.ContainerPermissions{Read: true, List: true}).String(),
	}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBackend(t, storage.Settings{SettingEndpoint: srv.BlobEndpoint, SettingSASToken: "?" + q.Encode()})
	obj := open(t, b, az("az://models/m/a.bin"))
	buf := make([]byte, len(data))
	if n, err := obj.ReadAt(context.Background(), buf, 0); n != len(data) || err != nil {
		t.Fatalf("n=%d err=%v", n, err)
	}
	checkBytes(t, "sas read", buf, data)
	list, err := b.List(context.Background(), az("az://models/m"), false)
	if err != nil || len(list) != 1 || list[0].URI != az("az://models/m/a.bin") {
		t.Fatalf("list: %v %v", list, err)
	}
	// Without the SAS: no access.
	_, err = newTestBackend(t, storage.Settings{SettingEndpoint: srv.BlobEndpoint, SettingSASToken: "sv=2020-02-10&sig=bad"}).
		Open(context.Background(), az("az://models/m/a.bin"))
	wantErr(t, err, storage.PermissionDenied, "HTTP 403")
}

func TestList(t *testing.T) {
	srv, c := azurite(t)
	az := uriIn(c)
	names := map[string]int{"a/x": 1, "a/y": 2, "a/b/z": 3, "ab": 4, "root": 5, "a/b/c/d": 6}
	for n, size := range names {
		srv.PutBlob(t, c, n, make([]byte, size))
	}
	srv.PutBlob(t, c, "a/", nil) // a directory marker: never listed
	b := newTestBackend(t, connSettings(srv))
	ctx := context.Background()
	list := func(uri string, rec bool) string {
		t.Helper()
		infos, err := b.List(ctx, uri, rec)
		if err != nil {
			t.Fatalf("list %s: %v", uri, err)
		}
		var parts []string
		for _, in := range infos {
			if in.Size != int64(names[strings.TrimPrefix(in.URI, az("az://models/"))]) {
				t.Errorf("%s: size %d", in.URI, in.Size)
			}
			parts = append(parts, in.URI)
		}
		return strings.Join(parts, " ")
	}
	for _, tc := range []struct {
		uri  string
		rec  bool
		want string
	}{
		{az("az://models/a"), false, az("az://models/a/x az://models/a/y")},
		{az("az://models/a/"), false, az("az://models/a/x az://models/a/y")},
		{az("az://models/a"), true, az("az://models/a/b/c/d az://models/a/b/z az://models/a/x az://models/a/y")},
		{az("az://models"), false, az("az://models/ab az://models/root")},
		{az("az://models/"), true, az("az://models/a/b/c/d az://models/a/b/z az://models/a/x az://models/a/y az://models/ab az://models/root")},
		{az("az://models/nothing"), true, ""},
		{az("az://models/root"), false, ""}, // a blob is not a directory
	} {
		if got := list(tc.uri, tc.rec); got != tc.want {
			t.Errorf("list %s recursive=%v:\n got %s\nwant %s", tc.uri, tc.rec, got, tc.want)
		}
	}
	_, err := b.List(ctx, "az://nocontainer/a", true)
	wantErr(t, err, storage.NotFound, "az://nocontainer/a: list: not found: HTTP 404 ContainerNotFound")
	_, err = b.List(ctx, "gs://x", true)
	wantErr(t, err, storage.InvalidArgument)
}

// TestConnectionReuse checks that a completed read leaves its connection
// reusable: the body is read to its end.
func TestConnectionReuse(t *testing.T) {
	srv, c := azurite(t)
	az := uriIn(c)
	data := randBytes(1<<20, 3)
	srv.PutBlob(t, c, "blob", data)
	obj := open(t, newTestBackend(t, connSettings(srv)), az("az://models/blob"))
	var mu sync.Mutex
	var reused []bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { mu.Lock(); reused = append(reused, i.Reused); mu.Unlock() },
	})
	buf := make([]byte, 256<<10)
	for i := 0; i < 4; i++ {
		if _, err := obj.ReadAt(ctx, buf, int64(i)*int64(len(buf))); err != nil {
			t.Fatal(err)
		}
		checkBytes(t, "read", buf, data[i*len(buf):(i+1)*len(buf)])
	}
	if len(reused) != 4 || !reused[1] || !reused[2] || !reused[3] {
		t.Errorf("connection reuse per request: %v, want [_ true true true]", reused)
	}
}

// faultEnv is an Azurite behind a fault proxy, with one blob opened
// through the proxy.
type faultEnv struct {
	srv   *testserver.AzuriteServer
	c     string
	proxy *faultproxy.Proxy
	b     *Backend
	obj   storage.Object
	data  []byte
}

func newFaultEnv(t *testing.T, size int, extra storage.Settings) *faultEnv {
	t.Helper()
	srv, c := azurite(t)
	az := uriIn(c)
	data := randBytes(size, uint64(size))
	srv.PutBlob(t, c, "model.safetensors", data)
	proxy := faultproxy.Start(t, strings.TrimSuffix(srv.BlobEndpoint, "/"+srv.AccountName))
	s := keySettings(srv, proxy.URL())
	for k, v := range extra {
		s[k] = v
	}
	b := newTestBackend(t, s)
	return &faultEnv{srv: srv, c: c, proxy: proxy, b: b, obj: open(t, b, az("az://models/model.safetensors")), data: data}
}

func isHead(r *http.Request) bool { return r.Method == http.MethodHead }

func TestFaults(t *testing.T) {
	const size = 4 << 20
	fe := newFaultEnv(t, size, storage.Settings{SettingStallTimeoutMS: "1500"})
	az := uriIn(fe.c)
	ctx := context.Background()
	policy := storage.RetryPolicy{MaxRetries: 5, BaseDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}

	t.Run("503 with Retry-After", func(t *testing.T) {
		fe.proxy.Set(faultproxy.Fault{Status: http.StatusServiceUnavailable, StatusCount: 2, RetryAfter: time.Second})
		buf := make([]byte, 1<<20)
		n, err := fe.obj.ReadAt(ctx, buf, 12345)
		se := wantErr(t, err, storage.Unavailable, az("az://models/model.safetensors: read bytes [12345, 1060921): unavailable: HTTP 503 ServerBusy"))
		if n != 0 || se.RetryAfter != time.Second {
			t.Errorf("n=%d RetryAfter=%v, want 0, 1s", n, se.RetryAfter)
		}
		reqs0, _ := fe.proxy.Stats()
		start := time.Now()
		var retries int
		got, err := storage.ReadRange(ctx, fe.obj, buf, 12345, int64(len(buf)), policy, func(error) { retries++ })
		if err != nil || got != int64(len(buf)) {
			t.Fatalf("read with retries: %d, %v", got, err)
		}
		checkBytes(t, "after 503s", buf, fe.data[12345:12345+len(buf)])
		reqs, _ := fe.proxy.Stats()
		if retries != 1 || reqs-reqs0 != 2 || time.Since(start) < 900*time.Millisecond {
			t.Errorf("retries %d, requests %d in %v: want 1 retry after Retry-After, 2 requests (no SDK retries)",
				retries, reqs-reqs0, time.Since(start))
		}
	})

	t.Run("open retries 503", func(t *testing.T) {
		fe.proxy.Set(faultproxy.Fault{Status: http.StatusServiceUnavailable, StatusCount: 2, Match: isHead})
		obj, err := fe.b.Open(ctx, az("az://models/model.safetensors"))
		if err != nil {
			t.Fatalf("open did not retry: %v", err)
		}
		obj.Close()
	})

	t.Run("reset mid-body", func(t *testing.T) {
		const after = 300_000
		fe.proxy.Set(faultproxy.Fault{ResetAfterBytes: after, ResetCount: 1})
		buf := make([]byte, 2<<20)
		n, err := fe.obj.ReadAt(ctx, buf, 1000)
		wantErr(t, err, storage.Unavailable, "read bytes [1000, 2098152)", "broke off after")
		if n != after {
			t.Errorf("n=%d, want the %d bytes sent before the reset", n, after)
		}
		checkBytes(t, "bytes before the reset", buf[:n], fe.data[1000:1000+n])
		// The resume reads the rest.
		m, err := fe.obj.ReadAt(ctx, buf[n:], 1000+int64(n))
		if err != nil || m != len(buf)-n {
			t.Fatalf("resume: %d, %v", m, err)
		}
		checkBytes(t, "after resume", buf, fe.data[1000:1000+len(buf)])

		// Through the engine's retry loop, reset on every try's first
		// bytes a few times.
		fe.proxy.Set(faultproxy.Fault{ResetAfterBytes: 100_000, ResetCount: 3})
		clear(buf)
		got, err := storage.ReadRange(ctx, fe.obj, buf, 7, int64(len(buf)), policy, nil)
		if err != nil || got != int64(len(buf)) {
			t.Fatalf("ReadRange: %d, %v", got, err)
		}
		checkBytes(t, "ReadRange after resets", buf, fe.data[7:7+len(buf)])
	})

	t.Run("stall", func(t *testing.T) {
		const after = 200_000
		fe.proxy.Set(faultproxy.Fault{StallAfterBytes: after, StallFor: 10 * time.Second, StallCount: 1})
		buf := make([]byte, 1<<20)
		start := time.Now()
		n, err := fe.obj.ReadAt(ctx, buf, 0)
		d := time.Since(start)
		wantErr(t, err, storage.Unavailable, "no data received for 1.5s", SettingStallTimeoutMS)
		if !errors.As(err, new(*storage.StallError)) {
			t.Errorf("%v: want a *storage.StallError in the chain, as the other backends give", err)
		}
		if d > 6*time.Second {
			t.Errorf("stall detected after %v, want about 1.5s", d)
		}
		if n != after {
			t.Errorf("n=%d, want %d", n, after)
		}
		checkBytes(t, "bytes before the stall", buf[:n], fe.data[:n])
		m, err := fe.obj.ReadAt(ctx, buf[n:], int64(n))
		if err != nil || m != len(buf)-n {
			t.Fatalf("resume: %d, %v", m, err)
		}
		checkBytes(t, "after resume", buf, fe.data[:len(buf)])

		// A stall before the headers (latency) is caught too.
		fe.proxy.Set(faultproxy.Fault{Latency: 5 * time.Second})
		start = time.Now()
		_, err = fe.obj.ReadAt(ctx, buf, 0)
		wantErr(t, err, storage.Unavailable, "no data received for 1.5s", "; 0 of")
		if d := time.Since(start); d > 6*time.Second {
			t.Errorf("stall before headers detected after %v", d)
		}
	})

	t.Run("cancel during stall", func(t *testing.T) {
		fe.proxy.Set(faultproxy.Fault{StallAfterBytes: 1000, StallFor: 10 * time.Second, StallCount: 1})
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		buf := make([]byte, 1<<20)
		n, err := fe.obj.ReadAt(cctx, buf, 0)
		wantErr(t, err, storage.Canceled)
		checkBytes(t, "bytes before cancel", buf[:n], fe.data[:n])
	})

	t.Run("permanent 404 on read", func(t *testing.T) {
		fe.proxy.Set(faultproxy.Fault{Status: http.StatusNotFound})
		reqs0, _ := fe.proxy.Stats()
		start := time.Now()
		got, err := storage.ReadRange(ctx, fe.obj, make([]byte, 4096), 0, 4096, policy, nil)
		wantErr(t, err, storage.NotFound, az("az://models/model.safetensors: read bytes [0, 4096): not found: HTTP 404 BlobNotFound"))
		reqs, _ := fe.proxy.Stats()
		if got != 0 || reqs-reqs0 != 1 || time.Since(start) > time.Second {
			t.Errorf("got %d with %d requests in %v: want one request, failing fast", got, reqs-reqs0, time.Since(start))
		}
	})

	t.Run("permanent 403 on open", func(t *testing.T) {
		fe.proxy.Set(faultproxy.Fault{Status: http.StatusForbidden, Match: isHead})
		reqs0, _ := fe.proxy.Stats()
		start := time.Now()
		_, err := fe.b.Open(ctx, az("az://models/model.safetensors"))
		wantErr(t, err, storage.PermissionDenied, az("az://models/model.safetensors: open: permission denied: HTTP 403 AuthorizationFailure"))
		reqs, _ := fe.proxy.Stats()
		if reqs-reqs0 != 1 || time.Since(start) > time.Second {
			t.Errorf("%d requests in %v: want one, failing fast", reqs-reqs0, time.Since(start))
		}
	})

	t.Run("blob replaced after open", func(t *testing.T) {
		fe.proxy.Clear()
		obj := open(t, fe.b, az("az://models/model.safetensors"))
		fe.srv.PutBlob(t, fe.c, "model.safetensors", fe.data[:size/2])
		_, err := obj.ReadAt(ctx, make([]byte, 100), 0)
		wantErr(t, err, storage.NotFound, "changed since it was opened", "HTTP 412")
	})
}

// TestSlowButSteadyIsNotAStall: a response that takes longer than the stall
// timeout in all, but never goes that long without a byte, succeeds.
func TestSlowButSteadyIsNotAStall(t *testing.T) {
	fe := newFaultEnv(t, 1<<20, storage.Settings{SettingStallTimeoutMS: "1000"})
	// 600 ms to the headers, then 64 KiB, then 600 ms of silence.
	fe.proxy.Set(faultproxy.Fault{Latency: 600 * time.Millisecond,
		StallAfterBytes: 64 << 10, StallFor: 600 * time.Millisecond, StallCount: 1})
	buf := make([]byte, 512<<10)
	start := time.Now()
	n, err := fe.obj.ReadAt(context.Background(), buf, 0)
	if err != nil || n != len(buf) {
		t.Fatalf("n=%d err=%v", n, err)
	}
	if d := time.Since(start); d < 1200*time.Millisecond {
		t.Errorf("read took %v: the faults were not applied", d)
	}
	checkBytes(t, "slow read", buf, fe.data[:len(buf)])
}

func TestCanceled(t *testing.T) {
	srv, c := azurite(t)
	az := uriIn(c)
	srv.PutBlob(t, c, "blob", randBytes(1000, 4))
	b := newTestBackend(t, connSettings(srv))
	obj := open(t, b, az("az://models/blob"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := obj.ReadAt(ctx, make([]byte, 10), 0)
	wantErr(t, err, storage.Canceled)
	if !errors.Is(err, storage.ErrCanceled) {
		t.Error("not ErrCanceled")
	}
	_, err = b.List(ctx, az("az://models"), true)
	wantErr(t, err, storage.Canceled)
}

// benchBlob puts a size-byte blob into the shared emulator and opens it.
func benchBlob(b *testing.B, size int) (storage.Object, []byte) {
	b.Helper()
	srv, c := azurite(b)
	data := randBytes(size, 7)
	srv.PutBlob(b, c, "bench.bin", data)
	return open(b, newTestBackend(b, connSettings(srv)), "az://"+c+"/bench.bin"), data
}

// readAll reads obj in chunk-byte ReadAt calls from conc goroutines.
func readAll(b *testing.B, obj storage.Object, dst []byte, chunk, conc int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				off := next.Add(int64(chunk)) - int64(chunk)
				if off >= int64(len(dst)) {
					return
				}
				end := min(off+int64(chunk), int64(len(dst)))
				if _, err := obj.ReadAt(context.Background(), dst[off:end], off); err != nil && err != io.EOF {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkReadAt reads 8 MiB ranges of a 256 MiB blob from Azurite on
// loopback, with 1 to 32 reads in flight. Throughput here is bounded by
// Azurite (one Node.js process), not by this backend.
func BenchmarkReadAt(b *testing.B) {
	const size, chunk = 256 << 20, 8 << 20
	obj, data := benchBlob(b, size)
	buf := make([]byte, chunk)
	if n, err := obj.ReadAt(context.Background(), buf, size-chunk); err != nil || n != chunk {
		b.Fatal(n, err)
	}
	checkBytes(b, "last chunk", buf, data[size-chunk:])
	for _, conc := range []int{1, 4, 16, 32} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			storagetest.ReadRanges(b, size, chunk, conc, func(dst []byte, off int64) error {
				if n, err := obj.ReadAt(context.Background(), dst, off); err != nil || n != len(dst) {
					return fmt.Errorf("ReadAt = %d, %v", n, err)
				}
				return nil
			})
		})
	}
}

// BenchmarkRawHTTP is BenchmarkReadAt's baseline against the same Azurite:
// 8 MiB ranged GETs with plain net/http (a container SAS in the query, so
// nothing is signed per request) and no SDK, at the same concurrencies.
// cpu-ns/B is this process's CPU per byte; Azurite's is not counted.
func BenchmarkRawHTTP(b *testing.B) {
	const size, chunk = 256 << 20, 8 << 20
	srv, c := azurite(b)
	srv.PutBlob(b, c, "raw.bin", randBytes(size, 7))
	cred, err := azblob.NewSharedKeyCredential(srv.AccountName, srv.AccountKey)
	if err != nil {
		b.Fatal(err)
	}
	q, err := sas.BlobSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		ExpiryTime:    time.Now().Add(time.Hour),
		ContainerName: c,
		Permissions:   (&sas.ContainerPermissions{Read: true}).String(),
	}.SignWithSharedKey(cred)
	if err != nil {
		b.Fatal(err)
	}
	u := srv.BlobEndpoint + "/" + c + "/raw.bin?" + q.Encode()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
	for _, conc := range []int{1, 4, 16, 32} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			storagetest.ReadRanges(b, size, chunk, conc, func(dst []byte, off int64) error {
				return storagetest.GetRange(hc, u, dst, off)
			})
		})
	}
}

// BenchmarkTuning reads a whole 256 MiB blob per iteration with each
// combination of read size and reads in flight: the evidence for
// DefaultChunkBytes and DefaultConcurrency.
func BenchmarkTuning(b *testing.B) {
	const size = 256 << 20
	obj, data := benchBlob(b, size)
	dst := make([]byte, size)
	for _, chunk := range []int{4 << 20, 8 << 20, 16 << 20, 32 << 20} {
		for _, conc := range []int{4, 8, 16, 32, 64} {
			b.Run(fmt.Sprintf("chunk=%dMiB/conc=%d", chunk>>20, conc), func(b *testing.B) {
				b.SetBytes(size)
				for b.Loop() {
					readAll(b, obj, dst, chunk, conc)
				}
			})
		}
	}
	checkBytes(b, "tuning read", dst, data)
}

// BenchmarkReadAtCeiling is BenchmarkReadAt against a minimal in-process
// blob server (net/http serving ranges of a byte slice, no authentication
// check) instead of Azurite: what the backend itself can move on this
// machine's loopback, SDK pipeline included.
func BenchmarkReadAtCeiling(b *testing.B) {
	const size, chunk = 256 << 20, 8 << 20
	data := randBytes(size, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"0x8D0000000000001"`)
		w.Header().Set("x-ms-blob-type", "BlockBlob")
		if r.Header.Get("x-ms-range") != "" && r.Header.Get("Range") == "" {
			r.Header.Set("Range", r.Header.Get("x-ms-range"))
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	b.Cleanup(srv.Close)
	be := newTestBackend(b, storage.Settings{SettingEndpoint: srv.URL + "/acct", SettingAccountKey: testserver.AzuriteAccountKey})
	obj := open(b, be, "az://c/blob")
	buf := make([]byte, chunk)
	if n, err := obj.ReadAt(context.Background(), buf, 12345); err != nil || n != chunk {
		b.Fatal(n, err)
	}
	checkBytes(b, "ceiling read", buf, data[12345:12345+chunk])
	for _, conc := range []int{1, 4, 16, 32} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			storagetest.ReadRanges(b, size, chunk, conc, func(dst []byte, off int64) error {
				if n, err := obj.ReadAt(context.Background(), dst, off); err != nil || n != len(dst) {
					return fmt.Errorf("ReadAt = %d, %v", n, err)
				}
				return nil
			})
		})
	}
}

// TestStream streams a SafeTensors checkpoint from Azurite through the
// engine, with the backend's tuned defaults, while the fault proxy breaks
// bodies and throttles: every tensor arrives byte-exact.
func TestStream(t *testing.T) {
	srv, c := azurite(t)
	path := filepath.Join(t.TempDir(), "model.safetensors")
	want, err := sttest.Write(path, []sttest.Tensor{
		{Name: "embed", DType: "BF16", Shape: []int64{4096, 2048}}, // 16 MiB
		{Name: "layer.0", DType: "F32", Shape: []int64{1024, 3000}},
		{Name: "norm", DType: "F32", Shape: []int64{4096}},
		{Name: "head", DType: "F16", Shape: []int64{8192, 1031}},
	}, 5)
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	srv.PutBlob(t, c, "llm/model.safetensors", file)
	proxy := faultproxy.Start(t, strings.TrimSuffix(srv.BlobEndpoint, "/"+srv.AccountName))
	be := newTestBackend(t, keySettings(srv, proxy.URL()))

	reg := storage.NewRegistry()
	reg.Register("az", be)
	cfg := stream.DefaultConfig(reg)
	cfg.Concurrency, cfg.ChunkBytes = 0, 0 // the backend's Tuned defaults
	cfg.Retry = storage.RetryPolicy{MaxRetries: 8, Timeout: time.Minute, BaseDelay: 10 * time.Millisecond, MaxDelay: 200 * time.Millisecond}

	proxy.Set(faultproxy.Fault{ResetAfterBytes: 1 << 20, ResetCount: 4, Status: http.StatusServiceUnavailable, StatusCount: 2})
	ctx := context.Background()
	s, err := stream.Open(ctx, cfg, []string{"az://" + c + "/llm/model.safetensors"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	files := s.Files()
	got := 0
	for {
		batch, err := s.Next(ctx, 0, -1)
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		for _, r := range batch {
			name := files[r.File].Tensors[r.Tensor].Name
			checkBytes(t, name, r.Data, want[name])
			got++
			r.Release()
		}
	}
	if got != len(want) {
		t.Errorf("%d tensors, want %d", got, len(want))
	}
	st := s.Stats()
	_, injected := proxy.Stats()
	t.Logf("stats: %+v; faults injected %d", st, injected)
	if st.Retries < 6 || injected != 6 {
		t.Errorf("retries %d, faults injected %d: want 6 of each", st.Retries, injected)
	}
}

func TestHelpers(t *testing.T) {
	for status, want := range map[int]storage.Code{
		400: storage.InvalidArgument, 401: storage.PermissionDenied, 403: storage.PermissionDenied,
		404: storage.NotFound, 408: storage.Unavailable, 409: storage.InvalidArgument, 416: storage.InvalidArgument,
		429: storage.Unavailable, 500: storage.Unavailable, 503: storage.Unavailable, 504: storage.Unavailable,
		304: storage.Internal,
	} {
		if got := codeForStatus(status, "open"); got != want {
			t.Errorf("codeForStatus(%d) = %v, want %v", status, got, want)
		}
	}
	if codeForStatus(412, "read") != storage.NotFound {
		t.Error("412 on a read")
	}

	str := func(s string) *string { return &s }
	i64 := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		cr   *string
		cl   *int64
		off  int64
		want int64
		ok   bool
	}{
		{str("bytes 100-199/1000"), i64(100), 100, 100, true},
		{str("bytes 0-199/1000"), i64(200), 100, 100, false}, // whole object
		{str("bytes 100-199/1000"), i64(100), 100, 50, false},
		{nil, i64(1000), 0, 1000, true},
		{nil, i64(1000), 5, 995, false},
		{str("garbage"), nil, 0, 10, false},
	} {
		err := checkRange(tc.cr, tc.cl, tc.off, tc.want)
		if (err == nil) != tc.ok {
			t.Errorf("checkRange(%v, off %d, n %d) = %v", tc.cr, tc.off, tc.want, err)
		}
	}

	for ep, want := range map[string]string{
		"https://acct.blob.core.windows.net/":             "acct",
		"https://acct.privatelink.blob.core.windows.net/": "acct",
		"http://127.0.0.1:10000/devstoreaccount1/":        "devstoreaccount1",
		"http://localhost:10000/devstoreaccount1":         "devstoreaccount1",
		"http://[::1]:10000/dev":                          "dev",
	} {
		if got := accountFromEndpoint(ep); got != want {
			t.Errorf("accountFromEndpoint(%q) = %q, want %q", ep, got, want)
		}
	}

	e := redact(&url.Error{Op: "Get", URL: "https://a.blob.core.windows.net/c/b?sv=1&sig=SECRET", Err: io.ErrUnexpectedEOF})
	if strings.Contains(e.Error(), "SECRET") || !errors.Is(e, io.ErrUnexpectedEOF) {
		t.Errorf("redact: %v", e)
	}
}
