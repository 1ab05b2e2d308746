//go:build unix && !linux

package testserver

import "syscall"

// sysProcAttr puts the server in its own process group. Without Linux's
// parent-death signal a server outlives a test binary that crashes.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
