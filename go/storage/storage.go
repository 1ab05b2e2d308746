// Package storage defines the narrow contract every storage backend meets:
// open an object by URI, learn its size, read a byte range into a caller's
// slice. The engine schedules reads against this interface and never learns
// which backend serves them.
package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/model-streamer/model-streamer/go/checksum"
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

// PinsMemory is implemented by objects that hand the memory they read into
// to the kernel for direct I/O although they are not Aligned: a store's
// object whose ranges a local cache writes through with O_DIRECT. The
// engine backs the memory of local files and of such objects with
// transparent huge pages, which the kernel pins for direct I/O a folio at a
// time instead of a page at a time; memory that is only copied into (a
// socket's bytes) it advises only where a huge page's first touch is cheap,
// not on a virtual machine that reports free memory to its host
// (docs/design.md §4).
type PinsMemory interface {
	PinsMemory() bool
}

// Mappable is implemented by objects that can expose their bytes without a
// copy (a private mapping of a local file resident in the page cache).
// Map returns the whole object; writes to the slice stay private to this
// process. Populate makes [off, off+n) resident (and mapped, unless the
// object knows it was all resident already: then later access takes minor
// faults only) and fails for bytes the object no longer has; it is the
// "read" of a mapped object.
type Mappable interface {
	Map() ([]byte, error)
	Populate(ctx context.Context, off, n int64) error
}

// Checksum is a value a store holds for the whole of an object: the CRC
// (big-endian, as stores encode it) or digest of bytes [0, Size()).
type Checksum struct {
	Algorithm checksum.Algorithm
	Value     []byte
	// Source names where the value came from, for messages
	// ("x-amz-checksum-crc32c", "ETag", "Content-MD5", ...).
	Source string
}

// String is "crc32c:1a2b3c4d".
func (c Checksum) String() string { return string(c.Algorithm) + ":" + checksum.Format(c.Value) }

// Checksummed is implemented by objects whose store keeps whole-object
// checksums. Checksums returns those Open learnt from the metadata request
// it made anyway (no extra round trip), only values that cover the whole
// object as it is read (never a composite checksum of a multipart upload,
// nor an ETag that is not the content's MD5), each of the right length for
// its algorithm; nil when the store holds none. Why a value is not usable,
// when the store has one, is NoChecksumReason's to say.
type Checksummed interface {
	Checksums() []Checksum
	// NoChecksumReason explains an empty Checksums() ("multipart upload:
	// composite checksum crc32 is not verifiable as a whole", ...), or "".
	NoChecksumReason() string
}

