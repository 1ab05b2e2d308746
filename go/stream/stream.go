// Package stream is the engine: it reads the SafeTensors headers of every
// requested file, plans the tensor bytes into regions, reads them with a
// fixed pool of goroutines into one bounded arena (or maps them, when the
// file is in the page cache and memory is not capped), and hands out each
// tensor as soon as its bytes are in.
//
// The engine knows storage only through the storage.Object interface.
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/model-streamer/model-streamer/go/safetensors"
	"github.com/model-streamer/model-streamer/go/storage"
)

var (
	// ErrInvalidRequest marks a request that cannot be served as asked
	// (unknown tensor names, no files).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrClosed is returned by Next after Close.
	ErrClosed = errors.New("stream closed")
)

// MemoryLimitError reports a memory limit below the largest requested tensor
// (or, for OpenRanges, the largest requested range).
type MemoryLimitError struct {
	Limit   int64
	Largest int64
	Tensor  string // the tensor's name; for a range, "range I at offset N"
	URI     string
	Range   bool // the stream reads byte ranges (OpenRanges), not tensors
}

func (e *MemoryLimitError) Error() string {
	if e.Range {
		return fmt.Sprintf("memory limit %d bytes is below the largest range of %s (%s, %d bytes)",
			e.Limit, e.URI, e.Tensor, e.Largest)
	}
	return fmt.Sprintf("memory limit %d bytes is below the largest tensor %q of %s (%d bytes)",
		e.Limit, e.Tensor, e.URI, e.Largest)
}

// FileInfo describes one requested file after its header was validated.
type FileInfo struct {
	URI  string
	Size int64
	// Header holds every tensor of the file; Tensors only the requested
	// ones, in file order (the index Ready.Tensor refers to). A stream of
	// byte ranges (OpenRanges) has no Header, and its Tensors are the
	// ranges in the caller's order, unnamed, Begin and End absolute.
	Header   *safetensors.Header
	Tensors  []safetensors.Tensor
	Strategy string // how the file is read: "buffered", "direct", "mmap" or ""
	// Verify says whether and against what the file is verified
	// (Config.Verify).
	Verify Verification
}

// Ready is one tensor whose bytes are in memory. Data stays valid until
// Release(Token); a zero Token (empty tensors) needs no release.
type Ready struct {
	File   int
	Tensor int
	Data   []byte
	Token  Token
}

type fileState struct {
	uri     string
	obj     storage.Object
	size    int64
	header  *safetensors.Header
	base    int64 // absolute file offset tensors' Begin and End count from
	tensors []safetensors.Tensor
	// order, when set, maps a position in tensors (sorted by offset for
	// planning) to the caller's index of that range (OpenRanges).
	order    []int
	mapped   storage.Mappable // non-nil when read by mapping
	strategy string

	// ver checks the object against its store's checksum (nil: not
	// verified; see verify.go); prefixHashed is how many of its first bytes
	// the header read hashed. note is what the metadata says about it.
	ver          *verifier
	prefixHashed int64
	note         Verification
	preverified  bool // its object's bytes were verified before (storage.Preverified)

	// side checks tensors against the file's checksum sidecar (nil: none;
	// see sidecar.go); sideWait waits for the lookup openObject started.
	side                       *sideCheck
	sideWait                   func() error
	sideEntries, sideUncovered int
}

// index is the caller's index of f.tensors[i] (what Ready.Tensor reports).
func (f *fileState) index(i int) int {
	if f.order == nil {
		return i
	}
	return f.order[i]
}

type chunk struct {
	r   *region
	off int64 // absolute file offset
	n   int64
}

// Stream is one streaming request. Its methods are safe for concurrent use.
type Stream struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	files  []*fileState
	plan   []*region
	arena  *arena
	jobs   chan chunk
	wg     sync.WaitGroup
	holds  sync.WaitGroup // holds on regions not yet let go (hold)
	queue  readyQueue
	total  int // tensors to deliver

	inflight  atomic.Int64 // regions with memory whose reads are not done
	delivered atomic.Int64 // tensors queued so far

	errOnce sync.Once
	err     error
	errSet  atomic.Bool

	closeOnce sync.Once
	closed    atomic.Bool

	st counters
}

