//go:build linux

package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
)

var allModes = []Mode{Auto, Buffered, Direct, Mmap, AutoRead}

// writeFile creates name in dir with size deterministic random bytes.
func writeFile(t testing.TB, dir, name string, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 42))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// alignedBuf returns n bytes of page-aligned anonymous memory.
func alignedBuf(t testing.TB, n int) []byte {
	t.Helper()
	if n == 0 {
		return nil
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(b) })
	return b
}

func open(t testing.TB, mode Mode, uri string) storage.Object {
	t.Helper()
	obj, err := New(Options{Mode: mode}).Open(context.Background(), uri)
	if err != nil {
		t.Fatalf("open %s (%v): %v", uri, mode, err)
	}
	t.Cleanup(func() { obj.Close() })
	return obj
}

func strategy(obj storage.Object) string {
	return obj.(Strategist).Strategy()
}

// checkRead reads [off, off+n) into dst and compares with data, following
// io.ReaderAt's rules.
func checkRead(t *testing.T, obj storage.Object, data, dst []byte, off int64) {
	t.Helper()
	n := len(dst)
	got, err := obj.ReadAt(context.Background(), dst, off)
	want := 0
	if off < int64(len(data)) {
		want = min(n, len(data)-int(off))
	}
	if got != want {
		t.Fatalf("ReadAt(len %d, off %d) = %d bytes, want %d (err %v)", n, off, got, want, err)
	}
	switch {
	case want < n && err != io.EOF:
		t.Fatalf("ReadAt(len %d, off %d) err = %v, want io.EOF", n, off, err)
	case want == n && err != nil:
		t.Fatalf("ReadAt(len %d, off %d) err = %v, want nil", n, off, err)
	}
	if got > 0 && !bytes.Equal(dst[:got], data[off:off+int64(got)]) {
		t.Fatalf("ReadAt(len %d, off %d): bytes differ from the file", n, off)
	}
}

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Mode
		err  bool
	}{
		{"", Auto, false},
		{"auto", Auto, false},
		{"Buffered", Buffered, false},
		{" DIRECT ", Direct, false},
		{"mmap", Mmap, false},
		{"auto-read", AutoRead, false},
		{"odirect", Auto, true},
	} {
		got, err := ParseMode(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && got.String() != strings.ToLower(strings.TrimSpace(tc.in)) && tc.in != "" {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
}

func TestReadRanges(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 17, 1<<20 + 123} {
		path, data := writeFile(t, dir, fmt.Sprintf("f%d", size), size)
		s := int64(size)
		ranges := []struct{ off, n int64 }{
			{0, 0}, {0, s}, {0, 1}, {s - 1, 1}, {s, 0}, {s, 1}, {s + 100, 10},
			{0, s + 5000}, {s / 2, s}, {4096, 4096}, {4095, 2}, {1 << 30, 0},
		}
		r := rand.New(rand.NewPCG(uint64(size), 7))
		for range 40 {
			off := r.Int64N(s + 2)
			ranges = append(ranges, struct{ off, n int64 }{off, r.Int64N(s - off + 3)})
		}
		for _, mode := range allModes {
			t.Run(fmt.Sprintf("%v/%d", mode, size), func(t *testing.T) {
				obj := open(t, mode, path)
				if obj.Size() != s {
					t.Fatalf("Size() = %d, want %d", obj.Size(), s)
				}
				for _, rg := range ranges {
					if rg.off < 0 {
						continue
					}
					checkRead(t, obj, data, make([]byte, rg.n), rg.off)
				}
			})
		}
	}
}

func TestDirect(t *testing.T) {
	dir := t.TempDir()
	const size = 5*4096 + 1000
	path, data := writeFile(t, dir, "f", size)
	obj := open(t, Direct, path)
	if s := strategy(obj); s != StrategyDirect {
		t.Skipf("file system of %s refuses O_DIRECT (strategy %q)", dir, s)
	}
	a, ok := obj.(storage.Aligned)
	if !ok {
		t.Fatal("direct object does not implement storage.Aligned")
	}
	al := a.Alignment()
	if al < 4096 || al%4096 != 0 {
		t.Fatalf("Alignment() = %d", al)
	}
	if _, ok := obj.(storage.Mappable); ok {
		t.Fatal("direct object implements storage.Mappable")
	}
	buf := alignedBuf(t, 8*al)
	for _, tc := range []struct {
		name   string
		dst    []byte
		off    int64
		direct bool
	}{
		{"aligned", buf[:2*al], int64(al), true},
		{"aligned whole file and past EOF", buf[:8*al], 0, true},
		{"aligned at EOF block", buf[:al], int64(size / al * al), true},
		{"aligned past EOF", buf[:al], int64(8 * al), true},
		{"unaligned address", buf[1 : 1+al], 0, false},
		{"unaligned offset", buf[:al], 17, false},
		{"unaligned length", buf[:al+5], int64(al), false},
		{"odd everything", buf[3:1003], 4001, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clear(tc.dst)
			checkRead(t, obj, data, tc.dst, tc.off)
			if do := obj.(*directObject); do.aligned(tc.dst, tc.off) != tc.direct {
				t.Fatalf("aligned() = %v, want %v", !tc.direct, tc.direct)
			}
		})
	}
	if strategy(obj) != StrategyDirect {
		t.Fatalf("strategy became %q", strategy(obj))
	}
}

