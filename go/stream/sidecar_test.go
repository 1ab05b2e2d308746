package stream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/safetensors"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

// computeSidecars streams uris with OpenChecksum and returns each file's
// sidecar, encoded.
func computeSidecars(t *testing.T, cfg stream.Config, uris []string, want map[string][]byte) [][]byte {
	t.Helper()
	s, err := stream.OpenChecksum(context.Background(), cfg, uris)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Sidecars(); err == nil {
		t.Fatal("Sidecars before the end of the stream succeeded")
	}
	drain(t, s, want, false)
	docs, err := s.Sidecars()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, d := range docs {
		b, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// writeSidecars computes the sidecars of local files and writes them beside.
func writeSidecars(t *testing.T, cp checkpoint) {
	t.Helper()
	for i, b := range computeSidecars(t, stream.DefaultConfig(registry(fs.Buffered)), cp.paths, cp.want) {
		if err := os.WriteFile(integrity.SidecarName(cp.paths[i]), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The sidecar holds the CRC32 of the header, of each tensor and of the whole
// file, each as zlib (and S3's full-object CRC32) compute it.
func TestChecksumSidecarValues(t *testing.T) {
	cp := writeCheckpoint(t, 21, 2, 30, 5000)
	writeSidecars(t, cp)
	for _, p := range cp.paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := os.ReadFile(integrity.SidecarName(p))
		if err != nil {
			t.Fatal(err)
		}
		sc, entries, err := integrity.ParseSidecar(p, doc)
		if err != nil {
			t.Fatal(err)
		}
		hexCRC := func(b []byte) string { return fmt.Sprintf("%08x", crc32.ChecksumIEEE(b)) }
		if sc.Algorithm != checksum.CRC32 || sc.Size != int64(len(data)) || sc.Total != hexCRC(data) {
			t.Fatalf("sidecar %+v: want crc32, size %d, total %s", sc, len(data), hexCRC(data))
		}
		if h := sc.Header; h.Offsets[0] != 0 || h.Checksum != hexCRC(data[:h.Offsets[1]]) {
			t.Fatalf("header entry %+v", h)
		}
		if len(sc.Tensors) != len(entries)-1 || len(sc.Tensors) == 0 {
			t.Fatalf("%d tensors, %d entries", len(sc.Tensors), len(entries))
		}
		for _, e := range sc.Tensors {
			b := data[e.Offsets[0]:e.Offsets[1]]
			if !bytes.Equal(b, cp.want[e.Name]) || e.Checksum != hexCRC(b) {
				t.Fatalf("tensor %q: entry %+v", e.Name, e)
			}
		}
	}
}

// With a sidecar, every local read strategy verifies every tensor, and
// require accepts local files.
func TestSidecarVerifiesLocalFiles(t *testing.T) {
	cp := writeCheckpoint(t, 22, 3, 20, 20000)
	writeSidecars(t, cp)
	for _, c := range []struct {
		mode  fs.Mode
		limit int64
	}{{fs.Auto, stream.Unlimited}, {fs.Buffered, stream.LargestTensor}, {fs.Direct, 1 << 20}, {fs.Mmap, stream.Unlimited}} {
		for _, v := range []integrity.Mode{integrity.Auto, integrity.Require, integrity.Off} {
			t.Run(fmt.Sprintf("%v/%d/%v", c.mode, c.limit, v), func(t *testing.T) {
				cfg := stream.DefaultConfig(registry(c.mode))
				cfg.MemoryLimit, cfg.ChunkBytes, cfg.Verify = c.limit, 64<<10, v
				s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				drain(t, s, cp.want, false)
				for i, f := range s.Files() {
					wantSidecar, wantChecked := integrity.SidecarName(cp.paths[i]), nonEmptyTensors(f.Tensors)+1
					if v == integrity.Off {
						wantSidecar, wantChecked = "", 0
					}
					if f.Verify.Sidecar != wantSidecar || f.Verify.SidecarUncovered != 0 || s.SidecarChecked(i) != wantChecked {
						t.Fatalf("file %d: Verify %+v, %d checked, want %d", i, f.Verify, s.SidecarChecked(i), wantChecked)
					}
				}
			})
		}
	}
}

// corrupt flips one bit of the named tensor in the file (after its sidecar
// was written) and returns the file's index.
func corrupt(t *testing.T, cp checkpoint, name string) int {
	t.Helper()
	for i, p := range cp.paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		at := bytes.Index(data[8:], cp.want[name])
		if at < 0 || !strings.HasPrefix(name, fmt.Sprintf("f%d.", i)) {
			continue
		}
		data[8+at+len(cp.want[name])/2] ^= 0x10
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return i
	}
	t.Fatalf("tensor %s not found", name)
	return -1
}

// A byte flipped in a tensor after `checksum`: the stream fails naming the
// file, the tensor, the algorithm and both values before that tensor is
// handed out; every tensor handed out before is exact. Requests that leave
// the tensor out do not see it.
func TestSidecarCatchesCorruptTensorBeforeDelivery(t *testing.T) {
	cp := writeCheckpoint(t, 23, 1, 40, 20000)
	writeSidecars(t, cp)
	var names []string
	for n := range cp.want {
		if len(cp.want[n]) > 0 {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	bad := names[len(names)/2]
	fi := corrupt(t, cp, bad)
	for _, mode := range []fs.Mode{fs.Auto, fs.Buffered, fs.Direct, fs.Mmap} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			cfg := stream.DefaultConfig(registry(mode))
			cfg.Concurrency, cfg.ChunkBytes = 2, 16<<10
			s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			err, seen := consumeNamed(t, s, cp.want)
			var tm *integrity.TensorMismatchError
			if !errors.As(err, &tm) || !errors.Is(err, integrity.ErrChecksum) || tm.Tensor != bad {
				t.Fatalf("got %v, want a TensorMismatchError for %q", err, bad)
			}
			for _, part := range []string{cp.paths[fi], fmt.Sprintf("tensor %q", bad), "checksum mismatch: crc32 expected", integrity.SidecarName(cp.paths[fi])} {
				if !strings.Contains(err.Error(), part) {
					t.Fatalf("message %q lacks %q", err, part)
				}
			}
			if seen[bad] || len(seen) == len(names) {
				t.Fatalf("the corrupt tensor was delivered (%d of %d seen)", len(seen), len(names))
			}
		})
	}
	t.Run("tensor_names", func(t *testing.T) {
		cfg := stream.DefaultConfig(registry(fs.Buffered))
		for _, c := range []struct {
			names []string
			fails bool
		}{{names[:3], false}, {[]string{names[0], bad}, true}} {
			s, err := stream.Open(context.Background(), cfg, cp.paths, c.names)
			if err != nil {
				t.Fatal(err)
			}
			if v := s.Files()[0].Verify; v.SidecarEntries != len(c.names) || v.SidecarUncovered != 0 {
				t.Fatalf("Verify %+v for %d names", v, len(c.names))
			}
			err, seen := consumeNamed(t, s, cp.want)
			s.Close()
			if c.fails != errors.Is(err, integrity.ErrChecksum) || seen[bad] || (!c.fails && len(seen) != len(c.names)) {
				t.Fatalf("names %v: err %v, seen %v", c.names, err, seen)
			}
		}
	})
}

// consumeNamed drains a tensor stream, failing the test on a tensor with
// wrong bytes, and returns the error that ended it (nil at io.EOF) and the
// tensors seen.
func consumeNamed(t *testing.T, s *stream.Stream, want map[string][]byte) (error, map[string]bool) {
	t.Helper()
	files := s.Files()
	seen := map[string]bool{}
	for {
		batch, err := s.Next(context.Background(), 0, 30*time.Second)
		if err == io.EOF {
			return nil, seen
		}
		if err != nil {
			return err, seen
		}
		if batch == nil {
			t.Fatal("timed out")
		}
		for _, r := range batch {
			n := files[r.File].Tensors[r.Tensor].Name
			if !bytes.Equal(r.Data, want[n]) {
				t.Fatalf("tensor %s delivered with wrong bytes", n)
			}
			seen[n] = true
			r.Release()
		}
	}
}

// Byte ranges: ranges of whole tensors are checked, a range that cuts a
// tensor is not (auto reads it, require refuses it).
func TestSidecarRanges(t *testing.T) {
	cp := writeCheckpoint(t, 24, 1, 30, 20000)
	writeSidecars(t, cp)
	doc, err := os.ReadFile(integrity.SidecarName(cp.paths[0]))
	if err != nil {
		t.Fatal(err)
	}
	sc, _, err := integrity.ParseSidecar("x", doc)
	if err != nil {
		t.Fatal(err)
	}
	var whole stream.RangeRequest
	whole.URI = cp.paths[0]
	// Every tensor as its own range, in reverse order, plus the header.
	for i := len(sc.Tensors) - 1; i >= 0; i-- {
		e := sc.Tensors[i]
		whole.Offsets = append(whole.Offsets, e.Offsets[0])
		whole.Sizes = append(whole.Sizes, e.Offsets[1]-e.Offsets[0])
	}
	whole.Offsets = append(whole.Offsets, 0)
	whole.Sizes = append(whole.Sizes, sc.Header.Offsets[1])
	e := sc.Tensors[len(sc.Tensors)/2]
	cut := stream.RangeRequest{URI: cp.paths[0], Offsets: []int64{e.Offsets[0] + 1}, Sizes: []int64{e.Offsets[1] - e.Offsets[0] - 1}}
	cfg := stream.DefaultConfig(registry(fs.Buffered))
	cfg.ChunkBytes = 16 << 10
	for _, c := range []struct {
		name      string
		req       stream.RangeRequest
		uncovered int
	}{{"whole tensors", whole, 0}, {"cut", cut, 1}} {
		t.Run(c.name, func(t *testing.T) {
			s, err := stream.OpenRanges(context.Background(), cfg, []stream.RangeRequest{c.req})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			if v := s.Files()[0].Verify; v.SidecarUncovered != c.uncovered {
				t.Fatalf("Verify %+v, want %d uncovered", v, c.uncovered)
			}
			for {
				batch, err := s.Next(context.Background(), 0, 30*time.Second)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range batch {
					r.Release()
				}
			}
			if got := s.SidecarChecked(0); (c.uncovered == 0) != (got == len(sc.Tensors)+1) {
				t.Fatalf("%d entries checked of %d", got, len(sc.Tensors)+1)
			}
			rcfg := cfg
			rcfg.Verify = integrity.Require
			s2, err := stream.OpenRanges(context.Background(), rcfg, []stream.RangeRequest{c.req})
			if c.uncovered == 0 && err != nil || c.uncovered > 0 && !errors.Is(err, integrity.ErrChecksum) {
				t.Fatalf("require: %v", err)
			}
			if s2 != nil {
				s2.Close()
			}
		})
	}
	// A flip inside a whole-tensor range fails the stream.
	corruptName := e.Name
	corrupt(t, cp, corruptName)
	s, err := stream.OpenRanges(context.Background(), cfg, []stream.RangeRequest{whole})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for {
		batch, err := s.Next(context.Background(), 0, 30*time.Second)
		var tm *integrity.TensorMismatchError
		if errors.As(err, &tm) && tm.Tensor == corruptName {
			break
		}
		if err != nil {
			t.Fatalf("got %v, want a mismatch of %q", err, corruptName)
		}
		for _, r := range batch {
			r.Release()
		}
	}
}

// A sidecar that does not describe the file (the file changed after it was
// written: other size, other header) fails the open with a SidecarError; so
// does a malformed one. off ignores them.
func TestStaleSidecar(t *testing.T) {
	cp := writeCheckpoint(t, 25, 1, 10, 3000)
	writeSidecars(t, cp)
	path := cp.paths[0]
	good, err := os.ReadFile(integrity.SidecarName(path))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	renamed := bytes.Replace(data, []byte(`"f0.`), []byte(`"g0.`), 1)
	cases := []struct {
		name    string
		file    []byte
		sidecar []byte
		why     string
	}{
		{"other size", append(slices.Clone(data[:len(data)-len(data)%8]), make([]byte, 0)...), good, "bytes"},
		{"other header", renamed, good, "stale"},
		{"not json", data, []byte("{"), "not valid JSON"},
		{"other version", data, bytes.Replace(good, []byte(`"version": 1`), []byte(`"version": 2`), 1), "version 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "other size" {
				// A file one tensor shorter: rewrite with the last tensor dropped.
				cp2 := writeCheckpoint(t, 26, 1, 10, 3000)
				c.file, _ = os.ReadFile(cp2.paths[0])
				if len(c.file) == len(data) {
					t.Skip("same size by chance")
				}
			}
			if err := os.WriteFile(path, c.file, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(integrity.SidecarName(path), c.sidecar, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				os.WriteFile(path, data, 0o644)
				os.WriteFile(integrity.SidecarName(path), good, 0o644)
			})
			cfg := stream.DefaultConfig(registry(fs.Buffered))
			_, err := stream.Open(context.Background(), cfg, []string{path}, nil)
			var se *integrity.SidecarError
			if !errors.As(err, &se) || !errors.Is(err, integrity.ErrChecksum) || !strings.Contains(err.Error(), c.why) ||
				!strings.Contains(err.Error(), integrity.SidecarName(path)) {
				t.Fatalf("got %v, want a SidecarError saying %q", err, c.why)
			}
			cfg.Verify = integrity.Off
			s, err := stream.Open(context.Background(), cfg, []string{path}, nil)
			if err != nil {
				t.Fatalf("off: %v", err)
			}
			s.Close()
		})
	}
}