// Open reads and validates the headers of uris (in parallel), selects the
// tensors named (nil: all), checks the memory limit, and starts streaming.
func Open(ctx context.Context, cfg Config, uris []string, names []string) (*Stream, error) {
	if cfg.Storage == nil {
		return nil, fmt.Errorf("%w: no storage configured", ErrInvalidRequest)
	}
	if len(uris) == 0 {
		return nil, fmt.Errorf("%w: no files given", ErrInvalidRequest)
	}
	s := newStream(cfg)
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()

	if err := s.openFiles(uris, func(_ int, f *fileState) error { return s.openFile(f, speculativeHeaderBytes) }); err != nil {
		s.abort()
		return nil, err
	}
	s.cfg = s.cfg.normalized(uris[0])
	if err := selectTensors(s.files, names); err != nil {
		s.abort()
		return nil, err
	}
	if err := s.planMemory(); err != nil {
		s.abort()
		return nil, err
	}
	s.start()
	return s, nil
}

func newStream(cfg Config) *Stream {
	s := &Stream{cfg: cfg}
	s.st.start = time.Now()
	s.st.firstTensor.Store(-1)
	s.queue.init()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// openFiles runs open (which opens a file and learns what to read of it)
// for every file, all files at once.
func (s *Stream) openFiles(uris []string, open func(i int, f *fileState) error) error {
	s.files = make([]*fileState, len(uris))
	errs := make([]error, len(uris))
	sem := make(chan struct{}, max(s.cfg.Concurrency, DefaultConcurrency))
	var wg sync.WaitGroup
	for i, uri := range uris {
		s.files[i] = &fileState{uri: uri}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			defer recoverInto(&errs[i])
			errs[i] = open(i, s.files[i])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// speculativeHeaderBytes is a stream's first read of each file: the header
// and, in the same request, the start of the tensor data (the readers hash
// and the ring reuses nothing of it, but one request instead of two per file
// is what object storage charges for). ReadHeaders, which reads no tensor
// data, reads exactly the header instead (headerOnly).
const speculativeHeaderBytes = 1 << 20

// localHeaderBytes replaces speculativeHeaderBytes for a local file (one
// the fs backend reads: a request costs a system call, not a round trip):
// most headers fit (a 1.3 GB shard's is 1-60 KB), a longer one costs one
// more pread, and the first stream of a process does not fault in a
// megabyte of fresh heap per file (fresh memory is slow to touch: this
// was 2-3 ms of a hot 2-file load's time to first tensor).
const localHeaderBytes = 64 << 10

// headerOnly as openFile's first read: the 8-byte length prefix alone, then
// exactly the header. Distributed streaming has every process of a group
// read every header and the group read each tensor byte once, so a
// speculative prefix there would be read once per process on top of it
// (docs/design.md §8).
const headerOnly = safetensors.PrefixLen

// unlimitedRing is the reusable buffer of a stream with no memory limit
// (a variable so tests can shrink it).
var unlimitedRing int64 = 256 << 20

// openObject opens f's object and learns its size, read strategy and the
// checksum it will be verified with: the part of opening a file that header
// streams and range streams share.
func (s *Stream) openObject(f *fileState) error {
	// The sidecar lookup needs only the URI: started first, its request
	// overlaps the object's own metadata request instead of following it
	// (one round trip less per object, a cache hit's included).
	f.sideWait = s.startSidecar(f)
	obj, err := s.cfg.Storage.Open(s.ctx, f.uri)
	if err != nil {
		return err
	}
	f.obj = obj
	f.size = obj.Size()
	if st, ok := obj.(interface{ Strategy() string }); ok {
		f.strategy = st.Strategy()
	}
	return s.wantChecksum(f)
}

// openFile opens f and reads its header: first the first `first` bytes of
// the file, then (when the header is longer) the rest of the header.
func (s *Stream) openFile(f *fileState, first int64) error {
	if err := s.openObject(f); err != nil {
		return err
	}
	if first == speculativeHeaderBytes && f.strategy != "" {
		first = localHeaderBytes // f is a local file (its read strategy is named)
	}
	buf, n, err := s.readPrefix(f, min(f.size, first))
	if err != nil {
		return err
	}
	hl, err := safetensors.HeaderLen(buf[:n], f.size)
	if err != nil {
		return fmt.Errorf("%s: %w", f.uri, err)
	}
	if end := safetensors.PrefixLen + hl; end > n {
		if buf, n, err = s.readRest(f, buf[:n], end); err != nil {
			return err
		}
	}
	h, err := safetensors.Parse(buf[safetensors.PrefixLen:safetensors.PrefixLen+hl], f.size)
	if err != nil {
		return fmt.Errorf("%s: %w", f.uri, err)
	}
	f.header = h
	f.base = h.DataOffset
	if err := f.sideWait(); err != nil {
		return err
	}
	if err := s.sidecarHeader(f, buf[:h.DataOffset], h); err != nil {
		return err
	}
	if f.ver != nil {
		// Only the header: the tensor bytes this read fetched too are
		// hashed by the readers that read them into the arena.
		f.ver.addPrefix(buf[:h.DataOffset])
		f.prefixHashed = h.DataOffset
	}
	return nil
}

// readPrefix reads the first n bytes of f (aligned as its object needs).
func (s *Stream) readPrefix(f *fileState, n int64) ([]byte, int64, error) {
	length := n
	if _, ok := f.obj.(storage.Aligned); ok {
		length = alignUp(n, alignment)
	}
	raw := make([]byte, length+alignment)
	skip := alignUp(int64(addrOf(raw)), alignment) - int64(addrOf(raw))
	buf := raw[skip : skip+length]
	got, err := storage.ReadRange(s.ctx, f.obj, buf, 0, n, s.cfg.Retry, s.onRetry)
	s.st.headerBytesRead.Add(uint64(got))
	s.st.reads.Add(1)
	if err != nil {
		return nil, 0, wrapRead(f.uri, 0, n, err)
	}
	return buf, n, nil
}

// readRest extends have (the first bytes of f) to the first n bytes: an
// object that needs aligned reads reads all n again, any other reads only
// [len(have), n).
func (s *Stream) readRest(f *fileState, have []byte, n int64) ([]byte, int64, error) {
	if _, ok := f.obj.(storage.Aligned); ok {
		return s.readPrefix(f, n)
	}
	buf := make([]byte, n)
	copy(buf, have)
	off := int64(len(have))
	got, err := storage.ReadRange(s.ctx, f.obj, buf[off:], off, n-off, s.cfg.Retry, s.onRetry)
	s.st.headerBytesRead.Add(uint64(got))
	s.st.reads.Add(1)
	if err != nil {
		return nil, 0, wrapRead(f.uri, off, n-off, err)
	}
	return buf, n, nil
}

func wrapRead(uri string, off, n int64, err error) error {
	var se *storage.Error
	if errors.As(err, &se) {
		return err
	}
	if errors.Is(err, storage.ErrShortObject) {
		return &storage.Error{Op: "read", URI: uri, Off: off, Len: n, Code: storage.InvalidArgument, Err: err}
	}
	return &storage.Error{Op: "read", URI: uri, Off: off, Len: n, Code: storage.CodeOf(err), Err: err}
}

// pinsMemory reports whether f's reads hand the arena's memory to the
// kernel for direct I/O, which huge pages make cheaper (allocAnon): a local
// file (its read strategy is named; a buffered one keeps them as it always
// had them) or an object that says so (a store's object written through
// to a cache). A store's bytes, copied in from a socket, do not: they get
// huge pages only where those are cheap to touch (freePageReporting).
func pinsMemory(f *fileState) bool {
	if f.strategy != "" {
		return true
	}
	p, ok := f.obj.(storage.PinsMemory)
	return ok && p.PinsMemory()
}

// planMemory decides how each file is read, groups tensors into regions,
// and sizes the arena for the regions that need one.
func (s *Stream) planMemory() error {
	limit := s.cfg.MemoryLimit
	largest, fi, ti := largestTensor(s.files)
	if limit > 0 && limit < largest {
		f := s.files[fi]
		e := &MemoryLimitError{Limit: limit, Largest: largest, Tensor: f.tensors[ti].Name, URI: f.uri}
		if f.order != nil {
			e.Range = true
			e.Tensor = fmt.Sprintf("range %d at offset %d", f.index(ti), f.tensors[ti].Begin)
		}
		return e
	}
	maxSpan := s.cfg.ChunkBytes
	switch {
	case limit == LargestTensor:
		maxSpan = min(maxSpan, alignUp(largest, alignment)+alignment)
	case limit > 0:
		maxSpan = min(maxSpan, max(alignDown(limit, alignment), 2*alignment))
	}
	perFile := planRegions(s.files, maxSpan)
	s.plan = interleave(perFile)
	s.planSidecar(perFile)

	var lent []*segment
	var ringBytes, biggest int64
	hugePages := false
	for fi, f := range s.files {
		m, ok := f.obj.(storage.Mappable)
		if ok && limit == Unlimited && len(perFile[fi]) > 0 {
			mem, err := m.Map()
			if err != nil {
				return wrapRead(f.uri, 0, f.size, err)
			}
			f.mapped, f.strategy = m, "mmap"
			seg := &segment{mem: mem, live: len(perFile[fi])}
			obj := f.obj
			seg.release = func() { _ = obj.Close() }
			lent = append(lent, seg)
			for _, r := range perFile[fi] {
				r.seg = seg
				r.mem = mem[r.spanStart:min(r.spanEnd, int64(len(mem)))]
			}
			continue
		}
		if ok && f.strategy == "mmap" {
			f.strategy = "buffered"
		}
		if len(perFile[fi]) > 0 && pinsMemory(f) {
			hugePages = true
		}
		for _, r := range perFile[fi] {
			ringBytes += r.span()
			biggest = max(biggest, r.span())
		}
	}
	if !hugePages && ringBytes > 0 {
		// Only sockets fill the ring: huge pages unless their first touch
		// is dear here. Asked only for such streams, since it reads sysfs
		// (once a process), which a local load need not wait for.
		hugePages = !freePageReporting()
	}
	capacity := ringBytes
	bound := int64(0)
	switch {
	case limit == Unlimited:
		// No limit does not mean allocating the whole request: fresh memory
		// is slow to touch, so a ring that is reused while the consumer
		// keeps up is faster. If the consumer keeps what it takes, the ring
		// fills with its tensors and the arena turns to fresh memory for
		// the rest (see arena.unlimited).
		capacity = min(capacity, max(unlimitedRing, 2*biggest))
	case limit == LargestTensor:
		capacity = min(capacity, biggest)
	case limit > 0:
		// The limit bounds the memory; the ring is no larger than an
		// unlimited stream's. The readers fill whatever ring they have
		// (32 reads of 16 MiB in flight for object storage), all of it
		// fresh memory the kernel zeroes, and that bought nothing: a
		// 768 MiB limit made a 1 GiB load from MinIO half as fast as a
		// 256 MiB one. A consumer that holds more than the ring gets
		// memory outside it through grants, as past any ring.
		bound = max(alignDown(limit, alignment), biggest)
		capacity = min(capacity, bound, max(unlimitedRing, 2*biggest))
	}
	if err := s.planVerify(); err != nil {
		return err
	}
	a, err := newArena(capacity, hugePages)
	if err != nil {
		return err
	}
	a.unlimited = limit == Unlimited
	if bound > 0 {
		a.bound = bound
	}
	a.largest = biggest
	a.lent = lent
	s.arena = a
	s.st.bytesRequested.Store(0)
	for _, f := range s.files {
		s.total += len(f.tensors)
		for _, t := range f.tensors {
			s.st.bytesRequested.Add(uint64(t.Bytes()))
		}
	}
	return nil
}

func (s *Stream) start() {
	// Empty tensors need no bytes: they are ready at once.
	var empties []Ready
	for fi, f := range s.files {
		for ti, t := range f.tensors {
			if t.Bytes() == 0 {
				empties = append(empties, Ready{File: fi, Tensor: f.index(ti)})
			}
		}
	}
	s.deliver(empties)
	s.arena.onWait = s.queue.poke
	s.jobs = make(chan chunk, s.cfg.Concurrency)
	s.wg.Add(1 + s.cfg.Concurrency)
	go s.dispatch()
	for range s.cfg.Concurrency {
		go s.work()
	}
}

// dispatch assigns memory to regions in plan order and queues their reads.
func (s *Stream) dispatch() {
	defer s.wg.Done()
	defer close(s.jobs)
	defer recoverFail(s)
	for _, r := range s.plan {
		if s.ctx.Err() != nil {
			return
		}
		if r.mem == nil {
			wait := time.Now()
			ok, err := s.arena.alloc(r)
			s.st.memoryWait.Add(int64(time.Since(wait)))
			if err != nil {
				s.fail(err)
				return
			}
			if !ok {
				return
			}
		}
		chunks := s.split(r)
		s.inflight.Add(1)
		r.pending.Store(int32(len(chunks)))
		for _, c := range chunks {
			select {
			case s.jobs <- c:
			case <-s.ctx.Done():
				return
			}
		}
	}
}

// split cuts r into reads of at most ChunkBytes. Aligned (O_DIRECT) objects
// read whole aligned blocks; others read exactly the tensor bytes.
func (s *Stream) split(r *region) []chunk {
	f := s.files[r.file]
	start, end := r.dataStart, r.dataEnd
	if _, ok := f.obj.(storage.Aligned); ok && f.mapped == nil {
		start, end = r.spanStart, r.spanEnd
	}
	var out []chunk
	for off := start; off < end; {
		next := min(alignDown(off, alignment)+s.cfg.ChunkBytes, end)
		out = append(out, chunk{r: r, off: off, n: next - off})
		off = next
	}
	return out
}

func (s *Stream) work() {
	defer s.wg.Done()
	for c := range s.jobs {
		if s.ctx.Err() != nil {
			continue
		}
		err := s.readChunk(c)
		if err != nil {
			s.fail(err)
			continue
		}
		if c.r.pending.Add(-1) == 0 {
			s.complete(c.r)
		}
	}
}

func (s *Stream) readChunk(c chunk) (err error) {
	defer recoverInto(&err)
	f := s.files[c.r.file]
	if f.mapped != nil {
		s.st.reads.Add(1)
		if err := f.mapped.Populate(s.ctx, c.off, c.n); err != nil {
			return wrapRead(f.uri, c.off, c.n, err)
		}
		s.st.bytesRead.Add(uint64(c.n))
		f.hashSidecar(c.r, c.off, c.off+c.n)
		return nil
	}
	dst := c.r.mem[c.off-c.r.spanStart : c.off-c.r.spanStart+c.n]
	need := min(c.off+c.n, c.r.dataEnd) - c.off
	s.st.reads.Add(1)
	ctx := storage.WithRetain(s.ctx, func() func() { return s.hold(c.r) })
	got, err := storage.ReadRange(ctx, f.obj, dst, c.off, need, s.cfg.Retry, s.onRetry)
	s.st.bytesRead.Add(uint64(got))
	if err != nil {
		return wrapRead(f.uri, c.off, c.n, err)
	}
	f.hashSidecar(c.r, c.off, c.off+need)
	if f.ver != nil {
		// The tensor bytes of this read (an aligned read may take in
		// bytes of the regions either side, which they hash themselves).
		lo, hi := max(c.off, c.r.hashFrom), min(c.off+need, c.r.dataEnd)
		if lo < hi {
			f.ver.readDone(lo, c.r.mem[lo-c.r.spanStart:hi-c.r.spanStart])
		}
	}
	return nil
}

// hold keeps r from completing, so that its tensors are not handed out nor
// its memory reused, until the returned function is called (once; later
// calls do nothing): the local cache writing a read's bytes to disk after
// the read returned (storage.WithRetain). The reader meanwhile goes on to
// its next range instead of waiting for the disk.
func (s *Stream) hold(r *region) func() {
	r.pending.Add(1)
	s.holds.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			defer s.holds.Done()
			defer recoverFail(s)
			if r.pending.Add(-1) == 0 && s.ctx.Err() == nil {
				s.complete(r)
			}
		})
	}
}

