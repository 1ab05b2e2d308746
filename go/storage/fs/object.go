package fs

import (
	"context"
	"errors"
	"io"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/model-streamer/model-streamer/go/storage"
	"golang.org/x/sys/unix"
)

// file is the part every object shares: the buffered descriptor, the size
// seen at open, and the pread loop.
type file struct {
	uri    string // as given to Open, for errors
	path   string
	f      *os.File
	rc     syscall.RawConn
	size   int64
	closed atomic.Bool
}

func newFile(uri, path string, f *os.File, size int64) (*file, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Internal, Err: err}
	}
	return &file{uri: uri, path: path, f: f, rc: rc, size: size}, nil
}

// Size returns the size of the file when it was opened.
func (o *file) Size() int64 { return o.size }

// ReadAt preads through the page cache.
func (o *file) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	return o.readAt(ctx, dst, off, nil)
}

// Close closes the file. Later calls return nil.
func (o *file) Close() error {
	if o.closed.Swap(true) {
		return nil
	}
	if err := o.f.Close(); err != nil {
		return &storage.Error{Op: "close", URI: o.uri, Code: codeFor(err), Err: err}
	}
	return nil
}

// control runs fn with the descriptor behind rc, which stays open meanwhile
// even if Close runs concurrently. Unlike RawConn.Read it does not serialize
// concurrent callers.
func control(rc syscall.RawConn, fn func(fd int)) error {
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

// Retry budget for EAGAIN, which a blocking regular file should not return
// but some network file systems do.
const (
	maxAgain     = 40
	againBackoff = time.Millisecond
	againMaxWait = 50 * time.Millisecond
)

// readAt reads len(dst) bytes at off, one pread after another, checking ctx
// before each. With d non-nil, each pread whose buffer, offset and length are
// aligned goes to d's O_DIRECT descriptor and any other to the buffered one.
func (o *file) readAt(ctx context.Context, dst []byte, off int64, d *directObject) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, o.readError(off, len(dst), storage.Canceled, err)
	}
	if off < 0 {
		return 0, o.readError(off, len(dst), storage.InvalidArgument, errors.New("negative offset"))
	}
	done, again := 0, 0
	for done < len(dst) {
		if done > 0 || again > 0 {
			if err := ctx.Err(); err != nil {
				return done, o.readError(off, len(dst), storage.Canceled, err)
			}
		}
		p, pos := dst[done:], off+int64(done)
		rc, direct := o.rc, false
		if d != nil && d.aligned(p, pos) {
			rc, direct = d.drc, true
		}
		var n int
		var errno error
		if err := control(rc, func(fd int) { n, errno = unix.Pread(fd, p, pos) }); err != nil {
			return done, o.readError(off, len(dst), codeFor(err), err) // closed
		}
		if errno == nil {
			if n <= 0 {
				return done, io.EOF
			}
			done += n
			again = 0
			continue
		}
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN && again < maxAgain:
			again++
			wait := min(againBackoff<<min(again, 16), againMaxWait)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		case direct && errno == syscall.EINVAL:
			// The file system refused this O_DIRECT read despite the
			// alignment it advertised: read buffered from now on.
			d.refused.Store(true)
			continue
		}
		return done, o.readError(off, len(dst), codeFor(errno), os.NewSyscallError("pread", errno))
	}
	return done, nil
}

func (o *file) readError(off int64, n int, code storage.Code, err error) error {
	return &storage.Error{Op: "read", URI: o.uri, Off: off, Len: int64(n), Code: code, Err: err}
}

// bufferedObject reads through the page cache.
type bufferedObject struct {
	*file
}

// Strategy returns StrategyBuffered.
func (o *bufferedObject) Strategy() string { return StrategyBuffered }

// directObject reads aligned ranges with O_DIRECT and others buffered. It
// implements storage.Aligned.
type directObject struct {
	*file
	d       *os.File // O_DIRECT, same inode as file.f
	drc     syscall.RawConn
	align   int
	refused atomic.Bool // an aligned O_DIRECT read failed with EINVAL
}

// Alignment returns the buffer address, offset and length granularity of
// reads that bypass the page cache.
func (o *directObject) Alignment() int { return o.align }

// Strategy returns StrategyDirect, or StrategyBuffered once the file system
// has refused an O_DIRECT read.
func (o *directObject) Strategy() string {
	if o.refused.Load() {
		return StrategyBuffered
	}
	return StrategyDirect
}

// ReadAt reads with O_DIRECT when dst's address, off and len(dst) are
// multiples of Alignment(), buffered otherwise. A read past the end returns
// io.EOF with the bytes up to the end.
func (o *directObject) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	return o.readAt(ctx, dst, off, o)
}

// Close closes both descriptors. Later calls return nil.
func (o *directObject) Close() error {
	if o.closed.Load() {
		return nil
	}
	derr := o.d.Close()
	if err := o.file.Close(); err != nil {
		return err
	}
	if derr != nil && !errors.Is(derr, os.ErrClosed) {
		return &storage.Error{Op: "close", URI: o.uri, Code: codeFor(derr), Err: derr}
	}
	return nil
}

func (o *directObject) aligned(p []byte, pos int64) bool {
	if o.refused.Load() {
		return false
	}
	a := o.align
	return len(p)%a == 0 && pos%int64(a) == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%uintptr(a) == 0
}
