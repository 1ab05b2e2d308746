package main

/*
#include <stdint.h>
int msgo_stack_bounds(uintptr_t out[5]);
*/
import "C"

// stackBounds is msgo_stack_bounds (stackbound.c) for the tests: the
// calling thread's stack as this library reports it to the Go runtime,
// as glibc reports it, and a stack pointer of the caller.
func stackBounds() (ours, glibc [2]uintptr, sp uintptr, ok bool) {
	var out [5]C.uintptr_t
	if C.msgo_stack_bounds(&out[0]) == 0 {
		return ours, glibc, 0, false
	}
	return [2]uintptr{uintptr(out[0]), uintptr(out[1])}, [2]uintptr{uintptr(out[2]), uintptr(out[3])}, uintptr(out[4]), true
}
