package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Open returns the object at uri (gs://bucket/object) after reading its
// attributes with the JSON API.
func (b *backend) Open(ctx context.Context, uri string) (storage.Object, error) {
	bucket, name, err := parseURI(uri)
	if err == nil && name == "" {
		err = errors.New("no object name in URI")
	}
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	var attrs objectAttrs
	if err := b.getJSON(ctx, "open", uri, b.objectURL(bucket, name), &attrs); err != nil {
		return nil, err
	}
	if attrs.Size < 0 {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Internal, Err: fmt.Errorf("negative size %d", attrs.Size)}
	}
	return &object{b: b, uri: uri, media: b.mediaURL(bucket, name, int64(attrs.Generation)),
		size: int64(attrs.Size), sums: attrs.checksums(), generation: int64(attrs.Generation)}, nil
}

type object struct {
	b     *backend
	uri   string
	media string // the XML API URL of the bytes, pinned to the generation
	size  int64
	sums  []storage.Checksum
	// generation is the content Open saw (see Version); 0 when the server
	// gave none, and reads are then not pinned.
	generation int64
}

func (o *object) Size() int64  { return o.size }
func (o *object) Close() error { return nil }

// ReadAt reads len(dst) bytes at off with one ranged GET (see the package
// documentation). A body that breaks part way returns the bytes received
// with storage.Unavailable.
func (o *object) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	return storage.ReadWindow(ctx, o.uri, o.size, false, dst, off, o.get)
}

var errRangeIgnored = errors.New("server ignored the requested range")

// get is the one request of a ReadAt: dst lies inside the object.
func (o *object) get(ctx context.Context, dst []byte, off, reqLen int64) (int, error) {
	last := off + int64(len(dst)) - 1
	h := http.Header{
		"Range": {"bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(last, 10)},
		// The stored bytes, never a decompressed version of a gzip-encoded
		// object: the size and every offset are of what is stored. Set
		// here, so Go's transport neither adds its own nor decompresses.
		"Accept-Encoding": {"gzip"},
	}
	fail := func(got int, err error) (int, error) {
		if got > 0 {
			err = fmt.Errorf("after %d bytes: %w", got, err)
		}
		return got, classify(ctx, "read", o.uri, off, reqLen, err)
	}
	resp, w, err := o.b.send(ctx, http.MethodGet, o.media, h, nil)
	if err != nil {
		return fail(0, err)
	}
	defer w.Done()
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		start, _, _, err := storage.ParseContentRange(cr)
		if err != nil {
			return 0, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: reqLen, Code: storage.Internal, Err: err}
		}
		if start != off {
			return 0, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: reqLen, Code: storage.Internal,
				Err: fmt.Errorf("%w: response starts at byte %d, not %d", errRangeIgnored, start, off)}
		}
	case http.StatusOK:
		// The whole object: right only when it was asked from byte 0.
		if off != 0 {
			return 0, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: reqLen, Code: storage.Internal,
				Err: fmt.Errorf("%w: response starts at byte 0, not %d", errRangeIgnored, off)}
		}
	default:
		return 0, statusError(ctx, "read", o.uri, off, reqLen, resp, w)
	}
	if transcoded(resp) {
		return 0, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: reqLen, Code: storage.Internal,
			Err: errors.New("the server sent a gzip-encoded object decompressed, though asked for the stored bytes")}
	}
	got, err := io.ReadFull(w.Reader(resp.Body), dst)
	if err != nil {
		switch {
		case w.Fired() != nil:
			err = w.Fired()
		case err == io.ErrUnexpectedEOF || err == io.EOF:
			err = fmt.Errorf("%w: body ended after %d of %d bytes", io.ErrUnexpectedEOF, got, len(dst))
		}
		return fail(got, err)
	}
	// Observe the end of the body so the connection goes back to the pool
	// (closing a body before its end closes the connection).
	var probe [1]byte
	_, _ = resp.Body.Read(probe[:])
	return got, nil
}

// transcoded reports an answer decompressed by the server (decompressive
// transcoding), whose bytes are not the stored ones Open sized.
func transcoded(resp *http.Response) bool {
	stored := strings.TrimSpace(resp.Header.Get("X-Goog-Stored-Content-Encoding"))
	sent := strings.TrimSpace(resp.Header.Get("Content-Encoding"))
	return strings.EqualFold(stored, "gzip") && !strings.EqualFold(sent, "gzip")
}
