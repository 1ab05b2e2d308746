// Package fs is the storage backend for local and network file systems.
//
// An opened file is read in one of three ways, its strategy:
//
//   - "buffered": pread(2) through the kernel page cache. Always works; the
//     right choice on network and FUSE file systems.
//   - "direct": pread(2) on an O_DIRECT descriptor, bypassing the page cache,
//     for reads whose buffer address, offset and length are multiples of
//     Alignment(); any other read falls back to the buffered descriptor.
//     Fastest for a cold file on a local NVMe drive.
//   - "mmap": a private, writable mapping of the whole file that the caller
//     uses in place (zero copy) after Populate faults it in. Best for a file
//     already in the page cache. ReadAt still works (buffered pread).
//
// Options.Mode picks one, or Auto (the default) picks per file: buffered on a
// network or FUSE file system, mmap when at least ResidentThreshold of the
// file is in the page cache, direct otherwise. AutoRead picks the same way
// but reads a cached file buffered instead of mapping it.
//
// The package targets Linux; elsewhere every object is buffered.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Mode selects how opened files are read.
type Mode int

const (
	// Auto decides per file (see the package documentation).
	Auto Mode = iota
	// Buffered reads through the page cache.
	Buffered
	// Direct reads with O_DIRECT where the file system allows it, and
	// buffered where it does not.
	Direct
	// Mmap maps files privately and exposes the mapping (storage.Mappable).
	Mmap
	// AutoRead decides per file like Auto but never maps: a cached file is
	// read buffered. For consumers that copy every byte on (to a GPU), a read
	// into their own buffer, which they can pin, beats a zero-copy mapping
	// that the copy would have to stage through pageable memory.
	AutoRead
)

// Strategy names, as returned by Strategist.Strategy.
const (
	StrategyBuffered = "buffered"
	StrategyDirect   = "direct"
	StrategyMmap     = "mmap"
)

// ResidentThreshold is the fraction of a file that must be in the page cache
// for Auto to map it rather than read it with O_DIRECT.
const ResidentThreshold = 0.9

// DefaultAlignment is the Alignment() of direct objects unless the file
// system asks for more.
const DefaultAlignment = 4096

// String returns the name ParseMode accepts.
func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Buffered:
		return "buffered"
	case Direct:
		return "direct"
	case Mmap:
		return "mmap"
	case AutoRead:
		return "auto-read"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "auto", "buffered", "direct", "mmap" or "auto-read",
// ignoring case and surrounding space; "" is Auto.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "buffered":
		return Buffered, nil
	case "direct":
		return Direct, nil
	case "mmap":
		return Mmap, nil
	case "auto-read":
		return AutoRead, nil
	}
	return Auto, fmt.Errorf("fs: unknown read mode %q (want auto, buffered, direct, mmap or auto-read)", s)
}

// Options configures the backend.
type Options struct {
	Mode Mode
}

// Strategist is implemented by every object this package opens: Strategy
// reports how the object is read: StrategyBuffered, StrategyDirect or
// StrategyMmap.
type Strategist interface {
	Strategy() string
}

// ErrResidencyUnknown is returned by Resident when the kernel will not say
// which pages of the file are cached: mincore(2) only reports page-cache
// residency for files the caller owns or could open for writing, and claims
// every page resident otherwise. Auto reads such files buffered.
var ErrResidencyUnknown = errors.New("page-cache residency unknown: mincore needs the file to be owned by the caller or writable")

// New returns a backend for local paths ("/abs/path", "rel/path") and file
// URIs ("file:///abs/path", "file://localhost/abs/path").
//
// Objects it opens are safe for concurrent ReadAt. Close releases the file
// and, for mmap objects, unmaps the memory Map returned: the caller must not
// touch that memory after Close.
func New(opts Options) storage.Backend {
	return &backend{mode: opts.Mode}
}

type backend struct {
	mode Mode
}

// Open opens the file uri names. It stats the file first: a directory or
// other non-regular file is InvalidArgument, a missing one NotFound, an
// unreadable one PermissionDenied.
func (b *backend) Open(ctx context.Context, uri string) (storage.Object, error) {
	if err := ctx.Err(); err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Canceled, Err: err}
	}
	if b.mode < Auto || b.mode > AutoRead {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument,
			Err: fmt.Errorf("unknown read mode %v", b.mode)}
	}
	path, err := localPath(uri)
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, openError(uri, err)
	}
	if err := checkRegular(fi); err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, openError(uri, err)
	}
	obj, err := b.open(ctx, uri, path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return obj, nil
}

