package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// flaky serves data but breaks each of the first `breaks` reads after
// `cut` bytes with a transient error, as a reset connection would.
type flaky struct {
	data   []byte
	cut    int
	breaks int
	reads  int
	code   storage.Code
}

func (f *flaky) Size() int64  { return int64(len(f.data)) }
func (f *flaky) Close() error { return nil }
func (f *flaky) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	f.reads++
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(dst, f.data[off:])
	if f.breaks > 0 && n > f.cut {
		f.breaks--
		return f.cut, &storage.Error{Op: "read", Code: f.code, Err: errors.New("connection reset")}
	}
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}

func TestReadRangeResumesFromTheLastByte(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	policy := storage.RetryPolicy{MaxRetries: 5, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}
	cases := []struct {
		name    string
		obj     *flaky
		wantErr storage.Code
		retries int
	}{
		{"no faults", &flaky{data: data}, 0, 0},
		{"three resets", &flaky{data: data, cut: 1000, breaks: 3, code: storage.Unavailable}, 0, 3},
		{"more resets than retries", &flaky{data: data, cut: 10, breaks: 100, code: storage.Unavailable}, storage.Unavailable, 5},
		{"permanent failure is not retried", &flaky{data: data, cut: 10, breaks: 1, code: storage.PermissionDenied}, storage.PermissionDenied, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := make([]byte, len(data)-100)
			retries := 0
			got, err := storage.ReadRange(context.Background(), c.obj, dst, 50, int64(len(dst)), policy, func(error) { retries++ })
			if c.wantErr != 0 {
				if storage.CodeOf(err) != c.wantErr {
					t.Fatalf("err %v, want code %v", err, c.wantErr)
				}
			} else if err != nil || got != int64(len(dst)) || !bytes.Equal(dst, data[50:50+len(dst)]) {
				t.Fatalf("got %d bytes, err %v; or bytes differ", got, err)
			}
			if retries != c.retries {
				t.Fatalf("%d retries, want %d", retries, c.retries)
			}
		})
	}
}

func TestReadRangeReportsAShortObject(t *testing.T) {
	obj := &flaky{data: make([]byte, 100)}
	_, err := storage.ReadRange(context.Background(), obj, make([]byte, 200), 0, 200, storage.DefaultRetryPolicy, nil)
	if !errors.Is(err, storage.ErrShortObject) {
		t.Fatalf("got %v, want ErrShortObject", err)
	}
}
