package fs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/model-streamer/model-streamer/go/storage"
	"golang.org/x/sys/unix"
)

// openDirectFile opens path for O_DIRECT reads; a variable so tests can
// simulate a file system that refuses O_DIRECT.
var openDirectFile = func(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
}

// openDirect returns a direct object over base, or a buffered one when the
// file system does not do direct I/O on this file.
func openDirect(base *file) (storage.Object, error) {
	align := DefaultAlignment
	var stx unix.Statx_t
	var serr error
	_ = control(base.rc, func(fd int) {
		serr = unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx)
	})
	if serr == nil && stx.Mask&unix.STATX_DIOALIGN != 0 {
		if stx.Dio_offset_align == 0 {
			return &bufferedObject{base}, nil // no direct I/O for this file
		}
		align = max(align, int(stx.Dio_offset_align), int(stx.Dio_mem_align))
	}

	// Reopen what base has open, not whatever the path names now: through
	// /proc when it is mounted, else by path, checking the inode.
	var fd int
	_ = control(base.rc, func(f int) { fd = f })
	d, err := openDirectFile("/proc/self/fd/" + strconv.Itoa(fd))
	if errors.Is(err, os.ErrNotExist) {
		d, err = openDirectFile(base.path)
	}
	if err != nil {
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
			return &bufferedObject{base}, nil // e.g. a file system without O_DIRECT
		}
		return nil, openError(base.uri, err)
	}
	if !sameFile(base.f, d) {
		d.Close()
		return nil, &storage.Error{Op: "open", URI: base.uri, Code: storage.Unavailable,
			Err: errors.New("file replaced while opening")}
	}
	drc, err := d.SyscallConn()
	if err != nil {
		d.Close()
		return nil, &storage.Error{Op: "open", URI: base.uri, Code: storage.Internal, Err: err}
	}
	return &directObject{file: base, d: d, drc: drc, align: align}, nil
}

func sameFile(a, b *os.File) bool {
	ai, err := a.Stat()
	if err != nil {
		return false
	}
	bi, err := b.Stat()
	return err == nil && os.SameFile(ai, bi)
}

// mmapObject is a private, writable mapping of the whole file: writes to it
// never reach the file. ReadAt preads through the page cache.
type mmapObject struct {
	*file
	mu       sync.RWMutex // write-held by Close while it unmaps
	mem      []byte
	unmapped bool
	// cached: the residency sample at open found every page it looked at
	// in the page cache. Populate then maps nothing ahead.
	cached bool
	// noCachestat: cachestat(2) failed on this file (an older kernel, a
	// seccomp filter, or a file the kernel will not describe to this
	// caller): Populate maps every slice.
	noCachestat atomic.Bool
}

