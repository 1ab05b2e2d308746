package storage

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds how a range read is retried after transient
// (Unavailable) failures.
type RetryPolicy struct {
	MaxRetries int           // retries after the first attempt
	Timeout    time.Duration // total time for the range, retries included (0: none)
	BaseDelay  time.Duration // first backoff; doubles each retry, with jitter
	MaxDelay   time.Duration // backoff cap
}

// DefaultRetryPolicy retries 8 times within a minute, backing off from
// 50 ms to 5 s.
var DefaultRetryPolicy = RetryPolicy{MaxRetries: 8, Timeout: time.Minute, BaseDelay: 50 * time.Millisecond, MaxDelay: 5 * time.Second}

// ErrShortObject reports an object that ended before the bytes its size
// promised (a file truncated while being read, say).
var ErrShortObject = errors.New("object ended early: was it truncated or replaced while being read?")

// ReadRange reads need bytes into dst from off (dst may be longer, for
// aligned reads), retrying transient failures under p and resuming each
// retry from the last byte received, so no byte is read twice into dst nor
// skipped. It returns the bytes read; onRetry, if set, is called before
// each retry.
func ReadRange(ctx context.Context, obj Object, dst []byte, off, need int64, p RetryPolicy, onRetry func(error)) (int64, error) {
	start := time.Now()
	var got int64
	for attempt := 0; ; attempt++ {
		n, err := obj.ReadAt(ctx, dst[got:], off+got)
		got += int64(n)
		if got >= need {
			return got, nil
		}
		switch {
		case err == nil && n == 0:
			err = io.ErrNoProgress
		case err == nil:
			continue // a short read without error: ask for the rest
		case errors.Is(err, io.EOF):
			return got, ErrShortObject
		}
		if ctx.Err() != nil || CodeOf(err) != Unavailable || attempt >= p.MaxRetries {
			return got, err
		}
		delay := min(p.BaseDelay<<attempt, p.MaxDelay)
		delay += time.Duration(rand.Int64N(int64(delay)/2 + 1))
		var se *Error
		if errors.As(err, &se) && se.RetryAfter > delay {
			delay = se.RetryAfter
		}
		if p.Timeout > 0 && time.Since(start)+delay > p.Timeout {
			return got, err
		}
		if onRetry != nil {
			onRetry(err)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return got, ctx.Err()
		}
	}
}
