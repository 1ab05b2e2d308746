package cache

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// errDirectRefused marks a direct write the file system refused as such
// (EINVAL: alignment or O_DIRECT itself), which buffered writes can do.
var errDirectRefused = errors.New("O_DIRECT write refused")

func openDirectFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
}

func (d *directFile) pwrite(b []byte, off int64) error {
	_, err := d.f.WriteAt(b, off)
	if errors.Is(err, unix.EINVAL) {
		return errDirectRefused
	}
	return err
}
