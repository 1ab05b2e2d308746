package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/storage"
)

func randomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// writer is a store's object that writes every byte range read from it to
// its entry's temporary file, from the memory it was read into (the
// engine's arena), never a second fetch: for the engine, by one writer
// goroutine per entry while the readers go on, the engine handing a
// range's tensors out only once it is written (enqueue); for other callers
// before the read returns. Whole pages go to the disk with O_DIRECT from
// that memory (see directFile), so the write costs the load no copy and
// little CPU; the partial pages at a range's ends go through the page
// cache.
//
// Close completes the entry when the reads (and contributed bytes) covered
// the object, or all but a little that it fetches then, and the bytes check
// out; it discards the entry otherwise.
type writer struct {
	storage.Object // the store's object
	o              *Opener
	e              entry
	lk             *os.File // e's lock, held exclusively until the entry is complete or discarded
	f              *os.File
	direct         *directFile // f again, opened O_DIRECT; nil: f alone
	tmp            string

	// want is the store's checksum to verify against when it is a CRC
	// (combined from the pieces, no second pass); otherwise pieces hold the
	// CRC32 of what was written (IEEE: the fastest CRC here, 20+ GB/s a
	// core), checked against the file before commit.
	want    storage.Checksum
	pieces  *integrity.Pieces
	md5Want []byte // the store's MD5, checked in the commit's read-back

	startWriter sync.Once
	queue       chan queued   // ranges for the writer goroutine (enqueue)
	writerDone  chan struct{} // closed when the writer goroutine ends
	mu          sync.Mutex
	covered     []span // sorted, disjoint, merged
	total       int64  // bytes covered
	failed      bool
	closed      bool
}

type span struct{ lo, hi int64 }

func newWriter(o *Opener, e entry, obj storage.Object, l, f *os.File, tmp string) *writer {
	w := &writer{Object: obj, o: o, e: e, lk: l, f: f, direct: openDirect(tmp), tmp: tmp}
	alg := ownCRC
	// Whatever the stream's own mode: an entry is checked against the best
	// checksum the store keeps, as require would choose it.
	if c, _, ok := integrity.Want(obj, integrity.Require); ok {
		switch {
		case c.Algorithm.Combinable():
			w.want, alg = c, c.Algorithm
		case c.Algorithm == checksum.MD5:
			w.md5Want = c.Value
		}
	}
	w.pieces = integrity.NewPieces(alg)
	active.Store(e.uri, w)
	return w
}

// Checksums and NoChecksumReason forward the store's, so that the engine
// verifies a written-through stream as it does any other.
func (w *writer) Checksums() []storage.Checksum {
	if c, ok := w.Object.(storage.Checksummed); ok {
		return c.Checksums()
	}
	return nil
}

func (w *writer) NoChecksumReason() string {
	if c, ok := w.Object.(storage.Checksummed); ok {
		return c.NoChecksumReason()
	}
	return "the storage keeps no checksums"
}

// PinsMemory reports whether the ranges read are written through with
// O_DIRECT from the memory they were read into (storage.PinsMemory).
func (w *writer) PinsMemory() bool { return w.direct != nil }

// Version forwards the store's.
func (w *writer) Version() string { return w.e.ver }

// ReadAt reads from the store and writes what it got through. Where the
// caller lets the writer hold on to dst (storage.WithRetain: the engine
// does, and hands the range's tensors out once it is written), the range is
// queued for the entry's writer goroutine and the reader goes on to its
// next range; otherwise it is written before ReadAt returns.
func (w *writer) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	n, err := w.Object.ReadAt(ctx, dst, off)
	if n > 0 {
		if hold := storage.Retain(ctx); hold != nil {
			w.enqueue(dst[:n], off, hold())
		} else {
			w.write(dst[:n], off)
		}
	}
	return n, err
}

// queued is a range read into memory the reader's caller holds for it
// until done is called, and the spans of it that no earlier read wrote.
type queued struct {
	p     []byte
	off   int64
	fresh []span
	done  func()
}

