package storage

import (
	"context"
	"errors"
	"io"
	"testing"
)

func TestReadWindow(t *testing.T) {
	const size = 10
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		closed   bool
		off      int64
		n        int
		wantN    int
		wantErr  error
		wantCode Code
		gets     int   // calls of get
		getLen   int   // len(dst) get saw
		getReq   int64 // reqLen get saw
	}{
		{name: "inside", off: 2, n: 4, wantN: 4, gets: 1, getLen: 4, getReq: 4},
		{name: "up to the end", off: 6, n: 4, wantN: 4, gets: 1, getLen: 4, getReq: 4}, // io.ReaderAt allows nil here
		{name: "past the end", off: 8, n: 5, wantN: 2, wantErr: io.EOF, gets: 1, getLen: 2, getReq: 5},
		{name: "at the end", off: size, n: 3, wantErr: io.EOF},
		{name: "nothing asked", off: 3, n: 0},
		{name: "negative", off: -1, n: 3, wantCode: InvalidArgument},
		{name: "closed", closed: true, off: 0, n: 3, wantCode: InvalidArgument},
		{name: "canceled", ctx: canceled, off: 0, n: 3, wantCode: Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			gets, getLen, getReq := 0, 0, int64(0)
			get := func(_ context.Context, dst []byte, off, reqLen int64) (int, error) {
				gets, getLen, getReq = gets+1, len(dst), reqLen
				return len(dst), nil
			}
			n, err := ReadWindow(ctx, "s3://b/k", size, tc.closed, make([]byte, tc.n), tc.off, get)
			if tc.wantCode != 0 {
				var se *Error
				if !errors.As(err, &se) || se.Code != tc.wantCode || se.URI != "s3://b/k" || n != 0 {
					t.Fatalf("got %d, %v; want a %v error naming the object", n, err, tc.wantCode)
				}
				return
			}
			if n != tc.wantN || !errors.Is(err, tc.wantErr) || (err != nil && tc.wantErr == nil) {
				t.Fatalf("got %d, %v; want %d, %v", n, err, tc.wantN, tc.wantErr)
			}
			if gets != tc.gets || getLen != tc.getLen || getReq != tc.getReq {
				t.Fatalf("get called %d times with %d bytes (asked %d); want %d, %d, %d", gets, getLen, getReq, tc.gets, tc.getLen, tc.getReq)
			}
		})
	}
}
