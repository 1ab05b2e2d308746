package testserver

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared servers: one server of each kind per test binary, for packages
// whose many tests would otherwise each pay a server's startup. A package
// opts in with a TestMain:
//
//	func TestMain(m *testing.M) { testserver.Main(m) }
//
// and calls SharedMinIO, SharedFakeGCS or SharedAzurite instead of MinIO,
// FakeGCS or Azurite. The first call starts the server; Main stops it (and
// removes its data) after the tests. Tests that share a server share its
// buckets: each should use bucket or key names of its own. Without Main the
// Shared functions start a server per test, as the plain ones do, since
// nothing would stop a shared one.

var shared struct {
	mu      sync.Mutex
	main    bool                // Main is running the tests
	servers map[string]any      // kind -> *MinIOServer etc.
	errs    map[string]string   // kind -> why its start failed
	stops   []func()            // in start order
	dirs    []string            // data directories to remove
	procs   map[string]*process // kind -> process, for the output on failure
}

// Main runs m's tests, stops the shared servers and exits with the tests'
// status. Call it from TestMain.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.main = true
	shared.mu.Unlock()
	code := m.Run()
	stopShared()
	os.Exit(code)
}

func stopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	for i := len(shared.stops) - 1; i >= 0; i-- {
		shared.stops[i]()
	}
	for _, d := range shared.dirs {
		os.RemoveAll(d)
	}
	shared.stops, shared.dirs, shared.servers = nil, nil, nil
}

// sharedServer returns the shared server of kind, starting it with s on the
// first call; build makes the server value from the ports. It reports
// false when Main is not in use.
func sharedServer(t testing.TB, kind string, s spec, build func(ports []int) any) (any, bool) {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.main {
		return nil, false
	}
	if srv, ok := shared.servers[kind]; ok {
		return srv, true
	}
	if msg, ok := shared.errs[kind]; ok {
		t.Fatalf("testserver: shared %s failed to start earlier: %s", kind, msg)
	}
	newDir := func() string {
		d, err := os.MkdirTemp("", "testserver-"+kind+"-")
		if err != nil {
			t.Fatalf("testserver: %v", err)
		}
		shared.dirs = append(shared.dirs, d)
		return d
	}
	p, ports, err := startServer(t, s, newDir)
	if err != nil {
		if shared.errs == nil {
			shared.errs = map[string]string{}
		}
		shared.errs[kind] = err.Error()
		t.Fatalf("testserver: shared %v", err)
	}
	srv := build(ports)
	if shared.servers == nil {
		shared.servers = map[string]any{}
	}
	shared.servers[kind] = srv
	shared.stops = append(shared.stops, func() {
		if err := p.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testserver: stop shared %s: %v\n", kind, err)
		}
	})
	return srv, true
}
