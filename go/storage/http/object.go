package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	nethttp "net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// drainLimit is the largest unwanted body read out rather than cut off.
const drainLimit = 1 << 20

// object is one opened URL: its size and validators as Open saw them, and
// where its ranges are read from.
type object struct {
	b    *Backend
	name string   // the URL without query or user information, for messages
	orig *url.URL // as given

	mu    sync.RWMutex
	final *url.URL // the redirect target ranges go to; orig when none

	size    int64
	etag    string // strong ETag, or ""
	lastMod string // Last-Modified, used when there is no strong ETag
	ranges  bool   // the server honours Range
	closed  atomic.Bool
}

var _ storage.Object = (*object)(nil)

// Open learns the object's size, validators and final URL (see the package
// documentation), retrying transient failures.
func (b *Backend) Open(ctx context.Context, uri string) (storage.Object, error) {
	name := RedactString(uri)
	u, err := parseURL(uri)
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: name, Code: storage.InvalidArgument, Err: err}
	}
	o := &object{b: b, name: name, orig: u, final: u}
	start := time.Now()
	p := b.openRetry
	for attempt := 0; ; attempt++ {
		err = o.stat(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil || storage.CodeOf(err) != storage.Unavailable || attempt >= p.MaxRetries {
			return nil, err
		}
		delay := min(p.BaseDelay<<attempt, p.MaxDelay)
		delay += time.Duration(rand.Int64N(int64(delay)/2 + 1))
		var se *storage.Error
		if errors.As(err, &se) && se.RetryAfter > delay {
			delay = se.RetryAfter
		}
		if time.Since(start)+delay > p.Timeout {
			return nil, err
		}
		if serr := sleep(ctx, delay); serr != nil {
			return nil, &storage.Error{Op: "open", URI: name, Code: storage.Canceled, Err: serr}
		}
	}
	if !o.ranges && o.size > MaxWholeObjectBytes {
		return nil, &storage.Error{Op: "open", URI: name, Code: storage.InvalidArgument, Err: fmt.Errorf(
			"the server ignores Range requests (it answered a ranged GET with 200 and the whole body), "+
				"and the file is %d bytes: byte ranges are needed to read files over %d bytes", o.size, MaxWholeObjectBytes)}
	}
	return o, nil
}