// openMmap maps base privately, or returns a buffered object when the file
// system cannot map files. cached says the residency sample found the whole
// file in the page cache.
func openMmap(base *file, cached bool) (storage.Object, error) {
	if base.size == 0 {
		return &mmapObject{file: base, mem: []byte{}, cached: true}, nil // mmap of 0 bytes fails
	}
	if base.size > math.MaxInt {
		return nil, &storage.Error{Op: "open", URI: base.uri, Code: storage.InvalidArgument,
			Err: fmt.Errorf("file of %d bytes is too large to map", base.size)}
	}
	var mem []byte
	var merr error
	_ = control(base.rc, func(fd int) {
		// MAP_NORESERVE: a private writable mapping is otherwise charged in
		// full against the commit limit, and one larger than RAM+swap fails.
		mem, merr = unix.Mmap(fd, 0, int(base.size),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	})
	if merr != nil {
		if merr == syscall.ENODEV {
			return &bufferedObject{base}, nil
		}
		return nil, &storage.Error{Op: "open", URI: base.uri, Code: codeFor(merr),
			Err: os.NewSyscallError("mmap", merr)}
	}
	return &mmapObject{file: base, mem: mem, cached: cached}, nil
}

// Strategy returns StrategyMmap.
func (o *mmapObject) Strategy() string { return StrategyMmap }

// Map returns the whole file, mapped privately: writes stay in this process.
// The memory is valid until Close; touching it afterwards crashes.
// Populate a range before use so access does not fault on I/O.
func (o *mmapObject) Map() ([]byte, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.unmapped {
		return nil, &storage.Error{Op: "map", URI: o.uri, Code: storage.InvalidArgument, Err: os.ErrClosed}
	}
	return o.mem, nil
}

// populateSlice is how much Populate maps between ctx checks.
const populateSlice = 8 << 20

// faultAround is the span of a file mapping one read fault maps: the
// kernel's fault_around_bytes (64 KiB unless an administrator changed it
// in debugfs), or a page where pages are larger.
var faultAround = max(os.Getpagesize(), 64<<10)

// Populate reads [off, off+n) into the page cache and maps it read-only into
// the private mapping, preserving copy-on-write: it reads one byte every
// faultAround bytes and the range's last byte. Each read that faults maps
// the faultAround span around it, as the consumer's own first read would;
// MADV_POPULATE_READ maps the same pages but walks them one by one, which
// measured 2-3.5x the CPU (3.85 GB hot: 90-180 ms against 51 ms, 2
// threads). Where fault-around maps less, the consumer faults the rest in
// itself (minor faults: correct, slower). The last byte makes a range that
// lies past the file's end (truncated since it was opened) fail here, not
// as a SIGBUS in the caller. The part of the range past Size() is ignored.
// ctx is checked between 8 MiB slices.
//
// What is already in the page cache is not mapped ahead: there is nothing
// to read, and mapping it would only move the consumer's own minor faults
// onto the readers, which measured slower for a consumer that reads every
// byte (bench/use.py: the readers and the consumer compete for the same
// cores, and the consumer waits for each region's populate before it gets
// the region). A file the residency sample found wholly cached is taken at
// its word: only the truncation check is made. Otherwise each slice is
// looked up with cachestat(2) (about 24 ns a page here, a seventh of the
// walk, which is itself too much to spend on every slice of a hot file) and
// only slices with pages missing are walked, so that the disk reads run on
// the readers, in parallel, rather than as the consumer's major faults.
func (o *mmapObject) Populate(ctx context.Context, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return o.populateError(off, n, storage.Canceled, err)
	}
	if off < 0 || n < 0 {
		return o.populateError(off, n, storage.InvalidArgument, errors.New("negative offset or length"))
	}
	end := off + n
	if end > o.size || end < off {
		end = o.size
	}
	if off >= end {
		return nil
	}
	ps := int64(os.Getpagesize())
	for s := off &^ (ps - 1); s < end; {
		if err := ctx.Err(); err != nil {
			return o.populateError(off, n, storage.Canceled, err)
		}
		e := min(s+populateSlice, end)
		if !o.cached && !o.inPageCache(s, e) {
			if err := o.populate(s, e); err != nil {
				return o.populateFailed(off, n, end, err)
			}
		}
		s = e
	}
	// The truncation check, for a range whose last slice was not walked.
	if err := o.populate(end-1, end); err != nil {
		return o.populateFailed(off, n, end, err)
	}
	return nil
}

// inPageCache reports whether every page of [s, e) is in the page cache,
// false when the kernel will not say.
func (o *mmapObject) inPageCache(s, e int64) bool {
	if o.noCachestat.Load() {
		return false
	}
	cached, err := cachedPages(o.file, s, e-s)
	if err != nil {
		o.noCachestat.Store(true)
		return false
	}
	ps := int64(os.Getpagesize())
	return cached >= (e-1)/ps-s/ps+1
}

func (o *mmapObject) populate(s, e int64) error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.unmapped {
		return os.ErrClosed
	}
	return touchPages(o.mem[s:e], faultAround)
}

var touchSink atomic.Uint32

// touchPages reads one byte every stride bytes of b and its last byte,
// turning the fault a read of a page past the end of a truncated file
// raises into EFAULT.
func touchPages(b []byte, stride int) (err error) {
	if len(b) == 0 {
		return nil
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = os.NewSyscallError("populate", syscall.EFAULT)
		}
	}()
	var x byte
	for i := 0; i < len(b); i += stride {
		x ^= b[i]
	}
	x ^= b[len(b)-1]
	touchSink.Store(uint32(x))
	return nil
}