func (s *Stream) onRetry(error) {
	s.st.retries.Add(1)
	s.st.reads.Add(1)
}

// complete queues the tensors of a fully read region, once the file's
// verification lets it (see verify.go).
func (s *Stream) complete(r *region) {
	f := s.files[r.file]
	if err := s.checkRegion(f, r); err != nil {
		s.fail(err)
		return
	}
	if f.ver == nil {
		s.deliverRegion(r)
		return
	}
	if err := f.ver.regionDone(r, s.deliverRegion); err != nil {
		s.fail(err)
	}
}

// deliverRegion queues the tensors of r.
func (s *Stream) deliverRegion(r *region) {
	f := s.files[r.file]
	batch := make([]Ready, 0, r.count)
	for i, t := range tensorsOf(f, r) {
		if t.Bytes() == 0 {
			continue
		}
		batch = append(batch, Ready{
			File:   r.file,
			Tensor: f.index(r.first + i),
			Data:   r.tensorBytes(f.base+t.Begin, f.base+t.End),
		})
	}
	r.refs.Store(int32(len(batch)))
	r.completed.Store(true)
	for i := range batch {
		batch[i].Token = newToken(s, r)
	}
	// Deliver before leaving the in-flight count, so that Next never sees
	// neither a ready tensor nor a read in flight while this region's are coming.
	s.deliver(batch)
	if s.inflight.Add(-1) == 0 {
		s.queue.poke() // a waiting Next may now find the reader stuck
	}
}