// writeQueue is how many read ranges may wait for the writer goroutine
// before a reader waits too; the engine's ring holds fewer 16 MiB ranges.
const writeQueue = 64

// enqueue hands the range at off to the entry's writer goroutine, which
// writes ranges one after the other in the order they arrive. Readers that
// each wrote their own range (32 direct writes of 16 MiB at once, each
// blocking its reader) made first loads 6-8% slower than one writer does
// (docs/benchmarks.md, "where the first load's time goes"). The reader
// takes the range's CRC before it queues it: the one writer is what a
// first load waits for, so it does nothing but write.
func (w *writer) enqueue(p []byte, off int64, done func()) {
	w.startWriter.Do(func() {
		w.queue = make(chan queued, writeQueue)
		w.writerDone = make(chan struct{})
		go func() {
			defer close(w.writerDone)
			for q := range w.queue {
				w.put(q.p, q.off, q.fresh)
				q.done()
			}
		}()
	})
	fresh, ok := w.claimFresh(off, off+int64(len(p)))
	if !ok {
		done()
		return
	}
	w.record(p, off, fresh)
	w.queue <- queued{p, off, fresh, done}
}

// stopWriter waits for the ranges queued to be written. The caller has
// read everything it will through this writer (the engine waits for its
// holds before closing its objects).
func (w *writer) stopWriter() {
	w.startWriter.Do(func() {}) // no writer started from now on
	if w.queue != nil {
		close(w.queue)
		<-w.writerDone
	}
}

// write writes the bytes at off that no earlier read wrote (a header read
// and the tensor reads after it overlap), and records their CRC.
func (w *writer) write(p []byte, off int64) {
	fresh, ok := w.claimFresh(off, off+int64(len(p)))
	if !ok {
		return
	}
	w.keep(p, off, fresh)
}

// keep records the CRC of the fresh spans of p and writes them.
func (w *writer) keep(p []byte, off int64, fresh []span) {
	w.record(p, off, fresh)
	w.put(p, off, fresh)
}

// claimFresh claims [lo, hi) (see claim); ok is false once the entry
// failed or closed, when nothing more is written.
func (w *writer) claimFresh(lo, hi int64) (fresh []span, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed || w.closed {
		return nil, false
	}
	return w.claim(lo, hi), true
}

// record takes the CRC of the fresh spans of p (the bytes at off), which
// commit checks the entry with. The memory does not change until they are
// written: the engine hands a range out only then.
func (w *writer) record(p []byte, off int64, fresh []span) {
	for _, s := range fresh {
		w.pieces.Add(s.lo, p[s.lo-off:s.hi-off])
	}
}

// put writes the fresh spans of p (the bytes at off).
func (w *writer) put(p []byte, off int64, fresh []span) {
	start := time.Now()
	defer func() { w.o.stats.WriteNanos.Add(int64(time.Since(start))) }()
	for _, s := range fresh {
		direct, err := w.direct.writeAt(w.f, p[s.lo-off:s.hi-off], s.lo)
		w.o.stats.DirectBytes.Add(direct)
		if err != nil {
			w.fail(err)
			return
		}
	}
}

// gaps returns the spans of the object no read covered (the caller holds mu).
func (w *writer) gaps() []span {
	var out []span
	pos := int64(0)
	for _, c := range w.covered {
		if c.lo > pos {
			out = append(out, span{pos, c.lo})
		}
		pos = max(pos, c.hi)
	}
	if pos < w.e.size {
		out = append(out, span{pos, w.e.size})
	}
	return out
}

// maxFill is how much of an object the stream did not read that Close
// still fetches from the store to complete the entry: the header, which a
// distributed load's byte ranges never cover, or a small tensor left out.
func maxFill(size int64) int64 { return min(64<<20, max(4<<20, size/32)) }

