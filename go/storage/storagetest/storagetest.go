// Package storagetest is the conformance suite every storage backend runs
// against its real server (or, for fs, a real directory): range reads at the
// edges, reads past the end, empty and large objects read concurrently,
// missing objects, canceled contexts, Close, and listing.
//
// A backend's test builds a Fixture and calls Run:
//
//	func TestConformance(t *testing.T) {
//		srv := testserver.MinIO(t)
//		... create a bucket, a backend pointed at srv ...
//		storagetest.Run(t, storagetest.Fixture{
//			Backend: b,
//			Put: func(t testing.TB, name string, data []byte) string {
//				srv.PutObject(t, "bucket", "conformance/"+name, data)
//				return "s3://bucket/conformance/" + name
//			},
//			Missing: func(t testing.TB) string { return "s3://bucket/conformance/no-such-object" },
//		})
//	}
//
// Names given to Put are relative slash-separated paths, unique within one
// Run, such as "edges.bin" or "list/dir/sub/c.bin". Put must store the
// object so that the URI it returns opens it; for the Lister checks, the URI
// of "list/dir/a.bin" with its last element removed must be the URI of the
// "directory" list/dir/.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Fixture connects the suite to one backend.
type Fixture struct {
	// Backend is the backend under test.
	Backend storage.Backend
	// Put creates an object holding data and returns its URI.
	Put func(t testing.TB, name string, data []byte) (uri string)
	// Missing returns the URI of an object that does not exist (in a
	// bucket or directory that does).
	Missing func(t testing.TB) (uri string)
}

// OpTimeout bounds every Open, ReadAt, List and Close the suite makes, so a
// backend that hangs fails instead of stalling the test binary.
var OpTimeout = 2 * time.Minute

// LargeSize is the size of the object the concurrent-read check uses
// (smaller with -short).
var LargeSize = 48 << 20

const (
	mib  = 1 << 20
	seed = 0x5eed
)

// Run runs the conformance suite against f as subtests of t.
func Run(t *testing.T, f Fixture) {
	t.Helper()
	if f.Backend == nil || f.Put == nil || f.Missing == nil {
		t.Fatal("storagetest: Fixture needs Backend, Put and Missing")
	}
	s := &suite{f: f}
	t.Run("RangeEdges", s.rangeEdges)
	t.Run("ReadPastEnd", s.readPastEnd)
	t.Run("EmptyObject", s.emptyObject)
	t.Run("LargeConcurrent", s.largeConcurrent)
	t.Run("Missing", s.missing)
	t.Run("CanceledContext", s.canceled)
	t.Run("Close", s.close)
	t.Run("List", s.list)
}

type suite struct {
	f Fixture
}

// Bytes returns n bytes of deterministic pseudo-random data.
func Bytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), OpTimeout)
	t.Cleanup(cancel)
	return ctx
}

// open puts data as name, opens it, checks its size and closes it at the
// end of t.
func (s *suite) open(t *testing.T, name string, data []byte) (storage.Object, string) {
	t.Helper()
	uri := s.f.Put(t, name, data)
	obj, err := s.f.Backend.Open(opCtx(t), uri)
	if err != nil {
		t.Fatalf("Open(%q): %v", uri, err)
	}
	t.Cleanup(func() { obj.Close() })
	if got := obj.Size(); got != int64(len(data)) {
		t.Fatalf("Open(%q).Size() = %d, want %d", uri, got, len(data))
	}
	return obj, uri
}

// readAt reads len n at off into a buffer prefilled with a marker, and
// checks that ReadAt reported a count within [0, n].
func readAt(t *testing.T, obj storage.Object, off int64, n int) ([]byte, int, error) {
	t.Helper()
	dst := make([]byte, n)
	for i := range dst {
		dst[i] = 0xA5
	}
	got, err := obj.ReadAt(opCtx(t), dst, off)
	if got < 0 || got > n {
		t.Fatalf("ReadAt(len %d, off %d) returned n = %d", n, off, got)
	}
	return dst, got, err
}