// TestDirectBypassesCache checks that aligned reads really use O_DIRECT: the
// file stays out of the page cache.
func TestDirectBypassesCache(t *testing.T) {
	dir := t.TempDir()
	const size = 4 << 20
	path, data := writeFile(t, dir, "f", size)
	coldOrSkip(t, path)
	obj := open(t, Direct, path)
	if strategy(obj) != StrategyDirect {
		t.Skip("file system refuses O_DIRECT")
	}
	buf := alignedBuf(t, size)
	checkRead(t, obj, data, buf, 0)
	if r, err := Resident(path); err != nil || r > 0.1 {
		t.Fatalf("after a direct read Resident = %v, %v; want about 0", r, err)
	}
}

// coldOrSkip drops path from the page cache, skipping the test when the
// kernel keeps it.
func coldOrSkip(t *testing.T, path string) {
	t.Helper()
	if err := DropCache(path); err != nil {
		t.Fatalf("DropCache: %v", err)
	}
	r, err := Resident(path)
	if err != nil {
		t.Fatalf("Resident: %v", err)
	}
	if r >= ResidentThreshold {
		t.Skipf("DropCache left %.0f%% of the file resident", 100*r)
	}
}

func TestDirectFallbackWhenRefused(t *testing.T) {
	saved := openDirectFile
	t.Cleanup(func() { openDirectFile = saved })
	openDirectFile = func(path string) (*os.File, error) {
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EINVAL}
	}
	dir := t.TempDir()
	path, data := writeFile(t, dir, "f", 10000)
	for _, mode := range []Mode{Direct, Auto} {
		coldOrSkip(t, path)
		obj := open(t, mode, path)
		if s := strategy(obj); s != StrategyBuffered {
			t.Fatalf("%v: strategy %q, want buffered", mode, s)
		}
		if _, ok := obj.(storage.Aligned); ok {
			t.Fatalf("%v: fallback object implements storage.Aligned", mode)
		}
		checkRead(t, obj, data, alignedBuf(t, 4096*3), 0)
	}
}

