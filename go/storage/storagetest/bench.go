package storagetest

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// ReadRanges is the loop of the backends' read benchmarks: b.N reads of
// chunk bytes at successive offsets of a size-byte object (wrapping, every
// read inside the object), conc at a time, each reader into a buffer of
// its own. It reports this process's CPU per byte read as cpu-ns/B (on
// a machine the client shares with an emulator, the figure that decides)
// and fails the benchmark with the first error.
func ReadRanges(b *testing.B, size, chunk int64, conc int, read func(dst []byte, off int64) error) {
	b.SetBytes(chunk)
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var failed error
	b.ResetTimer()
	cpu0 := ProcessCPU()
	for range conc {
		wg.Go(func() {
			dst := make([]byte, chunk)
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				off := (i * chunk) % (size - chunk + 1)
				if err := read(dst, off); err != nil {
					once.Do(func() { failed = fmt.Errorf("read of %d bytes at %d: %w", chunk, off, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(ProcessCPU()-cpu0)/float64(int64(b.N)*chunk), "cpu-ns/B")
	if failed != nil {
		b.Fatal(failed)
	}
}

// GetRange fills dst with the bytes at off of url, with one ranged GET
// through hc: the plain net/http baseline a backend's reads are measured
// against.
func GetRange(hc *http.Client, url string, dst []byte, off int64) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(dst))-1))
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	_, err = io.ReadFull(resp.Body, dst)
	return err
}