// checkRange checks a read of [off, off+n) that lies within the object.
func checkRange(t *testing.T, obj storage.Object, data []byte, off int64, n int) {
	t.Helper()
	dst, got, err := readAt(t, obj, off, n)
	atEnd := off+int64(n) == int64(len(data))
	switch {
	case err == nil:
	case atEnd && errors.Is(err, io.EOF):
		// io.ReaderAt allows EOF with a full read that ends at the end.
	default:
		t.Errorf("ReadAt(len %d, off %d): n = %d, err = %v; want %d, nil", n, off, got, err, n)
		return
	}
	if got != n {
		t.Errorf("ReadAt(len %d, off %d): n = %d with err = %v; io.ReaderAt wants n == len(dst) unless err != nil", n, off, got, err)
		return
	}
	if i := firstDiff(dst[:got], data[off:off+int64(got)]); i >= 0 {
		t.Errorf("ReadAt(len %d, off %d): byte %d (object offset %d) = %#x, want %#x",
			n, off, i, off+int64(i), dst[i], data[off+int64(i)])
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func (s *suite) rangeEdges(t *testing.T) {
	data := Bytes(3*mib+123, seed)
	obj, _ := s.open(t, "edges.bin", data)
	size := int64(len(data))
	for _, r := range []struct {
		name string
		off  int64
		n    int
	}{
		{"first byte", 0, 1},
		{"first 10 bytes", 0, 10},
		{"last byte", size - 1, 1},
		{"last 10 bytes", size - 10, 10},
		{"whole object", 0, len(data)},
		{"all but first byte", 1, len(data) - 1},
		{"all but last byte", 0, len(data) - 1},
		{"across 1 MiB", mib - 10, 20},
		{"last byte before 1 MiB", mib - 1, 1},
		{"first byte after 1 MiB", mib, 1},
		{"2 bytes across 1 MiB", mib - 1, 2},
		{"across 2 MiB", 2*mib - 4096, 8192},
		{"1 MiB + 300 across two boundaries", mib - 100, mib + 300},
		{"odd middle", 1234567, 7654},
	} {
		t.Run(r.name, func(t *testing.T) { checkRange(t, obj, data, r.off, r.n) })
	}
	t.Run("zero-length dst", func(t *testing.T) {
		for _, off := range []int64{0, 1, mib, size - 1} {
			got, err := obj.ReadAt(opCtx(t), []byte{}, off)
			if got != 0 || err != nil {
				t.Errorf("ReadAt(empty dst, off %d) = %d, %v; want 0, nil", off, got, err)
			}
			got, err = obj.ReadAt(opCtx(t), nil, off)
			if got != 0 || err != nil {
				t.Errorf("ReadAt(nil dst, off %d) = %d, %v; want 0, nil", off, got, err)
			}
		}
		got, err := obj.ReadAt(opCtx(t), []byte{}, size)
		if got != 0 || (err != nil && !errors.Is(err, io.EOF)) {
			t.Errorf("ReadAt(empty dst, off size) = %d, %v; want 0 and nil or io.EOF", got, err)
		}
	})
}

func (s *suite) readPastEnd(t *testing.T) {
	data := Bytes(mib+777, seed+1)
	obj, uri := s.open(t, "eof.bin", data)
	size := int64(len(data))
	for _, r := range []struct {
		name string
		off  int64
		n    int
		want int // bytes before io.EOF
	}{
		{"straddling the end", size - 300, 1000, 300},
		{"last byte and more", size - 1, 4096, 1},
		{"whole object and more", 0, len(data) + 1, len(data)},
		{"whole object and 1 MiB more", 0, len(data) + mib, len(data)},
		{"at the end", size, 10, 0},
		{"past the end", size + 10, 10, 0},
		{"far past the end", size + 5*mib, 1, 0},
	} {
		t.Run(r.name, func(t *testing.T) {
			dst, got, err := readAt(t, obj, r.off, r.n)
			if got != r.want || !errors.Is(err, io.EOF) {
				t.Fatalf("ReadAt(len %d, off %d) on %d-byte %s = %d, %v; want %d, io.EOF",
					r.n, r.off, size, uri, got, err, r.want)
			}
			if got > 0 {
				if i := firstDiff(dst[:got], data[r.off:r.off+int64(got)]); i >= 0 {
					t.Errorf("byte %d differs", i)
				}
			}
			for i := got; i < len(dst); i++ {
				if dst[i] != 0xA5 {
					t.Errorf("ReadAt wrote dst[%d] beyond n = %d", i, got)
					break
				}
			}
		})
	}
	t.Run("negative offset", func(t *testing.T) {
		got, err := obj.ReadAt(opCtx(t), make([]byte, 10), -1)
		if got != 0 || err == nil {
			t.Fatalf("ReadAt(off -1) = %d, %v; want an error", got, err)
		}
		if c := storage.CodeOf(err); c != storage.InvalidArgument {
			t.Errorf("ReadAt(off -1): code %v, want %v (%v)", c, storage.InvalidArgument, err)
		}
	})
}

func (s *suite) emptyObject(t *testing.T) {
	obj, uri := s.open(t, "empty.bin", []byte{})
	got, err := obj.ReadAt(opCtx(t), []byte{}, 0)
	if got != 0 || (err != nil && !errors.Is(err, io.EOF)) {
		t.Errorf("ReadAt(empty dst, 0) on empty %s = %d, %v; want 0 and nil or io.EOF", uri, got, err)
	}
	for _, n := range []int{1, 10, mib} {
		dst := make([]byte, n)
		got, err := obj.ReadAt(opCtx(t), dst, 0)
		if got != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("ReadAt(len %d, 0) on empty %s = %d, %v; want 0, io.EOF", n, uri, got, err)
		}
	}
}

func (s *suite) largeConcurrent(t *testing.T) {
	size := LargeSize
	if testing.Short() {
		size = min(size, 12*mib)
	}
	const workers = 16
	data := Bytes(size, seed+2)
	began := time.Now()
	obj, _ := s.open(t, "large.bin", data)
	t.Logf("put and open %d MiB: %v", size/mib, time.Since(began).Round(time.Millisecond))

	// Each worker first reads its share of the whole object (so every byte
	// is checked), then random ranges of 1-8 MiB.
	type rng struct {
		off int64
		n   int
	}
	plans := make([][]rng, workers)
	r := rand.New(rand.NewPCG(seed, 3))
	share := (size + workers - 1) / workers
	for w := range workers {
		if lo := w * share; lo < size {
			plans[w] = append(plans[w], rng{int64(lo), min(share, size-lo)})
		}
		for range 2 {
			n := min(mib+r.IntN(7*mib+1), size)
			off := r.IntN(size - n + 1)
			if r.IntN(8) == 0 {
				off = size - n // ends at the end
			}
			plans[w] = append(plans[w], rng{int64(off), n})
		}
	}
	began = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var total int64
	var mu sync.Mutex
	for w := range workers {
		wg.Go(func() {
			for _, p := range plans[w] {
				dst := make([]byte, p.n)
				got, err := obj.ReadAt(opCtx(t), dst, p.off)
				if err != nil && !(errors.Is(err, io.EOF) && p.off+int64(p.n) == int64(size)) {
					errs <- fmt.Errorf("worker %d: ReadAt(len %d, off %d) = %d, %v", w, p.n, p.off, got, err)
					return
				}
				if got != p.n {
					errs <- fmt.Errorf("worker %d: ReadAt(len %d, off %d) = %d bytes, %v", w, p.n, p.off, got, err)
					return
				}
				if i := firstDiff(dst, data[p.off:p.off+int64(p.n)]); i >= 0 {
					errs <- fmt.Errorf("worker %d: ReadAt(len %d, off %d): byte %d (object offset %d) differs",
						w, p.n, p.off, i, p.off+int64(i))
					return
				}
				mu.Lock()
				total += int64(got)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	el := time.Since(began)
	t.Logf("%d workers read %d MiB in %v (%.0f MiB/s)", workers, total/mib, el.Round(time.Millisecond),
		float64(total)/mib/el.Seconds())
}

func (s *suite) missing(t *testing.T) {
	uri := s.f.Missing(t)
	obj, err := s.f.Backend.Open(opCtx(t), uri)
	if err == nil {
		obj.Close()
		t.Fatalf("Open(%q) of a missing object succeeded", uri)
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Open(%q): %v (code %v); want errors.Is(err, storage.ErrNotFound)", uri, err, storage.CodeOf(err))
	}
	if !strings.Contains(err.Error(), uri) {
		t.Errorf("Open(%q): error %q does not name the URI", uri, err)
	}
}

func (s *suite) canceled(t *testing.T) {
	data := Bytes(2*mib, seed+3)
	uri := s.f.Put(t, "canceled.bin", data)

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	ctxs := map[string]context.Context{"canceled": canceled, "deadline exceeded": expired}

	for name, ctx := range ctxs {
		t.Run("Open "+name, func(t *testing.T) {
			obj, err := s.f.Backend.Open(ctx, uri)
			if err == nil {
				obj.Close()
				t.Fatalf("Open with a %s context succeeded", name)
			}
			if c := storage.CodeOf(err); c != storage.Canceled {
				t.Errorf("Open with a %s context: code %v, want %v (%v)", name, c, storage.Canceled, err)
			}
		})
	}
	obj, err := s.f.Backend.Open(opCtx(t), uri)
	if err != nil {
		t.Fatalf("Open(%q): %v", uri, err)
	}
	defer obj.Close()
	for name, ctx := range ctxs {
		t.Run("ReadAt "+name, func(t *testing.T) {
			dst := make([]byte, mib)
			got, err := obj.ReadAt(ctx, dst, 4096)
			if err == nil {
				t.Fatalf("ReadAt with a %s context = %d, nil; want an error", name, got)
			}
			if c := storage.CodeOf(err); c != storage.Canceled {
				t.Errorf("ReadAt with a %s context: code %v, want %v (%v)", name, c, storage.Canceled, err)
			}
		})
	}
	// The object still reads with a live context.
	checkRange(t, obj, data, 100, 1000)
}

func (s *suite) close(t *testing.T) {
	data := Bytes(64<<10, seed+4)
	uri := s.f.Put(t, "close.bin", data)
	obj, err := s.f.Backend.Open(opCtx(t), uri)
	if err != nil {
		t.Fatalf("Open(%q): %v", uri, err)
	}
	checkRange(t, obj, data, 0, len(data))
	if err := obj.Close(); err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := obj.Close(); err != nil {
		t.Errorf("second Close: %v; want nil", err)
	}
	// A read after Close may fail or not, but must return.
	done := make(chan struct{})
	go func() {
		defer close(done)
		obj.ReadAt(context.Background(), make([]byte, 10), 0)
	}()
	select {
	case <-done:
	case <-time.After(OpTimeout):
		t.Errorf("ReadAt after Close did not return within %v", OpTimeout)
	}
}

func (s *suite) list(t *testing.T) {
	l, ok := s.f.Backend.(storage.Lister)
	if !ok {
		t.Skip("backend does not implement storage.Lister")
	}
	files := []struct {
		name string
		size int
	}{
		{"list/dir/b.bin", 20},
		{"list/dir/a.bin", 10},
		{"list/dir/c.bin", 0},
		{"list/dir/sub/d.bin", 30},
		{"list/dir/sub/deeper/e.bin", 40},
		{"list/dirx.bin", 5},         // shares the prefix "list/dir" but is not under list/dir/
		{"list/other/f.bin", 6},      // a sibling directory
		{"list/dir.suffix/g.bin", 7}, // ditto
	}
	uris := map[string]string{}
	for i, f := range files {
		uris[f.name] = s.f.Put(t, f.name, Bytes(f.size, uint64(seed+10+i)))
	}
	a := uris["list/dir/a.bin"]
	if !strings.HasSuffix(a, "a.bin") {
		t.Fatalf("Put returned %q for list/dir/a.bin: cannot derive the directory URI", a)
	}
	dir := strings.TrimSuffix(a, "a.bin")

	want := func(names ...string) []storage.ObjectInfo {
		var out []storage.ObjectInfo
		for _, n := range names {
			for _, f := range files {
				if f.name == n {
					out = append(out, storage.ObjectInfo{URI: uris[n], Size: int64(f.size)})
				}
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].URI < out[j].URI })
		return out
	}
	for _, c := range []struct {
		recursive bool
		want      []storage.ObjectInfo
	}{
		{false, want("list/dir/a.bin", "list/dir/b.bin", "list/dir/c.bin")},
		{true, want("list/dir/a.bin", "list/dir/b.bin", "list/dir/c.bin", "list/dir/sub/d.bin", "list/dir/sub/deeper/e.bin")},
	} {
		t.Run(fmt.Sprintf("recursive=%v", c.recursive), func(t *testing.T) {
			got, err := l.List(opCtx(t), dir, c.recursive)
			if err != nil {
				t.Fatalf("List(%q, %v): %v", dir, c.recursive, err)
			}
			if !sort.SliceIsSorted(got, func(i, j int) bool { return got[i].URI < got[j].URI }) {
				t.Errorf("List(%q, %v) is not sorted by URI: %v", dir, c.recursive, got)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("List(%q, %v) =\n%s\nwant\n%s", dir, c.recursive, infos(got), infos(c.want))
			}
		})
	}
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := l.List(ctx, dir, true); err == nil {
			t.Error("List with a canceled context succeeded")
		} else if c := storage.CodeOf(err); c != storage.Canceled {
			t.Errorf("List with a canceled context: code %v, want %v (%v)", c, storage.Canceled, err)
		}
	})
}

func infos(l []storage.ObjectInfo) string {
	var b strings.Builder
	for _, o := range l {
		fmt.Fprintf(&b, "\t%s (%d bytes)\n", o.URI, o.Size)
	}
	if b.Len() == 0 {
		return "\t(none)\n"
	}
	return b.String()
}
