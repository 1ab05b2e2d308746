package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	gcs "cloud.google.com/go/storage"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

// Open returns the object at uri (gs://bucket/object) after reading its
// attributes.
func (b *backend) Open(ctx context.Context, uri string) (storage.Object, error) {
	bucket, name, err := parseURI(uri)
	if err == nil && name == "" {
		err = errors.New("no object name in URI")
	}
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	h := b.client.Bucket(bucket).Object(name)
	attrs, err := h.Attrs(ctx)
	if err != nil {
		return nil, classify(ctx, "open", uri, 0, 0, err)
	}
	if attrs.Size < 0 {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Internal, Err: fmt.Errorf("negative size %d", attrs.Size)}
	}
	h = h.ReadCompressed(true).Retryer(gcs.WithPolicy(gcs.RetryNever))
	if attrs.Generation > 0 {
		h = h.Generation(attrs.Generation)
	}
	return &object{uri: uri, h: h, size: attrs.Size, stall: b.stall, sums: checksumsOf(attrs), generation: attrs.Generation}, nil
}

type object struct {
	uri   string
	h     *gcs.ObjectHandle
	size  int64
	stall time.Duration
	sums  []storage.Checksum
	// generation is the content Open saw (see Version).
	generation int64
}

var _ storage.Checksummed = (*object)(nil)

// checksumsOf returns the object's stored checksums: its CRC32C, which GCS
// keeps for every object (composed ones too), and its MD5 where it has one
// (composite objects have none). Both are of the bytes as stored, which
// are the bytes read (ReadCompressed: a gzip-encoded object is read as
// stored, not decompressed).
//
// The SDK gives a CRC32C the metadata lacked as 0, which only an empty object
// has as a true value (the CRC32C of a non-empty object is 0 once in 2^32):
// a 0 for a non-empty object counts as absent (an emulator that keeps none).
func checksumsOf(attrs *gcs.ObjectAttrs) []storage.Checksum {
	var sums []storage.Checksum
	if attrs.CRC32C != 0 || attrs.Size == 0 {
		sums = append(sums, storage.Checksum{Algorithm: checksum.CRC32C,
			Value: checksum.Bytes(checksum.CRC32C, uint64(attrs.CRC32C)), Source: "crc32c attribute"})
	}
	if len(attrs.MD5) == checksum.MD5.Size() {
		sums = append(sums, storage.Checksum{Algorithm: checksum.MD5, Value: attrs.MD5, Source: "md5Hash attribute"})
	}
	return sums
}

// Checksums returns the CRC32C (and MD5, where present) Open read.
func (o *object) Checksums() []storage.Checksum { return o.sums }

// NoChecksumReason explains an object without checksums (only a server
// that keeps none: GCS has a CRC32C for every object).
func (o *object) NoChecksumReason() string {
	if len(o.sums) == 0 {
		return "the object's metadata has no crc32c and no md5Hash"
	}
	return ""
}

func (o *object) Size() int64  { return o.size }
func (o *object) Close() error { return nil }

// errStalled is the cancellation cause of a read that received nothing for
// the stall timeout.
var errStalled = errors.New("stalled")

// ReadAt reads len(dst) bytes at off with one ranged GET (see the package
// documentation). A body that breaks part way returns the bytes received
// with storage.Unavailable.
func (o *object) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: int64(len(dst)), Code: storage.InvalidArgument,
			Err: fmt.Errorf("negative offset %d", off)}
	}
	if off >= o.size {
		if len(dst) == 0 && off == o.size {
			return 0, nil
		}
		return 0, io.EOF
	}
	if len(dst) == 0 {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: int64(len(dst)), Code: storage.Canceled, Err: err}
	}
	want := int64(len(dst))
	if rest := o.size - off; want > rest {
		want = rest
	}

	st := &readState{}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	rctx = context.WithValue(rctx, readStateKey{}, st)
	watchdog := time.AfterFunc(o.stall, func() { cancel(errStalled) })
	defer watchdog.Stop()

	got, err := o.read(rctx, dst[:want], off, watchdog)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			// The caller's cancellation; classify reports it.
		case context.Cause(rctx) == errStalled:
			return got, &storage.Error{Op: "read", URI: o.uri, Off: off, Len: want, Code: storage.Unavailable,
				Err: fmt.Errorf("no data for %v after %d bytes (%s): transfer stalled, aborted", o.stall, got, SettingStallTimeoutMS)}
		case st.bodyError() != nil:
			// The body broke: that is the cause, whatever the SDK made of it.
			err = st.bodyError()
		}
		if got > 0 {
			err = fmt.Errorf("after %d bytes: %w", got, err)
		}
		return got, classify(ctx, "read", o.uri, off, want, err)
	}
	if want < int64(len(dst)) {
		return got, io.EOF
	}
	return got, nil
}

// read fills dst from one range reader, resetting the watchdog on every
// byte received.
func (o *object) read(ctx context.Context, dst []byte, off int64, watchdog *time.Timer) (int, error) {
	r, err := o.h.NewRangeReader(ctx, off, int64(len(dst)))
	if err != nil {
		return 0, err
	}
	defer r.Close()
	watchdog.Reset(o.stall)
	if start := r.Attrs.StartOffset; start != off {
		return 0, fmt.Errorf("%w: response starts at byte %d, not %d", errRangeIgnored, start, off)
	}
	got := 0
	for got < len(dst) {
		n, err := r.Read(dst[got:])
		got += n
		if n > 0 {
			watchdog.Reset(o.stall)
		}
		if err == io.EOF {
			if got < len(dst) {
				return got, fmt.Errorf("%w: body ended after %d of %d bytes", io.ErrUnexpectedEOF, got, len(dst))
			}
			break
		}
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

var errRangeIgnored = errors.New("server ignored the requested range")

// readState follows the HTTP traffic of one ReadAt, through the request
// context: the first request, its body's first error, and any further
// request (the SDK reader's reopen after a broken body), which is refused so
// that the engine, not the SDK, resumes.
type readState struct {
	requests atomic.Int32
	mu       sync.Mutex
	bodyErr  error
}

func (s *readState) setBodyErr(err error) {
	s.mu.Lock()
	if s.bodyErr == nil {
		s.bodyErr = err
	}
	s.mu.Unlock()
}

func (s *readState) bodyError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bodyErr
}

type readStateKey struct{}

// errReopenRefused is returned to the SDK when it tries a second request
// within one ReadAt.
var errReopenRefused = errors.New("gcs: second request within one read refused (the engine resumes)")

// guardTransport enforces one request per ReadAt and records how its body
// broke; requests without a readState (metadata) pass through.
type guardTransport struct {
	base http.RoundTripper
}

func (g *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	st, _ := req.Context().Value(readStateKey{}).(*readState)
	if st == nil {
		return g.base.RoundTrip(req)
	}
	if st.requests.Add(1) > 1 {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, errReopenRefused
	}
	resp, err := g.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &watchedBody{ReadCloser: resp.Body, st: st}
	return resp, nil
}

type watchedBody struct {
	io.ReadCloser
	st *readState
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.st.setBodyErr(err)
	}
	return n, err
}
