package faultproxy

import (
	"bytes"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/internal/testserver"
)

// These tests put the proxy in front of the real servers and check that
// signed requests made for the proxy's address pass through it, and that
// faults reach the client.

var serverData = func() []byte {
	b := make([]byte, 3<<20)
	for i := range b {
		b[i] = byte(i*31 + i>>10)
	}
	return b
}()

func checkThrough(t *testing.T, p *Proxy, newGet func(rangeHdr string) *http.Request) {
	t.Helper()
	c := client()
	send := func(req *http.Request) result {
		resp, err := c.Do(req)
		if err != nil {
			return result{err: err}
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, err = buf.ReadFrom(resp.Body)
		return result{status: resp.StatusCode, header: resp.Header, body: buf.Bytes(), err: err}
	}
	r := send(newGet("bytes=1048570-2097160"))
	if r.err != nil || r.status != http.StatusPartialContent || !bytes.Equal(r.body, serverData[1048570:2097161]) {
		t.Fatalf("signed ranged GET through the proxy: %d %v %.300s", r.status, r.err, r.body)
	}

	p.Set(Fault{Status: http.StatusServiceUnavailable, StatusCount: 1, RetryAfter: time.Second})
	r = send(newGet("bytes=0-9"))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "1" {
		t.Errorf("injected 503: %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	p.Set(Fault{ResetAfterBytes: 4096, ResetCount: 1})
	r = send(newGet("bytes=0-1048575"))
	if r.err == nil || len(r.body) != 4096 || !isReset(r.err) {
		t.Errorf("injected reset: %v after %d bytes", r.err, len(r.body))
	}
	p.Clear()
	r = send(newGet("bytes=0-1048575"))
	if r.err != nil || !bytes.Equal(r.body, serverData[:1<<20]) {
		t.Errorf("after the faults: %d %v", r.status, r.err)
	}
}

func TestMinIOThroughProxy(t *testing.T) {
	srv := testserver.MinIO(t)
	srv.CreateBucket(t, "bucket")
	p := Start(t, srv.Endpoint)
	// The object goes in through the proxy: a signed PUT with a body.
	via := *srv
	via.Endpoint = p.URL()
	via.PutObject(t, "bucket", "dir/obj.bin", serverData)
	checkThrough(t, p, func(rng string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, p.URL()+"/bucket/dir/obj.bin", nil)
		req.Header.Set("Range", rng)
		srv.Sign(req, nil)
		return req
	})
	req, _ := http.NewRequest(http.MethodHead, p.URL()+"/bucket/dir/obj.bin", nil)
	srv.Sign(req, nil)
	resp, err := client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(serverData)) {
		t.Errorf("signed HEAD through the proxy: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
}

func TestFakeGCSThroughProxy(t *testing.T) {
	srv := testserver.FakeGCS(t)
	p := Start(t, "http://"+srv.Host)
	via := *srv
	via.Host = p.Addr()
	via.CreateBucket(t, "bucket")
	via.PutObject(t, "bucket", "dir/obj.bin", serverData)
	checkThrough(t, p, func(rng string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, p.URL()+"/storage/v1/b/bucket/o/"+url.PathEscape("dir/obj.bin")+"?alt=media", nil)
		req.Header.Set("Range", rng)
		return req
	})
	// XML-API style path reads (what the Go GCS client uses by default).
	req, _ := http.NewRequest(http.MethodGet, p.URL()+"/bucket/dir/obj.bin", nil)
	req.Header.Set("Range", "bytes=10-19")
	r := do(t, client(), req.Method, req.URL.String(), req.Header, nil)
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, serverData[10:20]) {
		t.Errorf("path-style GET through the proxy: %d %.200s", r.status, r.body)
	}
}

func TestAzuriteThroughProxy(t *testing.T) {
	srv := testserver.Azurite(t)
	u, _ := url.Parse(srv.BlobEndpoint)
	p := Start(t, "http://"+u.Host)
	via := *srv
	via.BlobEndpoint = p.URL() + u.Path
	via.CreateContainer(t, "container")
	via.PutBlob(t, "container", "dir/obj.bin", serverData)
	checkThrough(t, p, func(rng string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, via.BlobEndpoint+"/container/dir/obj.bin", nil)
		req.Header.Set("X-Ms-Range", rng)
		srv.Sign(req)
		return req
	})
}
