package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Inner opens objects by URI (local paths too); *storage.Registry is one.
type Inner interface {
	Open(ctx context.Context, uri string) (storage.Object, error)
}

// Opener serves object-store URIs from the cache when it holds the
// object's current version, and otherwise from the store, writing the
// bytes through to a new entry as they are read. Local paths pass through.
// It is a stream.Opener.
type Opener struct {
	Cache *Cache
	// Inner opens the store's object (its metadata request decides hit or
	// miss) and, on a hit, the entry's file as a local path (the fs
	// backend: mapped when resident, O_DIRECT when cold).
	Inner Inner
	// Namespace names the store a URI's scheme is served by (its endpoint,
	// account): part of an entry's name, so two stores' buckets of one
	// name never share entries. Nil: "".
	Namespace func(scheme string) string
	// ReadOnly serves hits and writes nothing (header-only reads).
	ReadOnly bool
	// Warn reports, once per object, why it is not being cached (a full
	// disk, a failed write, a checksum that does not match). Nil: stderr.
	Warn func(msg string)

	stats Stats
	// local records, per URI, whether its last open was served from an
	// entry (Tuning then gives the local file's defaults).
	local sync.Map
}

// Stats counts what an Opener did with the objects it opened.
type Stats struct {
	Hits      atomic.Int64 // served from an entry
	Writes    atomic.Int64 // read from the store, writing an entry
	Committed atomic.Int64 // entries completed and renamed into place
	Failed    atomic.Int64 // entries given up (write error, full disk, checksum)
	Uncached  atomic.Int64 // read from the store alone (entry busy, no room)
	// WriteNanos is the time readers spent writing through (pwrite and
	// CRC), which the first load pays on top of reading.
	WriteNanos atomic.Int64
	// DirectBytes counts the bytes written with O_DIRECT (the rest went
	// through the page cache: partial pages, file systems without it).
	DirectBytes atomic.Int64
}

// Stats returns the Opener's counters.
func (o *Opener) Stats() *Stats { return &o.stats }

// Tuning forwards the store's preferred read size and parallelism (the
// engine asks its Opener once the files are open; see stream.Config), or,
// for a URI served from an entry, the local file's (none: the engine's).
func (o *Opener) Tuning(uri string) (int, int64, bool) {
	if hit, _ := o.local.Load(uri); hit == true {
		return 0, 0, false
	}
	if t, ok := o.Inner.(interface {
		Tuning(string) (int, int64, bool)
	}); ok {
		return t.Tuning(uri)
	}
	return 0, 0, false
}

func (o *Opener) warn(format string, args ...any) {
	msg := "model-streamer: cache: " + fmt.Sprintf(format, args...)
	if o.Warn != nil {
		o.Warn(msg)
		return
	}
	fmt.Fprintln(os.Stderr, msg)
}

// Open opens uri. For an object of a store that names its version, it
// returns the cached file when the entry is complete, or the store's
// object writing through to a new entry when this stream can be its
// writer, or the store's object alone (another stream is writing the
// entry, the cache is full of entries in use, the object is empty).
func (o *Opener) Open(ctx context.Context, uri string) (storage.Object, error) {
	obj, err := o.Inner.Open(ctx, uri)
	scheme := storage.Scheme(uri)
	if err != nil || scheme == "file" || obj.Size() == 0 {
		return obj, err
	}
	v, ok := obj.(storage.Versioned)
	if !ok || v.Version() == "" {
		return obj, nil
	}
	ns := ""
	if o.Namespace != nil {
		ns = o.Namespace(scheme)
	}
	e := o.Cache.entry(ns, uri, v.Version(), obj.Size())
	o.local.Store(uri, false)
	if done, ok := completing.Load(e.base); ok {
		// This process wrote the entry and is completing it: the wait is
		// for an fsync, and then the entry is local.
		select {
		case <-done.(chan struct{}):
		case <-ctx.Done():
		}
	}
	if local := o.hit(ctx, e); local != nil {
		_ = obj.Close()
		o.local.Store(uri, true)
		return local, nil
	}
	if o.ReadOnly {
		return obj, nil
	}
	w, hitNow := o.startWrite(e, ns, obj)
	if hitNow {
		if local := o.hit(ctx, e); local != nil {
			_ = obj.Close()
			o.local.Store(uri, true)
			return local, nil
		}
		return obj, nil
	}
	if w != nil {
		o.stats.Writes.Add(1)
		return w, nil
	}
	o.stats.Uncached.Add(1)
	return obj, nil
}

