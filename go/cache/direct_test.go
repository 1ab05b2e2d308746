package cache

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"
)

// TestDirectWriteAt writes ranges of every alignment (of file offset, of
// memory, of length) through directFile, as the writer's readers and a
// distributed load's received bytes do, and checks the file byte for byte
// and how much went direct.
func TestDirectWriteAt(t *testing.T) {
	const size = 5 << 20 // more than a bounce buffer
	src := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(src)
	// mem holds src's bytes at memory congruent with their offsets
	// (the arena's placement) and, shifted by 1, incongruent.
	raw := make([]byte, size+2*directAlign)
	base := int(alignUp(int64(uintptr(unsafe.Pointer(&raw[0]))), directAlign) - int64(uintptr(unsafe.Pointer(&raw[0]))))
	congruent := raw[base : base+size]
	shifted := raw[base+1 : base+1+size]

	cases := []struct {
		name       string
		lo, hi     int64
		congruent  bool
		wantDirect int64
	}{
		{"whole pages", 0, 4 * directAlign, true, 4 * directAlign},
		{"unaligned ends", 100, 3*directAlign + 5, true, 2 * directAlign},
		{"within one page", directAlign + 10, directAlign + 4000, true, 0},
		{"unaligned ends, memory not congruent", 100, 3*directAlign + 5, false, 2 * directAlign},
		{"longer than a bounce buffer", 10, size - 10, false, size - 2*directAlign},
		{"ends at the file's last partial page", 2 * directAlign, size - 7, true, size - 3*directAlign},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "entry")
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			d := openDirect(path)
			if d == nil {
				if runtime.GOOS == "linux" {
					t.Skip("this file system refuses O_DIRECT")
				}
				c.wantDirect = 0
			}
			t.Cleanup(func() { d.Close() })
			mem := shifted
			if c.congruent {
				mem = congruent
			}
			copy(mem, src)
			// The range, then the rest around it (as other ranges would).
			got, err := d.writeAt(f, mem[c.lo:c.hi], c.lo)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.wantDirect {
				t.Errorf("direct bytes %d, want %d", got, c.wantDirect)
			}
			if _, err := d.writeAt(f, mem[:c.lo], 0); err != nil {
				t.Fatal(err)
			}
			if _, err := d.writeAt(f, mem[c.hi:], c.hi); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			back, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, src) {
				i := 0
				for i < len(back) && i < len(src) && back[i] == src[i] {
					i++
				}
				t.Fatalf("file differs from the bytes written at %d (len %d, want %d)", i, len(back), len(src))
			}
		})
	}
}
