// Package testserver starts real object-storage servers on 127.0.0.1 for
// tests: MinIO (S3), fake-gcs-server (GCS), Azurite (Azure Blob) and nginx
// (http and https file serving, nginx.go). The binaries come from
// ci/install-servers.sh, which installs them into <repo>/.tools (or
// $MODEL_STREAMER_TOOLS); nginx is the system's (Debian's nginx-light).
//
// Each starter (MinIO, FakeGCS, Azurite) starts a fresh server for the
// calling test: on free loopback ports, with a data directory from
// t.TempDir(), and with update checks, consoles and telemetry off. It
// returns once the server is ready (its health endpoint answers, and for
// MinIO a signed ListBuckets succeeds too), waiting at most ReadyTimeout,
// and registers a t.Cleanup that stops it (SIGTERM to its process group,
// SIGKILL after StopGrace). The child also gets SIGKILL if the test binary
// dies first (Linux parent-death signal), so no server outlives its test
// binary.
//
// By default a server serves one test: startup costs a fraction of a second
// (fake-gcs-server) to a second or more (MinIO, Azurite's Node.js); see the
// package tests, which log it. Isolation is then complete and nothing
// outlives the test. Packages with many server tests can share one server
// of each kind per test binary instead: call Main from TestMain and use
// SharedMinIO, SharedFakeGCS and SharedAzurite (see Main).
//
// When a binary is missing the starter skips the test, naming the install
// command, unless MODEL_STREAMER_REQUIRE_SERVERS=1 (as CI sets), in which
// case it fails it.
package testserver

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment variables the package reads.
const (
	// EnvTools overrides the tools directory (default <repo>/.tools).
	EnvTools = "MODEL_STREAMER_TOOLS"
	// EnvRequire, set to 1, turns a missing server binary into a test
	// failure instead of a skip.
	EnvRequire = "MODEL_STREAMER_REQUIRE_SERVERS"
)

// InstallCommand installs the servers; run it from the repository root.
const InstallCommand = "ci/install-servers.sh"

// Bounds on starting and stopping a server.
var (
	// ReadyTimeout bounds the wait for a started server to become healthy.
	ReadyTimeout = 60 * time.Second
	// StopGrace is how long a server may take to exit after SIGTERM
	// before it is killed.
	StopGrace = 5 * time.Second
	// startAttempts bounds retries when a server fails to start, e.g.
	// because another process took its port between probe and bind.
	startAttempts = 3
)

// ToolsDir returns $MODEL_STREAMER_TOOLS, or <repo root>/.tools where the
// repository root is the nearest directory, walking up from the working
// directory (a test's package directory), that holds both go/ and Makefile.
// It returns "" when neither is known.
func ToolsDir() string {
	if d := os.Getenv(EnvTools); d != "" {
		return d
	}
	if root := RepoRoot(); root != "" {
		return filepath.Join(root, ".tools")
	}
	return ""
}

// RepoRoot returns the repository root (see ToolsDir), or "" if not found.
func RepoRoot() string {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	// Fallback for a test run from outside the tree: this source file's
	// directory (absent with -trimpath).
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; {
			if isDir(filepath.Join(d, "go")) && isFile(filepath.Join(d, "Makefile")) {
				return d
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return ""
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// requireServers reports whether MODEL_STREAMER_REQUIRE_SERVERS is set true.
func requireServers() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv(EnvRequire))) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// missing skips t (or fails it under MODEL_STREAMER_REQUIRE_SERVERS=1)
// because the server binary at path is not installed.
func missing(t testing.TB, what, path string) {
	t.Helper()
	msg := fmt.Sprintf("%s not installed (%s missing): run %s from the repository root", what, path, InstallCommand)
	if requireServers() {
		t.Fatalf("%s (%s=1)", msg, EnvRequire)
	}
	t.Skip(msg)
}

// tool returns the path of an installed file under ToolsDir, skipping or
// failing t if it is not there.
func tool(t testing.TB, what string, rel ...string) string {
	t.Helper()
	dir := ToolsDir()
	if dir == "" {
		missing(t, what, filepath.Join(append([]string{".tools"}, rel...)...))
	}
	p := filepath.Join(append([]string{dir}, rel...)...)
	if _, err := os.Stat(p); err != nil {
		missing(t, what, p)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: it
// listens on 127.0.0.1:0 and closes the listener. Another process may take
// the port before the caller binds it; the starters retry when that happens.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testserver: probe free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pickPort picks the ports servers get; tests replace it.
var pickPort = FreePort

// logBuffer keeps the last max bytes a server wrote.
type logBuffer struct {
	mu    sync.Mutex
	buf   []byte
	max   int
	total int64
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += int64(len(p))
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.total > int64(len(b.buf)) {
		return "[...]\n" + string(b.buf)
	}
	return string(b.buf)
}

// portTaken reports whether a server's output says its port was in use:
// Go's net error (fake-gcs-server), MinIO's own message, Node's code.
func portTaken(log *logBuffer) bool {
	for _, s := range []string{"address already in use", "port is already in use", "EADDRINUSE"} {
		if log.contains(s) {
			return true
		}
	}
	return false
}

func (b *logBuffer) contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Contains(b.buf, []byte(s))
}

// process is one running server.
type process struct {
	name    string
	cmd     *exec.Cmd
	log     *logBuffer
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done
	stopped sync.Once
}

// spec describes how to run a server on a given port.
type spec struct {
	name string
	// command returns the argv and extra environment for a server on
	// the given ports; dir is a fresh data directory.
	command func(ports []int, dir string) (argv, env []string)
	nports  int
	// ready reports whether the server on ports is up; it makes one
	// bounded request.
	ready func(client *http.Client, ports []int) bool
}

// start runs s for t: a server that t's cleanup stops.
func start(t testing.TB, s spec) (*process, []int) {
	t.Helper()
	p, ports, err := startServer(t, s, t.TempDir)
	if err != nil {
		t.Fatalf("testserver: %v", err)
	}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("testserver: stop %s: %v", s.name, err)
		}
		if t.Failed() {
			t.Logf("testserver: %s output:\n%s", s.name, p.log.String())
		}
	})
	return p, ports
}

