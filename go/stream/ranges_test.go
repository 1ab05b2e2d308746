package stream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

// rawFile writes n random bytes (no SafeTensors header: any binary file).
func rawFile(t *testing.T, dir, name string, n int, seed uint64) (string, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

// contiguous cuts [off, off+sum(sizes)) into back-to-back ranges.
func contiguous(uri string, off int64, sizes ...int64) stream.RangeRequest {
	r := stream.RangeRequest{URI: uri, Sizes: sizes}
	for _, n := range sizes {
		r.Offsets = append(r.Offsets, off)
		off += n
	}
	return r
}

// randomRanges draws n ranges of a file of size bytes: unordered,
// overlapping (some identical, some nested), some empty, some large.
func randomRanges(rng *rand.Rand, uri string, size int64, n int) stream.RangeRequest {
	r := stream.RangeRequest{URI: uri}
	for i := range n {
		var off, length int64
		switch rng.IntN(6) {
		case 0: // empty, anywhere including the very end
			off = rng.Int64N(size + 1)
		case 1: // large
			off = rng.Int64N(size / 2)
			length = rng.Int64N(size - off + 1)
		case 2: // a copy of an earlier one
			if i > 0 {
				j := rng.IntN(i)
				off, length = r.Offsets[j], r.Sizes[j]
				break
			}
			fallthrough
		default: // small, unaligned
			off = rng.Int64N(size)
			length = min(rng.Int64N(20000)+1, size-off)
		}
		r.Offsets = append(r.Offsets, off)
		r.Sizes = append(r.Sizes, length)
	}
	return r
}

// drainRanges takes every range, checks its bytes against data (per file)
// and that each range comes exactly once, releasing as it goes (or keeping
// all, then checking they are unchanged after the stream ended).
func drainRanges(t *testing.T, s *stream.Stream, reqs []stream.RangeRequest, data [][]byte, keep bool) {
	t.Helper()
	seen := make([][]bool, len(reqs))
	want := 0
	for i, r := range reqs {
		seen[i] = make([]bool, len(r.Offsets))
		want += len(r.Offsets)
	}
	expect := func(r stream.Ready) []byte {
		off, n := reqs[r.File].Offsets[r.Tensor], reqs[r.File].Sizes[r.Tensor]
		return data[r.File][off : off+n]
	}
	var kept []stream.Ready
	got := 0
	for {
		batch, err := s.Next(context.Background(), 5, 10*time.Second)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if batch == nil {
			t.Fatal("timed out waiting for ranges")
		}
		for _, r := range batch {
			if r.File < 0 || r.File >= len(reqs) || r.Tensor < 0 || r.Tensor >= len(reqs[r.File].Offsets) {
				t.Fatalf("delivered an unknown range: file %d, range %d", r.File, r.Tensor)
			}
			if seen[r.File][r.Tensor] {
				t.Fatalf("file %d range %d delivered twice", r.File, r.Tensor)
			}
			seen[r.File][r.Tensor] = true
			got++
			if !bytes.Equal(r.Data, expect(r)) {
				t.Fatalf("file %d range %d (offset %d, size %d): bytes differ (got %d bytes)",
					r.File, r.Tensor, reqs[r.File].Offsets[r.Tensor], reqs[r.File].Sizes[r.Tensor], len(r.Data))
			}
			if keep {
				kept = append(kept, r)
			} else {
				r.Release()
			}
		}
	}
	if got != want {
		t.Fatalf("got %d ranges, want %d", got, want)
	}
	for _, r := range kept {
		if !bytes.Equal(r.Data, expect(r)) {
			t.Fatalf("kept file %d range %d changed after delivery", r.File, r.Tensor)
		}
		r.Release()
	}
}

func TestOpenRangesDeliversEveryRange(t *testing.T) {
	dir := t.TempDir()
	const size = 700 << 10
	pa, a := rawFile(t, dir, "a.bin", size, 1)
	pb, b := rawFile(t, dir, "b.dat", 123457, 2) // not a multiple of any block
	pe, e := rawFile(t, dir, "empty.bin", 0, 3)
	rng := rand.New(rand.NewPCG(9, 9))

	requests := map[string]struct {
		reqs []stream.RangeRequest
		data [][]byte
	}{
		"whole file in chunks": {
			[]stream.RangeRequest{contiguous(pa, 0, 100000, 4096, 1, 300000, size-404097)},
			[][]byte{a},
		},
		"unordered, overlapping, empty": {
			[]stream.RangeRequest{{
				URI:     pa,
				Offsets: []int64{500000, 10, 10, 0, 20, 499990, size, 4096, 600000, 0},
				Sizes:   []int64{1000, 100, 100, size, 5, 20, 0, 8192, 0, 0},
			}},
			[][]byte{a},
		},
		"random ranges over three files": {
			[]stream.RangeRequest{
				randomRanges(rng, pa, size, 200),
				randomRanges(rng, pb, int64(len(b)), 50),
				{URI: pe, Offsets: []int64{0, 0}, Sizes: []int64{0, 0}},
			},
			[][]byte{a, b, e},
		},
		"a file with no ranges": {
			[]stream.RangeRequest{{URI: pe}, contiguous(pb, 17, 1000, 2000)},
			[][]byte{e, b},
		},
		"only empty ranges": {
			[]stream.RangeRequest{{URI: pb, Offsets: []int64{0, 5, int64(len(b))}, Sizes: []int64{0, 0, 0}}},
			[][]byte{b},
		},
	}
	configs := []struct {
		limit int64
		mode  fs.Mode
		chunk int64
		keep  bool
	}{
		{stream.Unlimited, fs.Auto, 0, false},
		{stream.Unlimited, fs.Mmap, 0, true},
		{stream.Unlimited, fs.Buffered, 16 << 10, true},
		{stream.LargestTensor, fs.Buffered, 16 << 10, false},
		{stream.LargestTensor, fs.Direct, 32 << 10, false},
		{size + 64<<10, fs.Direct, 64 << 10, true},
		{size + 64<<10, fs.Buffered, 8 << 10, false},
	}
	for name, rq := range requests {
		for _, c := range configs {
			t.Run(fmt.Sprintf("%s/limit=%d/mode=%d/chunk=%d/keep=%v", name, c.limit, c.mode, c.chunk, c.keep), func(t *testing.T) {
				cfg := stream.DefaultConfig(registry(c.mode))
				cfg.MemoryLimit, cfg.ChunkBytes, cfg.Concurrency = c.limit, c.chunk, 4
				s, err := stream.OpenRanges(context.Background(), cfg, rq.reqs)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				files := s.Files()
				for i, f := range files {
					if f.URI != rq.reqs[i].URI || f.Header != nil || len(f.Tensors) != len(rq.reqs[i].Offsets) {
						t.Fatalf("Files()[%d] = %+v", i, f)
					}
					for j, tn := range f.Tensors {
						if tn.Begin != rq.reqs[i].Offsets[j] || tn.Bytes() != rq.reqs[i].Sizes[j] {
							t.Fatalf("Files()[%d].Tensors[%d] = %+v, want the caller's range %d", i, j, tn, j)
						}
					}
				}
				drainRanges(t, s, rq.reqs, rq.data, c.keep)
			})
		}
	}
}

// Ranges that overlap or touch share one region, so their common bytes
// are read from storage once.
func TestOverlappingRangesAreReadOnce(t *testing.T) {
	dir := t.TempDir()
	p, data := rawFile(t, dir, "x.bin", 200000, 4)
	req := stream.RangeRequest{
		URI:     p,
		Offsets: []int64{1000, 1000, 500, 1500, 90000, 2000, 90500},
		Sizes:   []int64{2000, 2000, 1000, 100, 1000, 1000, 200},
	}
	// The union: [500, 3000) and [90000, 91000).
	const union = 2500 + 1000
	cfg := stream.DefaultConfig(registry(fs.Buffered))
	cfg.MemoryLimit = stream.LargestTensor
	s, err := stream.OpenRanges(context.Background(), cfg, []stream.RangeRequest{req})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	drainRanges(t, s, []stream.RangeRequest{req}, [][]byte{data}, false)
	st := s.Stats()
	if st.BytesRead != union || st.TensorsDelivered != uint64(len(req.Offsets)) {
		t.Fatalf("read %d bytes for %d ranges, want the union, %d bytes, once", st.BytesRead, st.TensorsDelivered, union)
	}
	var sum uint64
	for _, n := range req.Sizes {
		sum += uint64(n)
	}
	if st.BytesRequested != sum || st.HeaderBytesRead != 0 {
		t.Fatalf("stats %+v: want %d bytes requested and no header read", st, sum)
	}
}

// A memory limit holds for ranges as for tensors: the arena never grows
// past it while the consumer releases what it takes.
func TestRangesStayWithinTheMemoryLimit(t *testing.T) {
	dir := t.TempDir()
	p, data := rawFile(t, dir, "big.bin", 3<<20, 5)
	var sizes []int64
	for range 48 {
		sizes = append(sizes, 64<<10)
	}
	req := contiguous(p, 0, sizes...)
	for _, limit := range []int64{stream.LargestTensor, 256 << 10} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			cfg := stream.DefaultConfig(registry(fs.Buffered))
			cfg.MemoryLimit, cfg.ChunkBytes = limit, 32<<10
			s, err := stream.OpenRanges(context.Background(), cfg, []stream.RangeRequest{req})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			drainRanges(t, s, []stream.RangeRequest{req}, [][]byte{data}, false)
			bound := uint64(max(limit, 64<<10)) + 2*4096
			if st := s.Stats(); st.ArenaBytes > bound {
				t.Fatalf("arena peaked at %d bytes, limit %d", st.ArenaBytes, bound)
			}
		})
	}
}