// open builds the object for the opened file f; on error the caller closes f.
func (b *backend) open(ctx context.Context, uri, path string, f *os.File) (storage.Object, error) {
	// Stat what was opened: the path may have changed since os.Stat.
	fi, err := f.Stat()
	if err != nil {
		return nil, openError(uri, err)
	}
	if err := checkRegular(fi); err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	base, err := newFile(uri, path, f, fi.Size())
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Canceled, Err: err}
	}
	switch b.mode {
	case Buffered:
		return &bufferedObject{base}, nil
	case Direct:
		return openDirect(base)
	case Mmap:
		return openMmap(base, false)
	}
	// Auto and AutoRead.
	if base.size == 0 || isNetworkFS(base) {
		return &bufferedObject{base}, nil
	}
	frac, err := residency(base)
	switch {
	case errors.Is(err, ErrResidencyUnknown):
		return &bufferedObject{base}, nil
	case err == nil && frac >= ResidentThreshold && b.mode == AutoRead:
		return &bufferedObject{base}, nil
	case err == nil && frac >= ResidentThreshold:
		if obj, err := openMmap(base, frac == 1); err == nil {
			return obj, nil
		}
	}
	return openDirect(base)
}

func checkRegular(fi os.FileInfo) error {
	if fi.IsDir() {
		return syscall.EISDIR
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
	}
	return nil
}

// localPath returns the file system path of a plain path or file URI.
func localPath(uri string) (string, error) {
	if uri == "" {
		return "", errors.New("empty path")
	}
	i := strings.Index(uri, "://")
	if i <= 0 {
		return uri, nil
	}
	if scheme := uri[:i]; !strings.EqualFold(scheme, "file") {
		return "", fmt.Errorf("scheme %q is not served by the file system backend", scheme)
	}
	rest := uri[i+3:]
	if r, ok := strings.CutPrefix(rest, "localhost/"); ok {
		rest = "/" + r
	}
	if !strings.HasPrefix(rest, "/") {
		return "", fmt.Errorf("file URI must name an absolute local path (file:///path), got host %q", strings.SplitN(rest, "/", 2)[0])
	}
	// File URIs are percent-encoded; a path that does not decode is taken
	// literally (a file name may contain '%').
	if strings.Contains(rest, "%") {
		if p, err := url.PathUnescape(rest); err == nil {
			rest = p
		}
	}
	return rest, nil
}

// Resident returns the fraction of the file at path (a path or file URI)
// that is in the page cache, sampling at most about 4 Ki pages of a large
// file. An empty file is fully resident. It returns ErrResidencyUnknown when
// the kernel will not tell.
func Resident(path string) (float64, error) {
	p, err := localPath(path)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := checkRegular(fi); err != nil {
		return 0, &os.PathError{Op: "resident", Path: p, Err: err}
	}
	base, err := newFile(path, p, f, fi.Size())
	if err != nil {
		return 0, err
	}
	return residency(base)
}

// DropCache writes back the dirty pages of the file at path (a path or file
// URI) and asks the kernel to evict its pages from the page cache
// (posix_fadvise POSIX_FADV_DONTNEED) so the next read is cold. Pages that a
// process has mapped stay. For benchmarks and tests.
func DropCache(path string) error {
	p, err := localPath(path)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return dropCache(f, p)
}

// openError maps an error from stat or open to a storage.Error.
func openError(uri string, err error) error {
	return &storage.Error{Op: "open", URI: uri, Code: codeFor(err), Err: err}
}

// codeFor classifies an error, usually carrying an errno.
func codeFor(err error) storage.Code {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return storage.Canceled
	case errors.Is(err, os.ErrClosed):
		return storage.InvalidArgument
	case errors.Is(err, io.ErrUnexpectedEOF):
		return storage.InvalidArgument
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return storage.Internal
	}
	switch errno {
	case syscall.ENOENT, syscall.ENOTDIR:
		return storage.NotFound
	case syscall.EACCES, syscall.EPERM, syscall.EROFS:
		return storage.PermissionDenied
	case syscall.EISDIR, syscall.EINVAL, syscall.ENAMETOOLONG, syscall.ELOOP,
		syscall.EFBIG, syscall.EOVERFLOW:
		return storage.InvalidArgument
	case syscall.EIO, syscall.EINTR, syscall.EAGAIN, syscall.EBUSY,
		syscall.ENOMEM, syscall.ENOBUFS, syscall.EMFILE, syscall.ENFILE,
		syscall.ESTALE, syscall.ETIMEDOUT, syscall.ENOTCONN, syscall.ECONNRESET,
		syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EHOSTDOWN,
		syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.ENETUNREACH,
		syscall.ENETRESET, syscall.ENOLINK, syscall.ENXIO, syscall.ENODEV:
		return storage.Unavailable
	}
	return storage.Internal
}
