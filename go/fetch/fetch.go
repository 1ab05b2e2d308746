// Package fetch copies whole objects to local files with parallel ranged
// reads: the I/O behind pull_files and `model-streamer pull`.
package fetch

import (
	"context"
	"os"
	"path/filepath"
	"sync"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Options tunes a download.
type Options struct {
	Concurrency int   // ranged reads in flight (<= 0: 16)
	ChunkBytes  int64 // bytes per read (<= 0: 8 MiB)
	Retry       storage.RetryPolicy
}

// ToFile copies obj to path. It writes a temporary file in path's directory
// and renames it into place only once every byte is in, so a reader never
// sees a partial file under the final name.
func ToFile(ctx context.Context, obj storage.Object, path string, opts Options) (err error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.ChunkBytes <= 0 {
		opts.ChunkBytes = 8 << 20
	}
	if opts.Retry == (storage.RetryPolicy{}) {
		opts.Retry = storage.DefaultRetryPolicy
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	size := obj.Size()
	if err := tmp.Truncate(size); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	offsets := make(chan int64)
	var wg sync.WaitGroup
	for range opts.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, opts.ChunkBytes)
			for off := range offsets {
				n := min(opts.ChunkBytes, size-off)
				if err := copyRange(ctx, obj, tmp, buf[:n], off, opts.Retry); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for off := int64(0); off < size; off += opts.ChunkBytes {
		select {
		case offsets <- off:
		case <-ctx.Done():
			break feed
		}
	}
	close(offsets)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func copyRange(ctx context.Context, obj storage.Object, f *os.File, buf []byte, off int64, p storage.RetryPolicy) error {
	if _, err := storage.ReadRange(ctx, obj, buf, off, int64(len(buf)), p, nil); err != nil {
		return err
	}
	_, err := f.WriteAt(buf, off)
	return err
}