// startServer runs s in a fresh directory from newDir, retrying with new
// ports when the start fails because a port was taken, and returns the
// process and its ports once ready. The caller stops it.
func startServer(t testing.TB, s spec, newDir func() string) (*process, []int, error) {
	t.Helper()
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		ports := make([]int, s.nports)
		for i := range ports {
			ports[i] = pickPort(t)
		}
		dir := newDir()
		argv, env := s.command(ports, dir)
		began := time.Now()
		p, err := launch(s.name, argv, env, dir)
		if err != nil {
			return nil, nil, fmt.Errorf("start %s: %v", s.name, err)
		}
		err = p.waitReady(s, ports)
		if err == nil {
			t.Logf("testserver: %s ready on 127.0.0.1:%d in %v", s.name, ports[0], time.Since(began).Round(time.Millisecond))
			return p, ports, nil
		}
		p.stop()
		lastErr = fmt.Errorf("%s did not start: %v\n%s output:\n%s", s.name, err, s.name, p.log.String())
		if !portTaken(p.log) {
			break
		}
		t.Logf("testserver: %s: port taken, retrying (attempt %d)", s.name, attempt)
	}
	return nil, nil, lastErr
}

// launch starts argv in its own process group with env added to a copy of
// this process's environment.
//
// The child is started from a goroutine locked to its OS thread for the
// child's lifetime: Linux delivers the parent-death signal when the thread
// that forked the child exits, and a locked thread does not exit or get
// reused while the child runs.
func launch(name string, argv, env []string, dir string) (*process, error) {
	p := &process{name: name, log: &logBuffer{max: 64 << 10}, done: make(chan struct{})}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout = p.log
	cmd.Stderr = p.log
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = StopGrace
	p.cmd = cmd
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// cleanEnv is this process's environment without the variables that
// configure the servers or would send them elsewhere (proxies).
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		u := strings.ToUpper(k)
		switch {
		case strings.HasPrefix(u, "MINIO_"), strings.HasPrefix(u, "AWS_"),
			strings.HasPrefix(u, "FAKE_GCS_"), strings.HasPrefix(u, "AZURITE_"),
			strings.HasPrefix(u, "NODE_OPTIONS"),
			u == "HTTP_PROXY", u == "HTTPS_PROXY", u == "ALL_PROXY", u == "NO_PROXY":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// loopbackClient talks to the servers: no proxy from the environment,
// bounded per request.
func loopbackClient(timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		DisableKeepAlives: true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// waitReady polls s.ready until it succeeds, the process exits or
// ReadyTimeout passes.
func (p *process) waitReady(s spec, ports []int) error {
	client := loopbackClient(2 * time.Second)
	deadline := time.Now().Add(ReadyTimeout)
	wait := 10 * time.Millisecond
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited before it was ready: %v", p.waitErr)
		default:
		}
		if s.ready(client, ports) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", ReadyTimeout)
		}
		select {
		case <-p.done:
		case <-time.After(wait):
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after StopGrace,
// and waits for the exit. Later calls return nil at once.
func (p *process) stop() error {
	var err error
	p.stopped.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
			// Whatever else the group started goes too.
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			return
		case <-time.After(StopGrace):
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-p.done:
			err = fmt.Errorf("did not exit within %v of SIGTERM; killed", StopGrace)
		case <-time.After(StopGrace):
			err = errors.New("did not exit after SIGKILL")
		}
	})
	return err
}

// httpOK reports whether GET url answers with one of the given statuses
// (any status when none are given).
func httpOK(client *http.Client, url string, statuses ...int) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	if len(statuses) == 0 {
		return true
	}
	for _, s := range statuses {
		if resp.StatusCode == s {
			return true
		}
	}
	return false
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
