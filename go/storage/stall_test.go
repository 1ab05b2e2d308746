package storage

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// slowReader returns one byte every gap, until n bytes.
type slowReader struct {
	ctx context.Context
	gap time.Duration
	n   int
}

func (r *slowReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	select {
	case <-time.After(r.gap):
	case <-r.ctx.Done():
		return 0, context.Cause(r.ctx)
	}
	r.n--
	p[0] = 'x'
	return 1, nil
}

func TestStallWatch(t *testing.T) {
	cases := []struct {
		name   string
		gap    time.Duration
		stalls bool
	}{
		{"bytes keep arriving", 20 * time.Millisecond, false},
		{"a gap longer than the timeout", 400 * time.Millisecond, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := NewStallWatch(context.Background(), 150*time.Millisecond)
			defer w.Done()
			// 10 bytes at 20 ms is 200 ms in all: longer than the timeout,
			// so only the re-arming on each byte keeps it alive.
			_, err := io.ReadAll(w.Reader(&slowReader{ctx: w.Context(), gap: c.gap, n: 10}))
			stall := w.Fired()
			if c.stalls {
				var se *StallError
				if stall == nil || !errors.As(err, &se) || !strings.Contains(err.Error(), "stalled") {
					t.Fatalf("err %v, Fired %v: want the stall", err, stall)
				}
				return
			}
			if err != nil || stall != nil {
				t.Fatalf("err %v, Fired %v: want neither", err, stall)
			}
		})
	}
}