// do sends a request for u with the given headers, credentials only when u
// is on the original host, under a stall watchdog. On success the caller
// reads the body through watchedReader and calls w.done.
func (o *object) do(ctx context.Context, method string, u *url.URL, h nethttp.Header, op string, off, n int64) (*nethttp.Response, *storage.StallWatch, error) {
	w := storage.NewStallWatch(ctx, o.b.stall)
	req, err := nethttp.NewRequestWithContext(w.Context(), method, u.String(), nil)
	if err != nil {
		w.Done()
		return nil, nil, &storage.Error{Op: op, URI: o.name, Code: storage.InvalidArgument, Err: errors.New("cannot build a request for the URL")}
	}
	if sameHost(u, o.orig) {
		o.b.addCredentials(req)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := o.b.client.Do(req)
	if err != nil {
		stall := w.Fired()
		w.Done()
		return nil, nil, transportError(ctx, op, o.name, off, n, err, stall)
	}
	w.Kick()
	return resp, w, nil
}

func closeResp(resp *nethttp.Response, w *storage.StallWatch) {
	resp.Body.Close()
	w.Done()
}

// stat asks for the metadata: HEAD, then a ranged GET of byte 0 where HEAD
// is refused or does not show range support.
func (o *object) stat(ctx context.Context) error {
	resp, w, err := o.do(ctx, nethttp.MethodHead, o.orig, nil, "open", 0, 0)
	if err != nil {
		return err
	}
	closeResp(resp, w)
	switch {
	case resp.StatusCode/100 == 2 && resp.ContentLength >= 0 && identityEncoding(resp) &&
		strings.EqualFold(strings.TrimSpace(resp.Header.Get("Accept-Ranges")), "bytes"):
		o.size, o.ranges = resp.ContentLength, true
		o.setValidators(resp.Header)
		o.final = resp.Request.URL
		return nil
	case storage.CodeForHTTPStatus(resp.StatusCode) == storage.Unavailable:
		return statusError(ctx, "open", o.name, 0, 0, resp, o.redirected(resp.Request.URL))
	}
	// HEAD refused (403 for a URL signed for GET, 405), or no sign of
	// range support or size: a ranged GET tells.
	resp, w, err = o.do(ctx, nethttp.MethodGet, o.orig, nethttp.Header{"Range": {"bytes=0-0"}}, "open", 0, 0)
	if err != nil {
		return err
	}
	defer closeResp(resp, w)
	final := resp.Request.URL
	if !identityEncoding(resp) {
		return &storage.Error{Op: "open", URI: o.name, Code: storage.InvalidArgument, Err: fmt.Errorf(
			"the server sends the file encoded (Content-Encoding: %s) though asked for the bytes as stored", resp.Header.Get("Content-Encoding"))}
	}
	switch resp.StatusCode {
	case nethttp.StatusPartialContent:
		_, _, total, err := storage.ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || total < 0 {
			return &storage.Error{Op: "open", URI: o.name, Code: storage.Internal, Err: fmt.Errorf(
				"the answer to a ranged GET gives no size (Content-Range %q)", resp.Header.Get("Content-Range"))}
		}
		o.size, o.ranges = total, true
	case nethttp.StatusOK:
		if resp.ContentLength < 0 {
			return &storage.Error{Op: "open", URI: o.name, Code: storage.InvalidArgument, Err: errors.New(
				"the server ignores Range requests and gives no Content-Length: the file's size is unknown")}
		}
		o.size, o.ranges = resp.ContentLength, false
		if o.size <= drainLimit {
			// A small body is read out so the connection is kept, rather
			// than reset under a server still writing it.
			_, _ = io.Copy(io.Discard, w.Reader(resp.Body))
		}
	case nethttp.StatusRequestedRangeNotSatisfiable:
		// Byte 0 of an empty file: "bytes */0".
		cr := strings.TrimSpace(resp.Header.Get("Content-Range"))
		if cr != "bytes */0" {
			return statusError(ctx, "open", o.name, 0, 0, resp, o.redirected(final))
		}
		o.size, o.ranges = 0, true
	default:
		return statusError(ctx, "open", o.name, 0, 0, resp, o.redirected(final))
	}
	o.setValidators(resp.Header)
	o.final = final
	return nil
}

// redirected returns u when it is not the original URL (for messages).
func (o *object) redirected(u *url.URL) *url.URL {
	if u == nil || u.String() == o.orig.String() {
		return nil
	}
	return u
}

func identityEncoding(resp *nethttp.Response) bool {
	ce := strings.TrimSpace(resp.Header.Get("Content-Encoding"))
	return ce == "" || strings.EqualFold(ce, "identity")
}

// strongETag returns the header's ETag when it is strong (If-Match and
// If-Range compare strongly: a weak one never matches).
func strongETag(h nethttp.Header) string {
	e := strings.TrimSpace(h.Get("ETag"))
	if e == "" || strings.HasPrefix(e, "W/") {
		return ""
	}
	return e
}

func (o *object) setValidators(h nethttp.Header) {
	o.etag = strongETag(h)
	o.lastMod = strings.TrimSpace(h.Get("Last-Modified"))
}

// Size is the object's size when it was opened.
func (o *object) Size() int64 { return o.size }

// Close releases nothing (requests hold no state between reads); reads
// after Close fail.
func (o *object) Close() error {
	o.closed.Store(true)
	return nil
}

func (o *object) readError(off, n int64, code storage.Code, err error) *storage.Error {
	return &storage.Error{Op: "read", URI: o.name, Off: off, Len: n, Code: code, Err: err}
}

// ReadAt reads len(dst) bytes at off with one GET. When the response
// breaks off or stalls it returns the bytes received with an Unavailable
// error, so the caller can resume at off+n.
func (o *object) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	return storage.ReadWindow(ctx, o.name, o.size, o.closed.Load(), dst, off, o.get)
}

// expired reports a status with which a redirect target (a presigned URL)
// may say its signature expired.
func expired(status int) bool {
	switch status {
	case nethttp.StatusBadRequest, nethttp.StatusUnauthorized, nethttp.StatusForbidden,
		nethttp.StatusNotFound, nethttp.StatusGone:
		return true
	}
	return false
}

// get fills dst (within the object) from off, from the final URL, or from
// the original one again when the final one has expired.
func (o *object) get(ctx context.Context, dst []byte, off, reqLen int64) (int, error) {
	o.mu.RLock()
	target := o.final
	o.mu.RUnlock()
	onRedirect := target.String() != o.orig.String()
	n, err, retry := o.fetch(ctx, target, onRedirect, dst, off, reqLen)
	if retry {
		// Resolve the original URL again: it redirects to a fresh target.
		n, err, _ = o.fetch(ctx, o.orig, false, dst, off, reqLen)
	}
	return n, err
}

