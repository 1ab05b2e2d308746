package stream_test

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/internal/sttest"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

// A consumer that keeps the previous tensor while asking for the next (a
// Python for loop does) costs at most one extra region beyond the limit.
func TestHoldingThePreviousTensorCostsOneRegion(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	const big = 4 << 20
	for i := range 2 {
		p := filepath.Join(dir, fmt.Sprintf("m%d.safetensors", i))
		var ts []sttest.Tensor
		for j := range 6 {
			ts = append(ts, sttest.Tensor{Name: fmt.Sprintf("f%d.big%d", i, j), DType: "U8", Shape: []int64{big - int64(j)*100000}})
			ts = append(ts, sttest.Tensor{Name: fmt.Sprintf("f%d.small%d", i, j), DType: "F32", Shape: []int64{1000 + int64(j)}})
		}
		if _, err := sttest.Write(p, ts, uint64(i)); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	for round := range 20 {
		cfg := stream.DefaultConfig(registry(fs.Buffered))
		cfg.MemoryLimit = stream.LargestTensor
		s, err := stream.Open(context.Background(), cfg, paths, nil)
		if err != nil {
			t.Fatal(err)
		}
		var prev *stream.Ready
		for {
			batch, err := s.Next(context.Background(), 1, 10*time.Second)
			if err == io.EOF {
				break
			}
			if err != nil || len(batch) == 0 {
				t.Fatal(err)
			}
			if prev != nil {
				prev.Release()
			}
			prev = &batch[0]
		}
		prev.Release()
		st := s.Stats()
		s.Close()
		if st.ArenaBytes > 2*(big+3*4096) {
			t.Fatalf("round %d: arena peaked at %d bytes, more than two largest regions (%d)", round, st.ArenaBytes, 2*(big+3*4096))
		}
	}
}

// With no memory limit, a consumer that keeps every tensor must not be
// served one region at a time: once the ring is full of kept tensors the
// rest is read into fresh memory as fast as the readers go.
func TestUnlimitedConsumerKeepingEverything(t *testing.T) {
	defer stream.SetUnlimitedRing(64 << 10)()
	cp := writeCheckpoint(t, 99, 3, 60, 30000)
	for _, mode := range []fs.Mode{fs.Buffered, fs.Direct} {
		cfg := stream.DefaultConfig(registry(mode))
		cfg.ChunkBytes = 32 << 10
		s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
		if err != nil {
			t.Fatal(err)
		}
		seen := drain(t, s, cp.want, true)
		st := s.Stats()
		s.Close()
		if len(seen) != len(cp.want) {
			t.Fatalf("got %d tensors, want %d", len(seen), len(cp.want))
		}
		if st.ArenaBytes <= 64<<10 {
			t.Fatalf("arena peaked at %d bytes: kept tensors cannot fit the ring", st.ArenaBytes)
		}
	}
}

// A consumer that holds tensors until a copy of them finishes (GPU delivery)
// peeks (timeout 0) while it holds them and releases them before it waits.
// Peeking must never let the readers leave the ring: with that consumer the
// arena stays at its ring, limited or not.
func TestPeekingNeverLeavesTheRing(t *testing.T) {
	const ring = 64 << 10
	defer stream.SetUnlimitedRing(ring)()
	cp := writeCheckpoint(t, 7, 3, 60, 3000)
	for _, limit := range []int64{stream.Unlimited, ring} {
		cfg := stream.DefaultConfig(registry(fs.Buffered))
		cfg.ChunkBytes = 16 << 10
		cfg.MemoryLimit = limit
		s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
		if err != nil {
			t.Fatal(err)
		}
		files := s.Files()
		var held []stream.Ready
		seen := 0
		for {
			batch, err := s.Next(context.Background(), 4, 0)
			if err == nil && len(batch) == 0 {
				// Nothing ready: let the "copies" finish, then wait.
				for _, r := range held {
					r.Release()
				}
				held = held[:0]
				time.Sleep(time.Millisecond) // readers find the ring full meanwhile
				batch, err = s.Next(context.Background(), 4, 10*time.Second)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range batch {
				name := files[r.File].Tensors[r.Tensor].Name
				if string(r.Data) != string(cp.want[name]) {
					t.Fatalf("limit %d: %s: wrong bytes", limit, name)
				}
				seen++
			}
			held = append(held, batch...)
		}
		for _, r := range held {
			r.Release()
		}
		st := s.Stats()
		s.Close()
		if seen != len(cp.want) {
			t.Fatalf("limit %d: got %d tensors, want %d", limit, seen, len(cp.want))
		}
		if st.ArenaBytes > ring {
			t.Fatalf("limit %d: arena peaked at %d bytes, past the %d-byte ring", limit, st.ArenaBytes, ring)
		}
	}
}

// A memory limit larger than an unlimited stream's ring bounds memory but
// does not make the ring larger: a consumer that drops each tensor stays in
// a ring the unlimited stream's size (every byte past it would be fresh
// memory), and one that keeps everything still gets it all, past the ring,
// within the limit's grants.
func TestLimitAboveTheUnlimitedRing(t *testing.T) {
	const ring = 64 << 10
	defer stream.SetUnlimitedRing(ring)()
	cp := writeCheckpoint(t, 11, 3, 60, 3000)
	var largest int64
	for _, b := range cp.want {
		largest = max(largest, int64(len(b)))
	}
	if 2*largest > ring {
		t.Fatalf("largest tensor %d: the case needs a ring that is not sized by it", largest)
	}
	for _, keep := range []bool{false, true} {
		cfg := stream.DefaultConfig(registry(fs.Buffered))
		cfg.ChunkBytes = 16 << 10
		cfg.MemoryLimit = 16 * ring
		s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
		if err != nil {
			t.Fatal(err)
		}
		seen := drain(t, s, cp.want, keep)
		st := s.Stats()
		s.Close()
		if len(seen) != len(cp.want) {
			t.Fatalf("keep=%v: got %d tensors, want %d", keep, len(seen), len(cp.want))
		}
		if !keep && st.ArenaBytes > ring+3*4096 {
			t.Fatalf("dropping each tensor: arena peaked at %d bytes, more than the %d-byte ring", st.ArenaBytes, ring)
		}
	}
}
