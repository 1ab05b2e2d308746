package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

func checksumsOfObject(t *testing.T, o storage.Object) ([]storage.Checksum, string) {
	t.Helper()
	c, ok := o.(storage.Checksummed)
	if !ok {
		t.Fatal("s3 object does not implement storage.Checksummed")
	}
	return c.Checksums(), c.NoChecksumReason()
}

// find returns the value of alg among sums, nil if absent.
func find(sums []storage.Checksum, alg checksum.Algorithm) []byte {
	for _, s := range sums {
		if s.Algorithm == alg {
			return s.Value
		}
	}
	return nil
}

// multipart uploads data in two parts with alg and checksum type ct.
func multipart(t *testing.T, c *s3.Client, bucket, key string, data []byte, alg types.ChecksumAlgorithm, ct types.ChecksumType) {
	t.Helper()
	ctx := context.Background()
	cr, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key,
		ChecksumAlgorithm: alg, ChecksumType: ct})
	if err != nil {
		t.Fatalf("CreateMultipartUpload: %v", err)
	}
	half := 5 << 20 // the smallest part S3 allows but the last
	var parts []types.CompletedPart
	for i, p := range [][]byte{data[:half], data[half:]} {
		n := aws.Int32(int32(i + 1))
		up, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: cr.UploadId,
			PartNumber: n, Body: bytes.NewReader(p), ChecksumAlgorithm: alg})
		if err != nil {
			t.Fatalf("UploadPart: %v", err)
		}
		parts = append(parts, types.CompletedPart{PartNumber: n, ETag: up.ETag, ChecksumCRC32: up.ChecksumCRC32,
			ChecksumCRC32C: up.ChecksumCRC32C, ChecksumCRC64NVME: up.ChecksumCRC64NVME})
	}
	if _, err := c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key,
		UploadId: cr.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}, ChecksumType: ct}); err != nil {
		t.Fatalf("CompleteMultipartUpload: %v", err)
	}
}

// What MinIO stores for each way of uploading, and what Open offers of it.
func TestChecksumsFromMinIO(t *testing.T) {
	e := newEnv(t)
	b := e.backend(t, e.srv.Endpoint)
	small := randomBytes(300_000, 11)
	big := randomBytes(6<<20+12345, 12)
	md5sum := func(p []byte) []byte { s := md5.Sum(p); return s[:] }

	e.srv.PutObject(t, e.bucket, "plain", small)
	for _, alg := range []checksum.Algorithm{checksum.CRC32, checksum.CRC32C, checksum.CRC64NVME} {
		e.srv.PutObjectChecksum(t, e.bucket, "put-"+string(alg), small, alg)
	}
	multipart(t, b.client, e.bucket, "mp-composite-crc32", big, types.ChecksumAlgorithmCrc32, types.ChecksumTypeComposite)
	multipart(t, b.client, e.bucket, "mp-composite-crc32c", big, types.ChecksumAlgorithmCrc32c, types.ChecksumTypeComposite)
	multipart(t, b.client, e.bucket, "mp-full-crc32c", big, types.ChecksumAlgorithmCrc32c, types.ChecksumTypeFullObject)
	multipart(t, b.client, e.bucket, "mp-full-crc64nvme", big, types.ChecksumAlgorithmCrc64nvme, types.ChecksumTypeFullObject)

	cases := []struct {
		key    string
		data   []byte
		want   []checksum.Algorithm // offered, in order
		reason string               // part of NoChecksumReason when none
	}{
		{"plain", small, []checksum.Algorithm{checksum.MD5}, ""},
		{"put-crc32", small, []checksum.Algorithm{checksum.CRC32, checksum.MD5}, ""},
		{"put-crc32c", small, []checksum.Algorithm{checksum.CRC32C, checksum.MD5}, ""},
		{"put-crc64nvme", small, []checksum.Algorithm{checksum.CRC64NVME, checksum.MD5}, ""},
		{"mp-composite-crc32", big, nil, "composite checksum of a multipart upload"},
		{"mp-composite-crc32c", big, nil, "composite checksum of a multipart upload"},
		{"mp-full-crc32c", big, []checksum.Algorithm{checksum.CRC32C}, ""},
		{"mp-full-crc64nvme", big, []checksum.Algorithm{checksum.CRC64NVME}, ""},
	}
	for _, c := range cases {
		t.Run(c.key, func(t *testing.T) {
			o := open(t, b, e.uri(c.key))
			sums, reason := checksumsOfObject(t, o)
			var got []checksum.Algorithm
			for _, s := range sums {
				got = append(got, s.Algorithm)
			}
			if len(got) != len(c.want) {
				t.Fatalf("offered %v (reason %q), want %v", got, reason, c.want)
			}
			for i, alg := range c.want {
				if got[i] != alg {
					t.Fatalf("offered %v, want %v", got, c.want)
				}
				want := md5sum(c.data)
				if alg != checksum.MD5 {
					want = checksum.Bytes(alg, checksum.Sum(alg, c.data))
				}
				if !bytes.Equal(sums[i].Value, want) {
					t.Fatalf("%s (%s) = %x, the content's is %x", alg, sums[i].Source, sums[i].Value, want)
				}
			}
			if c.want == nil && !strings.Contains(reason, c.reason) {
				t.Fatalf("NoChecksumReason %q, want it to mention %q", reason, c.reason)
			}
		})
	}
}

