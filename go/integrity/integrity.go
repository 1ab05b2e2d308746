// Package integrity decides whether and how an object's bytes are checked
// against the whole-object checksum its store keeps, and reports a
// mismatch. The engine (go/stream) and whole-object downloads (go/fetch)
// share it: MODEL_STREAMER_VERIFY, the choice of checksum, the errors, and
// Pieces, which joins the CRCs of ranges read in any order into the CRC of
// the object.
package integrity

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/storage"
)

// Setting is the name of the setting that selects the Mode.
const Setting = "MODEL_STREAMER_VERIFY"

// Mode is what to do about checksums.
type Mode int

const (
	// Auto verifies every object whose store holds a whole-object
	// checksum (a CRC, else an MD5), when the whole object is read, and the
	// tensors of every file with a checksum sidecar; others are read
	// unverified. A stream skips an MD5 where the sidecar covers every byte
	// it reads (the CRC32 sidecar check costs a fraction of MD5's).
	Auto Mode = iota
	// Off verifies nothing.
	Off
	// Require fails, before any tensor is read, for an object that cannot
	// be verified: neither a usable store checksum (MD5 included) over the
	// whole object read, nor a sidecar covering every requested tensor.
	Require
)

func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Off:
		return "off"
	case Require:
		return "require"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode reads a Setting value: auto (or empty), off, require, in any case.
func ParseMode(v string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "auto":
		return Auto, nil
	case "off":
		return Off, nil
	case "require":
		return Require, nil
	}
	return Auto, fmt.Errorf("%s=%q: expected auto, off or require", Setting, v)
}

// FromSettings returns the Mode s sets (Auto when unset).
func FromSettings(s storage.Settings) (Mode, error) { return ParseMode(s[Setting]) }

// Want returns the checksum obj should be verified against under mode m:
// of those its store holds, the first of checksum.Known (the CRCs, which
// parallel reads can combine, before MD5, which needs the bytes in order:
// one stream per object, it bounds a single large object's throughput at
// MD5's speed, docs/benchmarks.md). Auto takes an MD5 too: an Azure blob
// and an S3 object uploaded whole by an older client keep nothing else,
// and a flipped bit must not reach a tensor silently under the defaults.
// With none, ok is false and reason says why.
func Want(obj storage.Object, m Mode) (c storage.Checksum, reason string, ok bool) {
	cs, isChecksummed := obj.(storage.Checksummed)
	if !isChecksummed {
		return storage.Checksum{}, "the storage keeps no checksums (local files)", false
	}
	sums := cs.Checksums()
	for _, alg := range checksum.Known {
		for _, s := range sums {
			if s.Algorithm == alg && len(s.Value) == alg.Size() {
				return s, "", true
			}
		}
	}
	reason = cs.NoChecksumReason()
	if reason == "" {
		reason = "the store holds no whole-object checksum for it"
	}
	return storage.Checksum{}, reason, false
}

// ErrChecksum matches both MismatchError and UnverifiableError with errors.Is.
var ErrChecksum = errors.New("checksum")

// MismatchError reports bytes that do not match the store's checksum.
type MismatchError struct {
	URI      string
	Want     storage.Checksum // the store's value
	Computed []byte           // over the bytes as read
	Size     int64
}

// Error reads "URI: checksum mismatch: crc32c expected 1a2b3c4d, computed
// 5e6f7a8b (...)": the first four fields are a stable format callers (the
// Python binding) parse.
func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s: checksum mismatch: %s expected %s, computed %s (the store's %s, over the %d bytes read); "+
		"the bytes were corrupted between the store and this process, or the stored checksum is wrong (%s=off skips the check)",
		e.URI, e.Want.Algorithm, checksum.Format(e.Want.Value), checksum.Format(e.Computed), e.Want.Source, e.Size, Setting)
}

func (e *MismatchError) Is(target error) bool { return target == ErrChecksum }

// UnverifiableError reports, under Require, an object that cannot be
// verified.
type UnverifiableError struct {
	URI    string
	Reason string
}

func (e *UnverifiableError) Error() string {
	return fmt.Sprintf("%s: %s=require: cannot verify the object: %s", e.URI, Setting, e.Reason)
}

func (e *UnverifiableError) Is(target error) bool { return target == ErrChecksum }

// Pieces collects the CRCs of byte ranges of one object, added in any order
// from any goroutine, and joins them into the CRC of the object once the
// ranges cover it.
type Pieces struct {
	alg  checksum.Algorithm
	mu   sync.Mutex
	list []piece
}

type piece struct {
	off, n int64
	crc    uint64
}

// NewPieces returns an empty collection for CRC algorithm alg.
func NewPieces(alg checksum.Algorithm) *Pieces {
	if !alg.Combinable() {
		panic("integrity: Pieces of a non-CRC algorithm " + string(alg))
	}
	return &Pieces{alg: alg}
}

// Add records the CRC of data, the bytes at off. It computes the CRC in the
// caller's goroutine (while data is hot in its cache).
func (p *Pieces) Add(off int64, data []byte) {
	crc := checksum.Sum(p.alg, data)
	p.mu.Lock()
	p.list = append(p.list, piece{off, int64(len(data)), crc})
	p.mu.Unlock()
}

// Drop forgets the pieces that start in [lo, hi) (bytes about to be read
// again and added anew).
func (p *Pieces) Drop(lo, hi int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = slices.DeleteFunc(p.list, func(pc piece) bool { return pc.off >= lo && pc.off < hi })
}

// Sum joins the pieces in offset order and returns the CRC of [0, size) as
// stores encode it. The pieces must tile [0, size) exactly (empty pieces
// anywhere are fine): a gap or an overlap is an error, as the value would
// be of other bytes than the object's.
func (p *Pieces) Sum(size int64) ([]byte, error) {
	p.mu.Lock()
	list := slices.Clone(p.list)
	p.mu.Unlock()
	slices.SortFunc(list, func(a, b piece) int {
		if a.off != b.off {
			if a.off < b.off {
				return -1
			}
			return 1
		}
		return int(min(max(a.n-b.n, -1), 1))
	})
	var crc uint64
	var pos int64
	for _, pc := range list {
		if pc.n == 0 {
			continue
		}
		if pc.off != pos {
			return nil, fmt.Errorf("integrity: pieces do not tile the object: byte %d follows byte %d", pc.off, pos)
		}
		crc = checksum.Combine(p.alg, crc, pc.crc, pc.n)
		pos += pc.n
	}
	if pos != size {
		return nil, fmt.Errorf("integrity: pieces cover %d of %d bytes", pos, size)
	}
	return checksum.Bytes(p.alg, crc), nil
}
