//go:build !linux

package fs

import (
	"errors"
	"os"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Outside Linux every object is buffered: O_DIRECT, the private mapping and
// its populate, and mincore-based residency are Linux-specific here.

var errUnsupported = errors.New("not supported on this platform")

func openDirect(base *file) (storage.Object, error) { return &bufferedObject{base}, nil }

func openMmap(base *file, _ bool) (storage.Object, error) { return &bufferedObject{base}, nil }

func isNetworkFS(*file) bool { return false }

func residency(*file) (float64, error) { return 0, errUnsupported }

func dropCache(_ *os.File, path string) error {
	return &os.PathError{Op: "fadvise", Path: path, Err: errUnsupported}
}