func TestMmap(t *testing.T) {
	dir := t.TempDir()
	const size = 20<<20 + 333 // several populate slices
	path, data := writeFile(t, dir, "f", size)
	coldOrSkip(t, path)
	obj := open(t, Mmap, path)
	if s := strategy(obj); s != StrategyMmap {
		t.Fatalf("strategy %q", s)
	}
	if _, ok := obj.(storage.Aligned); ok {
		t.Fatal("mmap object implements storage.Aligned")
	}
	m := obj.(storage.Mappable)
	mem, err := m.Map()
	if err != nil {
		t.Fatal(err)
	}
	if len(mem) != size {
		t.Fatalf("len(Map()) = %d, want %d", len(mem), size)
	}
	ctx := context.Background()
	for _, rg := range []struct{ off, n int64 }{
		{0, 0}, {5, 100}, {4096, 8 << 20}, {size - 10, 10}, {size - 10, 1 << 20}, {size + 5, 5}, {0, size},
	} {
		if err := m.Populate(ctx, rg.off, rg.n); err != nil {
			t.Fatalf("Populate(%d, %d): %v", rg.off, rg.n, err)
		}
	}
	if r, err := Resident(path); err != nil || r < 0.99 {
		t.Fatalf("after Populate Resident = %v, %v; want 1", r, err)
	}
	if !bytes.Equal(mem, data) {
		t.Fatal("mapping differs from the file")
	}
	for _, rg := range []struct{ off, n int64 }{{-1, 10}, {0, -1}} {
		if err := m.Populate(ctx, rg.off, rg.n); storage.CodeOf(err) != storage.InvalidArgument {
			t.Fatalf("Populate(%d, %d) = %v, want InvalidArgument", rg.off, rg.n, err)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Populate(canceled, 0, size); !errors.Is(err, storage.ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Populate with canceled ctx = %v", err)
	}

	// Writes stay private: the file, and reads of it, are unchanged.
	for i := 0; i < size; i += 4096 {
		mem[i] ^= 0xff
	}
	if err := m.Populate(ctx, 0, size); err != nil {
		t.Fatal(err)
	}
	if mem[4096] != data[4096]^0xff {
		t.Fatal("Populate undid a write to the mapping")
	}
	checkRead(t, obj, data, make([]byte, size), 0)
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, data) {
		t.Fatal("writing the mapping modified the file")
	}
	mem2, _ := open(t, Mmap, path).(storage.Mappable).Map()
	if !bytes.Equal(mem2, data) {
		t.Fatal("a second mapping sees the first one's writes")
	}

	if err := obj.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Map(); err == nil {
		t.Fatal("Map after Close succeeded")
	}
	if err := m.Populate(ctx, 0, 10); err == nil {
		t.Fatal("Populate after Close succeeded")
	}
	if err := obj.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestAuto(t *testing.T) {
	for _, tc := range []struct {
		mode         Mode
		wantResident string
	}{
		{Auto, StrategyMmap},
		{AutoRead, StrategyBuffered},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			path, data := writeFile(t, dir, "f", 3<<20+5)
			if _, err := os.ReadFile(path); err != nil {
				t.Fatal(err)
			}
			if r, err := Resident(path); err != nil || r < ResidentThreshold {
				t.Skipf("file just written and read is not resident: %v, %v", r, err)
			}
			obj := open(t, tc.mode, path)
			if s := strategy(obj); s != tc.wantResident {
				t.Fatalf("resident file: strategy %q, want %s", s, tc.wantResident)
			}
			if _, mapped := obj.(storage.Mappable); mapped != (tc.wantResident == StrategyMmap) {
				t.Fatalf("resident file: implements storage.Mappable = %v", mapped)
			}
			checkRead(t, obj, data, make([]byte, len(data)), 0)
			obj.Close() // a mapping keeps pages from being dropped

			coldOrSkip(t, path)
			obj = open(t, tc.mode, path)
			if s := strategy(obj); s != StrategyDirect {
				t.Fatalf("cold file: strategy %q, want direct", s)
			}
			if _, ok := obj.(storage.Aligned); !ok {
				t.Fatal("cold file: object does not implement storage.Aligned")
			}
			checkRead(t, obj, data, alignedBuf(t, len(data)+4096)[:len(data)/4096*4096+4096], 0)
		})
	}
}

func TestAutoEmptyAndSmall(t *testing.T) {
	dir := t.TempDir()
	path, _ := writeFile(t, dir, "empty", 0)
	if s := strategy(open(t, Auto, path)); s != StrategyBuffered {
		t.Fatalf("empty file: strategy %q, want buffered", s)
	}
	if r, err := Resident(path); err != nil || r != 1 {
		t.Fatalf("Resident(empty) = %v, %v; want 1", r, err)
	}
}

