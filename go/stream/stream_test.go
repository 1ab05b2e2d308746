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
	"sync/atomic"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/internal/sttest"
	"github.com/model-streamer/model-streamer/go/safetensors"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

type checkpoint struct {
	paths []string
	want  map[string][]byte
}

// writeCheckpoint writes nfiles random files with up to ntensors each.
func writeCheckpoint(t *testing.T, seed uint64, nfiles, ntensors int, maxElems int64) checkpoint {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	cp := checkpoint{want: map[string][]byte{}}
	for i := range nfiles {
		path := filepath.Join(dir, fmt.Sprintf("model-%d.safetensors", i))
		tensors := sttest.Random(rng, fmt.Sprintf("f%d", i), 1+rng.IntN(ntensors), maxElems)
		want, err := sttest.Write(path, tensors, seed+uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range want {
			cp.want[k] = v
		}
		cp.paths = append(cp.paths, path)
	}
	return cp
}

func registry(mode fs.Mode) *storage.Registry {
	r := storage.NewRegistry()
	r.Register("file", fs.New(fs.Options{Mode: mode}))
	return r
}

// drain reads every tensor, checks its bytes, and releases it (or keeps
// them all when keep is set) and returns the names seen.
func drain(t *testing.T, s *stream.Stream, want map[string][]byte, keep bool) map[string]bool {
	t.Helper()
	files := s.Files()
	seen := map[string]bool{}
	var kept []stream.Ready
	for {
		batch, err := s.Next(context.Background(), 7, 10*time.Second)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if batch == nil {
			t.Fatal("timed out waiting for tensors")
		}
		for _, r := range batch {
			name := files[r.File].Tensors[r.Tensor].Name
			if seen[name] {
				t.Fatalf("tensor %s delivered twice", name)
			}
			seen[name] = true
			if !bytes.Equal(r.Data, want[name]) {
				t.Fatalf("tensor %s: bytes differ (got %d bytes, want %d)", name, len(r.Data), len(want[name]))
			}
			if keep {
				kept = append(kept, r)
			} else {
				r.Release()
			}
		}
	}
	// Kept tensors must still hold their bytes after the stream ends.
	for _, r := range kept {
		name := files[r.File].Tensors[r.Tensor].Name
		if !bytes.Equal(r.Data, want[name]) {
			t.Fatalf("kept tensor %s changed after delivery", name)
		}
		r.Release()
	}
	return seen
}

func TestStreamsEveryTensorUnderEachMemoryMode(t *testing.T) {
	cp := writeCheckpoint(t, 7, 4, 60, 40000)
	var largest int64
	for _, b := range cp.want {
		largest = max(largest, int64(len(b)))
	}
	cases := []struct {
		limit       int64
		mode        fs.Mode
		concurrency int
		chunk       int64
		keep        bool
	}{
		{stream.Unlimited, fs.Auto, 8, 0, false},
		{stream.Unlimited, fs.Buffered, 1, 64 << 10, true},
		{stream.Unlimited, fs.Direct, 8, 64 << 10, false},
		{stream.Unlimited, fs.Mmap, 4, 0, true},
		{stream.LargestTensor, fs.Buffered, 8, 64 << 10, false},
		{stream.LargestTensor, fs.Direct, 3, 32 << 10, false},
		{stream.LargestTensor, fs.Buffered, 2, 0, true},
		{stream.LargestTensor, fs.Mmap, 4, 0, false},
		{largest + 100<<10, fs.Buffered, 8, 16 << 10, false},
		{largest + 100<<10, fs.Direct, 16, 16 << 10, true},
		{3 * largest, fs.Auto, 1, 0, false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("limit=%d/mode=%d/conc=%d/chunk=%d/keep=%v", c.limit, c.mode, c.concurrency, c.chunk, c.keep), func(t *testing.T) {
			cfg := stream.DefaultConfig(registry(c.mode))
			cfg.MemoryLimit, cfg.Concurrency, cfg.ChunkBytes = c.limit, c.concurrency, c.chunk
			s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			seen := drain(t, s, cp.want, c.keep)
			if len(seen) != len(cp.want) {
				t.Fatalf("got %d tensors, want %d", len(seen), len(cp.want))
			}
			st := s.Stats()
			if st.TensorsDelivered != uint64(len(cp.want)) || st.FirstTensor < 0 {
				t.Fatalf("stats: %+v", st)
			}
			if c.limit == stream.LargestTensor && !c.keep && st.ArenaBytes > uint64(largest)+3*4096 {
				t.Fatalf("arena %d bytes exceeds the largest tensor %d", st.ArenaBytes, largest)
			}
		})
	}
}

func TestTensorNames(t *testing.T) {
	cp := writeCheckpoint(t, 11, 3, 30, 1000)
	var names []string
	for n := range cp.want {
		if len(names) < 10 {
			names = append(names, n)
		}
	}
	cfg := stream.DefaultConfig(registry(fs.Auto))
	s, err := stream.Open(context.Background(), cfg, cp.paths, names)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seen := drain(t, s, cp.want, false)
	if len(seen) != len(names) {
		t.Fatalf("got %d tensors, want %d", len(seen), len(names))
	}

	_, err = stream.Open(context.Background(), cfg, cp.paths, []string{names[0], "no.such", "also.missing"})
	if !errors.Is(err, stream.ErrInvalidRequest) || !strings.Contains(err.Error(), `"also.missing", "no.such"`) {
		t.Fatalf("unknown names: got %v", err)
	}
}

func TestMemoryLimitBelowLargestTensor(t *testing.T) {
	cp := writeCheckpoint(t, 3, 1, 20, 5000)
	cfg := stream.DefaultConfig(registry(fs.Auto))
	cfg.MemoryLimit = 10
	_, err := stream.Open(context.Background(), cfg, cp.paths, nil)
	var mle *stream.MemoryLimitError
	if !errors.As(err, &mle) || !strings.Contains(err.Error(), cp.paths[0]) {
		t.Fatalf("got %v, want a MemoryLimitError naming the file", err)
	}
}

func TestInvalidFilesNameTheFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name string
		path string
		is   error
	}{
		{"missing", filepath.Join(dir, "missing.safetensors"), storage.ErrNotFound},
		{"directory", dir, storage.ErrInvalidArgument},
		{"empty", write("empty.safetensors", nil), safetensors.ErrInvalid},
		{"short", write("short.safetensors", []byte{1, 2, 3}), safetensors.ErrInvalid},
		{"not json", write("notjson.safetensors", append([]byte{4, 0, 0, 0, 0, 0, 0, 0}, "abcd"...)), safetensors.ErrInvalid},
	}
	cfg := stream.DefaultConfig(registry(fs.Auto))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := stream.Open(context.Background(), cfg, []string{c.path}, nil)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.path) {
				t.Fatalf("got %v, want %v naming %s", err, c.is, c.path)
			}
		})
	}
}

