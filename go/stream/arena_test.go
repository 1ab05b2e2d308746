package stream

import (
	"math/rand/v2"
	"testing"
)

// Regions live in the ring at once must never overlap, whatever the order
// of frees.
func TestArenaRingNeverOverlaps(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const capacity = 64 * alignment
	a, err := newArena(capacity)
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
