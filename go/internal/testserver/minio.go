package testserver

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// MinIOServer is a running MinIO (S3 API) server.
type MinIOServer struct {
	Endpoint  string // "http://127.0.0.1:PORT", path-style addressing
	AccessKey string
	SecretKey string
	Region    string // "us-east-1"
}

// MinIO credentials: fixed, loopback-only test values.
const (
	minioAccessKey = "model-streamer"
	minioSecretKey = "model-streamer-secret"
	minioRegion    = "us-east-1"
)

// MinIO starts a MinIO server (single drive in a t.TempDir()) for t and
// stops it when t ends. No buckets exist yet: create them with CreateBucket
// or an S3 client.
func MinIO(t testing.TB) *MinIOServer {
	t.Helper()
	_, ports := start(t, minioSpec(t))
	return newMinIOServer(ports)
}

// SharedMinIO returns the test binary's shared MinIO server, starting it on
// first use; see Main. Without Main it is MinIO(t).
func SharedMinIO(t testing.TB) *MinIOServer {
	t.Helper()
	srv, ok := sharedServer(t, "minio", minioSpec(t), func(ports []int) any { return newMinIOServer(ports) })
	if !ok {
		return MinIO(t)
	}
	return srv.(*MinIOServer)
}

func newMinIOServer(ports []int) *MinIOServer {
	return &MinIOServer{
		Endpoint:  "http://" + hostPort(ports[0]),
		AccessKey: minioAccessKey,
		SecretKey: minioSecretKey,
		Region:    minioRegion,
	}
}

func minioSpec(t testing.TB) spec {
	t.Helper()
	bin := tool(t, "MinIO", "bin", "minio")
	return spec{
		name:   "minio",
		nports: 2,
		command: func(ports []int, dir string) ([]string, []string) {
			argv := []string{bin, "server", "--quiet", "--anonymous",
				"--address", hostPort(ports[0]),
				"--console-address", hostPort(ports[1]),
				"--certs-dir", filepath.Join(dir, "certs"),
				filepath.Join(dir, "data")}
			env := []string{
				"MINIO_ROOT_USER=" + minioAccessKey,
				"MINIO_ROOT_PASSWORD=" + minioSecretKey,
				"MINIO_SITE_REGION=" + minioRegion,
				"MINIO_UPDATE=off",
				"MINIO_BROWSER=off",
				"MINIO_CALLHOME_ENABLE=off",
				"MINIO_API_REQUESTS_DEADLINE=30s",
				"HOME=" + dir, // anything MinIO writes under ~ stays in the temp dir
			}
			return argv, env
		},
		ready: func(c *http.Client, ports []int) bool {
			// /minio/health/ready answers 200 before the object layer
			// is up (requests then fail with XMinioServerNotInitialized):
			// wait for a signed ListBuckets to succeed as well.
			base := "http://" + hostPort(ports[0])
			if !httpOK(c, base+"/minio/health/ready", http.StatusOK) {
				return false
			}
			req, err := http.NewRequest(http.MethodGet, base+"/", nil)
			if err != nil {
				return false
			}
			SignV4(req, nil, minioAccessKey, minioSecretKey, minioRegion, time.Now())
			resp, err := c.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		},
	}
}

// Sign signs r for this server's credentials with AWS Signature Version 4
// (service s3). body is r's body (nil for none); its SHA-256 is signed. The
// signature covers r.URL.Host, so sign the request for the address it is
// sent to (a fault proxy's, say).
func (s *MinIOServer) Sign(r *http.Request, body []byte) {
	SignV4(r, body, s.AccessKey, s.SecretKey, s.Region, time.Now())
}

// CreateBucket creates bucket, failing t on error.
func (s *MinIOServer) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	s.do(t, http.MethodPut, "/"+bucket, nil, http.StatusOK)
}

// PutObject stores data as bucket/key, failing t on error.
func (s *MinIOServer) PutObject(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	s.do(t, http.MethodPut, "/"+bucket+"/"+key, data, http.StatusOK)
}

// SetBucketPolicy sets bucket's access policy, a JSON policy document
// (PutBucketPolicy), failing t on error.
func (s *MinIOServer) SetBucketPolicy(t testing.TB, bucket, policy string) {
	t.Helper()
	s.doQuery(t, http.MethodPut, "/"+bucket, "policy=", []byte(policy), http.StatusNoContent)
}

