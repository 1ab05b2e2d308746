package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/safetensors"
	"github.com/model-streamer/model-streamer/go/storage"
)

// Verification of tensors against a checksum sidecar (integrity.Sidecar,
// written by `model-streamer checksum`).
//
// When a file has a sidecar beside it (and MODEL_STREAMER_VERIFY is not
// off), every sidecar entry (the header, each tensor) that lies wholly
// inside a region is checked before the region's tensors are queued: each
// reader hashes the part of each entry its read covered, right after the
// read, and the goroutine that completes the region joins the pieces and
// compares. So a corrupt tensor is never handed out, and the tensors
// before it are (they passed). This works for every way a file is read
// (mapped files are hashed after Populate), for partial requests
// (tensor_names) and for byte ranges (FileStreamer, the distributed
// shares), as far as the ranges cover whole entries: a range that holds
// only part of a tensor is not checked against the sidecar.
//
// The header of a SafeTensors stream is compared when it is read, with the
// file's size: a sidecar that does not describe the file (written before it
// changed) fails the open with an *integrity.SidecarError, as a corrupt
// header would (the two cannot be told apart). Range streams read no
// header: their staleness check is the size, and a changed file shows up
// as a mismatch of the first entry read.
//
// Compute mode (OpenChecksum) uses the same machinery with entries taken
// from the header and no expected values: the joined CRCs become the new
// sidecar.

// sidecarAlg is the algorithm `model-streamer checksum` writes.
const sidecarAlg = checksum.CRC32

// sideCheck is the sidecar state of one file.
type sideCheck struct {
	uri     string // the sidecar
	alg     checksum.Algorithm
	size    int64 // the file's size, as the sidecar says
	entries []integrity.Entry
	compute bool // OpenChecksum: fill in entries[i].Sum

	mu      sync.Mutex
	checked int // entries verified (or computed) so far
}

// regionSums collects, for one region, the CRC pieces of the sidecar
// entries that lie inside it: entries [lo, hi) of the file's.
type regionSums struct {
	lo, hi int
	mu     sync.Mutex
	pieces [][]sumPiece // per entry, in any order
}

type sumPiece struct {
	off, n int64
	crc    uint64
}

// startSidecar looks for f's sidecar in the background (the caller reads
// the header meanwhile) and returns a function that waits for it and sets
// f.side. No sidecar, or one the credentials may not see (stores answer 403
// for a missing key to a reader without list permission), is not an error.
func (s *Stream) startSidecar(f *fileState) func() error {
	if s.cfg.Verify == integrity.Off || s.cfg.computeSidecar {
		return func() error { return nil }
	}
	type result struct {
		sc  *sideCheck
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() { ch <- r }()
		defer recoverInto(&r.err)
		r.sc, r.err = s.loadSidecar(integrity.SidecarName(f.uri))
	}()
	return func() error {
		r := <-ch
		if r.err != nil {
			return r.err
		}
		f.side = r.sc
		if f.side != nil && f.side.size != f.size {
			return &integrity.SidecarError{URI: f.side.uri, Reason: fmt.Sprintf(
				"it describes a file of %d bytes, the file has %d (stale: written before the file changed)", f.side.size, f.size)}
		}
		return nil
	}
}

func (s *Stream) loadSidecar(uri string) (*sideCheck, error) {
	obj, err := s.cfg.Storage.Open(storage.ProbeContext(s.ctx), uri)
	if err != nil {
		switch storage.CodeOf(err) {
		case storage.NotFound, storage.PermissionDenied:
			return nil, nil
		}
		return nil, fmt.Errorf("checksum sidecar: %w", err)
	}
	defer obj.Close()
	size := obj.Size()
	if size > integrity.MaxSidecarBytes {
		return nil, &integrity.SidecarError{URI: uri, Reason: fmt.Sprintf("%d bytes, more than the %d a sidecar may have", size, integrity.MaxSidecarBytes)}
	}
	length := size
	if _, ok := obj.(storage.Aligned); ok {
		length = alignUp(size, alignment)
	}
	raw := make([]byte, length+alignment)
	skip := alignUp(int64(addrOf(raw)), alignment) - int64(addrOf(raw))
	buf := raw[skip : skip+length]
	if _, err := storage.ReadRange(s.ctx, obj, buf, 0, size, s.cfg.Retry, s.onRetry); err != nil {
		return nil, fmt.Errorf("checksum sidecar: %w", wrapRead(uri, 0, size, err))
	}
	sc, entries, err := integrity.ParseSidecar(uri, buf[:size])
	if err != nil {
		return nil, err
	}
	return &sideCheck{uri: uri, alg: sc.Algorithm, size: sc.Size, entries: entries}, nil
}