// fetch is one GET of dst's span from u. retry reports an answer that
// says a redirect target expired (onRedirect only); the caller then asks
// the original URL.
func (o *object) fetch(ctx context.Context, u *url.URL, onRedirect bool, dst []byte, off, reqLen int64) (n int, err error, retry bool) {
	last := off + int64(len(dst)) - 1
	h := nethttp.Header{}
	if o.ranges {
		h.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(last, 10))
	}
	// If-Match refuses another version outright (412); If-Range makes a
	// server that does not know If-Match send the new version whole
	// (200), which the checks below catch.
	switch {
	case o.etag != "":
		h.Set("If-Match", o.etag)
		if o.ranges {
			h.Set("If-Range", o.etag)
		}
	case o.lastMod != "":
		h.Set("If-Unmodified-Since", o.lastMod)
		if o.ranges {
			h.Set("If-Range", o.lastMod)
		}
	}
	resp, w, err := o.do(ctx, nethttp.MethodGet, u, h, "read", off, reqLen)
	if err != nil {
		return 0, err, false
	}
	defer closeResp(resp, w)
	final := resp.Request.URL
	body := io.Reader(w.Reader(resp.Body))

	switch resp.StatusCode {
	case nethttp.StatusPartialContent:
		if err := o.sameVersion(resp); err != nil {
			return 0, o.readError(off, reqLen, storage.NotFound, err), false
		}
		cr := resp.Header.Get("Content-Range")
		start, end, total, err := storage.ParseContentRange(cr)
		switch {
		case err != nil:
			return 0, o.readError(off, reqLen, storage.Internal, err), false
		case total >= 0 && total != o.size:
			return 0, o.readError(off, reqLen, storage.NotFound, &storage.HTTPError{Status: resp.StatusCode,
				Message: fmt.Sprintf("the file changed since it was opened: %d bytes then, %d now", o.size, total)}), false
		case start != off:
			return 0, o.readError(off, reqLen, storage.Internal, fmt.Errorf(
				"asked for bytes %d-%d, the server sent Content-Range %q", off, last, cr)), false
		case end < last:
			dst = dst[:end-start+1] // a shorter answer: take it, the caller resumes
		}
	case nethttp.StatusOK:
		// A server that ignores Range, or one whose If-Range did not
		// match: it sends the whole of the current version.
		if err := o.sameVersion(resp); err != nil {
			return 0, o.readError(off, reqLen, storage.NotFound, err), false
		}
		if resp.ContentLength >= 0 && resp.ContentLength != o.size {
			return 0, o.readError(off, reqLen, storage.NotFound, &storage.HTTPError{Status: resp.StatusCode,
				Message: fmt.Sprintf("the file changed since it was opened: %d bytes then, %d now", o.size, resp.ContentLength)}), false
		}
		if !identityEncoding(resp) {
			return 0, o.readError(off, reqLen, storage.InvalidArgument, fmt.Errorf(
				"the server sends the file encoded (Content-Encoding: %s)", resp.Header.Get("Content-Encoding"))), false
		}
		if o.ranges && off > MaxWholeObjectBytes {
			return 0, o.readError(off, reqLen, storage.Internal, errors.New(
				"the server ignored the Range header (answered 200 with the whole file)")), false
		}
		if off > 0 {
			if _, err := io.CopyN(io.Discard, body, off); err != nil {
				return 0, bodyError(ctx, "read", o.name, off, reqLen, 0, err, w.Fired()), false
			}
		}
	case nethttp.StatusPreconditionFailed, nethttp.StatusRequestedRangeNotSatisfiable:
		return 0, o.readError(off, reqLen, storage.NotFound, &storage.HTTPError{Status: resp.StatusCode,
			Message: "the file changed since it was opened (" + o.validatorName() + " no longer matches)"}), false
	default:
		if onRedirect && expired(resp.StatusCode) {
			return 0, nil, true
		}
		return 0, statusError(ctx, "read", o.name, off, reqLen, resp, o.redirected(final)), false
	}

	n, err = io.ReadFull(body, dst)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, bodyError(ctx, "read", o.name, off, reqLen, n, err, w.Fired()), false
	}
	// Observe the end of the body so the connection goes back to the
	// pool (closing it before EOF would close the connection).
	var probe [1]byte
	body.Read(probe[:])
	o.mu.Lock()
	if o.final.String() != final.String() {
		o.final = final // resolved again: later ranges go to the new target
	}
	o.mu.Unlock()
	if int64(n) < last-off+1 {
		return n, o.readError(off, reqLen, storage.Unavailable, fmt.Errorf(
			"the server sent bytes %d-%d of the %d-%d asked for", off, off+int64(n)-1, off, last)), false
	}
	return n, nil, false
}

func (o *object) validatorName() string {
	switch {
	case o.etag != "":
		return "ETag " + o.etag
	case o.lastMod != "":
		return "Last-Modified " + o.lastMod
	}
	return "its size"
}

// sameVersion checks an answer's validators against those Open saw: a
// server that honours neither If-Match nor If-Range still cannot slip in
// another version's bytes.
func (o *object) sameVersion(resp *nethttp.Response) error {
	if o.etag != "" {
		if e := strongETag(resp.Header); e != "" && e != o.etag {
			return &storage.HTTPError{Status: resp.StatusCode,
				Message: fmt.Sprintf("the file changed since it was opened (ETag %s then, %s now)", o.etag, e)}
		}
		return nil
	}
	if o.lastMod != "" {
		if lm := strings.TrimSpace(resp.Header.Get("Last-Modified")); lm != "" && lm != o.lastMod {
			return &storage.HTTPError{Status: resp.StatusCode,
				Message: fmt.Sprintf("the file changed since it was opened (Last-Modified %s then, %s now)", o.lastMod, lm)}
		}
	}
	return nil
}
