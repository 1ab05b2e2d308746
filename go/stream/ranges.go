package stream

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/model-streamer/model-streamer/go/safetensors"
)

// RangeRequest names byte ranges of one object, to be read as they are:
// no header is parsed, so the object may hold anything. Offsets and Sizes
// are parallel; range i is [Offsets[i], Offsets[i]+Sizes[i]). Ranges need
// not be ordered and may overlap; a size of 0 is a valid (empty) range.
type RangeRequest struct {
	URI     string
	Offsets []int64
	Sizes   []int64
}

// OpenRanges opens every object of reqs (in parallel), checks that each
// range lies inside its object, checks the memory limit against the largest
// range, and starts streaming. Each range is delivered as one Ready with
// File the index into reqs and Tensor the index of the range in its
// request. Everything else (memory limit, tokens, Next, Close, Stats)
// behaves as for Open, a range playing the part of a tensor.
//
// Ranges are planned in offset order, whatever order the caller gave: back
// to back and overlapping ranges share one region, so bytes two ranges have
// in common are read once and both views point at them.
func OpenRanges(ctx context.Context, cfg Config, reqs []RangeRequest) (*Stream, error) {
	if cfg.Storage == nil {
		return nil, fmt.Errorf("%w: no storage configured", ErrInvalidRequest)
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%w: no files given", ErrInvalidRequest)
	}
	uris := make([]string, len(reqs))
	for i, r := range reqs {
		if err := checkRanges(r); err != nil {
			return nil, err
		}
		uris[i] = r.URI
	}
	s := newStream(cfg)
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()

	if err := s.openFiles(uris, func(i int, f *fileState) error { return s.openRanges(f, reqs[i]) }); err != nil {
		s.abort()
		return nil, err
	}
	s.cfg = s.cfg.normalized(uris[0])
	if err := s.planMemory(); err != nil {
		s.abort()
		return nil, err
	}
	s.start()
	return s, nil
}

// checkRanges rejects what no object can satisfy, before anything is opened.
func checkRanges(r RangeRequest) error {
	if len(r.Offsets) != len(r.Sizes) {
		return fmt.Errorf("%w: %s: %d offsets but %d sizes (they are parallel lists)",
			ErrInvalidRequest, r.URI, len(r.Offsets), len(r.Sizes))
	}
	for i, off := range r.Offsets {
		n := r.Sizes[i]
		switch {
		case off < 0:
			return fmt.Errorf("%w: %s: range %d (offset %d, size %d): negative offset", ErrInvalidRequest, r.URI, i, off, n)
		case n < 0:
			return fmt.Errorf("%w: %s: range %d (offset %d, size %d): negative size", ErrInvalidRequest, r.URI, i, off, n)
		case n > math.MaxInt64-off:
			return fmt.Errorf("%w: %s: range %d (offset %d, size %d): end overflows", ErrInvalidRequest, r.URI, i, off, n)
		}
	}
	return nil
}

// openRanges opens f's object, checks req's ranges against its size and
// makes them f's tensors, sorted by offset, remembering the caller's order.
func (s *Stream) openRanges(f *fileState, req RangeRequest) error {
	if err := s.openObject(f); err != nil {
		return err
	}
	if err := f.sideWait(); err != nil {
		return err
	}
	for i, off := range req.Offsets {
		if end := off + req.Sizes[i]; end > f.size {
			return fmt.Errorf("%w: %s: range %d (offset %d, size %d) ends at byte %d, past the end of the object (%d bytes)",
				ErrInvalidRequest, f.uri, i, off, req.Sizes[i], end, f.size)
		}
	}
	order := make([]int, len(req.Offsets))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := req.Offsets[a] - req.Offsets[b]; c != 0 {
			return sign(c)
		}
		if c := req.Sizes[a] - req.Sizes[b]; c != 0 {
			return sign(c)
		}
		return a - b
	})
	f.tensors = make([]safetensors.Tensor, len(order))
	for j, i := range order {
		f.tensors[j] = safetensors.Tensor{Begin: req.Offsets[i], End: req.Offsets[i] + req.Sizes[i]}
	}
	f.order = order
	return nil
}

func sign(v int64) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
