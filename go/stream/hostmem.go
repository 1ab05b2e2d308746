package stream

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// balloonFreePageReporting is VIRTIO_BALLOON_F_REPORTING, the feature bit
// of a virtio balloon that reports free memory to the host.
const balloonFreePageReporting = 5

// freePageReporting reports whether this machine is a virtual machine whose
// free memory goes back to its host: a virtio balloon (device 5) that
// negotiated free page reporting. The host then faults the memory in again
// on its first touch, and the free blocks it takes back are the large ones
// that huge pages are carved from: a fresh 256 MiB ring advised for huge
// pages took 11-19 ms to touch right after another process freed such
// memory and 150-600 ms once it had been reported, against 85-135 ms in
// small pages (docs/benchmarks.md). A variable so tests can choose.
var freePageReporting = sync.OnceValue(func() bool {
	return balloonReports("/sys/bus/virtio/devices")
})

// balloonReports reports whether a virtio device under dir (sysfs's
// /sys/bus/virtio/devices) is a balloon with free page reporting.
func balloonReports(dir string) bool {
	devices, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, d := range devices {
		id, err := os.ReadFile(filepath.Join(d, "device"))
		if err != nil || strings.TrimSpace(string(id)) != "0x0005" {
			continue
		}
		// One '0' or '1' per feature bit, bit 0 first.
		bits, err := os.ReadFile(filepath.Join(d, "features"))
		if err == nil && len(bits) > balloonFreePageReporting && bits[balloonFreePageReporting] == '1' {
			return true
		}
	}
	return false
}
