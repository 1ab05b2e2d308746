package s3

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

// maxIgnoredRangeSkip is how far into a whole-object answer (a server that
// ignored Range) ReadAt reads and discards to reach its offset; beyond it
// such a server is an error, as reading the object again and again from the
// start for every chunk would be quadratic.
var maxIgnoredRangeSkip int64 = 64 << 20

// object is one opened S3 object: its size and ETag as Open saw them.
type object struct {
	b      *backend
	uri    string
	bucket string
	key    string
	size   int64
	etag   *string
	// versionID is the version HeadObject reported on a versioned bucket.
	versionID string
	closed    atomic.Bool
	sums      []storage.Checksum
	noSum     string // why sums is empty
}

var (
	_ storage.Object      = (*object)(nil)
	_ storage.Checksummed = (*object)(nil)
)

// Open learns the object's size, ETag and stored checksums with a
// HeadObject request (see "Checksums" in the package documentation).
func (b *backend) Open(ctx context.Context, uri string) (storage.Object, error) {
	_, bucket, key, err := parseURI(uri)
	if err == nil && (key == "" || strings.HasSuffix(key, "/")) {
		err = errors.New("names a bucket or a prefix, not an object")
	}
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	out, err := b.head(ctx, bucket, key)
	if err != nil {
		se := toError(ctx, "open", uri, 0, 0, err)
		if !storage.IsProbe(ctx) {
			b.explain(ctx, se, bucket, key)
		}
		return nil, se
	}
	size := aws.ToInt64(out.ContentLength)
	if size < 0 {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Internal,
			Err: fmt.Errorf("HeadObject gave no Content-Length")}
	}
	o := &object{b: b, uri: uri, bucket: bucket, key: key, size: size}
	if out.ETag != nil && *out.ETag != "" {
		o.etag = aws.String(*out.ETag)
	}
	o.versionID = aws.ToString(out.VersionId)
	o.sums, o.noSum = checksumsOf(out)
	return o, nil
}

// head asks for the object's metadata with its checksums
// (x-amz-checksum-mode: ENABLED). A server that rejects the checksum mode
// (an older S3-compatible store answering 400 or 501 to the header) is
// asked again without it, and never again by this backend: its objects then
// offer only what the ETag says.
func (b *backend) head(ctx context.Context, bucket, key string) (*s3.HeadObjectOutput, error) {
	in := &s3.HeadObjectInput{Bucket: &bucket, Key: &key}
	if b.checksumModeRejected.Load() {
		return b.client.HeadObject(ctx, in)
	}
	withMode := *in
	withMode.ChecksumMode = types.ChecksumModeEnabled
	out, err := b.client.HeadObject(ctx, &withMode)
	var he *storage.HTTPError
	if err == nil || !errors.As(toError(ctx, "open", "", 0, 0, err).Err, &he) ||
		(he.Status != 400 && he.Status != 501) {
		return out, err
	}
	out, err2 := b.client.HeadObject(ctx, in)
	if err2 != nil {
		return nil, err // the plain request fails too: the first answer explains it
	}
	b.checksumModeRejected.Store(true)
	return out, nil
}

// Checksums returns the whole-object checksums HeadObject reported.
func (o *object) Checksums() []storage.Checksum { return o.sums }

// NoChecksumReason says why Checksums is empty.
func (o *object) NoChecksumReason() string { return o.noSum }

// checksumsOf picks the values of a HeadObject answer that cover the whole
// object: the full-object CRCs, and the ETag when it is the MD5 of the
// content. It returns the reason when there is none.
func checksumsOf(out *s3.HeadObjectOutput) ([]storage.Checksum, string) {
	var sums []storage.Checksum
	var reasons []string
	for _, c := range []struct {
		alg   checksum.Algorithm
		value *string
	}{
		{checksum.CRC32C, out.ChecksumCRC32C},
		{checksum.CRC32, out.ChecksumCRC32},
		{checksum.CRC64NVME, out.ChecksumCRC64NVME},
		{checksum.MD5, out.ChecksumMD5},
	} {
		v := aws.ToString(c.value)
		if v == "" {
			continue
		}
		source := "x-amz-checksum-" + string(c.alg)
		// A multipart upload's COMPOSITE checksum ("<base64>-<parts>") is a
		// checksum of the parts' checksums: no whole-object read computes it.
		if out.ChecksumType == types.ChecksumTypeComposite || strings.Contains(v, "-") {
			reasons = append(reasons, fmt.Sprintf("%s %q is the composite checksum of a multipart upload, not verifiable as a whole", source, v))
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(raw) != c.alg.Size() {
			reasons = append(reasons, fmt.Sprintf("%s %q is not a %d-byte base64 value", source, v, c.alg.Size()))
			continue
		}
		sums = append(sums, storage.Checksum{Algorithm: c.alg, Value: raw, Source: source})
	}
	if md5, why := etagMD5(out); md5 != nil {
		sums = append(sums, storage.Checksum{Algorithm: checksum.MD5, Value: md5, Source: "ETag"})
	} else if len(sums) == 0 {
		reasons = append(reasons, why)
	}
	if len(sums) > 0 {
		return sums, ""
	}
	return nil, strings.Join(reasons, "; ")
}

// etagMD5 returns the MD5 of the content when the ETag is one: 32 hex digits
// (a multipart upload's ends in "-<parts>"), and not an object encrypted
// with SSE-KMS or a customer key, whose ETag is not its content's MD5.
func etagMD5(out *s3.HeadObjectOutput) ([]byte, string) {
	etag := strings.Trim(aws.ToString(out.ETag), `"`)
	switch {
	case etag == "":
		return nil, "no checksum and no ETag"
	case out.SSECustomerAlgorithm != nil:
		return nil, "no checksum, and the ETag of an object encrypted with a customer key (SSE-C) is not its MD5"
	case strings.HasPrefix(string(out.ServerSideEncryption), "aws:kms"):
		return nil, "no checksum, and the ETag of an object encrypted with " + string(out.ServerSideEncryption) + " is not its MD5"
	case strings.Contains(etag, "-"):
		return nil, fmt.Sprintf("no full-object checksum, and ETag %q is that of a multipart upload, not an MD5", etag)
	}
	raw, err := hex.DecodeString(etag)
	if err != nil || len(raw) != checksum.MD5.Size() {
		return nil, fmt.Sprintf("no checksum, and ETag %q is not an MD5", etag)
	}
	return raw, ""
}

// explain replaces the status-only error of a HEAD (whose answer has no body)
// with the error code and message the same request gets as a GET, so a
// failure reads "HTTP 404 NoSuchBucket: The specified bucket does not exist"
// rather than "HTTP 404 NotFound". Only for permanent failures, whose second
// request costs nothing in the normal case.
func (b *backend) explain(ctx context.Context, se *storage.Error, bucket, key string) {
	he, ok := se.Err.(*storage.HTTPError)
	if !ok || (se.Code != storage.NotFound && se.Code != storage.PermissionDenied) {
		return
	}
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key,
		Range: aws.String("bytes=0-0")}, b.dataOptions)
	if err == nil {
		out.Body.Close()
		return
	}
	ge := toError(ctx, se.Op, se.URI, 0, 0, err)
	if gh, ok := ge.Err.(*storage.HTTPError); ok && gh.Status == he.Status && gh.Code != "" {
		se.Err = gh
	}
}