// hit opens e's file when it is complete, holding its lock shared until
// the returned object is closed (eviction then passes it by).
func (o *Opener) hit(ctx context.Context, e entry) storage.Object {
	l, err := lock(e.lock(), unix.LOCK_SH)
	if err != nil {
		return nil // being written (or evicted) right now
	}
	fi, err := os.Stat(e.data())
	if err != nil || fi.Size() != e.size {
		l.Close()
		return nil
	}
	obj, err := o.Inner.Open(ctx, e.data())
	if err != nil {
		l.Close()
		o.warn("%s: cannot read entry %s, reading the store: %v", e.uri, e.data(), err)
		return nil
	}
	touch(e)
	o.stats.Hits.Add(1)
	return local(obj, verifiedAs(e), func() { l.Close() })
}

// startWrite makes this stream e's writer: it takes e's lock exclusively,
// clears what a dead writer or an older version of the object left, makes
// room and allocates the temporary file. hitNow reports that another
// stream completed e meanwhile. A nil writer means: read the store alone.
func (o *Opener) startWrite(e entry, ns string, obj storage.Object) (_ *writer, hitNow bool) {
	l, err := lock(e.lock(), unix.LOCK_EX)
	if err != nil {
		if !errors.Is(err, errBusy) {
			o.warn("%s: not cached: %v", e.uri, err)
		}
		return nil, false // another stream writes it: read the store
	}
	if _, err := os.Stat(e.data()); err == nil {
		l.Close()
		return nil, true
	}
	removeTemps(e.base)
	o.Cache.replaceOthers(ns, e)
	if e.size > o.Cache.max || !o.Cache.evict(e.size) {
		l.Close()
		o.warn("%s: not cached: %d bytes do not fit under the cache limit of %d bytes (entries in use are never evicted)",
			e.uri, e.size, o.Cache.max)
		return nil, false
	}
	tmp := fmt.Sprintf("%s%s%d.%x", e.base, tmpInfix, os.Getpid(), randomID())
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err == nil {
		// Reserve the space now: a full disk shows here, before any byte
		// is written, and the file is not fragmented by 32 writers.
		if err = allocate(f, e.size); err != nil {
			f.Close()
			_ = os.Remove(tmp)
		}
	}
	if err != nil {
		l.Close()
		o.warn("%s: not cached: %v", e.uri, err)
		return nil, false
	}
	return newWriter(o, e, obj, l, f, tmp), false
}

// replaceOthers removes the entries of e's URI at other versions (the
// object changed), except those a stream is reading.
func (c *Cache) replaceOthers(ns string, e entry) {
	others, _ := filepath.Glob(filepath.Join(c.dir, c.uriPrefix(ns, e.uri)) + "*" + dataSuffix)
	for _, d := range others {
		base := strings.TrimSuffix(d, dataSuffix)
		if base == e.base {
			continue
		}
		l, err := lock(base+lockSuffix, unix.LOCK_EX)
		if err != nil {
			continue
		}
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			remove(base)
		}
		l.Close()
	}
}

// localObject is an entry's file as the fs backend opened it, releasing
// the entry's lock on Close. The variants keep the optional interfaces the
// engine looks for (Aligned for O_DIRECT, Mappable for a resident file).
type localObject struct {
	storage.Object
	verified string // the store's checksum the entry was checked against; "": none
	once     sync.Once
	release  func()
}

// VerifiedAs makes a hit a storage.Preverified: its bytes were checked
// against the store's checksum when the entry was written.
func (l *localObject) VerifiedAs() string { return l.verified }

func (l *localObject) Close() error {
	err := l.Object.Close()
	l.once.Do(l.release)
	return err
}

// Strategy is the fs backend's read strategy ("mmap", "direct", ...).
func (l *localObject) Strategy() string {
	if s, ok := l.Object.(interface{ Strategy() string }); ok {
		return s.Strategy()
	}
	return ""
}

// Cached marks an object served from the cache (metadata, tests).
func (l *localObject) Cached() bool { return true }

type alignedLocal struct {
	*localObject
	storage.Aligned
}

type mappableLocal struct {
	*localObject
	storage.Mappable
}

func local(obj storage.Object, verified string, release func()) storage.Object {
	l := &localObject{Object: obj, verified: verified, release: release}
	if a, ok := obj.(storage.Aligned); ok {
		return alignedLocal{l, a}
	}
	if m, ok := obj.(storage.Mappable); ok {
		return mappableLocal{l, m}
	}
	return l
}
