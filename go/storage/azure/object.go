package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Checksummed = (*object)(nil)

// checksumsOf returns the blob's whole-blob checksums from its properties:
// Content-MD5, which the service computes for a blob written by one Put
// Blob and keeps for a blob assembled from blocks only when the uploader set
// it (x-ms-blob-content-md5). The service keeps no whole-blob CRC64 (it
// returns x-ms-content-crc64 for the bytes of one request only, up to
// 4 MiB, and Get Blob Properties carries none), so MD5 is all there is.
func checksumsOf(contentMD5 []byte) ([]storage.Checksum, string) {
	switch {
	case len(contentMD5) == checksum.MD5.Size():
		return []storage.Checksum{{Algorithm: checksum.MD5, Value: contentMD5, Source: "Content-MD5"}}, ""
	case len(contentMD5) > 0:
		return nil, fmt.Sprintf("Content-MD5 has %d bytes, not 16", len(contentMD5))
	}
	return nil, "the blob has no Content-MD5 (blobs uploaded in blocks have one only when the uploader set it) and Azure keeps no whole-blob CRC64"
}

// Checksums returns the Content-MD5 Open saw, if any.
func (o *object) Checksums() []storage.Checksum { return o.sums }

// NoChecksumReason says why Checksums is empty.
func (o *object) NoChecksumReason() string { return o.noSum }

// ReadAt reads len(dst) bytes at off with one ranged Get Blob, clipped to the
// size: a read past the end returns the bytes up to the end with io.EOF, a
// read at or after the end returns 0, io.EOF without a request. When the
// response body breaks off, ReadAt returns the bytes received and an
// Unavailable error, so that a retry resumes where it stopped.
func (o *object) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	return storage.ReadWindow(ctx, o.uri, o.size, o.closed.Load(), dst, off,
		func(ctx context.Context, dst []byte, off, _ int64) (int, error) { return o.get(ctx, dst, off) })
}

// get fills dst from off with one request, under the stall watchdog.
func (o *object) get(ctx context.Context, dst []byte, off int64) (int, error) {
	want := int64(len(dst))
	rctx := ctx
	var watch *storage.StallWatch
	if o.stall > 0 {
		watch = storage.NewStallWatch(ctx, o.stall)
		defer watch.Done()
		rctx = watch.Context()
	}
	opts := &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: off, Count: want}}
	if o.etag != "" {
		etag := o.etag
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &etag}}
	}
	resp, err := o.blob.DownloadStream(policy.WithRetryOptions(rctx, dataRetry), opts)
	if err != nil {
		return 0, o.failed(ctx, watch, off, want, 0, false, err)
	}
	body := resp.Body
	if body == nil {
		return 0, o.readError(off, int(want), storage.Internal, errors.New("response has no body"))
	}
	defer body.Close()
	if err := checkRange(resp.ContentRange, resp.ContentLength, off, want); err != nil {
		return 0, o.readError(off, int(want), storage.Internal, err)
	}
	var r io.Reader = body
	if watch != nil {
		watch.Kick() // the headers came: count from now
		r = watch.Reader(body)
	}
	n, err := io.ReadFull(r, dst)
	if err != nil {
		return n, o.failed(ctx, watch, off, want, n, true, err)
	}
	return n, nil
}

// failed classifies the failure of a data request after n bytes, in the
// response body or before it (watch: its stall watch, nil if none).
func (o *object) failed(ctx context.Context, watch *storage.StallWatch, off, want int64, n int, inBody bool, err error) error {
	switch {
	case ctx.Err() != nil:
		return o.readError(off, int(want), storage.Canceled, ctx.Err())
	case watch != nil && watch.Fired() != nil:
		return o.readError(off, int(want), storage.Unavailable,
			fmt.Errorf("%w; %d of %d bytes had arrived", watch.Fired(), n, want))
	case inBody:
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return o.readError(off, int(want), storage.Unavailable,
			fmt.Errorf("response body broke off after %d of %d bytes: %w", n, want, redact(err)))
	}
	return classify("read", o.uri, off, want, ctx, err)
}

func (o *object) readError(off int64, n int, code storage.Code, err error) error {
	return &storage.Error{Op: "read", URI: o.uri, Off: off, Len: int64(n), Code: code, Err: err}
}

// checkRange verifies that the response carries the range asked for, so a
// server that ignores Range never puts the wrong bytes into dst.
func checkRange(contentRange *string, contentLength *int64, off, want int64) error {
	if contentLength != nil && *contentLength != want {
		return fmt.Errorf("asked for %d bytes at %d, response has Content-Length %d", want, off, *contentLength)
	}
	if contentRange == nil || *contentRange == "" {
		if off == 0 {
			return nil // a whole-object 200 is the range asked for
		}
		return fmt.Errorf("asked for bytes %d-%d, response has no Content-Range", off, off+want-1)
	}
	// "bytes 0-1023/4096"
	cr := strings.TrimPrefix(*contentRange, "bytes ")
	span, _, _ := strings.Cut(cr, "/")
	a, b, ok := strings.Cut(span, "-")
	start, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	end, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	if !ok || err1 != nil || err2 != nil || start != off || end != off+want-1 {
		return fmt.Errorf("asked for bytes %d-%d, response has Content-Range %q", off, off+want-1, *contentRange)
	}
	return nil
}
