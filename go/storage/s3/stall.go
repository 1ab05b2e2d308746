package s3

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/model-streamer/model-streamer/go/storage"
)

// StallError is storage.StallError (its name here before it was shared).
type StallError = storage.StallError

// stallClient aborts a request when it receives no byte for timeout: it
// cancels the request's context unless a response header or a body byte
// arrived since the watchdog was last armed. It wraps every request the S3
// client makes, so a silent server or a black-holed connection fails Open,
// List and ReadAt in bounded time.
type stallClient struct {
	inner   aws.HTTPClient
	timeout time.Duration
}

func (c *stallClient) Do(req *http.Request) (*http.Response, error) {
	parent := req.Context()
	ctx, cancel := context.WithCancelCause(parent)
	stall := &StallError{After: c.timeout}
	t := time.AfterFunc(c.timeout, func() { cancel(stall) })
	resp, err := c.inner.Do(req.WithContext(ctx))
	if err != nil {
		t.Stop()
		stalled := context.Cause(ctx) == error(stall) && parent.Err() == nil
		cancel(nil)
		if stalled {
			return nil, stall
		}
		return nil, err
	}
	t.Reset(c.timeout)
	resp.Body = &watchedBody{rc: resp.Body, t: t, d: c.timeout, ctx: ctx, parent: parent, cancel: cancel, stall: stall}
	return resp, nil
}

// watchedBody re-arms the watchdog on every read that returns bytes and
// reports a read the watchdog cut short as a *StallError.
type watchedBody struct {
	rc     io.ReadCloser
	t      *time.Timer
	d      time.Duration
	ctx    context.Context
	parent context.Context
	cancel context.CancelCauseFunc
	stall  *StallError
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.t.Reset(b.d)
	}
	if err != nil && err != io.EOF && context.Cause(b.ctx) == error(b.stall) && b.parent.Err() == nil {
		err = b.stall
	}
	return n, err
}

func (b *watchedBody) Close() error {
	b.t.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}
