//go:build !unix

package s3

import "time"

// processCPU is not measured here: the benchmarks report 0 CPU per byte.
func processCPU() time.Duration { return 0 }

// childCPU is not measured here: the benchmarks report 0.
func childCPU(string) time.Duration { return 0 }
