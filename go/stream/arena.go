package stream

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// segment is one block of memory that regions live in: anonymous memory the
// arena allocated, or a file mapping lent by a storage object. It is given
// back (release) once it is retired and no region in it is live.
type segment struct {
	mem     []byte
	live    int // regions placed and not yet freed
	retired bool
	own     bool  // standalone memory the arena allocated outside the ring
	used    int64 // an own segment's bytes in use (its region's span)
	release func()
	keep    func() // an own segment's unmapping, kept while it is the spare
}

// allocAnon maps n bytes of private anonymous memory, 2 MiB aligned and,
// when huge is set, advised for transparent huge pages. Huge pages are what
// direct I/O needs: the kernel pins a 16 MiB O_DIRECT read's memory in 8
// folios instead of 4096 pages (a cold local load: 3.8 against 1.7 GB/s;
// a first load writing through the cache: 1.81 against 1.38 GB/s). For
// memory that sockets copy into they only make the first touch cheaper,
// and on a virtual machine that reports free memory to its host they make
// it dearer (freePageReporting; loads from MinIO here: 2.41 against 2.19
// GB/s without the advice, docs/benchmarks.md).
func allocAnon(n int64, huge bool) ([]byte, func(), error) {
	const hugePage = 2 << 20
	if n <= 0 {
		return nil, func() {}, nil
	}
	size := alignUp(n, alignment)
	if size < hugePage {
		mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, nil, fmt.Errorf("allocating %d bytes: %w", size, err)
		}
		return mem[:n:n], func() { _ = unix.Munmap(mem) }, nil
	}
	raw, err := unix.Mmap(-1, 0, int(size+hugePage), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, fmt.Errorf("allocating %d bytes: %w", size, err)
	}
	// Trim to a 2 MiB aligned start so huge pages can back it (where THP is
	// "always", unadvised memory gets them too).
	base := addrOf(raw)
	skip := int64(alignUp(int64(base), hugePage) - int64(base))
	mem := raw[skip : skip+size : skip+size]
	if huge {
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	}
	return mem[:n:n], func() { _ = unix.Munmap(raw) }, nil
}

// arena hands out memory for regions in plan order and takes it back when
// their tokens are released. Bounded arenas are a ring over one segment;
// when the consumer pins ring space by keeping tensors and nothing else can
// progress, a region gets memory of its own instead of waiting forever.
type arena struct {
	mu       sync.Mutex
	cond     *sync.Cond
	capacity int64 // the ring's size
	// hugePages: the memory is advised for transparent huge pages (allocAnon).
	hugePages bool
	// bound is what a bounded arena keeps ringUsed + outside within: the
	// memory limit, which may exceed the ring (see planMemory).
	bound   int64
	ring    *segment
	live    []*region // regions in the ring, in allocation order
	head    int64     // next free offset in the ring
	closed  bool
	waiting bool  // a caller is blocked in alloc
	grant   bool  // the consumer allows one allocation outside the ring
	peak    int64 // bytes allocated at once, peak
	current int64
	lent    []*segment // file mappings regions point into
	// unlimited arenas have no memory limit: once the consumer is found
	// keeping the ring's tensors, every region that does not fit gets fresh
	// memory at once instead of waiting for a grant each.
	unlimited bool
	fresh     bool
	spare     *segment // one released standalone block, kept for reuse
	// pool holds the standalone blocks of an unlimited arena that the
	// consumer released, pages and all (up to the ring's capacity in
	// total): a consumer that drops each tensor still needs a grant when
	// the one tensor it holds sits at the ring's front (regions complete
	// out of order, and those released behind it cannot leave the ring
	// first), and mapping a new block each time made the kernel zero
	// fresh pages for most of a load (issue 8).
	pool      []*segment
	poolBytes int64
	largest   int64 // the largest region placed in this arena
	// ringUsed is the bytes of the regions in the ring (live, or released
	// behind an earlier one); outside is the bytes of live regions a
	// bounded arena placed in standalone memory. A bounded arena keeps
	// ringUsed + outside within its capacity: a tensor the consumer holds
	// outside the ring (a Python loop variable holding the previous tensor)
	// counts against the limit, so the readers do not fill the whole ring
	// behind it (see within).
	ringUsed int64
	outside  int64
	onWait   func() // called (under mu) when alloc starts waiting
	// mapped counts the standalone blocks mapped and their bytes: memory
	// the kernel must zero on first touch, unlike the reused ring.
	mappedBlocks, mappedBytes int64
}

// newArena allocates the ring; hugePages advises it, and the memory the
// arena allocates outside it, for transparent huge pages (see allocAnon).
func newArena(capacity int64, hugePages bool) (*arena, error) {
	mem, release, err := allocAnon(capacity, hugePages)
	if err != nil {
		return nil, err
	}
	a := &arena{capacity: capacity, bound: capacity, ring: &segment{mem: mem, release: release}, hugePages: hugePages}
	a.cond = sync.NewCond(&a.mu)
	a.current = capacity
	a.peak = capacity
	return a, nil
}

