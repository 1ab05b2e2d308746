package http

import (
	"context"
	"io"
	"time"
)

// watch aborts a request that receives no byte for its timeout: no
// response header, or no body byte since the last one. A silent server or
// a black-holed connection then fails in bounded time, as an Unavailable
// error the engine retries, resuming after the last byte received.
type watch struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	t      *time.Timer
	d      time.Duration
	stall  *StallError
}

func newWatch(parent context.Context, d time.Duration) *watch {
	ctx, cancel := context.WithCancelCause(parent)
	w := &watch{ctx: ctx, cancel: cancel, d: d, stall: &StallError{After: d}}
	w.t = time.AfterFunc(d, func() { cancel(w.stall) })
	return w
}

// fired returns the stall when the watchdog cut the request, else nil.
func (w *watch) fired() *StallError {
	if context.Cause(w.ctx) == error(w.stall) {
		return w.stall
	}
	return nil
}

// kick re-arms the watchdog: data arrived.
func (w *watch) kick() { w.t.Reset(w.d) }

// done releases the watchdog and the request's context.
func (w *watch) done() {
	w.t.Stop()
	w.cancel(nil)
}

// reader re-arms w on every read that returns bytes.
type watchedReader struct {
	r io.Reader
	w *watch
}

func (r watchedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.w.kick()
	}
	return n, err
}