// sidecarHeader checks, or in compute mode records, the header prefix
// [0, h.DataOffset) of f against its sidecar.
func (s *Stream) sidecarHeader(f *fileState, prefix []byte, h *safetensors.Header) error {
	if s.cfg.computeSidecar {
		entries := []integrity.Entry{{Begin: 0, End: h.DataOffset, Sum: checksum.Sum(sidecarAlg, prefix)}}
		for _, t := range h.Tensors {
			entries = append(entries, integrity.Entry{Name: t.Name, Begin: h.DataOffset + t.Begin, End: h.DataOffset + t.End})
		}
		f.side = &sideCheck{alg: sidecarAlg, size: f.size, entries: entries, compute: true, checked: 1}
		return nil
	}
	sc := f.side
	if sc == nil {
		return nil
	}
	hdr := sc.entries[0]
	if hdr.Begin != 0 || hdr.End != h.DataOffset {
		return &integrity.SidecarError{URI: sc.uri, Reason: fmt.Sprintf(
			"its header is %d bytes, the file's %d (stale: written before the file changed)", hdr.End-hdr.Begin, h.DataOffset)}
	}
	if got := checksum.Sum(sc.alg, prefix); got != hdr.Sum {
		return &integrity.SidecarError{URI: sc.uri, Reason: fmt.Sprintf(
			"the file's header does not match it (%s expected %s, computed %s): the sidecar is stale (written before the file changed), "+
				"or the header was corrupted on its way here", sc.alg, integrity.HexSum(sc.alg, hdr.Sum), integrity.HexSum(sc.alg, got))}
	}
	sc.checked = 1
	return nil
}

// planSidecar gives each region of a file with a sidecar the entries that lie
// wholly inside it, and returns, per file, how many requested tensors (or
// ranges) with bytes are not covered by such entries.
func (s *Stream) planSidecar(perFile [][]*region) {
	for fi, f := range s.files {
		sc := f.side
		if sc == nil {
			continue
		}
		f.sideUncovered = 0
		for _, r := range perFile[fi] {
			lo := sort.Search(len(sc.entries), func(i int) bool { return sc.entries[i].Begin >= r.dataStart })
			hi := lo
			for hi < len(sc.entries) && sc.entries[hi].End <= r.dataEnd {
				hi++
			}
			// Empty entries need no bytes (and are skipped when checked).
			if hi > lo {
				r.sums = &regionSums{lo: lo, hi: hi, pieces: make([][]sumPiece, hi-lo)}
				f.sideEntries += nonEmpty(sc.entries[lo:hi])
			}
			for _, t := range tensorsOf(f, r) {
				if t.Bytes() > 0 && !covered(sc.entries[lo:hi], f.base+t.Begin, f.base+t.End) {
					f.sideUncovered++
				}
			}
		}
	}
}

// covered reports whether the entries (sorted, not overlapping) cover
// [begin, end) without a gap.
func covered(entries []integrity.Entry, begin, end int64) bool {
	pos := begin
	i := sort.Search(len(entries), func(i int) bool { return entries[i].End > pos })
	for ; i < len(entries) && pos < end; i++ {
		if entries[i].Begin > pos {
			return false
		}
		pos = entries[i].End
	}
	return pos >= end
}

// hashSidecar records the CRCs of the parts of r's entries that lie in the
// bytes [lo, hi) of the file, just read into r.mem.
func (f *fileState) hashSidecar(r *region, lo, hi int64) {
	rs := r.sums
	lo, hi = max(lo, r.dataStart), min(hi, r.dataEnd)
	if rs == nil || lo >= hi {
		return
	}
	entries := f.side.entries[rs.lo:rs.hi]
	i := sort.Search(len(entries), func(i int) bool { return entries[i].End > lo })
	for ; i < len(entries) && entries[i].Begin < hi; i++ {
		a, b := max(lo, entries[i].Begin), min(hi, entries[i].End)
		if a >= b {
			continue
		}
		crc := checksum.Sum(f.side.alg, r.mem[a-r.spanStart:b-r.spanStart])
		rs.mu.Lock()
		rs.pieces[i] = append(rs.pieces[i], sumPiece{a, b - a, crc})
		rs.mu.Unlock()
	}
}

