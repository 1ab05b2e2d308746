package testserver

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

func TestToolsDir(t *testing.T) {
	t.Setenv(EnvTools, "")
	root := RepoRoot()
	if root == "" {
		t.Fatal("RepoRoot found no directory with go/ and Makefile above the package")
	}
	if _, err := os.Stat(filepath.Join(root, "go", "internal", "testserver")); err != nil {
		t.Fatalf("RepoRoot %s: %v", root, err)
	}
	if got, want := ToolsDir(), filepath.Join(root, ".tools"); got != want {
		t.Errorf("ToolsDir() = %q, want %q", got, want)
	}
	t.Setenv(EnvTools, "/somewhere/else")
	if got := ToolsDir(); got != "/somewhere/else" {
		t.Errorf("ToolsDir() with %s set = %q", EnvTools, got)
	}
}

func TestMissingBinarySkips(t *testing.T) {
	if requireServers() {
		t.Skip("MODEL_STREAMER_REQUIRE_SERVERS=1 turns the skip into a failure")
	}
	t.Setenv(EnvTools, t.TempDir())
	skipped := false
	t.Run("minio", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		MinIO(t)
		t.Error("MinIO started without a binary")
	})
	if !skipped {
		t.Error("MinIO with no binary did not skip")
	}
}

// get fetches u with optional headers and returns status and body.
func get(t *testing.T, u string, h http.Header) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	return send(t, req)
}