// populateFailed classifies a failed populate: EFAULT means a page could not
// be read, because the file shrank or because of an I/O error.
func (o *mmapObject) populateFailed(off, n, end int64, err error) error {
	if errors.Is(err, syscall.EFAULT) {
		if fi, serr := o.f.Stat(); serr == nil && fi.Size() < end {
			return o.populateError(off, n, storage.InvalidArgument,
				fmt.Errorf("file shrank to %d bytes while mapped (truncated?): %w", fi.Size(), io.ErrUnexpectedEOF))
		}
		return o.populateError(off, n, storage.Unavailable,
			fmt.Errorf("page could not be read (I/O error?): %w", err))
	}
	return o.populateError(off, n, codeFor(err), err)
}

func (o *mmapObject) populateError(off, n int64, code storage.Code, err error) error {
	return &storage.Error{Op: "populate", URI: o.uri, Off: off, Len: n, Code: code, Err: err}
}

// Close unmaps the memory Map returned and closes the file. The caller must
// not touch the mapping afterwards. Later calls return nil.
func (o *mmapObject) Close() error {
	o.mu.Lock()
	if !o.unmapped {
		o.unmapped = true
		if len(o.mem) > 0 {
			unmapLater(o.mem)
		}
		o.mem = nil
	}
	o.mu.Unlock()
	return o.file.Close()
}

// unmapLater unmaps mem on a goroutine of its own. Tearing down the page
// tables of a populated mapping is about 18 ms per GB here (70 ms for a
// 3.85 GB checkpoint), which the stream's Close, at the end of the
// caller's load, need not wait for: nothing touches the memory after
// Close, and the kernel frees it whenever the unmap runs (or at exit).
func unmapLater(mem []byte) {
	go func() {
		if err := unix.Munmap(mem); err != nil {
			// Only a mapping this object did not make fails; nothing to
			// undo, but say so rather than hide a bug.
			fmt.Fprintf(os.Stderr, "model-streamer: munmap: %v\n", err)
		}
	}()
}

// Network and FUSE file systems (statfs f_type): never mapped or read with
// O_DIRECT by Auto.
var networkFS = map[uint32]bool{
	0x6969:     true, // NFS
	0x517B:     true, // SMB (old smbfs)
	0xFF534D42: true, // CIFS
	0xFE534D42: true, // SMB2
	0x65735546: true, // FUSE (also virtiofs, s3fs, gcsfuse, blobfuse)
	0x01021997: true, // 9p
	0x00C36400: true, // Ceph
	0x0BD00BD0: true, // Lustre
	0x47504653: true, // GPFS
	0x5346414F: true, // AFS
	0x6B414653: true, // kAFS
	0x13661366: true, // OrangeFS
	0x19830326: true, // BeeGFS
}

func isNetworkFS(base *file) bool {
	var st unix.Statfs_t
	var err error
	_ = control(base.rc, func(fd int) { err = unix.Fstatfs(fd, &st) })
	return err == nil && networkFS[uint32(st.Type)]
}

// Residency sampling: a file of up to sampleWindows*windowPages pages is
// measured whole; a larger one in sampleWindows evenly spaced windows.
// What it costs grows with the pages (page-cache folios) looked up:
// cachestat(2) took 100-160 us a 0.6-1.1 GB file read back into the cache
// with 64-page windows, 46-70 us with 16 (mincore: about 100 ns a page);
// that is on the way to a stream's first tensor. 1 Ki pages tell "at least
// 90% cached" from less as well as 64 Ki did, and a hole in the cache is
// caught by where the windows lie (every 1/64 of the file) far more than
// by their width.
const (
	sampleWindows = 64
	windowPages   = 16
)

// residency measures the fraction of base's pages in the page cache, in
// the windows described above: with cachestat(2) where the kernel has it
// (0.2 ms for a 640 MB file here), else with mincore(2) over a temporary
// shared read-only mapping (0.6 ms: the mapping, and a page-cache lookup
// per page of the window).
func residency(base *file) (float64, error) {
	if base.size == 0 {
		return 1, nil
	}
	if !mincoreTrusted(base) {
		return 0, ErrResidencyUnknown
	}
	if frac, err := cachestatResident(base); err == nil {
		return frac, nil
	}
	if base.size > math.MaxInt {
		return 0, fmt.Errorf("file of %d bytes is too large to map", base.size)
	}
	var mem []byte
	var err error
	_ = control(base.rc, func(fd int) {
		mem, err = unix.Mmap(fd, 0, int(base.size), unix.PROT_READ, unix.MAP_SHARED)
	})
	if err != nil {
		return 0, os.NewSyscallError("mmap", err)
	}
	defer unix.Munmap(mem)
	return sampleResident(mem)
}

