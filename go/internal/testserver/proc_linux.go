package testserver

import "syscall"

// sysProcAttr puts the server in its own process group (so stop reaches
// everything it starts) and has the kernel kill it if the test binary dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