func (s *Stream) deliver(batch []Ready) {
	if len(batch) == 0 {
		return
	}
	now := int64(time.Since(s.st.start))
	s.st.firstTensor.CompareAndSwap(-1, now)
	s.st.lastReady.Store(now)
	s.delivered.Add(int64(len(batch)))
	s.queue.push(batch)
}

// release returns one tensor's claim on r.
func (s *Stream) release(r *region) {
	if r.refs.Add(-1) == 0 {
		s.arena.free(r)
	}
}

func (s *Stream) fail(err error) {
	s.errOnce.Do(func() {
		s.err = err
		s.errSet.Store(true)
		s.cancel()
		s.queue.poke()
	})
}

// Arena returns the stream's ring buffer (nil if it has none), for
// registering it with a device runtime. It stays mapped until Close and
// every tensor in it is released.
func (s *Stream) Arena() []byte {
	if s.arena == nil || s.arena.ring == nil {
		return nil
	}
	return s.arena.ring.mem
}

// Files describes the requested files, in request order.
func (s *Stream) Files() []FileInfo {
	out := make([]FileInfo, len(s.files))
	for i, f := range s.files {
		tensors := f.tensors
		if f.order != nil {
			tensors = make([]safetensors.Tensor, len(f.tensors))
			for j, t := range f.tensors {
				tensors[f.order[j]] = t
			}
		}
		out[i] = FileInfo{URI: f.uri, Size: f.size, Header: f.header, Tensors: tensors, Strategy: f.strategy, Verify: f.note}
	}
	return out
}

