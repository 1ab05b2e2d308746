package storage

import (
	"context"
	"fmt"
	"io"
	"time"
)

// StallError is the cause of a request that received nothing for its
// stall timeout: no response header, or no body byte since the last one.
// Backends report it as Unavailable, so the engine retries and resumes
// after the last byte received.
type StallError struct {
	After time.Duration // the stall timeout
}

func (e *StallError) Error() string {
	return fmt.Sprintf("stalled: no data received for %v (MODEL_STREAMER_STALL_TIMEOUT_MS)", e.After)
}

// Timeout reports true, as a net.Error does for a timeout.
func (e *StallError) Timeout() bool { return true }

// Temporary reports true: a new request may well succeed.
func (e *StallError) Temporary() bool { return true }

// StallWatch aborts one HTTP request that receives no byte for its
// timeout. A transport's response-header timeout alone would not cut a
// body that stops part way, nor a silent server before any header. Make
// the request with Context, Kick when its header arrives, read its body
// through Reader, and call Done when finished with it.
type StallWatch struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	t      *time.Timer
	d      time.Duration
	stall  *StallError
}

// NewStallWatch arms a watch of d over a request made with parent.
func NewStallWatch(parent context.Context, d time.Duration) *StallWatch {
	ctx, cancel := context.WithCancelCause(parent)
	w := &StallWatch{ctx: ctx, cancel: cancel, d: d, stall: &StallError{After: d}}
	w.t = time.AfterFunc(d, func() { cancel(w.stall) })
	return w
}

// Context is the request's context: canceled when the watch fires.
func (w *StallWatch) Context() context.Context { return w.ctx }

// Fired returns the stall when the watch cut the request, else nil.
func (w *StallWatch) Fired() *StallError {
	if context.Cause(w.ctx) == error(w.stall) {
		return w.stall
	}
	return nil
}

// Kick re-arms the watch: data arrived.
func (w *StallWatch) Kick() { w.t.Reset(w.d) }

// Done releases the watch and the request's context.
func (w *StallWatch) Done() {
	w.t.Stop()
	w.cancel(nil)
}

// Reader returns r (a response body) re-arming the watch on every read
// that returns bytes.
func (w *StallWatch) Reader(r io.Reader) io.Reader { return watchedReader{r: r, w: w} }

type watchedReader struct {
	r io.Reader
	w *StallWatch
}

func (r watchedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.w.Kick()
	}
	return n, err
}
