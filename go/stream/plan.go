package stream

import (
	"fmt"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/model-streamer/model-streamer/go/safetensors"
)

// region is the unit of memory: a run of requested tensors that sit back to
// back in one file. Its bytes are read by one or more chunk reads; its
// tensors become ready together, and its memory returns to the arena when
// the last of their tokens is released.
type region struct {
	file         int
	first, count int   // tensors [first, first+count) of the file's requested list
	dataStart    int64 // absolute file offset of the first tensor byte
	dataEnd      int64 // absolute file offset past the last tensor byte
	spanStart    int64 // dataStart rounded down to alignment
	spanEnd      int64 // dataEnd rounded up to alignment
	// hashFrom is where the region's bytes start counting for whole-object
	// verification (dataStart, or past an overlapping earlier region).
	hashFrom int64
	// sums collects the CRCs of the sidecar entries inside the region (nil:
	// none; see sidecar.go).
	sums *regionSums

	// Set when memory is assigned: mem covers [spanStart, spanEnd) of the file.
	mem []byte
	seg *segment
	off int64 // offset of mem in seg, for the ring

	pending   atomic.Int32 // chunk reads outstanding
	refs      atomic.Int32 // tokens (tensors) not yet released
	completed atomic.Bool  // its tensors were delivered
}

func (r *region) done() bool { return r.completed.Load() }

func (r *region) span() int64 { return r.spanEnd - r.spanStart }

// tensorBytes returns the memory of tensor t (an absolute file range).
func (r *region) tensorBytes(begin, end int64) []byte {
	return r.mem[begin-r.spanStart : end-r.spanStart : end-r.spanStart]
}

// selectTensors applies the name filter to every file. names == nil keeps
// all. A name found in no file, or in more than one, is an error.
func selectTensors(files []*fileState, names []string) error {
	if names == nil {
		for _, f := range files {
			f.tensors = f.header.Tensors
		}
		return nil
	}
	want := make(map[string]int, len(names))
	for _, n := range names {
		want[n] = 0
	}
	for _, f := range files {
		f.tensors = nil
		for _, t := range f.header.Tensors {
			if _, ok := want[t.Name]; ok {
				want[t.Name]++
				f.tensors = append(f.tensors, t)
			}
		}
	}
	var missing, dup []string
	for n, c := range want {
		switch {
		case c == 0:
			missing = append(missing, n)
		case c > 1:
			dup = append(dup, n)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("%w: tensor_names not found in checkpoint: %s", ErrInvalidRequest, quoteList(missing))
	}
	if len(dup) > 0 {
		sort.Strings(dup)
		return fmt.Errorf("%w: tensor_names requested tensors that appear in more than one file: %s", ErrInvalidRequest, quoteList(dup))
	}
	return nil
}

func quoteList(names []string) string {
	const show = 20
	var b strings.Builder
	b.WriteByte('[')
	for i, n := range names {
		if i == show {
			fmt.Fprintf(&b, ", ... (%d more)", len(names)-show)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	b.WriteByte(']')
	return b.String()
}

// largestTensor is the size of the largest requested tensor in bytes, and
// where it is: files[file].tensors[tensor].
func largestTensor(files []*fileState) (size int64, file, tensor int) {
	for fi, f := range files {
		for ti, t := range f.tensors {
			if t.Bytes() > size {
				size, file, tensor = t.Bytes(), fi, ti
			}
		}
	}
	return size, file, tensor
}

// planRegions groups each file's requested, non-empty tensors into regions
// whose aligned span stays within maxSpan (a larger tensor gets a region of
// its own), and orders the regions round-robin over the files so that every
// file streams from the start rather than one after another.
//
// Tensors must be sorted by Begin. A tensor that starts inside the region
// before it (overlapping byte ranges, OpenRanges) joins that region, so
// shared bytes are read once; tensors of a SafeTensors header never overlap.
func planRegions(files []*fileState, maxSpan int64) [][]*region {
	perFile := make([][]*region, len(files))
	for fi, f := range files {
		var cur *region
		for i, t := range f.tensors {
			if t.Bytes() == 0 {
				continue
			}
			begin, end := f.base+t.Begin, f.base+t.End
			if cur != nil && begin <= cur.dataEnd &&
				alignUp(max(end, cur.dataEnd), alignment)-cur.spanStart <= maxSpan {
				cur.count = i - cur.first + 1
				cur.dataEnd = max(end, cur.dataEnd)
				cur.spanEnd = alignUp(cur.dataEnd, alignment)
				continue
			}
			cur = &region{
				file: fi, first: i, count: 1,
				dataStart: begin, dataEnd: end,
				spanStart: alignDown(begin, alignment), spanEnd: alignUp(end, alignment),
			}
			perFile[fi] = append(perFile[fi], cur)
		}
	}
	return perFile
}

// interleave orders per-file region lists round-robin.
func interleave(perFile [][]*region) []*region {
	var out []*region
	for i := 0; ; i++ {
		added := false
		for _, rs := range perFile {
			if i < len(rs) {
				out = append(out, rs[i])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

// tensorsOf lists the tensors of region r (zero-size ones in between included).
func tensorsOf(f *fileState, r *region) []safetensors.Tensor {
	return f.tensors[r.first : r.first+r.count]
}
