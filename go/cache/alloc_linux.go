package cache

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// allocate reserves n bytes for f, so that a full disk shows before any
// byte is written; a file system that cannot (EOPNOTSUPP) is not an error:
// a full disk then shows as a failed write.
func allocate(f *os.File, n int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, n)
	if err == nil || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil
	}
	return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
}