// Preverified is an object whose bytes were checked against their store's
// whole-object checksum before this stream (a local cache entry, checked
// when it was written). VerifiedAs names that check ("crc32c:1a2b3c4d"),
// or is "" when none was made. MODEL_STREAMER_VERIFY=require accepts such
// an object without checking it again.
type Preverified interface {
	VerifiedAs() string
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
	// RetryAfter is the server's requested wait before a retry (HTTP 429 or
	// 503 with Retry-After); zero when it gave none.
	RetryAfter time.Duration
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

// ObjectInfo names one object found by a listing.
type ObjectInfo struct {
	URI  string `json:"uri"` // full URI (scheme://bucket/key) or path
	Size int64  `json:"size"`
}

// Lister is implemented by backends that can enumerate objects under a
// prefix: a "directory" of a file system or a key prefix of a bucket. With
// recursive false only direct children are listed (no "/" after the prefix).
type Lister interface {
	List(ctx context.Context, uri string, recursive bool) ([]ObjectInfo, error)
}

// Tuned is implemented by backends whose best read size and parallelism
// differ from the engine's defaults (object stores want more, larger reads
// in flight than a local disk). The engine uses them, through
// Registry.Tuning, when the caller sets none.
type Tuned interface {
	DefaultChunkBytes() int64
	DefaultConcurrency() int
}

// Settings carries the caller's configuration to backends explicitly, by
// the names of the environment variables that document them (AWS_ENDPOINT_URL,
// RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING, AZURE_STORAGE_ACCOUNT_NAME, ...).
// The Go runtime copies the process environment once, when it starts, so
// variables a host (Python) sets later are invisible to os.Getenv: callers
// pass what they read instead. EnvSettings builds one from this process's
// environment for Go programs.
type Settings map[string]string

// Get returns the value of key, or def when it is unset or empty.
func (s Settings) Get(key, def string) string {
	if v, ok := s[key]; ok && v != "" {
		return v
	}
	return def
}

// Bool reports whether key is set to a true value ("1", "true", "yes", "on").
func (s Settings) Bool(key string, def bool) bool {
	switch strings.ToLower(strings.TrimSpace(s[key])) {
	case "1", "true", "yes", "on":
		return true
	case "0", "false", "no", "off":
		return false
	}
	return def
}

// SettingPrefixes are the environment variable prefixes backends read
// (CLOUD_STORAGE_ and API_ENDPOINT_OVERRIDE: the GCS emulator and endpoint
// variables of google-cloud-cpp and the Python SDK; HF_TOKEN, HF_ENDPOINT,
// SSL_CERT_FILE and SSL_CERT_DIR: the http backend's Hub token and roots).
var SettingPrefixes = []string{"AWS_", "RUNAI_STREAMER_", "AZURE_", "GOOGLE_", "GCS_", "STORAGE_EMULATOR_HOST",
	"MODEL_STREAMER_", "CLOUD_STORAGE_", "API_ENDPOINT_OVERRIDE", "HF_TOKEN", "HF_ENDPOINT", "SSL_CERT_FILE", "SSL_CERT_DIR"}

// EnvSettings returns the variables of this process's environment whose
// names start with one of SettingPrefixes.
func EnvSettings() Settings {
	s := Settings{}
	for _, kv := range os.Environ() {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		for _, p := range SettingPrefixes {
			if strings.HasPrefix(k, p) {
				s[k] = v
				break
			}
		}
	}
	return s
}

// List lists uri with the backend registered for its scheme, if it can list.
func (r *Registry) List(ctx context.Context, uri string, recursive bool) ([]ObjectInfo, error) {
	scheme := Scheme(uri)
	r.mu.RLock()
	b, ok := r.backends[scheme]
	r.mu.RUnlock()
	l, canList := b.(Lister)
	if !ok || !canList {
		return nil, &Error{Op: "list", URI: uri, Code: InvalidArgument,
			Err: fmt.Errorf("no storage backend that lists scheme %q", scheme)}
	}
	return l.List(ctx, uri, recursive)
}

// Tuning returns the read size and parallelism the backend for uri prefers,
// and false when it states none.
func (r *Registry) Tuning(uri string) (concurrency int, chunkBytes int64, ok bool) {
	r.mu.RLock()
	b := r.backends[Scheme(uri)]
	r.mu.RUnlock()
	if t, isTuned := b.(Tuned); isTuned {
		return t.DefaultConcurrency(), t.DefaultChunkBytes(), true
	}
	return 0, 0, false
}

// CodeForHTTPStatus maps an HTTP error status to a Code the way every
// HTTP-based backend does: 404 not found, 401/403 permission denied, 408,
// 429 and 5xx transient, any other 4xx invalid argument. Other statuses are
// not errors a server should send, and come back as Internal; backends
// handle their own special cases (service error codes, 410, 412) first.
func CodeForHTTPStatus(status int) Code {
	switch {
	case status == 404:
		return NotFound
	case status == 401, status == 403:
		return PermissionDenied
	case status == 408, status == 429, status >= 500:
		return Unavailable
	case status >= 400:
		return InvalidArgument
	}
	return Internal
}

// Putter is implemented by backends that can write a small object whole
// (a checksum sidecar): one request, replacing any object of that name.
type Putter interface {
	Put(ctx context.Context, uri string, data []byte) error
}

// Put writes data as the object uri with the backend registered for its
// scheme, if it can write.
func (r *Registry) Put(ctx context.Context, uri string, data []byte) error {
	scheme := Scheme(uri)
	r.mu.RLock()
	b, ok := r.backends[scheme]
	r.mu.RUnlock()
	p, canPut := b.(Putter)
	if !ok || !canPut {
		return &Error{Op: "put", URI: uri, Code: InvalidArgument,
			Err: fmt.Errorf("no storage backend that writes scheme %q", scheme)}
	}
	return p.Put(ctx, uri, data)
}

type probeKey struct{}

// ProbeContext marks ctx for an Open that only asks whether an object exists
// (a checksum sidecar, looked for beside every file): a missing object is the
// expected answer there, so a backend spends no further request explaining
// it (see s3's explain).
func ProbeContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, probeKey{}, true)
}

// IsProbe reports whether ctx came from ProbeContext.
func IsProbe(ctx context.Context) bool { v, _ := ctx.Value(probeKey{}).(bool); return v }
