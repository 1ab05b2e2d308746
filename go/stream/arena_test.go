package stream

import (
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Regions live in the ring at once must never overlap, whatever the order
// of frees.
func TestArenaRingNeverOverlaps(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const capacity = 64 * alignment
	a, err := newArena(capacity, true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	var live []*region
	for step := 0; step < 20000; step++ {
		if len(live) > 0 && (rng.IntN(2) == 0 || len(live) > 20) {
			i := rng.IntN(len(live))
			a.free(live[i])
			live = append(live[:i], live[i+1:]...)
			continue
		}
		n := int64(1+rng.IntN(16)) * alignment
		r := &region{spanStart: 0, spanEnd: n}
		a.mu.Lock()
		_, ok := a.fit(n)
		a.mu.Unlock()
		if !ok {
			continue
		}
		if ok, err := a.alloc(r); !ok || err != nil {
			t.Fatal(ok, err)
		}
		for _, o := range live {
			if o.seg == r.seg && r.off < o.off+o.span() && o.off < r.off+r.span() {
				t.Fatalf("step %d: [%d,%d) overlaps [%d,%d)", step, r.off, r.off+r.span(), o.off, o.off+o.span())
			}
		}
		live = append(live, r)
	}
}

// resident counts the pages of mem in memory.
func resident(t *testing.T, mem []byte) int {
	t.Helper()
	page := unix.Getpagesize()
	vec := make([]byte, (len(mem)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)),
		uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// A bounded arena whose consumer holds the ring (a loop variable holding
// the previous tensor) places the next region outside it; then the ring's
// free pages go back, the readers do not refill the ring behind the region
// held outside, and its return lets them go on.
func TestArenaHeldOutsideCountsAgainstTheRing(t *testing.T) {
	const capacity = 64 * alignment
	a, err := newArena(capacity, true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	a.largest = capacity
	page := unix.Getpagesize()
	for i := range a.ring.mem {
		a.ring.mem[i] = 1 // earlier regions touched every page
	}
	small := &region{spanEnd: 4 * alignment}
	if ok, err := a.alloc(small); !ok || err != nil {
		t.Fatal(ok, err)
	}
	// The largest region cannot fit beside the held one: it waits until the
	// consumer, stuck, grants memory outside the ring.
	big := &region{spanEnd: capacity}
	done := make(chan error, 1)
	go func() { _, err := a.alloc(big); done <- err }()
	for !a.unstick(func() bool { return true }) {
		time.Sleep(time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if big.seg == a.ring {
		t.Fatal("the largest region was placed in the pinned ring")
	}
	if got, want := resident(t, a.ring.mem), int(4*alignment)/page; got != want {
		t.Fatalf("%d ring pages resident beside the region outside, want the held region's %d", got, want)
	}
	big.mem[0] = 1
	a.free(small)
	// The ring is empty, but what is held outside counts against it.
	next := &region{spanEnd: 8 * alignment}
	go func() { _, err := a.alloc(next); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a region was placed in the ring behind the one held outside (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	a.free(big) // the consumer moved on
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if next.seg != a.ring {
		t.Fatal("the next region did not go back to the ring")
	}
	a.free(next)
}