func TestResidentSampling(t *testing.T) {
	// A sparse file far larger than sampleWindows*windowPages pages (so the
	// kernel's readahead past the half is small beside it), half read.
	path := filepath.Join(t.TempDir(), "sparse")
	ps := os.Getpagesize()
	size := int64(64*sampleWindows*windowPages) * int64(ps)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	coldOrSkip(t, path)
	if _, err := io.Copy(io.Discard, io.NewSectionReader(f, 0, size/2)); err != nil {
		t.Fatal(err)
	}
	r, err := Resident(path)
	if err != nil {
		t.Fatal(err)
	}
	if r < 0.4 || r > 0.6 {
		t.Fatalf("half-read file: Resident = %v, want about 0.5", r)
	}
	DropCache(path)
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	file, _ := writeFile(t, dir, "file", 10)
	for _, tc := range []struct {
		name, uri string
		code      storage.Code
		sentinel  error
		is        error
		msg       string
	}{
		{"directory", dir, storage.InvalidArgument, storage.ErrInvalidArgument, syscall.EISDIR, "is a directory"},
		{"directory uri", "file://" + dir, storage.InvalidArgument, storage.ErrInvalidArgument, syscall.EISDIR, "is a directory"},
		{"missing", filepath.Join(dir, "nope"), storage.NotFound, storage.ErrNotFound, iofs.ErrNotExist, "no such file"},
		{"missing uri", "file://" + filepath.Join(dir, "nope"), storage.NotFound, storage.ErrNotFound, syscall.ENOENT, "no such file"},
		{"under a file", filepath.Join(file, "x"), storage.NotFound, storage.ErrNotFound, syscall.ENOTDIR, "not a directory"},
		{"fifo", fifo, storage.InvalidArgument, storage.ErrInvalidArgument, nil, "not a regular file"},
		{"empty", "", storage.InvalidArgument, storage.ErrInvalidArgument, nil, "empty path"},
		{"remote host", "file://host/x", storage.InvalidArgument, storage.ErrInvalidArgument, nil, "absolute"},
		{"other scheme", "s3://bucket/key", storage.InvalidArgument, storage.ErrInvalidArgument, nil, "s3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range allModes {
				obj, err := New(Options{Mode: mode}).Open(context.Background(), tc.uri)
				if err == nil {
					obj.Close()
					t.Fatalf("%v: Open(%q) succeeded", mode, tc.uri)
				}
				var se *storage.Error
				if !errors.As(err, &se) || se.Code != tc.code || se.Op != "open" || se.URI != tc.uri {
					t.Fatalf("%v: Open(%q) = %#v, want code %v", mode, tc.uri, err, tc.code)
				}
				if !errors.Is(err, tc.sentinel) {
					t.Fatalf("%v: errors.Is(%v, %v) = false", mode, err, tc.sentinel)
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Fatalf("%v: errors.Is(%v, %v) = false", mode, err, tc.is)
				}
				if !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("%v: %q does not mention %q", mode, err, tc.msg)
				}
			}
		})
	}
}

func TestPermissionDenied(t *testing.T) {
	path, _ := writeFile(t, t.TempDir(), "secret", 100)
	if err := os.Chmod(path, 0); err != nil {
		t.Fatal(err)
	}
	for _, mode := range allModes {
		obj, err := New(Options{Mode: mode}).Open(context.Background(), path)
		if err == nil {
			obj.Close()
			if os.Getuid() == 0 {
				t.Skip("running as root, which reads files of mode 000 (TestUnprivileged covers this)")
			}
			t.Fatalf("%v: opened a file of mode 000", mode)
		}
		checkPermissionDenied(t, err)
	}
}

func checkPermissionDenied(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, storage.ErrPermissionDenied) || !errors.Is(err, iofs.ErrPermission) ||
		!strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("err = %v, want PermissionDenied wrapping EACCES", err)
	}
}

