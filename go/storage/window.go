package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// ReadWindow is the ReadAt of an object of size bytes named uri whose
// store serves one byte range per request: it checks the call (canceled,
// closed, negative offset), answers what needs no request (nothing asked,
// past the end), and passes get the part of dst that lies inside the
// object, with the length the caller asked for (for messages), adding
// io.EOF when the request ran to the end. get returns the bytes it put in
// dst and its error, as ReadAt does.
func ReadWindow(ctx context.Context, uri string, size int64, closed bool, dst []byte, off int64,
	get func(ctx context.Context, dst []byte, off, reqLen int64) (int, error)) (int, error) {
	fail := func(code Code, err error) (int, error) {
		return 0, &Error{Op: "read", URI: uri, Off: off, Len: int64(len(dst)), Code: code, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(Canceled, err)
	}
	if closed {
		return fail(InvalidArgument, fmt.Errorf("object is closed: %w", os.ErrClosed))
	}
	if off < 0 {
		return fail(InvalidArgument, errors.New("negative offset"))
	}
	if len(dst) == 0 {
		return 0, nil
	}
	if off >= size {
		return 0, io.EOF
	}
	want, eof := dst, false
	if rest := size - off; int64(len(want)) > rest {
		want, eof = want[:rest], true
	}
	n, err := get(ctx, want, off, int64(len(dst)))
	if err == nil && eof {
		err = io.EOF
	}
	return n, err
}