// Next waits up to timeout (< 0: no limit) for ready tensors and returns
// at most max of them (max <= 0: all that are ready). It returns io.EOF
// once every tensor has been returned, ErrClosed after Close, the error
// that stopped the stream, or (nil, nil) when the timeout expires. A zero
// timeout peeks: it never lets a reader stuck behind memory the caller holds
// go on outside the ring (only waiting does).
func (s *Stream) Next(ctx context.Context, max int, timeout time.Duration) ([]Ready, error) {
	var deadline <-chan time.Time
	if timeout >= 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	var waitStart time.Time
	defer func() {
		if !waitStart.IsZero() {
			s.st.consumerWait.Add(int64(time.Since(waitStart)))
		}
	}()
	for {
		if s.closed.Load() {
			return nil, ErrClosed
		}
		if s.errSet.Load() {
			return nil, s.err
		}
		if batch := s.queue.take(max); len(batch) > 0 {
			return batch, nil
		}
		if s.queue.taken() == s.total {
			return nil, io.EOF
		}
		// Nothing ready and nothing being read: the reader is waiting for
		// memory the caller still holds. Let it go on in fresh memory; but
		// not on a peek (timeout 0): a caller that peeks may release memory
		// before it waits (a device copy finishing), and the grant would take
		// the stream past its limit for nothing.
		if timeout != 0 && s.arena.unstick(s.starved) {
			continue
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
		}
		select {
		case <-s.queue.notify:
		case <-deadline:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// starved reports that no region is being read and none is queued: in
// flight is read before the queue, and regions are queued before they
// leave the in-flight count, so a region cannot slip between the two.
func (s *Stream) starved() bool {
	return s.inflight.Load() == 0 && s.queue.len() == 0
}

// Close stops reading, waits until no read can still land in the stream's
// memory, and frees what no delivered tensor holds. Memory behind tokens
// not yet released is freed on their release.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.arena.close()
		s.wg.Wait()
		// Bytes still being written to the cache from the stream's memory:
		// a direct write cannot be interrupted, and its memory must stay.
		s.holds.Wait()
		s.queue.poke()
		// Tensors queued but never taken go back now.
		for _, r := range s.queue.drain() {
			Release(r.Token)
		}
		// Regions that got memory but never completed.
		for _, r := range s.plan {
			if r.mem != nil && r.refs.Load() == 0 && !r.done() {
				s.arena.free(r)
			}
		}
		for _, f := range s.files {
			if f.obj != nil && f.mapped == nil {
				_ = f.obj.Close()
			}
		}
	})
	return nil
}

// abort undoes a partly opened stream.
func (s *Stream) abort() {
	s.cancel()
	for _, f := range s.files {
		if f != nil && f.obj != nil {
			_ = f.obj.Close()
		}
	}
}

func recoverInto(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("internal error: %v", p)
	}
}

func recoverFail(s *Stream) {
	if p := recover(); p != nil {
		s.fail(fmt.Errorf("internal error: %v", p))
	}
}
