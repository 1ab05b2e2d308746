package cache

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// errBusy reports a lock another process (or another open of this one)
// holds in a conflicting mode.
var errBusy = errors.New("cache entry is busy")

// lock takes a flock(2) lock on path (unix.LOCK_SH or unix.LOCK_EX)
// without waiting, creating the file if needed. flock locks belong to the
// open file description, so two streams of one process exclude each other
// just as two processes do, and the kernel drops them when the holder dies
// (kill -9 included): a crashed writer never leaves an entry locked.
//
// Eviction removes lock files while holding them, so a lock taken on a
// file that was unlinked meanwhile locks nothing anyone else can find:
// the inode is checked against the path after locking, and the lock is
// taken again on the new file when they differ.
func lock(path string, how int) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		fd := int(f.Fd())
		if err := unix.Flock(fd, how|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, errBusy
			}
			return nil, &os.PathError{Op: "flock", Path: path, Err: err}
		}
		var held, now unix.Stat_t
		if unix.Fstat(fd, &held) == nil && unix.Stat(path, &now) == nil &&
			held.Dev == now.Dev && held.Ino == now.Ino {
			return f, nil
		}
		f.Close()
	}
}
