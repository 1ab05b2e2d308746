//go:build !unix

package gcs

import "time"

// processCPU is not measured here: the benchmarks report 0 CPU per byte.
func processCPU() time.Duration { return 0 }
