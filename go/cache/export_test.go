package cache

import "os"

// DirectAllowed reports whether dir's file system takes O_DIRECT writes
// (the external tests' view of openDirect).
func DirectAllowed(dir string) bool {
	f, err := os.CreateTemp(dir, "o_direct-probe")
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	f.Close()
	d := openDirect(f.Name())
	defer d.Close()
	return d != nil
}
