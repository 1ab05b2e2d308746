package testserver

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// GCSServer is a running fake-gcs-server in plain HTTP mode.
type GCSServer struct {
	Endpoint string // "http://127.0.0.1:PORT/storage/v1/" (JSON API)
	Host     string // "127.0.0.1:PORT", e.g. for STORAGE_EMULATOR_HOST
}

// FakeGCS starts fake-gcs-server (HTTP, filesystem backend in a
// t.TempDir()) for t and stops it when t ends. No buckets exist yet: create
// them with CreateBucket or a GCS client.
//
// The server's public host is "127.0.0.1" with any port, so requests
// addressed to a fault proxy on 127.0.0.1 are routed like direct ones.
// Objects are served by the JSON API (/storage/v1/b/BUCKET/o/NAME?alt=media),
// /download/storage/v1/..., and path-style XML-API reads (/BUCKET/NAME).
func FakeGCS(t testing.TB) *GCSServer {
	t.Helper()
	_, ports := start(t, fakeGCSSpec(t))
	return newGCSServer(ports)
}

// SharedFakeGCS returns the test binary's shared fake-gcs-server, starting
// it on first use; see Main. Without Main it is FakeGCS(t).
func SharedFakeGCS(t testing.TB) *GCSServer {
	t.Helper()
	srv, ok := sharedServer(t, "fake-gcs-server", fakeGCSSpec(t), func(ports []int) any { return newGCSServer(ports) })
	if !ok {
		return FakeGCS(t)
	}
	return srv.(*GCSServer)
}

func newGCSServer(ports []int) *GCSServer {
	host := hostPort(ports[0])
	return &GCSServer{Endpoint: "http://" + host + "/storage/v1/", Host: host}
}

func fakeGCSSpec(t testing.TB) spec {
	t.Helper()
	bin := tool(t, "fake-gcs-server", "bin", "fake-gcs-server")
	return spec{
		name:   "fake-gcs-server",
		nports: 1,
		command: func(ports []int, dir string) ([]string, []string) {
			argv := []string{bin,
				"-scheme", "http",
				"-host", "127.0.0.1",
				"-port", strconv.Itoa(ports[0]),
				"-public-host", "127.0.0.1",
				"-external-url", "http://" + hostPort(ports[0]),
				"-backend", "filesystem",
				"-filesystem-root", filepath.Join(dir, "storage"),
				"-log-level", "warn",
			}
			return argv, nil
		},
		ready: func(c *http.Client, ports []int) bool {
			return httpOK(c, "http://"+hostPort(ports[0])+"/_internal/healthcheck", http.StatusOK)
		},
	}
}

// CreateBucket creates bucket, failing t on error.
func (s *GCSServer) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": bucket})
	s.do(t, http.MethodPost, "http://"+s.Host+"/storage/v1/b?project=test", "application/json", body)
}

// PutObject stores data as bucket/name, failing t on error.
func (s *GCSServer) PutObject(t testing.TB, bucket, name string, data []byte) {
	t.Helper()
	q := url.Values{"uploadType": {"media"}, "name": {name}}
	u := "http://" + s.Host + "/upload/storage/v1/b/" + url.PathEscape(bucket) + "/o?" + q.Encode()
	s.do(t, http.MethodPost, u, "application/octet-stream", data)
}

func (s *GCSServer) do(t testing.TB, method, u, contentType string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("testserver: fake-gcs %s %s: %v", method, u, err)
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := loopbackClient(60 * time.Second).Do(req)
	if err != nil {
		t.Fatalf("testserver: fake-gcs %s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("testserver: fake-gcs %s %s: %s: %s", method, u, resp.Status, msg)
	}
}
