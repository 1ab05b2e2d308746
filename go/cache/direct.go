package cache

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"
)

// directAlign is the alignment O_DIRECT asks of a write's file offset,
// length and memory: the page size, which every block size divides.
const directAlign = 4096

// bounceBytes is the size of the buffers that carry bytes whose memory is
// not aligned like their file offset (bytes a distributed load received).
const bounceBytes = 4 << 20

// directFile writes whole pages of an entry's temporary file with O_DIRECT,
// past the page cache. Written buffered, every byte of a first load costs
// the kernel a copy into a new page-cache page plus its allocation, LRU and
// writeback work: about 0.8 CPU-s per GiB measured here, on cores the
// download itself keeps busy. Written direct, the disk's DMA reads the
// arena's pages and the CPU does almost nothing.
type directFile struct {
	f   *os.File
	off atomic.Bool // set after the file system refused a direct write
}

// openDirect opens path a second time with O_DIRECT, or returns nil where
// the file system does not allow it (the entry is then written buffered).
func openDirect(path string) *directFile {
	f, err := openDirectFile(path)
	if err != nil {
		return nil
	}
	return &directFile{f: f}
}

func (d *directFile) Close() error {
	if d == nil {
		return nil
	}
	return d.f.Close()
}

// writeAt writes b at off through f, its page-aligned interior with
// O_DIRECT and the partial pages at either end buffered through f. A page
// is never written both ways: ranges are written once each (the writer's
// covered set), so a page partly in one range is in no range's interior.
// It returns how many bytes went direct.
func (d *directFile) writeAt(f *os.File, b []byte, off int64) (int64, error) {
	if d != nil && !d.off.Load() {
		end := off + int64(len(b))
		lo, hi := alignUp(off, directAlign), alignDown(end, directAlign)
		if hi > lo {
			err := d.write(b[lo-off:hi-off], lo)
			if err == nil {
				if _, err := f.WriteAt(b[:lo-off], off); err != nil {
					return hi - lo, err
				}
				_, err := f.WriteAt(b[hi-off:], hi)
				return hi - lo, err
			}
			if !errors.Is(err, errDirectRefused) {
				return 0, err
			}
			d.off.Store(true) // write this and every later range buffered
		}
	}
	_, err := f.WriteAt(b, off)
	return 0, err
}

// write writes the aligned range b at off: from b itself when its memory
// is aligned (the engine's arena places every range at its file offset
// modulo the page size), through bounce buffers otherwise.
func (d *directFile) write(b []byte, off int64) error {
	if uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign == 0 {
		return d.pwrite(b, off)
	}
	buf := bounce.Get().(*[]byte)
	defer bounce.Put(buf)
	for len(b) > 0 {
		n := copy(*buf, b)
		if err := d.pwrite((*buf)[:n], off); err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

var bounce = sync.Pool{New: func() any {
	raw := make([]byte, bounceBytes+directAlign)
	skip := alignUp(int64(uintptr(unsafe.Pointer(&raw[0]))), directAlign) - int64(uintptr(unsafe.Pointer(&raw[0])))
	b := raw[skip : skip+bounceBytes]
	return &b
}}

func alignDown(v, a int64) int64 { return v - v%a }
func alignUp(v, a int64) int64   { return alignDown(v+a-1, a) }