func TestOpenRangesRejectsBadRequests(t *testing.T) {
	dir := t.TempDir()
	p, _ := rawFile(t, dir, "f.bin", 10000, 6)
	missing := filepath.Join(dir, "missing.bin")
	cases := []struct {
		name  string
		limit int64
		reqs  []stream.RangeRequest
		is    error
		says  []string
	}{
		{"past the end", stream.Unlimited, []stream.RangeRequest{{URI: p, Offsets: []int64{0, 9000}, Sizes: []int64{10, 1001}}},
			stream.ErrInvalidRequest, []string{p, "range 1", "offset 9000", "size 1001", "10000 bytes"}},
		{"empty range past the end", stream.Unlimited, []stream.RangeRequest{{URI: p, Offsets: []int64{10001}, Sizes: []int64{0}}},
			stream.ErrInvalidRequest, []string{p, "range 0", "offset 10001"}},
		{"negative offset", stream.Unlimited, []stream.RangeRequest{{URI: p, Offsets: []int64{-1}, Sizes: []int64{5}}},
			stream.ErrInvalidRequest, []string{p, "range 0", "negative offset"}},
		{"negative size", stream.Unlimited, []stream.RangeRequest{{URI: p, Offsets: []int64{0, 3}, Sizes: []int64{5, -2}}},
			stream.ErrInvalidRequest, []string{p, "range 1", "negative size"}},
		{"overflowing end", stream.Unlimited, []stream.RangeRequest{{URI: p, Offsets: []int64{1 << 62}, Sizes: []int64{1 << 62}}},
			stream.ErrInvalidRequest, []string{p, "overflows"}},
		{"lengths differ", stream.Unlimited, []stream.RangeRequest{{URI: p, Offsets: []int64{0, 1}, Sizes: []int64{1}}},
			stream.ErrInvalidRequest, []string{p, "2 offsets but 1 sizes"}},
		{"missing file", stream.Unlimited, []stream.RangeRequest{contiguous(p, 0, 5), contiguous(missing, 0, 5)},
			storage.ErrNotFound, []string{missing}},
		{"directory", stream.Unlimited, []stream.RangeRequest{contiguous(dir, 0, 5)},
			storage.ErrInvalidArgument, []string{dir}},
		{"no files", stream.Unlimited, nil, stream.ErrInvalidRequest, []string{"no files"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := stream.DefaultConfig(registry(fs.Auto))
			cfg.MemoryLimit = c.limit
			s, err := stream.OpenRanges(context.Background(), cfg, c.reqs)
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, c.is) {
				t.Fatalf("got %v, want %v", err, c.is)
			}
			for _, w := range c.says {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestRangesMemoryLimitBelowLargestRange(t *testing.T) {
	dir := t.TempDir()
	pa, _ := rawFile(t, dir, "a.bin", 10000, 7)
	pb, _ := rawFile(t, dir, "b.bin", 10000, 8)
	cfg := stream.DefaultConfig(registry(fs.Auto))
	cfg.MemoryLimit = 3000
	reqs := []stream.RangeRequest{
		contiguous(pa, 0, 100, 2000),
		{URI: pb, Offsets: []int64{50, 10, 6000}, Sizes: []int64{10, 3001, 100}},
	}
	_, err := stream.OpenRanges(context.Background(), cfg, reqs)
	var mle *stream.MemoryLimitError
	if !errors.As(err, &mle) || !mle.Range || mle.URI != pb || mle.Largest != 3001 ||
		!strings.Contains(err.Error(), "range 1 at offset 10") {
		t.Fatalf("got %v, want a MemoryLimitError naming range 1 of %s", err, pb)
	}
	cfg.MemoryLimit = 3001 // exactly the largest range is enough
	s, err := stream.OpenRanges(context.Background(), cfg, reqs)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// Two range streams and a tensor stream over the same files at once keep
// to themselves.
func TestRangeAndTensorStreamsAtOnce(t *testing.T) {
	cp := writeCheckpoint(t, 41, 2, 20, 20000)
	var reqs []stream.RangeRequest
	var data [][]byte
	rng := rand.New(rand.NewPCG(3, 3))
	for _, p := range cp.paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, randomRanges(rng, p, int64(len(b)), 40))
		data = append(data, b)
	}
	cfg := stream.DefaultConfig(registry(fs.Buffered))
	cfg.MemoryLimit = stream.LargestTensor
	r1, err := stream.OpenRanges(context.Background(), cfg, reqs)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	ts, err := stream.Open(context.Background(), cfg, cp.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	r2, err := stream.OpenRanges(context.Background(), stream.DefaultConfig(registry(fs.Auto)), reqs)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	drain(t, ts, cp.want, false)
	drainRanges(t, r2, reqs, data, true)
	drainRanges(t, r1, reqs, data, false)
}
