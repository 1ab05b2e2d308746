package fs

import (
	"context"
	"os"
	"path/filepath"

	"github.com/model-streamer/model-streamer/go/storage"
)

var _ storage.Putter = (*backend)(nil)

// Put writes data as the file uri: to a temporary file in the same
// directory, synced, then renamed into place, so a reader sees the old file
// or the new one, never a part.
func (b *backend) Put(ctx context.Context, uri string, data []byte) (err error) {
	path, err := localPath(uri)
	if err != nil {
		return &storage.Error{Op: "put", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	fail := func(err error) error { return &storage.Error{Op: "put", URI: uri, Code: codeFor(err), Err: err} }
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fail(err)
	}
	return nil
}
