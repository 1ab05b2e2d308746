// Package storage defines the narrow contract every storage backend meets:
// open an object by URI, learn its size, read a byte range into a caller's
// slice. The engine schedules reads against this interface and never learns
// which backend serves them.
package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Object is one opened file or blob.
//
// ReadAt follows io.ReaderAt's rules with a context: it reads len(dst) bytes
// starting at off, returning n < len(dst) only together with a non-nil error;
// a read that reaches the end of the object returns io.EOF with the bytes up
// to the end. It must be safe to call concurrently from many goroutines.
type Object interface {
	Size() int64
	ReadAt(ctx context.Context, dst []byte, off int64) (int, error)
	Close() error
}

// Aligned is implemented by objects whose reads bypass the kernel cache
// (O_DIRECT) and therefore need dst's address, off and len(dst) to be
// multiples of Alignment(). A read may then extend past Size() and returns
// io.EOF with the bytes up to the end.
type Aligned interface {
	Alignment() int
}

// Mappable is implemented by objects that can expose their bytes without a
// copy (a private mapping of a local file resident in the page cache).
// Map returns the whole object; writes to the slice stay private to this
// process. Populate makes [off, off+n) resident and mapped so later access
// does not fault; it is the "read" of a mapped object.
type Mappable interface {
	Map() ([]byte, error)
	Populate(ctx context.Context, off, n int64) error
}

// Backend opens objects of one URI scheme.
type Backend interface {
	Open(ctx context.Context, uri string) (Object, error)
}

// Code is the closed set of failure classes every backend maps its errors to.
type Code int

const (
	Unknown Code = iota
	NotFound
	PermissionDenied
	InvalidArgument
	Unavailable // transient: worth retrying
	Canceled
	Internal
)

func (c Code) String() string {
	switch c {
	case NotFound:
		return "not found"
	case PermissionDenied:
		return "permission denied"
	case InvalidArgument:
		return "invalid argument"
	case Unavailable:
		return "unavailable"
	case Canceled:
		return "canceled"
	case Internal:
		return "internal error"
	}
	return "unknown error"
}

// Sentinel errors for errors.Is: errors.Is(err, storage.ErrNotFound).
var (
	ErrNotFound         = &Error{Code: NotFound}
	ErrPermissionDenied = &Error{Code: PermissionDenied}
	ErrInvalidArgument  = &Error{Code: InvalidArgument}
	ErrUnavailable      = &Error{Code: Unavailable}
	ErrCanceled         = &Error{Code: Canceled}
)

// Error describes a failed storage operation: which URI, which byte range
// (Len 0 when the operation was not a read), what class of failure and the
// underlying cause (errno, HTTP status, SDK error).
type Error struct {
	Op   string // "open", "read", "stat", ...
	URI  string
	Off  int64
	Len  int64
	Code Code
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.URI)
	if e.Op != "" {
		b.WriteString(": ")
		b.WriteString(e.Op)
	}
	if e.Len > 0 {
		fmt.Fprintf(&b, " bytes [%d, %d)", e.Off, e.Off+e.Len)
	}
	b.WriteString(": ")
	b.WriteString(e.Code.String())
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches sentinels by Code, so any *Error with Code NotFound is ErrNotFound.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.URI == "" && t.Err == nil && t.Code == e.Code
}

// CodeOf returns the Code of the first *Error in err's chain, Unknown if none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Canceled
	}
	return Unknown
}

// Registry maps URI schemes to backends. Local paths (no scheme, or
// "file://") use the backend registered under "file".
type Registry struct {
	mu       sync.RWMutex
	backends map[string]Backend
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{backends: map[string]Backend{}} }

// Register makes b serve URIs of scheme ("file", "s3", "gs", "az").
func (r *Registry) Register(scheme string, b Backend) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backends[scheme] = b
}

// Scheme returns the scheme of uri: "file" for plain paths.
func Scheme(uri string) string {
	if i := strings.Index(uri, "://"); i > 0 {
		return uri[:i]
	}
	return "file"
}

// Open opens uri with the backend registered for its scheme.
func (r *Registry) Open(ctx context.Context, uri string) (Object, error) {
	scheme := Scheme(uri)
	r.mu.RLock()
	b, ok := r.backends[scheme]
	r.mu.RUnlock()
	if !ok {
		return nil, &Error{Op: "open", URI: uri, Code: InvalidArgument,
			Err: fmt.Errorf("no storage backend for scheme %q", scheme)}
	}
	return b.Open(ctx, uri)
}