// fill reads the gaps from the store and writes them.
func (w *writer) fill(gaps []span) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, g := range gaps {
		buf := make([]byte, g.hi-g.lo)
		if _, err := storage.ReadRange(ctx, w.Object, buf, g.lo, g.hi-g.lo, storage.DefaultRetryPolicy, nil); err != nil {
			return err
		}
		w.mu.Lock()
		fresh := w.claim(g.lo, g.hi)
		w.mu.Unlock()
		w.keep(buf, g.lo, fresh)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed {
		return errors.New("a write failed")
	}
	return nil
}

// claim marks [lo, hi) covered and returns its parts not covered before.
func (w *writer) claim(lo, hi int64) []span {
	var fresh []span
	pos := lo
	i := 0
	for i < len(w.covered) && w.covered[i].hi < lo {
		i++
	}
	for j := i; j < len(w.covered) && w.covered[j].lo <= hi && pos < hi; j++ {
		if c := w.covered[j]; c.lo > pos {
			fresh = append(fresh, span{pos, min(c.lo, hi)})
		}
		pos = max(pos, w.covered[j].hi)
	}
	if pos < hi {
		fresh = append(fresh, span{pos, hi})
	}
	for _, s := range fresh {
		w.total += s.hi - s.lo
	}
	// Merge [lo, hi) into the covered list.
	j := i
	nlo, nhi := lo, hi
	for j < len(w.covered) && w.covered[j].lo <= hi {
		nlo, nhi = min(nlo, w.covered[j].lo), max(nhi, w.covered[j].hi)
		j++
	}
	w.covered = append(w.covered[:i], append([]span{{nlo, nhi}}, w.covered[j:]...)...)
	return fresh
}

// fail gives up on the entry (a full disk, an I/O error): the temporary
// file goes at once, to free its space, and the stream reads on from the
// store.
func (w *writer) fail(err error) {
	w.mu.Lock()
	first := !w.failed
	w.failed = true
	w.mu.Unlock()
	if first {
		w.o.stats.Failed.Add(1)
		_ = os.Remove(w.tmp)
		w.o.warn("%s: not cached, reading on from the store: %v", w.e.uri, err)
	}
}

// Close completes or discards the entry, and closes the store's object.
// Completing it (fetching what the stream did not read, if little,
// checking, fsync, rename) runs in the background: the stream's Close does
// not wait for the store or the disk. Wait waits for it.
func (w *writer) Close() error {
	active.CompareAndDelete(w.e.uri, w)
	w.stopWriter()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	failed := w.failed
	gaps := w.gaps()
	w.mu.Unlock()
	var missing int64
	for _, g := range gaps {
		missing += g.hi - g.lo
	}
	if failed || missing > maxFill(w.e.size) {
		err := w.Object.Close()
		w.discard()
		return err
	}
	pending.Add(1)
	done := make(chan struct{})
	completing.Store(w.e.base, done)
	go func() {
		defer pending.Done()
		defer func() {
			completing.Delete(w.e.base)
			close(done)
		}()
		err := w.fill(gaps)
		_ = w.Object.Close()
		if err == nil {
			err = w.commit()
		}
		if err != nil {
			w.o.stats.Failed.Add(1)
			w.o.warn("%s: not cached: %v", w.e.uri, err)
			w.discard()
			return
		}
		w.o.stats.Committed.Add(1)
		_ = w.direct.Close()
		_ = w.f.Close()
		w.lk.Close()
		// Over the limit now (other processes wrote meanwhile): make room,
		// this entry included if no stream reads it.
		w.o.Cache.evict(0)
	}()
	return nil
}

// active holds this process's writers by URI, for Contribute.
var active sync.Map

// Contribute writes p, the bytes at off of the object uri, to the entry
// this process is writing for it, if any, and reports whether one took
// them. A distributed load reads only its share of each object from the
// store; the bytes the other processes send it are contributed this way,
// so that the node's entry is complete after one load.
func Contribute(uri string, off int64, p []byte) bool {
	v, ok := active.Load(uri)
	if !ok {
		return false
	}
	w := v.(*writer)
	if off < 0 || off+int64(len(p)) > w.e.size {
		return false
	}
	w.write(p, off)
	return true
}

