// Package fetch copies whole objects to local files with parallel ranged
// reads: the I/O behind pull_files and `model-streamer pull`.
package fetch

import (
	"bytes"
	"context"
	"crypto/md5"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/storage"
)

// Options tunes a download.
type Options struct {
	Concurrency int   // ranged reads in flight (<= 0: 16)
	ChunkBytes  int64 // bytes per read (<= 0: 8 MiB)
	Retry       storage.RetryPolicy
	// Verify checks the copy against the store's whole-object checksum
	// (MODEL_STREAMER_VERIFY), as the engine does; URI names the object in
	// its errors.
	Verify integrity.Mode
	URI    string
}

// ToFile copies obj to path. It writes a temporary file in path's directory
// and renames it into place only once every byte is in, and verified, so a
// reader never sees a partial or corrupt file under the final name: on any
// failure, a checksum mismatch included, the temporary file is removed.
//
// Verification: each reader hashes the range it read before writing it, and
// the CRCs are combined once all are in; an MD5 (no combination rule) costs
// one sequential pass over the written file (from the page cache) before the
// rename.
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
	var want storage.Checksum
	var pieces *integrity.Pieces
	// A local cache entry was checked against the store's checksum when it
	// was written.
	p, ok := obj.(storage.Preverified)
	preverified := ok && p.VerifiedAs() != ""
	if opts.Verify != integrity.Off && !preverified {
		var reason string
		var ok bool
		if want, reason, ok = integrity.Want(obj, opts.Verify); !ok && opts.Verify == integrity.Require {
			return &integrity.UnverifiableError{URI: opts.URI, Reason: reason}
		}
		if ok && want.Algorithm.Combinable() {
			pieces = integrity.NewPieces(want.Algorithm)
		}
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
				if err := copyRange(ctx, obj, tmp, buf[:n], off, opts.Retry, pieces); err != nil {
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
	if want.Algorithm != "" {
		if err := verify(tmp, size, want, pieces, opts.URI); err != nil {
			return err
		}
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func copyRange(ctx context.Context, obj storage.Object, f *os.File, buf []byte, off int64, p storage.RetryPolicy,
	pieces *integrity.Pieces) error {
	if _, err := storage.ReadRange(ctx, obj, buf, off, int64(len(buf)), p, nil); err != nil {
		return err
	}
	if pieces != nil {
		pieces.Add(off, buf)
	}
	_, err := f.WriteAt(buf, off)
	return err
}

// verify compares the downloaded bytes with want: the readers' CRCs, or for
// MD5 a pass over the file as written.
func verify(f *os.File, size int64, want storage.Checksum, pieces *integrity.Pieces, uri string) error {
	var got []byte
	if pieces != nil {
		var err error
		if got, err = pieces.Sum(size); err != nil {
			return err
		}
	} else {
		h := md5.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
			return err
		}
		got = h.Sum(nil)
	}
	if !bytes.Equal(got, want.Value) {
		return &integrity.MismatchError{URI: uri, Want: want, Computed: got, Size: size}
	}
	return nil
}
