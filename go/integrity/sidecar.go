package integrity

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/model-streamer/model-streamer/go/checksum"
)

// The checksum sidecar: our own manifest of a checkpoint file, written by
// `model-streamer checksum` beside the file it describes, and read by the
// engine when it opens that file (unless MODEL_STREAMER_VERIFY=off).
//
// One sidecar per file, named SidecarName(file): on object storage it is
// an object beside the checkpoint, so each shard and its sidecar are
// written, replaced and deleted together, with no shared object to update.
// The name does not end in ".safetensors", so listings of *.safetensors
// (list_safetensors, directory streaming) never take it for a shard.
//
// Format (JSON, version 1):
//
//	{"format": "model-streamer-checksums", "version": 1, "algorithm": "crc32",
//	 "size": 1234, "total": "89abcdef",
//	 "header": {"offsets": [0, 88], "checksum": "01234567"},
//	 "tensors": [{"name": "w", "offsets": [88, 1234], "checksum": "76543210"}, ...]}
//
// Offsets are absolute byte offsets in the file, [begin, end). "header" is
// the 8-byte length prefix plus the JSON header (the file's first
// data_offset bytes); "total" is the checksum of the whole file, so it
// equals the full-object CRC32 S3 keeps for an object uploaded with current
// SDKs' defaults. Checksums are lower-case hex of the big-endian value, as
// stores print them. Algorithm: only "crc32" (IEEE) is written: it is the
// fastest CRC the Go runtime computes here (22-29 GB/s a core with
// carry-less multiply, against about 4 GB/s for CRC32C), and CRCs combine,
// so readers hash the pieces they read in parallel. A reader accepts any
// combinable algorithm of go/checksum ("crc32c", "crc64nvme" too).

const (
	// SidecarSuffix is appended to a checkpoint's name to name its sidecar.
	SidecarSuffix = ".checksums.json"
	// SidecarFormat is the "format" field's value.
	SidecarFormat = "model-streamer-checksums"
	// SidecarVersion is the version this package writes and reads.
	SidecarVersion = 1
	// MaxSidecarBytes bounds what the engine reads as a sidecar (a header
	// is at most 100 MB, and a sidecar entry is about a tenth of a header's).
	MaxSidecarBytes = 64 << 20
)

// SidecarName is the name (path or URI) of the sidecar of file. An http(s)
// URL's query and fragment (a presigned signature, a SAS token) stay after
// the path: the suffix belongs to the path, and a token that grants the
// sidecar too keeps working. Other schemes take "?" and "#" as part of the
// name, as object keys and file names may hold them.
func SidecarName(file string) string {
	lower := strings.ToLower(file)
	if strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") {
		if i := strings.IndexAny(file, "?#"); i >= 0 {
			return file[:i] + SidecarSuffix + file[i:]
		}
	}
	return file + SidecarSuffix
}

// Sidecar is a parsed checksum sidecar.
type Sidecar struct {
	Format    string             `json:"format"`
	Version   int                `json:"version"`
	Algorithm checksum.Algorithm `json:"algorithm"`
	Size      int64              `json:"size"`
	Total     string             `json:"total"`
	Header    SidecarEntry       `json:"header"`
	Tensors   []SidecarEntry     `json:"tensors"`
}

// SidecarEntry is the checksum of one byte range of the file.
type SidecarEntry struct {
	Name     string   `json:"name,omitempty"`
	Offsets  [2]int64 `json:"offsets"`
	Checksum string   `json:"checksum"`
}

// Entry is a SidecarEntry with its value decoded.
type Entry struct {
	Name       string // "" for the header
	Begin, End int64  // absolute offsets
	Sum        uint64
}

// ErrSidecar marks a sidecar that cannot be used: malformed, of another
// version, or stale (not describing the file as it is now).
var ErrSidecar = errors.New("checksum sidecar")

// SidecarError reports a sidecar that cannot be used.
type SidecarError struct {
	URI    string // the sidecar
	Reason string
}

func (e *SidecarError) Error() string {
	return fmt.Sprintf("%s: unusable checksum sidecar: %s (rerun `model-streamer checksum` on the file, "+
		"or remove the sidecar; %s=off ignores sidecars)", e.URI, e.Reason, Setting)
}

func (e *SidecarError) Is(target error) bool { return target == ErrSidecar || target == ErrChecksum }

