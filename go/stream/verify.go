package stream

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"hash"
	"sync"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/storage"
)

// Verification of whole objects against their stores' checksums
// (Config.Verify, MODEL_STREAMER_VERIFY).
//
// A file is verified when its store holds a usable checksum, it is not
// mapped, and the stream reads every byte of it: for a SafeTensors file the
// header prefix [0, data_offset) plus regions that tile the data section
// (every tensor requested); for a stream of byte ranges, regions that tile
// [0, size). Each byte of the object is hashed exactly once: the prefix
// from the speculative header read (only [0, data_offset), not the tensor
// bytes that read also fetched), each region's bytes by the reader that
// read them (of regions that overlap, which byte ranges may, the later one
// hashes only its bytes past the earlier: region.hashFrom).
//
// CRCs: each reader hashes the bytes it just read (while they are in its
// cache) and records (offset, length, CRC); the last region of the file to
// complete joins the pieces in offset order (integrity.Pieces) and compares
// them with the store's value *before* its tensors are delivered. So the
// file's last tensors are never handed out, and Next never returns io.EOF,
// over bytes that failed: a mismatch fails the stream with an
// *integrity.MismatchError instead.
//
// MD5 cannot be combined: regions are hashed in offset order as they
// complete, and a region is delivered only once it is hashed (so a caller
// that writes into a tensor cannot change what is hashed); the last one only
// after the comparison. One goroutine at a time hashes a file, so MD5 costs
// one sequential pass per file at MD5 speed (about 0.6-0.8 GB/s a core),
// overlapping the reads, and holds back regions read out of order until
// the ones before them are in.
//
// No range is refetched on a mismatch: a whole-object checksum cannot tell
// which range was bad, and by the time it can be compared the object's
// other tensors have been handed out. The stream fails; the caller retries.

// verifier checks one file.
type verifier struct {
	uri  string
	size int64
	want storage.Checksum

	// CRCs.
	pieces *integrity.Pieces

	// MD5: regions hashed in offset order.
	md5     hash.Hash
	order   map[*region]int // region -> its position in offset order
	regions []*region       // in offset order
	ready   []bool
	next    int
	hashing bool

	mu   sync.Mutex
	done int // regions completed
}

// newVerifier starts verifying f against want; the caller adds the header
// prefix with addPrefix.
func newVerifier(f *fileState, want storage.Checksum) *verifier {
	v := &verifier{uri: f.uri, size: f.size, want: want}
	if want.Algorithm.Combinable() {
		v.pieces = integrity.NewPieces(want.Algorithm)
	} else {
		v.md5 = md5.New()
	}
	return v
}

// addPrefix hashes the first bytes of the object (the header).
func (v *verifier) addPrefix(p []byte) {
	if v.pieces != nil {
		v.pieces.Add(0, p)
		return
	}
	v.md5.Write(p)
}

// setRegions gives an MD5 verifier the file's regions, in offset order.
func (v *verifier) setRegions(rs []*region) {
	v.regions = rs
	if v.md5 == nil {
		return
	}
	v.order = make(map[*region]int, len(rs))
	for i, r := range rs {
		v.order[r] = i
	}
	v.ready = make([]bool, len(rs))
}

// readDone records the CRC of data, bytes [off, off+len(data)) of the
// object, which a reader just read.
func (v *verifier) readDone(off int64, data []byte) {
	if v.pieces != nil {
		v.pieces.Add(off, data)
	}
}

// regionDone is called when every byte of r is in. It calls deliver for each
// region whose tensors may now be handed out (r itself, or for MD5 the run of
// regions now hashed in order), and returns the mismatch, if the object's
// last bytes were in and do not match (deliver is then not called for the
// regions that completed the check).
func (v *verifier) regionDone(r *region, deliver func(*region)) error {
	if v.pieces != nil {
		v.mu.Lock()
		v.done++
		last := v.done == len(v.regions)
		v.mu.Unlock()
		if last {
			if err := v.check(); err != nil {
				return err
			}
		}
		deliver(r)
		return nil
	}
	return v.md5Done(r, deliver)
}

func (v *verifier) md5Done(r *region, deliver func(*region)) error {
	v.mu.Lock()
	v.ready[v.order[r]] = true
	if v.hashing {
		v.mu.Unlock()
		return nil // the goroutine hashing this file takes r when it gets there
	}
	v.hashing = true
	for v.next < len(v.regions) && v.ready[v.next] {
		x := v.regions[v.next]
		v.next++
		last := v.next == len(v.regions)
		v.mu.Unlock()
		v.md5.Write(x.mem[x.hashFrom-x.spanStart : x.dataEnd-x.spanStart])
		if last {
			if err := v.check(); err != nil {
				return err
			}
		}
		deliver(x)
		v.mu.Lock()
	}
	v.hashing = false
	v.mu.Unlock()
	return nil
}