// alloc places r (whose span fits the capacity) in the ring, waiting for
// space. It returns false if the arena was closed while waiting.
func (a *arena) alloc(r *region) (bool, error) {
	n := r.span()
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		if a.closed {
			return false, nil
		}
		// With a grant, room in the ring is used even past the bound: the
		// consumer holds memory outside it, and the ring's free pages cost
		// no more than fresh ones (dropFreeRing gave them back).
		if off, ok := a.fit(n); ok && (a.within(n) || a.grant) {
			a.grant = false // room appeared, or the grant is used here
			r.seg, r.off = a.ring, off
			r.mem = a.ring.mem[off : off+n : off+n]
			a.ring.live++
			a.live = append(a.live, r)
			a.head = off + n
			a.ringUsed += n
			return true, nil
		}
		if a.grant || a.fresh {
			a.grant = false
			seg, err := a.standalone(n)
			if err != nil {
				return false, err
			}
			r.seg = seg
			r.mem = seg.mem[:n:n]
			if !a.unlimited {
				seg.used = n
				a.outside += n
				a.dropFreeRing()
			}
			return true, nil
		}
		a.waiting = true
		if a.onWait != nil {
			a.onWait()
		}
		a.cond.Wait()
		a.waiting = false
	}
}

// within reports whether a bounded arena may place n more bytes in its ring:
// what the ring holds plus what it placed outside stays within its bound.
// An unlimited arena's ring is a cache, not a bound.
func (a *arena) within(n int64) bool {
	return a.unlimited || a.ringUsed+a.outside+n <= a.bound
}

// dropFreeRing gives the pages of the ring that no live region uses back to
// the system. A bounded arena calls it when it places a region outside the
// ring: the consumer holds tensors, and the ring's free part, touched by
// earlier regions, would otherwise stay resident next to the new memory
// (peak RSS of twice the limit for a loop holding one tensor).
func (a *arena) dropFreeRing() {
	mem := a.ring.mem
	page := int64(unix.Getpagesize())
	var pos int64
	drop := func(end int64) {
		if end > pos {
			_ = unix.Madvise(mem[pos:end], unix.MADV_DONTNEED)
		}
	}
	// Live regions sorted by offset (the ring may have wrapped).
	var spans [][2]int64
	for _, r := range a.live {
		if r.mem != nil {
			spans = append(spans, [2]int64{r.off, r.off + r.span()})
		}
	}
	slices.SortFunc(spans, func(x, y [2]int64) int { return cmp.Compare(x[0], y[0]) })
	for _, sp := range spans {
		// Regions start on 4096-byte boundaries; their ends are rounded
		// down so a page shared with a live region is kept.
		drop(alignDown(sp[0], page))
		pos = max(pos, alignUp(sp[1], page))
	}
	drop(alignDown(int64(len(mem)), page))
}

// fit finds room for n bytes after head, wrapping to the start if needed.
func (a *arena) fit(n int64) (int64, bool) {
	if len(a.live) == 0 {
		a.head = 0
		return 0, n <= a.capacity
	}
	// Live regions occupy [tail, head) when the ring has not wrapped; once
	// it has, head <= tail (equal when full) and only [head, tail) is free.
	tail := a.live[0].off
	if a.head > tail {
		if a.capacity-a.head >= n {
			return a.head, true
		}
		return 0, tail >= n
	}
	return a.head, tail-a.head >= n
}

// unstick lets a blocked alloc proceed outside the ring. The consumer calls
// it when it is waiting for tensors that cannot come: the ring is full of
// regions it still holds and no read is in flight.
//
// stuck is evaluated under the arena's lock once a reader is known to be
// waiting: by then every region that reader placed has been counted in
// flight, so "nothing in flight and nothing queued" cannot be stale.
func (a *arena) unstick(stuck func() bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.waiting || !stuck() {
		return false
	}
	a.grant = true
	// An unlimited arena reads the rest ahead into fresh memory only for a
	// consumer that keeps what it takes (the ring is mostly tensors it
	// holds). A consumer that drops each tensor after the next also gets
	// stuck, whenever the one tensor it holds sits at the ring's front with
	// released regions behind it (regions complete out of order and leave
	// the ring in order): it gets this one region outside the ring, in a
	// reused block, and the readers stay in the ring (issue 8).
	a.fresh = a.unlimited && 2*a.heldInRing() >= a.capacity
	a.cond.Broadcast()
	return true
}

// heldInRing is the bytes of the ring's regions not yet released.
func (a *arena) heldInRing() int64 {
	var n int64
	for _, r := range a.live {
		if r.mem != nil {
			n += r.span()
		}
	}
	return n
}