func send(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := loopbackClient(30 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// assertStopped checks that nothing listens on hostport any more.
func assertStopped(t *testing.T, hostport string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", hostport, time.Second)
	if err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the test ended", hostport)
	}
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func TestMinIO(t *testing.T) {
	var endpoint string
	t.Run("serve", func(t *testing.T) {
		began := time.Now()
		s := MinIO(t)
		t.Logf("MinIO startup: %v", time.Since(began))
		endpoint = s.Endpoint
		if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") || s.Region != "us-east-1" {
			t.Fatalf("server %+v", s)
		}
		data := payload(3 << 20)
		s.CreateBucket(t, "bucket")
		s.PutObject(t, "bucket", "dir/a b.bin", data)

		req, _ := http.NewRequest(http.MethodGet, s.Endpoint+"/bucket/dir/a%20b.bin", nil)
		req.Header.Set("Range", "bytes=1048570-1048585")
		s.Sign(req, nil)
		status, body := send(t, req)
		if status != http.StatusPartialContent || !bytes.Equal(body, data[1048570:1048586]) {
			t.Fatalf("ranged GET: %d %q", status, body)
		}
		// Unsigned requests are refused: credentials are in force.
		if status, _ := get(t, s.Endpoint+"/bucket/dir/a%20b.bin", nil); status != http.StatusForbidden {
			t.Errorf("anonymous GET: status %d, want 403", status)
		}
	})
	if endpoint != "" {
		assertStopped(t, strings.TrimPrefix(endpoint, "http://"))
	}
}

func TestFakeGCS(t *testing.T) {
	var host string
	t.Run("serve", func(t *testing.T) {
		began := time.Now()
		s := FakeGCS(t)
		t.Logf("fake-gcs-server startup: %v", time.Since(began))
		host = s.Host
		if s.Endpoint != "http://"+s.Host+"/storage/v1/" || !strings.HasPrefix(s.Host, "127.0.0.1:") {
			t.Fatalf("server %+v", s)
		}
		data := payload(2 << 20)
		s.CreateBucket(t, "bucket")
		s.PutObject(t, "bucket", "dir/a b.bin", data)

		u := s.Endpoint + "b/bucket/o/" + url.PathEscape("dir/a b.bin") + "?alt=media"
		status, body := get(t, u, http.Header{"Range": {"bytes=1048570-1048585"}})
		if status != http.StatusPartialContent || !bytes.Equal(body, data[1048570:1048586]) {
			t.Fatalf("ranged JSON-API GET: %d %q", status, body)
		}
		status, body = get(t, s.Endpoint+"b/bucket/o?prefix=dir/", nil)
		if status != http.StatusOK || !bytes.Contains(body, []byte(`"dir/a b.bin"`)) {
			t.Fatalf("list: %d %s", status, body)
		}
		status, _ = get(t, s.Endpoint+"b/bucket/o/missing?alt=media", nil)
		if status != http.StatusNotFound {
			t.Errorf("missing object: status %d, want 404", status)
		}
	})
	if host != "" {
		assertStopped(t, host)
	}
}

func TestAzurite(t *testing.T) {
	var endpoint string
	t.Run("serve", func(t *testing.T) {
		began := time.Now()
		s := Azurite(t)
		t.Logf("Azurite startup: %v", time.Since(began))
		endpoint = s.BlobEndpoint
		if !strings.HasPrefix(s.BlobEndpoint, "http://127.0.0.1:") || !strings.HasSuffix(s.BlobEndpoint, "/devstoreaccount1") {
			t.Fatalf("server %+v", s)
		}
		if !strings.Contains(s.ConnectionString, "BlobEndpoint="+s.BlobEndpoint+";") {
			t.Errorf("connection string %q", s.ConnectionString)
		}
		data := payload(2 << 20)
		s.CreateContainer(t, "container")
		s.PutBlob(t, "container", "dir/a b.bin", data)

		req, _ := http.NewRequest(http.MethodGet, s.BlobEndpoint+"/container/dir/a%20b.bin", nil)
		req.Header.Set("X-Ms-Range", "bytes=1048570-1048585")
		s.Sign(req)
		status, body := send(t, req)
		if status != http.StatusPartialContent || !bytes.Equal(body, data[1048570:1048586]) {
			t.Fatalf("ranged GET: %d %q", status, body)
		}
		// A wrong key is refused: Shared Key auth is in force.
		req, _ = http.NewRequest(http.MethodGet, s.BlobEndpoint+"/container/dir/a%20b.bin", nil)
		SignSharedKey(req, s.AccountName, "d3Jvbmc=", time.Now())
		if status, _ := send(t, req); status != http.StatusForbidden {
			t.Errorf("GET with a wrong key: status %d, want 403", status)
		}
	})
	if endpoint != "" {
		u, _ := url.Parse(endpoint)
		assertStopped(t, u.Host)
	}
}

// TestParallelStarts starts several servers at once, as parallel tests do,
// to exercise port selection.
func TestParallelStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for i := range 3 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			s := FakeGCS(t)
			s.CreateBucket(t, "bkt")
		})
	}
}

func TestShared(t *testing.T) {
	var hosts []string
	for i := range 2 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			s := SharedFakeGCS(t)
			s.CreateBucket(t, fmt.Sprintf("shared-%d", i))
			hosts = append(hosts, s.Host)
		})
	}
	if len(hosts) == 2 && hosts[0] != hosts[1] {
		t.Errorf("SharedFakeGCS started two servers: %v", hosts)
	}
	// Still up after the subtests that used it ended.
	if len(hosts) > 0 {
		c, err := net.DialTimeout("tcp", hosts[0], time.Second)
		if err != nil {
			t.Errorf("shared server gone after its first user ended: %v", err)
		} else {
			c.Close()
		}
	}
}

// TestPortTakenRetry hands the first start a port another listener holds:
// the server fails to bind and the starter retries on a fresh port.
func TestPortTakenRetry(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func(t testing.TB) int {
		calls++
		if calls == 1 {
			return taken
		}
		return FreePort(t)
	}
	defer func() { pickPort = FreePort }()
	s := FakeGCS(t)
	if s.Host == hostPort(taken) || calls < 2 {
		t.Fatalf("server on %s after %d port picks; the taken port was %d", s.Host, calls, taken)
	}
	s.CreateBucket(t, "bkt")
}