// dataOptions makes a GetObject use the data retryer.
func (b *backend) dataOptions(o *s3.Options) { o.Retryer = b.dataRetryer }

// Size is the object's size when it was opened.
func (o *object) Size() int64 { return o.size }

// Close releases nothing (requests hold no state between reads); reads after
// Close fail.
func (o *object) Close() error {
	o.closed.Store(true)
	return nil
}

// ReadAt reads len(dst) bytes at off with one ranged GetObject. When the
// response breaks off or stalls it returns the bytes received with an
// Unavailable error, so the caller can resume at off+n.
func (o *object) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	return storage.ReadWindow(ctx, o.uri, o.size, o.closed.Load(), dst, off, o.get)
}

func (o *object) readError(off int64, n int, code storage.Code, err error) *storage.Error {
	return &storage.Error{Op: "read", URI: o.uri, Off: off, Len: int64(n), Code: code, Err: err}
}

// get fills dst (within the object) from off.
func (o *object) get(ctx context.Context, dst []byte, off, reqLen int64) (int, error) {
	last := off + int64(len(dst)) - 1
	out, err := o.b.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket:  &o.bucket,
		Key:     &o.key,
		Range:   aws.String("bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(last, 10)),
		IfMatch: o.etag,
	}, o.b.dataOptions)
	if err != nil {
		se := toError(ctx, "read", o.uri, off, reqLen, err)
		if he, ok := se.Err.(*storage.HTTPError); ok && he.Code == "PreconditionFailed" {
			he.Message = "the object changed since it was opened (ETag no longer matches)"
		}
		return 0, se
	}
	body := out.Body
	defer body.Close()

	if out.ContentRange == nil {
		// The server ignored Range and sent the whole object.
		if off > maxIgnoredRangeSkip {
			return 0, o.readError(off, int(reqLen), storage.Internal, fmt.Errorf(
				"the server ignored the Range header (answered the whole object, no Content-Range)"))
		}
		if off > 0 {
			if _, err := io.CopyN(io.Discard, body, off); err != nil {
				return 0, o.bodyError(ctx, off, reqLen, 0, err)
			}
		}
	} else {
		start, end, total, err := storage.ParseContentRange(*out.ContentRange)
		switch {
		case err != nil:
			return 0, o.readError(off, int(reqLen), storage.Internal, err)
		case total >= 0 && total != o.size:
			return 0, o.readError(off, int(reqLen), storage.InvalidArgument, fmt.Errorf(
				"the object changed since it was opened: size %d, now %d", o.size, total))
		case start != off || end < start:
			return 0, o.readError(off, int(reqLen), storage.Internal, fmt.Errorf(
				"asked for bytes %d-%d, the server sent Content-Range %q", off, last, *out.ContentRange))
		case end < last:
			// A shorter answer than asked: take it, the caller resumes.
			dst = dst[:end-start+1]
		}
	}

	n, err := io.ReadFull(body, dst)
	if err != nil {
		return n, o.bodyError(ctx, off, reqLen, n, err)
	}
	if int64(n) < last-off+1 {
		return n, o.readError(off, int(reqLen), storage.Unavailable, fmt.Errorf(
			"the server sent bytes %d-%d of the %d-%d asked for", off, off+int64(n)-1, off, last))
	}
	// Observe the end of the body so the connection goes back to the pool.
	var probe [1]byte
	body.Read(probe[:])
	return n, nil
}

// bodyError classifies a failure while reading a response body after n
// bytes of it went to dst.
func (o *object) bodyError(ctx context.Context, off, reqLen int64, n int, err error) *storage.Error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	se := toError(ctx, "read", o.uri, off, reqLen, err)
	if se.Code == storage.Unavailable {
		se.Err = fmt.Errorf("response body broke off after %d bytes: %w", n, se.Err)
	}
	return se
}