// AllowAnonymousRead lets requests without credentials read bucket's objects
// and list the bucket: the policy `mc anonymous set download` sets.
func (s *MinIOServer) AllowAnonymousRead(t testing.TB, bucket string) {
	t.Helper()
	s.SetBucketPolicy(t, bucket, AnonymousReadPolicy(bucket))
}

// AnonymousReadPolicy is a bucket policy granting everyone s3:GetObject on
// bucket's objects and s3:ListBucket and s3:GetBucketLocation on bucket.
func AnonymousReadPolicy(bucket string) string {
	return `{"Version":"2012-10-17","Statement":[` +
		`{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetBucketLocation","s3:ListBucket"],"Resource":["arn:aws:s3:::` + bucket + `"]},` +
		`{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::` + bucket + `/*"]}]}`
}

func (s *MinIOServer) do(t testing.TB, method, path string, body []byte, want int) {
	t.Helper()
	s.doQuery(t, method, path, "", body, want)
}

// doQuery sends a signed request for path (unescaped) with the raw query.
func (s *MinIOServer) doQuery(t testing.TB, method, path, query string, body []byte, want int) {
	t.Helper()
	target := s.Endpoint + (&url.URL{Path: path}).EscapedPath()
	if query != "" {
		target += "?" + query
	}
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("testserver: minio %s %s: %v", method, path, err)
	}
	req.ContentLength = int64(len(body))
	s.Sign(req, body)
	resp, err := loopbackClient(60 * time.Second).Do(req)
	if err != nil {
		t.Fatalf("testserver: minio %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != want {
		t.Fatalf("testserver: minio %s %s: %s: %s", method, path, resp.Status, msg)
	}
}

// SignV4 signs r with AWS Signature Version 4 for service s3 at time now:
// it sets X-Amz-Date, X-Amz-Content-Sha256 and Authorization. The signed
// headers are host, every x-amz-* header, content-type, content-md5 and
// range.
func SignV4(r *http.Request, body []byte, accessKey, secretKey, region string, now time.Time) {
	now = now.UTC()
	amzDate := now.Format("20060102T150405Z")
	day := now.Format("20060102")
	sum := sha256.Sum256(body)
	payload := hex.EncodeToString(sum[:])
	r.Header.Set("X-Amz-Date", amzDate)
	r.Header.Set("X-Amz-Content-Sha256", payload)

	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	headers := map[string]string{"host": host}
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "x-amz-") || lk == "content-type" || lk == "content-md5" || lk == "range" {
			vals := make([]string, len(vs))
			for i, v := range vs {
				vals[i] = strings.Join(strings.Fields(v), " ")
			}
			headers[lk] = strings.Join(vals, ",")
		}
	}
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	sort.Strings(names)
	var canonHeaders strings.Builder
	for _, k := range names {
		canonHeaders.WriteString(k + ":" + headers[k] + "\n")
	}
	signed := strings.Join(names, ";")

	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canonical := strings.Join([]string{
		r.Method,
		canonicalPath(path),
		canonicalQuery(r.URL.Query()),
		canonHeaders.String(),
		signed,
		payload,
	}, "\n")
	scope := day + "/" + region + "/s3/aws4_request"
	crSum := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crSum[:])
	key := hmacSHA256([]byte("AWS4"+secretKey), day)
	key = hmacSHA256(key, region)
	key = hmacSHA256(key, "s3")
	key = hmacSHA256(key, "aws4_request")
	sig := hex.EncodeToString(hmacSHA256(key, toSign))
	r.Header.Set("Authorization", fmt.Sprintf("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
		accessKey, scope, signed, sig))
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// canonicalPath re-encodes an escaped path the way SigV4 wants for S3:
// each segment percent-encoded once with only unreserved characters bare.
func canonicalPath(escaped string) string {
	segs := strings.Split(escaped, "/")
	for i, s := range segs {
		if u, err := url.PathUnescape(s); err == nil {
			s = u
		}
		segs[i] = awsEscape(s)
	}
	return strings.Join(segs, "/")
}

func canonicalQuery(q url.Values) string {
	type kv struct{ k, v string }
	var pairs []kv
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, kv{awsEscape(k), awsEscape(v)})
		}
	}
	sort.Slice(pairs, func(i, j int) bool {
		if pairs[i].k != pairs[j].k {
			return pairs[i].k < pairs[j].k
		}
		return pairs[i].v < pairs[j].v
	})
	parts := make([]string, len(pairs))
	for i, p := range pairs {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, "&")
}

// awsEscape percent-encodes every byte but A-Z a-z 0-9 - _ . ~.
func awsEscape(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}