// Writing reports whether this process is writing an entry for uri now,
// so that a caller whose received bytes are not in host memory (a
// distributed load to a GPU) copies them back only when they are wanted.
func Writing(uri string) bool {
	_, ok := active.Load(uri)
	return ok
}

// discard removes the temporary file and releases the entry.
func (w *writer) discard() {
	_ = os.Remove(w.tmp)
	_ = w.direct.Close()
	_ = w.f.Close()
	w.lk.Close()
}

// pending counts entries being completed in the background; completing
// holds, by entry, a channel closed when its completion ends (a stream of
// this process opening the entry meanwhile waits for it rather than read
// the store).
var (
	pending    sync.WaitGroup
	completing sync.Map
)

// Wait waits until every entry this process finished reading is complete
// (checked, synced, renamed into place) or discarded, or ctx ends. A
// process that exits without waiting leaves its last entries as temporary
// files, which later loads ignore and Prune removes.
func Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		pending.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commit verifies the written bytes, makes them durable and renames them
// into place, the entry's only moment of becoming visible.
func (w *writer) commit() error {
	sum, err := w.pieces.Sum(w.e.size)
	if err != nil {
		return err
	}
	verified := ""
	switch {
	case w.want.Algorithm != "":
		if !bytes.Equal(sum, w.want.Value) {
			return mismatch(string(w.want.Algorithm)+" ("+w.want.Source+")", w.want.Value, sum)
		}
		verified = w.want.String()
	default:
		// No CRC from the store: read the file back (from the disk, for
		// the pages written direct) and check it is what the reads
		// returned, and the store's MD5 when it keeps one.
		if err := w.readBack(sum); err != nil {
			return err
		}
		verified = string(ownCRC) + ":" + checksum.Format(sum) + writtenSuffix
		if w.md5Want != nil {
			verified = string(checksum.MD5) + ":" + checksum.Format(w.md5Want)
		}
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	meta, _ := json.Marshal(Meta{URI: w.e.uri, Version: w.e.ver, Size: w.e.size,
		Checksum: verified, Created: time.Now().UTC()})
	if err := os.WriteFile(w.e.meta(), meta, 0o644); err != nil {
		return err
	}
	if err := os.Rename(w.tmp, w.e.data()); err != nil {
		return err
	}
	return syncDir(filepath.Dir(w.e.base))
}

// ownCRC is the CRC the writer checks its own writes with when the store
// keeps no CRC.
const ownCRC = checksum.CRC32

// writtenSuffix marks a Meta.Checksum that is the writer's own CRC of the
// bytes as written, not a value the store keeps.
const writtenSuffix = " (written)"

// readBack checks the temporary file against the CRC32 of what was
// written (and against the store's MD5, when set) in one pass.
func (w *writer) readBack(crcWant []byte) error {
	md5 := checksum.New(checksum.MD5)
	var crc uint64
	buf := make([]byte, 4<<20)
	for off := int64(0); off < w.e.size; {
		n, err := w.f.ReadAt(buf[:min(int64(len(buf)), w.e.size-off)], off)
		if n == 0 && err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read back %s: %w", w.tmp, err)
		}
		crc = checksum.Update(ownCRC, crc, buf[:n])
		if w.md5Want != nil {
			md5.Write(buf[:n])
		}
		off += int64(n)
	}
	if got := checksum.Bytes(ownCRC, crc); !bytes.Equal(got, crcWant) {
		return mismatch("crc32 of the bytes read, over the file written", crcWant, got)
	}
	if w.md5Want != nil {
		if got := md5.Sum(nil); !bytes.Equal(got, w.md5Want) {
			return mismatch("md5 (the store's)", w.md5Want, got)
		}
	}
	return nil
}

// errMismatch marks an entry whose bytes failed their check.
var errMismatch = errors.New("checksum mismatch")

func mismatch(what string, want, got []byte) error {
	return fmt.Errorf("%w: %s expected %s, computed %s", errMismatch, what, checksum.Format(want), checksum.Format(got))
}
