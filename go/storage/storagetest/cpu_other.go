//go:build !unix

package storagetest

import "time"

// ProcessCPU is not measured here: the benchmarks report 0 CPU per byte.
func ProcessCPU() time.Duration { return 0 }

// ChildCPU is not measured here: the benchmarks report 0.
func ChildCPU(string) time.Duration { return 0 }