// check compares what was read with the store's value.
func (v *verifier) check() error {
	var got []byte
	if v.pieces != nil {
		var err error
		if got, err = v.pieces.Sum(v.size); err != nil {
			return fmt.Errorf("%s: internal error: %w", v.uri, err)
		}
	} else {
		got = v.md5.Sum(nil)
	}
	if !bytes.Equal(got, v.want.Value) {
		return &integrity.MismatchError{URI: v.uri, Want: v.want, Computed: got, Size: v.size}
	}
	return nil
}

// Verification says how a file is checked against its store's checksum
// and its checksum sidecar.
type Verification struct {
	Algorithm checksum.Algorithm // "" when the file is not verified
	Source    string             // where the expected value came from ("x-amz-checksum-crc32c", ...)
	Expected  string             // the expected value, hex
	Skipped   string             // why the file is not verified

	// The checksum sidecar the file's tensors are checked against ("": none).
	Sidecar          string
	SidecarAlgorithm checksum.Algorithm
	SidecarEntries   int // entries (tensors, the header) the stream checks
	SidecarUncovered int // requested tensors or ranges no entry covers
}

// wantChecksum decides, when f is opened, which checksum it may be verified
// against, and starts a verifier the prefix read can feed. planVerify
// decides later whether the stream reads enough of f to use it, and (with
// Require) whether f can be verified at all: by its store's checksum, or by
// a sidecar, which is known only once it has been looked up.
func (s *Stream) wantChecksum(f *fileState) error {
	if s.cfg.Verify == integrity.Off {
		f.note.Skipped = integrity.Setting + "=off"
		return nil
	}
	if p, ok := f.obj.(storage.Preverified); ok && p.VerifiedAs() != "" {
		f.preverified = true
		f.note.Skipped = "verified as " + p.VerifiedAs() + " before this stream (a local cache entry, when it was written)"
		return nil
	}
	want, reason, ok := integrity.Want(f.obj, s.cfg.Verify)
	if !ok {
		f.note.Skipped = reason
		return nil
	}
	f.ver = newVerifier(f, want)
	return nil
}

// planVerify keeps the verifier of each file the stream reads whole, and
// drops the others. With Require, a file that neither its store's checksum
// nor its sidecar verifies is an error, before any tensor is read.
func (s *Stream) planVerify() error {
	perFile := make([][]*region, len(s.files))
	for _, r := range s.plan {
		perFile[r.file] = append(perFile[r.file], r)
	}
	for fi, f := range s.files {
		f.sidecarNote()
		bySidecar := f.side != nil && !f.side.compute && f.sideUncovered == 0
		reason := f.note.Skipped
		if f.ver != nil {
			reason = coverage(f, perFile[fi])
		}
		if reason != "" {
			f.ver = nil
			f.note.Skipped = reason
			if s.cfg.Verify == integrity.Require && !bySidecar && !f.preverified {
				return &integrity.UnverifiableError{URI: f.uri, Reason: reason + "; " + sidecarReason(f)}
			}
			continue
		}
		if bySidecar && s.cfg.Verify == integrity.Auto && f.ver.want.Algorithm == checksum.MD5 {
			// The sidecar checks every byte this stream reads, at CRC32
			// speed: a sequential MD5 on top would only slow it down.
			f.ver = nil
			f.note.Skipped = "the store's MD5 is not needed: the checksum sidecar covers every byte read"
			continue
		}
		f.ver.setRegions(perFile[fi])
		f.note.Algorithm, f.note.Source = f.ver.want.Algorithm, f.ver.want.Source
		f.note.Expected, f.note.Skipped = checksum.Format(f.ver.want.Value), ""
		if len(perFile[fi]) == 0 {
			// Nothing but the header: it is all read already.
			if err := f.ver.check(); err != nil {
				return err
			}
			f.ver = nil
		}
	}
	return nil
}

// sidecarReason says why f's sidecar does not verify what is requested.
func sidecarReason(f *fileState) string {
	switch {
	case f.side == nil:
		return fmt.Sprintf("no checksum sidecar (%s)", integrity.SidecarName(f.uri))
	case f.order != nil:
		return fmt.Sprintf("its sidecar covers %d of the requested ranges not whole (a range must hold whole tensors)", f.sideUncovered)
	}
	return fmt.Sprintf("its sidecar does not cover %d of the requested tensors", f.sideUncovered)
}

// coverage returns why the stream does not read every byte of f, or ""
// when it does. It also sets each region's hashFrom: regions of byte ranges
// may overlap (a range that starts inside a full region opens a new one),
// and each byte must be hashed once, so a region hashes only the bytes past
// those before it.
func coverage(f *fileState, regions []*region) string {
	if f.mapped != nil {
		return "the file is read by mapping it"
	}
	pos := f.prefixHashed
	for _, r := range regions {
		if r.dataStart > pos {
			break
		}
		r.hashFrom = min(max(r.dataStart, pos), r.dataEnd)
		pos = max(pos, r.dataEnd)
	}
	if pos == f.size {
		return ""
	}
	if f.order != nil {
		return "the requested ranges do not cover the whole object"
	}
	return "only some of its tensors are requested (tensor_names), so the whole object is not read"
}