// checkSidecar joins the pieces of each entry of r and compares them with
// the sidecar (or, in compute mode, records them). Called once every byte of
// r is in, before its tensors are queued.
func (f *fileState) checkSidecar(r *region) error {
	rs, sc := r.sums, f.side
	if rs == nil {
		return nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for i, ps := range rs.pieces {
		e := &sc.entries[rs.lo+i]
		if e.Begin == e.End {
			// No bytes to check; and an empty entry on a boundary lies
			// inside both regions there, so recording its (zero) CRC
			// here was a write two goroutines made at once.
			continue
		}
		slices.SortFunc(ps, func(a, b sumPiece) int { return int(max(min(a.off-b.off, 1), -1)) })
		var crc uint64
		pos := e.Begin
		for j, p := range ps {
			if p.off != pos {
				return fmt.Errorf("%s: internal error: sidecar pieces of %q do not tile it (byte %d after %d)", f.uri, e.Name, p.off, pos)
			}
			if j == 0 {
				crc = p.crc
			} else {
				crc = checksum.Combine(sc.alg, crc, p.crc, p.n)
			}
			pos += p.n
		}
		if pos != e.End {
			return fmt.Errorf("%s: internal error: sidecar pieces of %q cover [%d, %d) of [%d, %d)", f.uri, e.Name, e.Begin, pos, e.Begin, e.End)
		}
		if sc.compute {
			e.Sum = crc
		} else if crc != e.Sum {
			return &integrity.TensorMismatchError{URI: f.uri, Sidecar: sc.uri, Tensor: e.Name, Begin: e.Begin, End: e.End,
				Algorithm: sc.alg, Expected: e.Sum, Computed: crc}
		}
	}
	sc.mu.Lock()
	sc.checked += nonEmpty(sc.entries[rs.lo:rs.hi])
	sc.mu.Unlock()
	return nil
}

// nonEmpty counts the entries that hold bytes (empty ones are checked
// trivially, and an empty tensor between two regions lies in both).
func nonEmpty(entries []integrity.Entry) int {
	n := 0
	for _, e := range entries {
		if e.End > e.Begin {
			n++
		}
	}
	return n
}

// checkRegion checks r against the sidecar once every byte of it is in. A
// mismatch is read once more from storage before it fails the stream: a bit
// flipped on the wire (the case sidecars exist for) is usually transient,
// and unlike a whole-object value the sidecar says which bytes to read
// again. A mapped file is not read again (the same page cache would give the
// same bytes).
func (s *Stream) checkRegion(f *fileState, r *region) error {
	err := f.checkSidecar(r)
	var tm *integrity.TensorMismatchError
	if err == nil || f.mapped != nil || !errors.As(err, &tm) {
		return err
	}
	if rerr := s.refetch(f, r); rerr != nil {
		return errors.Join(err, rerr)
	}
	return f.checkSidecar(r)
}

// refetch reads r's bytes again, in this goroutine, replacing the CRC pieces
// the first read recorded (the sidecar's and the whole-object verifier's).
func (s *Stream) refetch(f *fileState, r *region) error {
	r.sums.mu.Lock()
	for i := range r.sums.pieces {
		r.sums.pieces[i] = nil
	}
	r.sums.mu.Unlock()
	if f.ver != nil && f.ver.pieces != nil {
		f.ver.pieces.Drop(r.hashFrom, r.dataEnd)
	}
	s.st.retries.Add(1)
	for _, c := range s.split(r) {
		if err := s.readChunk(c); err != nil {
			return err
		}
	}
	return nil
}

// errNotComplete is returned by Sidecars before the stream has delivered
// every tensor.
var errNotComplete = errors.New("the checksums are complete only once every tensor has been delivered")

// Sidecars returns, for a stream opened with OpenChecksum whose tensors were
// all delivered (Next returned io.EOF), the sidecar of each file.
func (s *Stream) Sidecars() ([]*integrity.Sidecar, error) {
	if !s.cfg.computeSidecar {
		return nil, fmt.Errorf("%w: the stream does not compute checksums (open it with OpenChecksum)", ErrInvalidRequest)
	}
	if s.errSet.Load() {
		return nil, s.err
	}
	if s.queue.taken() != s.total {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, errNotComplete)
	}
	out := make([]*integrity.Sidecar, len(s.files))
	for i, f := range s.files {
		sc := f.side
		sc.mu.Lock()
		doc := &integrity.Sidecar{Format: integrity.SidecarFormat, Version: integrity.SidecarVersion,
			Algorithm: sc.alg, Size: f.size}
		var total uint64
		for j, e := range sc.entries {
			total = checksum.Combine(sc.alg, total, e.Sum, e.End-e.Begin)
			se := integrity.SidecarEntry{Name: e.Name, Offsets: [2]int64{e.Begin, e.End}, Checksum: integrity.HexSum(sc.alg, e.Sum)}
			if j == 0 {
				doc.Header = se
			} else {
				doc.Tensors = append(doc.Tensors, se)
			}
		}
		sc.mu.Unlock()
		doc.Total = integrity.HexSum(sc.alg, total)
		out[i] = doc
	}
	return out, nil
}

// sidecarNote fills in what the metadata says about f's sidecar.
func (f *fileState) sidecarNote() {
	if f.side == nil || f.side.compute {
		return
	}
	f.note.Sidecar = f.side.uri
	f.note.SidecarAlgorithm = f.side.alg
	f.note.SidecarEntries = f.sideEntries
	f.note.SidecarUncovered = f.sideUncovered
}

// SidecarChecked returns how many sidecar entries of file i that hold
// bytes (the header included) were verified so far.
func (s *Stream) SidecarChecked(i int) int {
	f := s.files[i]
	if f.side == nil {
		return 0
	}
	f.side.mu.Lock()
	defer f.side.mu.Unlock()
	return f.side.checked
}

// OpenChecksum opens a stream over every tensor of uris that computes each
// file's checksum sidecar as it reads (Sidecars, once Next returned
// io.EOF). Existing sidecars are not read (they are being replaced); the
// store's checksums are verified as cfg.Verify says, so a sidecar written
// from an object whose store keeps a CRC is anchored to it.
func OpenChecksum(ctx context.Context, cfg Config, uris []string) (*Stream, error) {
	cfg.computeSidecar = true
	return Open(ctx, cfg, uris, nil)
}