func TestCloseMidStreamAndReleaseAfterClose(t *testing.T) {
	cp := writeCheckpoint(t, 5, 2, 50, 50000)
	cfg := stream.DefaultConfig(registry(fs.Buffered))
	cfg.MemoryLimit = stream.LargestTensor
	cfg.ChunkBytes = 16 << 10
	s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := s.Next(context.Background(), 1, 10*time.Second)
	if err != nil || len(batch) != 1 {
		t.Fatalf("first tensor: %v %v", batch, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The delivered tensor's memory outlives Close until released.
	name := s.Files()[batch[0].File].Tensors[batch[0].Tensor].Name
	if !bytes.Equal(batch[0].Data, cp.want[name]) {
		t.Fatal("tensor changed after Close")
	}
	batch[0].Release()
	batch[0].Release() // idempotent
	if _, err := s.Next(context.Background(), 1, 0); !errors.Is(err, stream.ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
}

func TestTwoStreamsAtOnce(t *testing.T) {
	a := writeCheckpoint(t, 21, 2, 20, 20000)
	b := writeCheckpoint(t, 22, 2, 20, 20000)
	cfg := stream.DefaultConfig(registry(fs.Auto))
	sa, err := stream.Open(context.Background(), cfg, a.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := stream.Open(context.Background(), cfg, b.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	drain(t, sb, b.want, false)
	drain(t, sa, a.want, false)
}

func TestReadHeadersReadsNoTensorData(t *testing.T) {
	cp := writeCheckpoint(t, 31, 3, 20, 1000)
	files, err := stream.ReadHeaders(context.Background(), stream.DefaultConfig(registry(fs.Auto)), cp.paths)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, f := range files {
		if f.URI != cp.paths[i] || len(f.Tensors) != len(f.Header.Tensors) {
			t.Fatalf("file %d: %+v", i, f)
		}
		for _, tn := range f.Tensors {
			if int64(len(cp.want[tn.Name])) != tn.Bytes() {
				t.Fatalf("tensor %s: %d bytes, want %d", tn.Name, tn.Bytes(), len(cp.want[tn.Name]))
			}
			n++
		}
	}
	if n != len(cp.want) {
		t.Fatalf("%d tensors, want %d", n, len(cp.want))
	}
	_, err = stream.ReadHeaders(context.Background(), stream.DefaultConfig(registry(fs.Auto)), []string{cp.paths[0] + ".missing"})
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
}

// memBackend serves files from memory and counts the bytes read from them.
type memBackend struct {
	files map[string][]byte
	read  atomic.Int64
	calls atomic.Int64
}

func (b *memBackend) Open(_ context.Context, uri string) (storage.Object, error) {
	data, ok := b.files[uri]
	if !ok {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.NotFound, Err: storage.ErrNotFound}
	}
	return &memObject{b: b, data: data}, nil
}

type memObject struct {
	b    *memBackend
	data []byte
}

func (o *memObject) Size() int64  { return int64(len(o.data)) }
func (o *memObject) Close() error { return nil }
func (o *memObject) ReadAt(_ context.Context, dst []byte, off int64) (int, error) {
	n := copy(dst, o.data[off:])
	o.b.read.Add(int64(n))
	o.b.calls.Add(1)
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}

// ReadHeaders reads each header exactly (its 8-byte length, then the
// header), whatever the size of the tensor data behind it: distributed
// streaming has every process read every header.
func TestReadHeadersReadsExactlyTheHeaders(t *testing.T) {
	cases := []struct {
		name     string
		maxElems int64
	}{
		{"small files", 1000},
		{"files past the speculative prefix", 1 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cp := writeCheckpoint(t, 41, 3, 12, tc.maxElems)
			b := &memBackend{files: map[string][]byte{}}
			var want int64
			for _, p := range cp.paths {
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b.files["mem://"+p] = data
				hl, err := safetensors.HeaderLen(data[:8], int64(len(data)))
				if err != nil {
					t.Fatal(err)
				}
				want += safetensors.PrefixLen + hl
			}
			r := storage.NewRegistry()
			r.Register("mem", b)
			var uris []string
			for _, p := range cp.paths {
				uris = append(uris, "mem://"+p)
			}
			files, err := stream.ReadHeaders(context.Background(), stream.DefaultConfig(r), uris)
			if err != nil {
				t.Fatal(err)
			}
			if len(files) != len(uris) {
				t.Fatalf("%d files, want %d", len(files), len(uris))
			}
			if got := b.read.Load(); got != want {
				t.Fatalf("read %d bytes, want exactly the headers' %d", got, want)
			}
			if got := b.calls.Load(); got != 2*int64(len(uris)) {
				t.Fatalf("%d reads, want 2 a file", got)
			}
		})
	}
}

// TestLocalFilesReadASmallHeaderPrefix checks that a local file's first
// read is a small prefix, not object storage's speculative megabyte, and
// that a header longer than that prefix is still read whole.
func TestLocalFilesReadASmallHeaderPrefix(t *testing.T) {
	cases := []struct {
		name     string
		ntensors int
		maxElems int64
	}{
		{"large tensors, short header", 8, 1 << 20},
		{"a header longer than the prefix", 1500, 16},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cp := writeCheckpoint(t, 43, 2, c.ntensors, c.maxElems)
			var headers, longest uint64
			var smallest int64 = 1 << 62
			for _, p := range cp.paths {
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				hl, err := safetensors.HeaderLen(data[:8], int64(len(data)))
				if err != nil {
					t.Fatal(err)
				}
				headers += uint64(safetensors.PrefixLen + hl)
				longest = max(longest, uint64(safetensors.PrefixLen+hl))
				smallest = min(smallest, int64(len(data)))
			}
			if c.ntensors > 100 && longest <= 64<<10 {
				t.Fatalf("the longest header is %d bytes: the case needs one past the prefix", longest)
			}
			if c.ntensors <= 100 && smallest <= 1<<20 {
				t.Fatalf("a file of %d bytes: the case needs files past the speculative megabyte", smallest)
			}
			for _, mode := range []fs.Mode{fs.Buffered, fs.Mmap} {
				s, err := stream.Open(context.Background(), stream.DefaultConfig(registry(mode)), cp.paths, nil)
				if err != nil {
					t.Fatal(err)
				}
				drain(t, s, cp.want, false)
				st := s.Stats()
				s.Close()
				// At most the prefix a file, or the header and the prefix's
				// first read of it.
				if limit := headers + 2*64<<10; st.HeaderBytesRead > limit {
					t.Errorf("mode %d: read %d header bytes for headers of %d, want at most %d", mode, st.HeaderBytesRead, headers, limit)
				}
			}
		})
	}
}