// The rules for a HeadObject answer, including what MinIO on loopback
// cannot show (encryption with KMS or customer keys).
func TestChecksumsOf(t *testing.T) {
	const etag = `"0123456789abcdef0123456789abcdef"`
	crc := "4qOFSg=="
	cases := []struct {
		name   string
		out    s3.HeadObjectOutput
		want   []string // Checksum.String() of each
		reason string
	}{
		{"etag only", s3.HeadObjectOutput{ETag: aws.String(etag)}, []string{"md5:0123456789abcdef0123456789abcdef"}, ""},
		{"crc and etag", s3.HeadObjectOutput{ETag: aws.String(etag), ChecksumCRC32C: &crc, ChecksumType: types.ChecksumTypeFullObject},
			[]string{"crc32c:e2a3854a", "md5:0123456789abcdef0123456789abcdef"}, ""},
		{"crc without a type (an older server)", s3.HeadObjectOutput{ChecksumCRC32C: &crc}, []string{"crc32c:e2a3854a"}, ""},
		{"composite", s3.HeadObjectOutput{ETag: aws.String(`"0123456789abcdef0123456789abcdef-3"`),
			ChecksumCRC32: aws.String("/Ancvg==-3"), ChecksumType: types.ChecksumTypeComposite}, nil, "composite"},
		{"composite without a type", s3.HeadObjectOutput{ChecksumCRC32: aws.String("/Ancvg==-3")}, nil, "composite"},
		{"multipart etag", s3.HeadObjectOutput{ETag: aws.String(`"0123456789abcdef0123456789abcdef-3"`)}, nil, "multipart"},
		{"sse-kms", s3.HeadObjectOutput{ETag: aws.String(etag), ServerSideEncryption: types.ServerSideEncryptionAwsKms}, nil, "aws:kms"},
		{"sse-kms with a crc", s3.HeadObjectOutput{ETag: aws.String(etag), ServerSideEncryption: types.ServerSideEncryptionAwsKms,
			ChecksumCRC32C: &crc, ChecksumType: types.ChecksumTypeFullObject}, []string{"crc32c:e2a3854a"}, ""},
		{"sse-c", s3.HeadObjectOutput{ETag: aws.String(etag), SSECustomerAlgorithm: aws.String("AES256")}, nil, "SSE-C"},
		{"sse-s3 etag is the md5", s3.HeadObjectOutput{ETag: aws.String(etag), ServerSideEncryption: types.ServerSideEncryptionAes256},
			[]string{"md5:0123456789abcdef0123456789abcdef"}, ""},
		{"bad base64", s3.HeadObjectOutput{ChecksumCRC32C: aws.String("!!"), ChecksumType: types.ChecksumTypeFullObject}, nil, "base64"},
		{"not hex", s3.HeadObjectOutput{ETag: aws.String(`"xyz"`)}, nil, "not an MD5"},
		{"nothing", s3.HeadObjectOutput{}, nil, "no ETag"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sums, reason := checksumsOf(&c.out)
			var got []string
			for _, s := range sums {
				got = append(got, s.String())
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if c.want == nil && !strings.Contains(reason, c.reason) {
				t.Fatalf("reason %q, want it to mention %q", reason, c.reason)
			}
			if c.want != nil && reason != "" {
				t.Fatalf("reason %q with checksums", reason)
			}
		})
	}
}

// A server that refuses the checksum mode header (as some S3-compatible
// stores do) still opens, and is not asked with it again.
func TestChecksumModeRejected(t *testing.T) {
	data := randomBytes(1000, 5)
	var withMode, without atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Checksum-Mode") != "" {
			withMode.Add(1)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		without.Add(1)
		sum := md5.Sum(data)
		w.Header().Set("ETag", `"`+checksum.Format(sum[:])+`"`)
		w.Header().Set("Content-Length", "1000")
	}))
	t.Cleanup(srv.Close)
	b, err := New(storage.Settings{SettingEndpoint: srv.URL, SettingAccessKeyID: "k",
		SettingSecretAccessKey: "s", SettingIMDSDisabled: "true"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		o := open(t, b, "s3://bkt/obj")
		sums, _ := checksumsOfObject(t, o)
		if want := md5.Sum(data); !bytes.Equal(find(sums, checksum.MD5), want[:]) {
			t.Fatalf("checksums %v, want the ETag's MD5", sums)
		}
	}
	if withMode.Load() != 1 || without.Load() != 2 {
		t.Fatalf("HEADs with the checksum mode %d (want 1), without %d (want 2)", withMode.Load(), without.Load())
	}
}
