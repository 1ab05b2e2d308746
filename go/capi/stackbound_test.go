package main

import (
	"os"
	"runtime"
	"testing"
)

// mainThread is what stackBounds said on the process's main thread, asked
// from TestMain (tests themselves run on other goroutines and threads).
var mainThread struct {
	ours, glibc [2]uintptr
	sp          uintptr
	ok          bool
}

func init() {
	// The main goroutine stays on the main thread, whose cgo calls run on
	// the process's initial stack.
	runtime.LockOSThread()
}

func TestMain(m *testing.M) {
	mainThread.ours, mainThread.glibc, mainThread.sp, mainThread.ok = stackBounds()
	os.Exit(m.Run())
}

// The main thread's stack is answered without glibc's /proc/self/maps walk:
// the range must hold the caller's stack pointer and lie within glibc's.
// Other threads get glibc's answer unchanged.
func TestStackBounds(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("glibc on Linux only")
	}
	m := mainThread
	if !m.ok {
		t.Skip("not glibc")
	}
	if m.ours == m.glibc {
		t.Fatalf("main thread: the bounds are glibc's own %#x (the fast path was not taken)", m.glibc)
	}
	if !(m.ours[0] <= m.sp && m.sp < m.ours[1]) {
		t.Fatalf("main thread: bounds %#x do not hold the stack pointer %#x", m.ours, m.sp)
	}
	if m.ours[0] < m.glibc[0] || m.ours[1] > m.glibc[1] {
		t.Fatalf("main thread: bounds %#x reach outside glibc's %#x", m.ours, m.glibc)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // a thread of its own, never the main one
		ours, glibc, sp, ok := stackBounds()
		if !ok {
			t.Error("other thread: no bounds")
			return
		}
		if ours != glibc {
			t.Errorf("other thread: bounds %#x, glibc's %#x", ours, glibc)
		}
		if !(ours[0] <= sp && sp < ours[1]) {
			t.Errorf("other thread: bounds %#x do not hold the stack pointer %#x", ours, sp)
		}
	}()
	<-done
}
