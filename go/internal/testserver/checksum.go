package testserver

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/checksum"
)

// PutObjectChecksum stores data as bucket/key with a full-object checksum
// of alg (a CRC: x-amz-checksum-ALG, which MinIO checks and stores, and
// returns to a HeadObject with x-amz-checksum-mode: ENABLED), failing t on
// error. It returns the value sent.
func (s *MinIOServer) PutObjectChecksum(t testing.TB, bucket, key string, data []byte, alg checksum.Algorithm) []byte {
	t.Helper()
	value := checksum.Bytes(alg, checksum.Sum(alg, data))
	target := s.Endpoint + (&url.URL{Path: "/" + bucket + "/" + key}).EscapedPath()
	req, err := http.NewRequest(http.MethodPut, target, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("testserver: minio PUT %s: %v", key, err)
	}
	req.ContentLength = int64(len(data))
	req.Header.Set("x-amz-checksum-"+string(alg), base64.StdEncoding.EncodeToString(value))
	s.Sign(req, data)
	resp, err := loopbackClient(60 * time.Second).Do(req)
	if err != nil {
		t.Fatalf("testserver: minio PUT %s: %v", key, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("testserver: minio PUT %s with %s: %s: %s", key, alg, resp.Status, msg)
	}
	return value
}

// Compose makes bucket/dest the concatenation of the objects sources (the
// JSON API's compose), failing t on error. GCS keeps a CRC32C for the
// composite object but no MD5.
func (s *GCSServer) Compose(t testing.TB, bucket, dest string, sources ...string) {
	t.Helper()
	var objs []map[string]string
	for _, src := range sources {
		objs = append(objs, map[string]string{"name": src})
	}
	body, _ := json.Marshal(map[string]any{"sourceObjects": objs,
		"destination": map[string]string{"contentType": "application/octet-stream"}})
	u := "http://" + s.Host + "/storage/v1/b/" + url.PathEscape(bucket) + "/o/" + url.PathEscape(dest) + "/compose"
	s.do(t, http.MethodPost, u, "application/json", body)
}

// PutBlockList stores blocks as the block blob container/name with Put Block
// and Put Block List, the way SDKs upload large blobs, failing t on error.
// contentMD5, when not nil, is sent as x-ms-blob-content-md5 (the service
// keeps no MD5 for such a blob otherwise).
func (s *AzuriteServer) PutBlockList(t testing.TB, container, name string, blocks [][]byte, contentMD5 []byte) {
	t.Helper()
	path := "/" + container + "/" + name
	list := `<?xml version="1.0" encoding="utf-8"?><BlockList>`
	for i, b := range blocks {
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "block-%06d", i))
		s.do(t, http.MethodPut, path, url.Values{"comp": {"block"}, "blockid": {id}}, nil, b, http.StatusCreated)
		list += "<Latest>" + id + "</Latest>"
	}
	list += "</BlockList>"
	h := http.Header{"X-Ms-Blob-Content-Type": {"application/octet-stream"}}
	if contentMD5 != nil {
		h.Set("X-Ms-Blob-Content-Md5", base64.StdEncoding.EncodeToString(contentMD5))
	}
	s.do(t, http.MethodPut, path, url.Values{"comp": {"blocklist"}}, h, []byte(list), http.StatusCreated)
}
