package fs

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/model-streamer/model-streamer/go/storage"
)

// List lists the regular files under the directory uri: its direct
// children, or every file below it when recursive. URIs come back in the
// form given (a plain path stays a path, a file:// URI stays one).
func (b *backend) List(ctx context.Context, uri string, recursive bool) ([]storage.ObjectInfo, error) {
	root, err := localPath(uri)
	if err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, openError(uri, err)
	}
	if !fi.IsDir() {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.InvalidArgument, Err: syscall.ENOTDIR}
	}
	prefix := ""
	if storage.Scheme(uri) == "file" && len(uri) > 7 && uri[:7] == "file://" {
		prefix = "file://"
	}
	var out []storage.ObjectInfo
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() {
			if p != root && !recursive {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, storage.ObjectInfo{URI: prefix + p, Size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, openError(uri, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].URI < out[j].URI })
	return out, nil
}