// TestUnprivileged reruns the tests that need an unprivileged user as
// nobody, when running as root.
func TestUnprivileged(t *testing.T) {
	if os.Getenv("FS_TEST_UNPRIVILEGED") != "" {
		t.Skip("already unprivileged")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to switch to nobody")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	bin := filepath.Join(dir, "fs.test")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	secret, _ := writeFile(t, dir, "secret", 100)
	os.Chmod(secret, 0)
	writeFile(t, dir, "shared", 1<<20)
	cmd := exec.Command(bin, "-test.run=^TestAsNobody$", "-test.v")
	cmd.Env = append(os.Environ(), "FS_TEST_UNPRIVILEGED="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("as nobody:\n%s", out)
	if err != nil {
		t.Fatalf("as nobody: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestAsNobody") {
		t.Fatal("TestAsNobody did not run")
	}
}

// TestAsNobody runs under TestUnprivileged: a file of mode 000 is
// PermissionDenied, and a root-owned read-only file, whose page-cache
// residency mincore will not reveal, is read buffered by Auto.
func TestAsNobody(t *testing.T) {
	dir := os.Getenv("FS_TEST_UNPRIVILEGED")
	if dir == "" {
		t.Skip("run by TestUnprivileged")
	}
	for _, mode := range allModes {
		_, err := New(Options{Mode: mode}).Open(context.Background(), filepath.Join(dir, "secret"))
		checkPermissionDenied(t, err)
	}
	shared := filepath.Join(dir, "shared")
	if _, err := Resident(shared); !errors.Is(err, ErrResidencyUnknown) {
		t.Fatalf("Resident of a foreign read-only file = %v, want ErrResidencyUnknown", err)
	}
	obj := open(t, Auto, shared)
	if s := strategy(obj); s != StrategyBuffered {
		t.Fatalf("Auto on a foreign read-only file: strategy %q, want buffered", s)
	}
	data, err := os.ReadFile(shared)
	if err != nil {
		t.Fatal(err)
	}
	checkRead(t, obj, data, make([]byte, len(data)), 0)
}

func TestCanceled(t *testing.T) {
	path, data := writeFile(t, t.TempDir(), "f", 8192)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, mode := range allModes {
		if _, err := New(Options{Mode: mode}).Open(ctx, path); !errors.Is(err, storage.ErrCanceled) {
			t.Fatalf("%v: Open with canceled ctx = %v", mode, err)
		}
		obj := open(t, mode, path)
		buf := alignedBuf(t, 4096)
		n, err := obj.ReadAt(ctx, buf, 0)
		var se *storage.Error
		if n != 0 || !errors.As(err, &se) || se.Code != storage.Canceled || se.Op != "read" ||
			!errors.Is(err, context.Canceled) {
			t.Fatalf("%v: ReadAt with canceled ctx = %d, %v", mode, n, err)
		}
		checkRead(t, obj, data, buf, 4096)
	}
}

func TestEmptyFile(t *testing.T) {
	path, _ := writeFile(t, t.TempDir(), "empty", 0)
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			obj := open(t, mode, path)
			if obj.Size() != 0 {
				t.Fatalf("Size() = %d", obj.Size())
			}
			buf := alignedBuf(t, 4096)
			if n, err := obj.ReadAt(context.Background(), buf, 0); n != 0 || err != io.EOF {
				t.Fatalf("ReadAt = %d, %v; want 0, io.EOF", n, err)
			}
			if n, err := obj.ReadAt(context.Background(), nil, 0); n != 0 || err != nil {
				t.Fatalf("zero-length ReadAt = %d, %v", n, err)
			}
			if m, ok := obj.(storage.Mappable); ok {
				mem, err := m.Map()
				if err != nil || mem == nil || len(mem) != 0 {
					t.Fatalf("Map() = %v (nil %v), %v; want empty", mem, mem == nil, err)
				}
				if err := m.Populate(context.Background(), 0, 4096); err != nil {
					t.Fatalf("Populate: %v", err)
				}
			} else if mode == Mmap {
				t.Fatal("mmap object of an empty file is not Mappable")
			}
		})
	}
}

func TestURIForms(t *testing.T) {
	dir := t.TempDir()
	path, data := writeFile(t, dir, "a b%.bin", 5000)
	t.Chdir(dir)
	for _, uri := range []string{
		path,
		"a b%.bin",
		"./a b%.bin",
		"file://" + path,
		"file://localhost" + path,
		"file://" + strings.ReplaceAll(filepath.Dir(path), " ", "%20") + "/a%20b%25.bin",
	} {
		obj := open(t, Buffered, uri)
		checkRead(t, obj, data, make([]byte, 5000), 0)
	}
}