// free returns r's memory.
func (a *arena) free(r *region) {
	a.mu.Lock()
	seg := r.seg
	seg.live--
	var give func()
	if seg == a.ring {
		// Regions leave the ring in allocation order; one released early
		// waits (marked by a nil mem) until those before it are gone.
		r.mem = nil
		moved := false
		for len(a.live) > 0 && a.live[0].mem == nil {
			a.ringUsed -= a.live[0].span()
			a.live = a.live[1:]
			moved = true
		}
		if moved {
			// The consumer gives ring memory back, so it is not keeping
			// everything: the readers return to the ring (and wait there)
			// instead of reading the rest of the load ahead into fresh
			// memory. Only a consumer that is stuck again gets a grant.
			a.fresh = false
		}
		// A waiter must look again before the consumer may call it stuck.
		a.waiting = false
		a.cond.Broadcast()
	} else if seg.own && a.unlimited && !a.closed && a.poolBytes+int64(len(seg.mem)) <= a.capacity {
		// Kept with its pages: reusing them costs no page faults and no
		// zeroing, and the pool is bounded by the ring, which an unlimited
		// arena would have filled the same way.
		a.pool = append(a.pool, seg)
		a.poolBytes += int64(len(seg.mem))
		seg.release = nil
	} else if seg.own && !a.unlimited && a.spare == nil && !a.closed && !a.fresh {
		// Keep one standalone block for the next grant (no new mapping),
		// but not its pages: an idle spare must not hold memory past the
		// limit.
		a.spare = seg
		seg.release = nil
		_ = unix.Madvise(seg.mem, unix.MADV_DONTNEED)
	} else if seg.own {
		a.current -= int64(len(seg.mem))
	}
	if seg.own && seg.used > 0 {
		// Memory held outside the ring came back: the ring may take it.
		a.outside -= seg.used
		seg.used = 0
		a.waiting = false
		a.cond.Broadcast()
	}
	if seg.retired && seg.live == 0 && seg.release != nil {
		give, seg.release = seg.release, nil
	}
	a.mu.Unlock()
	if give != nil {
		give()
	}
}

// close wakes waiters and retires the ring; its memory goes back once no
// region in it is live.
func (a *arena) close() {
	a.mu.Lock()
	a.closed = true
	a.cond.Broadcast()
	var give []func()
	if a.spare != nil {
		give = append(give, a.spare.keep)
		a.current -= int64(len(a.spare.mem))
		a.spare = nil
	}
	for _, sp := range a.pool {
		give = append(give, sp.keep)
		a.current -= int64(len(sp.mem))
	}
	a.pool, a.poolBytes = nil, 0
	for _, seg := range append([]*segment{a.ring}, a.lent...) {
		seg.retired = true
		if seg.live == 0 && seg.release != nil {
			give = append(give, seg.release)
			seg.release = nil
		}
	}
	a.mu.Unlock()
	for _, g := range give {
		g()
	}
}

// standalone returns memory outside the ring for n bytes: the spare block
// when it is large enough, else a new block. Blocks are made the size of
// the largest region so a spare fits any later region of a capped stream.
func (a *arena) standalone(n int64) (*segment, error) {
	if sp := a.spare; sp != nil {
		a.spare = nil
		if int64(len(sp.mem)) >= n {
			sp.live, sp.release = 1, sp.keep
			return sp, nil
		}
		a.current -= int64(len(sp.mem))
		sp.keep()
	}
	if sp := a.fromPool(n); sp != nil {
		sp.live, sp.release = 1, sp.keep
		return sp, nil
	}
	// Every pooled block is too small for this region: unmap them rather
	// than hold them next to the new one (memory a stream that unmapped
	// each released block never held at once).
	for _, sp := range a.pool {
		sp.keep()
		a.current -= int64(len(sp.mem))
	}
	a.pool, a.poolBytes = nil, 0
	size := n
	if !a.fresh {
		size = max(n, a.largest)
	}
	mem, release, err := allocAnon(size, a.hugePages)
	if err != nil {
		return nil, err
	}
	a.current += size
	a.peak = max(a.peak, a.current)
	a.mappedBlocks++
	a.mappedBytes += size
	return &segment{mem: mem, live: 1, retired: true, own: true, release: release, keep: release}, nil
}

// fromPool takes the smallest pooled block that holds n bytes, if any.
func (a *arena) fromPool(n int64) *segment {
	best := -1
	for i, sp := range a.pool {
		if int64(len(sp.mem)) >= n && (best < 0 || len(sp.mem) < len(a.pool[best].mem)) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	sp := a.pool[best]
	a.pool = slices.Delete(a.pool, best, best+1)
	a.poolBytes -= int64(len(sp.mem))
	return sp
}

func (a *arena) peakBytes() (peak, blocks, mapped int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peak, a.mappedBlocks, a.mappedBytes
}