// sampleResident is the sample over a mapping, with mincore(2).
func sampleResident(mem []byte) (float64, error) {
	ps := int64(os.Getpagesize())
	vec := make([]byte, min(int64(len(mem)+int(ps)-1)/ps, sampleWindows*windowPages))
	return sample((int64(len(mem))+ps-1)/ps, func(first, n int64) (int64, error) {
		w := mem[first*ps : min((first+n)*ps, int64(len(mem)))]
		if err := mincore(w, vec[:n]); err != nil {
			return 0, err
		}
		return int64(countResident(vec[:n])), nil
	})
}

// cachestatResident is the sample with cachestat(2) on the file itself: no
// mapping, and the kernel counts a window's cached pages in one call.
func cachestatResident(base *file) (float64, error) {
	ps := int64(os.Getpagesize())
	return sample((base.size+ps-1)/ps, func(first, n int64) (int64, error) {
		return cachedPages(base, first*ps, n*ps)
	})
}

// sample returns the fraction of a file's npages pages that count (the
// cached pages of n pages from page first) finds: every page of a file of
// up to sampleWindows*windowPages pages, else sampleWindows evenly spaced
// windows.
func sample(npages int64, count func(first, n int64) (int64, error)) (float64, error) {
	if npages <= sampleWindows*windowPages {
		c, err := count(0, npages)
		return float64(min(c, npages)) / float64(npages), err
	}
	var resident int64
	for i := range int64(sampleWindows) {
		c, err := count(i*(npages-windowPages)/(sampleWindows-1), windowPages)
		if err != nil {
			return 0, err
		}
		resident += min(c, windowPages)
	}
	return float64(resident) / float64(sampleWindows*windowPages), nil
}

// cachedPages counts the pages of [off, off+n) that are in the page cache
// (cachestat(2), Linux 6.5 and later).
func cachedPages(f *file, off, n int64) (int64, error) {
	var st unix.Cachestat_t
	var err error
	_ = control(f.rc, func(fd int) {
		err = unix.Cachestat(uint(fd), &unix.CachestatRange{Off: uint64(off), Len: uint64(n)}, &st, 0)
	})
	return int64(st.Cache), err
}

func countResident(vec []byte) int {
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

func mincore(b, vec []byte) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			uintptr(unsafe.Pointer(&vec[0])))
		switch e {
		case 0:
			return nil
		case syscall.EAGAIN, syscall.EINTR:
			continue
		}
		return os.NewSyscallError("mincore", e)
	}
}

// mincoreTrusted mirrors the kernel's can_do_mincore(): page-cache residency
// of a file mapping is reported only when the caller owns the file, has
// CAP_FOWNER, or could open it for writing; otherwise mincore claims every
// page resident.
func mincoreTrusted(base *file) bool {
	fi, err := base.f.Stat()
	if err != nil {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == uint32(os.Geteuid()) {
		return true
	}
	if hasCapFowner() {
		return true
	}
	return unix.Faccessat(unix.AT_FDCWD, base.path, unix.W_OK, unix.AT_EACCESS) == nil
}

// hasCapFowner reports whether CAP_FOWNER is in the effective capability
// set (root's default).
var hasCapFowner = sync.OnceValue(func() bool {
	const capFowner = 3
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				break
			}
			return caps&(1<<capFowner) != 0
		}
	}
	return os.Geteuid() == 0
})

func dropCache(f *os.File, path string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr, ferr error
	_ = control(rc, func(fd int) {
		// Dirty pages are not dropped: write them back first. Some file
		// systems reject fdatasync on a read-only descriptor; go on then.
		if serr = unix.Fdatasync(fd); serr == syscall.EINVAL || serr == syscall.EBADF || serr == syscall.EROFS {
			serr = nil
		}
		ferr = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	})
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: path, Err: serr}
	}
	if ferr != nil {
		return &os.PathError{Op: "fadvise", Path: path, Err: ferr}
	}
	return nil
}