// Object storage, through the bit-flipping proxy: the sidecar is an object
// beside the checkpoint. On an object whose store keeps only an MD5 (which
// auto leaves out where the sidecar covers the read) the sidecar catches a
// flip before the tensor is delivered; on a CRC object both checks run and the sidecar's comes
// first. A flip in every response that carries the byte fails the stream;
// a flip in one response is healed by reading the bytes once more (the
// whole-object check, which saw the bad bytes first, then passes too). A
// flip in the header fails the open.
func TestSidecarOnObjectStorage(t *testing.T) {
	all := objects(t)
	minio := testserver.SharedMinIO(t)
	for _, o := range all {
		if !strings.HasPrefix(o.name, "s3/") {
			continue
		}
		t.Run(o.name, func(t *testing.T) {
			bucket, key, _ := strings.Cut(strings.TrimPrefix(o.uri, "s3://"), "/")
			local := t.TempDir() + "/m.safetensors"
			if err := os.WriteFile(local, o.data, 0o644); err != nil {
				t.Fatal(err)
			}
			// The sidecar computed from the object matches the local one's.
			fromStore := computeSidecars(t, o.config(integrity.Auto), []string{o.uri}, o.want)[0]
			fromFile := computeSidecars(t, stream.DefaultConfig(registry(fs.Buffered)), []string{local}, o.want)[0]
			if !bytes.Equal(fromStore, fromFile) {
				t.Fatal("sidecars of the same bytes differ")
			}
			minio.PutObject(t, bucket, key+integrity.SidecarSuffix, fromStore)

			s, err := stream.Open(context.Background(), o.config(integrity.Require), []string{o.uri}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err, seen, wrong := consume(t, s, o.want); err != nil || seen != len(o.want) || wrong != 0 || s.SidecarChecked(0) != nonEmptyTensors(s.Files()[0].Tensors)+1 {
				t.Fatalf("clean: err %v, %d seen, %d wrong, %d checked", err, seen, wrong, s.SidecarChecked(0))
			}
			s.Close()
			for _, f := range flips(o) {
				t.Run(f.where, func(t *testing.T) {
					flip := f.flip
					// The checkpoint's bytes only: the sidecar object is small
					// enough to hold the flipped offset too.
					o.proxy.Set(faultproxy.Fault{Flip: &flip, Match: notSidecar})
					t.Cleanup(o.proxy.Clear)
					s, err := stream.Open(context.Background(), o.config(integrity.Auto), []string{o.uri}, nil)
					if f.where == "header" {
						if !errors.Is(err, integrity.ErrSidecar) {
							t.Fatalf("header flip: %v", err)
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					defer s.Close()
					err, seen := consumeNamed(t, s, o.want)
					if flip.Count == 1 {
						// A transient flip: the tensor's bytes are read once more,
						// and match.
						if err != nil || len(seen) != len(o.want) || s.Stats().Retries == 0 {
							t.Fatalf("one flip: err %v, %d of %d tensors, %d retries", err, len(seen), len(o.want), s.Stats().Retries)
						}
						return
					}
					var tm *integrity.TensorMismatchError
					if !errors.As(err, &tm) || !strings.Contains(err.Error(), o.uri) || seen[tm.Tensor] {
						t.Fatalf("got %v (seen %d), want a TensorMismatchError of an undelivered tensor", err, len(seen))
					}
				})
			}
		})
	}
}

func nonEmptyTensors(ts []safetensors.Tensor) int {
	n := 0
	for _, t := range ts {
		if t.Bytes() > 0 {
			n++
		}
	}
	return n
}

// Looking for a sidecar that is not there costs one metadata request per
// file on object storage (no second request to explain the 404), and the
// stream is then as without it.
func TestMissingSidecarCostsOneRequest(t *testing.T) {
	for _, o := range objects(t) {
		if o.name != "s3/crc32" && o.name != "gs/crc32c" && o.name != "az/content-md5" {
			continue
		}
		t.Run(o.name, func(t *testing.T) {
			var lookups atomic.Int32
			o.proxy.Set(faultproxy.Fault{Match: func(r *http.Request) bool {
				if strings.Contains(r.URL.Path, integrity.SidecarSuffix) {
					lookups.Add(1)
				}
				return false
			}})
			t.Cleanup(o.proxy.Clear)
			s, err := stream.Open(context.Background(), o.config(integrity.Auto), []string{o.uri}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err, seen, wrong := consume(t, s, o.want); err != nil || seen != len(o.want) || wrong != 0 {
				t.Fatalf("err %v, %d seen, %d wrong", err, seen, wrong)
			}
			if v := s.Files()[0].Verify; v.Sidecar != "" || lookups.Load() != 1 {
				t.Fatalf("Verify %+v, %d sidecar requests, want 1", v, lookups.Load())
			}
		})
	}
}
