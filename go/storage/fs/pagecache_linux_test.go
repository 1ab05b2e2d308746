package fs

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mappedBytes is how much of the mapping that starts at mem's first byte is
// mapped into this process (its Rss in /proc/self/smaps).
func mappedBytes(t *testing.T, mem []byte) int64 {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	start := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(&mem[0])))
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		if strings.HasPrefix(line, start) {
			in = true
			continue
		}
		if in && strings.HasPrefix(line, "Rss:") {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimPrefix(line, "Rss:"), "%d kB", &kb); err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no mapping at %s in /proc/self/smaps", start)
	return 0
}

// What is already in the page cache is mapped by the consumer's own reads,
// not ahead of it: a file the residency sample found wholly cached (Auto),
// or slices cachestat(2) finds cached (Mmap: residency not sampled). A slice
// with pages missing is read and mapped by Populate. Either way every byte
// reads back.
func TestPopulateMapsAheadOnlyWhatIsNotCached(t *testing.T) {
	const size = 24 << 20
	for _, tc := range []struct {
		name       string
		mode       Mode
		cold       bool
		wantCached bool // the open-time flag
	}{
		{"auto-cached", Auto, false, true},
		{"mmap-cached", Mmap, false, false},
		{"mmap-cold", Mmap, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, data := writeFile(t, t.TempDir(), "f", size) // just written: in the page cache
			if tc.cold {
				coldOrSkip(t, path)
			} else if r, err := Resident(path); err != nil || r != 1 {
				t.Skipf("file not wholly cached after writing it (Resident = %v, %v)", r, err)
			}
			obj := open(t, tc.mode, path)
			if s := strategy(obj); s != StrategyMmap {
				t.Fatalf("strategy %q, want mmap", s)
			}
			mo := obj.(*mmapObject)
			if mo.cached != tc.wantCached {
				t.Fatalf("cached = %v, want %v", mo.cached, tc.wantCached)
			}
			if !tc.cold && !tc.wantCached && !mo.inPageCache(0, size) {
				t.Skip("cachestat(2) unavailable here")
			}
			mem, err := mo.Map()
			if err != nil {
				t.Fatal(err)
			}
			if err := mo.Populate(context.Background(), 0, size); err != nil {
				t.Fatal(err)
			}
			mapped := mappedBytes(t, mem)
			if tc.cold {
				// The first slice is read and mapped; read-ahead may have
				// brought later slices in meanwhile, which then count as
				// cached. Every page is in the page cache afterwards.
				if mapped < populateSlice {
					t.Fatalf("Populate of a cold file mapped %d bytes, want at least its first %d", mapped, populateSlice)
				}
				if r, err := Resident(path); err != nil || r < 0.99 {
					t.Fatalf("after Populate Resident = %v, %v; want 1", r, err)
				}
			} else if mapped > 4<<20 {
				// Only the last byte is read (the truncation check): its
				// page, or the large folio it lies in, is mapped.
				t.Fatalf("Populate of a cached file mapped %d bytes ahead of the consumer", mapped)
			}
			if !bytes.Equal(mem, data) {
				t.Fatal("mapping differs from the file")
			}
		})
	}
}

// The residency sample counts the same pages whether cachestat(2) or
// mincore(2) takes it: a file whose first half alone is cached is half
// resident by either.
func TestResidencyCachestatAgreesWithMincore(t *testing.T) {
	const size = 20 << 20 // 5 Ki pages: sampled in windows
	for _, tc := range []struct {
		name   string
		cached int64 // bytes read back after dropping the file
	}{{"cold", 0}, {"half", size / 2}, {"whole", size}} {
		t.Run(tc.name, func(t *testing.T) {
			path, _ := writeFile(t, t.TempDir(), "f", size)
			if tc.cached < size {
				// The expected fractions below need the drop to be whole.
				if err := DropCache(path); err != nil {
					t.Fatalf("DropCache: %v", err)
				}
				if r, err := Resident(path); err != nil || r > 0.01 {
					t.Skipf("DropCache left %v of the file resident (%v)", r, err)
				}
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// No read-ahead past what is read.
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadAt(make([]byte, tc.cached), 0); err != nil && tc.cached > 0 {
				t.Fatal(err)
			}
			base, err := newFile(path, path, f, size)
			if err != nil {
				t.Fatal(err)
			}
			viaCachestat, err := cachestatResident(base)
			if err != nil {
				t.Skipf("cachestat(2) unavailable here: %v", err)
			}
			mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(mem)
			viaMincore, err := sampleResident(mem)
			if err != nil {
				t.Fatal(err)
			}
			want := float64(tc.cached) / size
			if math.Abs(viaCachestat-want) > 0.02 || math.Abs(viaCachestat-viaMincore) > 0.02 {
				t.Fatalf("resident: cachestat %.3f, mincore %.3f, want about %.3f", viaCachestat, viaMincore, want)
			}
		})
	}
}