// ParseSidecar decodes and validates a sidecar (uri names it in errors).
// Entries must lie inside the file and not overlap; the header must start at
// byte 0.
func ParseSidecar(uri string, data []byte) (*Sidecar, []Entry, error) {
	bad := func(format string, args ...any) (*Sidecar, []Entry, error) {
		return nil, nil, &SidecarError{URI: uri, Reason: fmt.Sprintf(format, args...)}
	}
	var sc Sidecar
	if err := json.Unmarshal(data, &sc); err != nil {
		return bad("not valid JSON: %v", err)
	}
	if sc.Format != SidecarFormat {
		return bad("format %q, expected %q", sc.Format, SidecarFormat)
	}
	if sc.Version != SidecarVersion {
		return bad("version %d, this library reads version %d", sc.Version, SidecarVersion)
	}
	if !sc.Algorithm.Combinable() {
		return bad("algorithm %q is not one of crc32, crc32c, crc64nvme", sc.Algorithm)
	}
	if sc.Size < 0 {
		return bad("negative size %d", sc.Size)
	}
	decode := func(e SidecarEntry, what string) (Entry, error) {
		b, err := hex.DecodeString(e.Checksum)
		if err != nil || len(b) != sc.Algorithm.Size() {
			return Entry{}, fmt.Errorf("%s: checksum %q is not %d bytes of hex", what, e.Checksum, sc.Algorithm.Size())
		}
		var v uint64
		for _, c := range b {
			v = v<<8 | uint64(c)
		}
		if e.Offsets[0] < 0 || e.Offsets[1] < e.Offsets[0] || e.Offsets[1] > sc.Size {
			return Entry{}, fmt.Errorf("%s: offsets %v outside the file's %d bytes", what, e.Offsets, sc.Size)
		}
		return Entry{Name: e.Name, Begin: e.Offsets[0], End: e.Offsets[1], Sum: v}, nil
	}
	if _, err := hex.DecodeString(sc.Total); err != nil || len(sc.Total) != 2*sc.Algorithm.Size() {
		return bad("total %q is not %d bytes of hex", sc.Total, sc.Algorithm.Size())
	}
	h, err := decode(sc.Header, "header")
	if err != nil {
		return bad("%v", err)
	}
	if h.Begin != 0 {
		return bad("the header entry starts at byte %d, not 0", h.Begin)
	}
	entries := []Entry{h}
	for i, t := range sc.Tensors {
		e, err := decode(t, fmt.Sprintf("tensor %d (%q)", i, t.Name))
		if err != nil {
			return bad("%v", err)
		}
		entries = append(entries, e)
	}
	// By offset, an empty entry before a non-empty one at the same offset:
	// then ends never decrease, which the engine's searches rely on.
	slices.SortStableFunc(entries, func(a, b Entry) int {
		if c := cmpInt(a.Begin, b.Begin); c != 0 {
			return c
		}
		return cmpInt(a.End, b.End)
	})
	var prev *Entry
	for i := range entries {
		e := &entries[i]
		if prev != nil && e.Begin < prev.End {
			return bad("entries %q and %q overlap", prev.Name, e.Name)
		}
		if e.End > e.Begin { // an empty tensor may sit where the next one starts
			prev = e
		}
	}
	return &sc, entries, nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// HexSum renders a CRC of algorithm alg as sidecars and stores write it.
func HexSum(alg checksum.Algorithm, v uint64) string { return checksum.Format(checksum.Bytes(alg, v)) }

// TensorMismatchError reports a tensor (or the header) whose bytes do not
// match the sidecar.
type TensorMismatchError struct {
	URI       string // the checkpoint file
	Sidecar   string // the sidecar's URI
	Tensor    string // "" for the header
	Begin     int64
	End       int64
	Algorithm checksum.Algorithm
	Expected  uint64
	Computed  uint64
}

// Error reads "URI: checksum mismatch: crc32 expected 1a2b3c4d, computed
// 5e6f7a8b (tensor "w", bytes [88, 1234) ...)": the first fields are the
// format MismatchError uses, which the Python binding parses.
func (e *TensorMismatchError) Error() string {
	what := fmt.Sprintf("tensor %q", e.Tensor)
	if e.Tensor == "" {
		what = "the header"
	}
	return fmt.Sprintf("%s: checksum mismatch: %s expected %s, computed %s (%s, bytes [%d, %d), against the sidecar %s); "+
		"the bytes were corrupted between the storage and this process, or the file changed after the sidecar was written",
		e.URI, e.Algorithm, HexSum(e.Algorithm, e.Expected), HexSum(e.Algorithm, e.Computed), what, e.Begin, e.End, e.Sidecar)
}

func (e *TensorMismatchError) Is(target error) bool { return target == ErrChecksum }

// Marshal encodes the sidecar as it is written to storage: indented JSON,
// one entry a line, ending in a newline.
func (s *Sidecar) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