func TestReadErrors(t *testing.T) {
	path, _ := writeFile(t, t.TempDir(), "f", 100)
	for _, mode := range allModes {
		obj := open(t, mode, path)
		_, err := obj.ReadAt(context.Background(), make([]byte, 10), -1)
		var se *storage.Error
		if !errors.As(err, &se) || se.Code != storage.InvalidArgument || se.Op != "read" || se.URI != path || se.Off != -1 || se.Len != 10 {
			t.Fatalf("%v: ReadAt at -1 = %v", mode, err)
		}
		obj.Close()
		if _, err := obj.ReadAt(context.Background(), make([]byte, 10), 0); err == nil || err == io.EOF {
			t.Fatalf("%v: ReadAt after Close = %v", mode, err)
		}
	}
}

func TestTruncatedWhileOpen(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			const size, cut = 64 << 10, 10000
			path, data := writeFile(t, t.TempDir(), "f", size)
			obj := open(t, mode, path)
			if err := os.Truncate(path, cut); err != nil {
				t.Fatal(err)
			}
			if obj.Size() != size {
				t.Fatalf("Size() = %d, want the size at open", obj.Size())
			}
			checkRead(t, obj, data[:cut], alignedBuf(t, size), 0)
			if m, ok := obj.(storage.Mappable); ok {
				err := m.Populate(context.Background(), 0, size)
				if !errors.Is(err, io.ErrUnexpectedEOF) || storage.CodeOf(err) != storage.InvalidArgument {
					t.Fatalf("Populate past the new end = %v", err)
				}
				if err := m.Populate(context.Background(), 0, cut); err != nil {
					t.Fatalf("Populate before the new end = %v", err)
				}
			}
		})
	}
}

func TestConcurrentReads(t *testing.T) {
	const size = 2<<20 + 77
	path, data := writeFile(t, t.TempDir(), "f", size)
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			obj := open(t, mode, path)
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for g := range 16 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 1))
					buf := alignedBuf(t, 256<<10)
					for range 50 {
						off := r.Int64N(size/4096) * 4096
						if g%2 == 1 {
							off += r.Int64N(4096)
						}
						dst := buf[:r.IntN(len(buf)/4096)*4096+4096]
						n, err := obj.ReadAt(context.Background(), dst, off)
						if err != nil && err != io.EOF {
							errs <- err
							return
						}
						if !bytes.Equal(dst[:n], data[off:off+int64(n)]) {
							errs <- fmt.Errorf("bytes differ at %d", off)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

func TestCodeFor(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want storage.Code
	}{
		{syscall.ENOENT, storage.NotFound},
		{&os.PathError{Op: "open", Path: "x", Err: syscall.EACCES}, storage.PermissionDenied},
		{syscall.EPERM, storage.PermissionDenied},
		{syscall.EIO, storage.Unavailable},
		{syscall.ESTALE, storage.Unavailable},
		{syscall.ENOTCONN, storage.Unavailable},
		{syscall.EINVAL, storage.InvalidArgument},
		{syscall.EFAULT, storage.Internal},
		{context.Canceled, storage.Canceled},
		{errors.New("x"), storage.Internal},
	} {
		if got := codeFor(tc.err); got != tc.want {
			t.Errorf("codeFor(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func BenchmarkReadAt(b *testing.B) {
	const size, chunk = 64 << 20, 1 << 20
	path, _ := writeFile(b, b.TempDir(), "f", size)
	for _, mode := range allModes {
		b.Run(mode.String(), func(b *testing.B) {
			obj := open(b, mode, path)
			buf := alignedBuf(b, chunk)
			ctx := context.Background()
			b.SetBytes(chunk)
			var off int64
			for b.Loop() {
				if _, err := obj.ReadAt(ctx, buf, off); err != nil {
					b.Fatal(err)
				}
				off = (off + chunk) % size
			}
		})
	}
}
