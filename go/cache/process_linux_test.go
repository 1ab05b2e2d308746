package cache_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
)

// startChild starts this test binary loading uri through the cache in dir.
func startChild(t *testing.T, st *store, dir, uri string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	req, _ := json.Marshal(childRequest{Dir: dir, Scheme: st.scheme, Settings: st.settings, URI: uri})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(req))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, &out
}

func childOutput(t *testing.T, out *bytes.Buffer) childResult {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var res childResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("child output %q: %v", out.String(), err)
	}
	if res.Err != "" {
		t.Fatalf("child: %s", res.Err)
	}
	return res
}

// A writer killed with SIGKILL in the middle of an entry leaves nothing a
// later load uses: that load reads the store again, gets the right bytes,
// and its entry replaces the dead writer's temporary file.
func TestKilledWriterLeavesNoEntry(t *testing.T) {
	st := stores(t)[0]
	data := model(t, 8<<20, 20)
	wantSum := want(t, data)
	st.put(t, "kill.safetensors", data)
	uri := st.uri("kill.safetensors")
	dir := t.TempDir()

	st.proxy.Set(faultproxy.Fault{Latency: 150 * time.Millisecond}) // each read: a slow load
	before := st.proxy.BodyBytes()
	cmd, out := startChild(t, st, dir, uri)
	deadline := time.Now().Add(time.Minute)
	for st.proxy.BodyBytes()-before < int64(len(data))/4 || len(leftovers(t, dir)) == 0 {
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("the child did not get a quarter of the way: %s", out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	st.proxy.Clear()
	if moved := st.proxy.BodyBytes() - before; moved >= int64(len(data)) {
		t.Fatalf("the child read the whole object (%d bytes) before it was killed", moved)
	}
	if e := entries(t, dir); len(e) != 0 {
		t.Fatalf("a killed writer left an entry: %+v", e)
	}
	if len(leftovers(t, dir)) != 1 {
		t.Fatalf("expected the dead writer's temporary file, found %v", leftovers(t, dir))
	}

	before = st.proxy.BodyBytes()
	o := newOpener(t, dir, 0, st, nil)
	sums, _, err := load(ctxT(t), o, uri)
	if err != nil || sums[0] != wantSum {
		t.Fatalf("load after the kill: %v", err)
	}
	if moved := st.proxy.BodyBytes() - before; moved < int64(len(data)) {
		t.Fatalf("load after the kill moved %d of %d bytes: it used the dead writer's bytes", moved, len(data))
	}
	if o.Stats().Committed.Load() != 1 || len(entries(t, dir)) != 1 || len(leftovers(t, dir)) != 0 {
		t.Fatalf("after the reload: %d committed, entries %+v, leftovers %v",
			o.Stats().Committed.Load(), entries(t, dir), leftovers(t, dir))
	}
}

// Four processes loading one model at once get identical bytes, and the
// entry is written once.
func TestFourProcessesWriteOnce(t *testing.T) {
	st := stores(t)[0]
	data := model(t, 8<<20, 21)
	wantSum := want(t, data)
	st.put(t, "four.safetensors", data)
	dir := t.TempDir()
	st.proxy.Set(faultproxy.Fault{Latency: 20 * time.Millisecond})
	t.Cleanup(st.proxy.Clear)

	type child struct {
		cmd *exec.Cmd
		out *bytes.Buffer
	}
	var children []child
	for range 4 {
		cmd, out := startChild(t, st, dir, st.uri("four.safetensors"))
		children = append(children, child{cmd, out})
	}
	var writes, committed, hits int64
	for i, c := range children {
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v: %s", i, err, c.out)
		}
		res := childOutput(t, c.out)
		if res.Sum != wantSum {
			t.Fatalf("child %d got other bytes", i)
		}
		writes += res.Writes
		committed += res.Committed
		hits += res.Hits
	}
	if writes != 1 || committed != 1 {
		t.Fatalf("four processes: %d wrote, %d committed (%d hits): want the entry written once", writes, committed, hits)
	}
	if e := entries(t, dir); len(e) != 1 || len(leftovers(t, dir)) != 0 {
		t.Fatalf("entries %+v, leftovers %v", e, leftovers(t, dir))
	}
}

// tmpfs mounts a file system of size bytes, for a real ENOSPC.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("mount tmpfs: %v (needs root or CAP_SYS_ADMIN)", err)
		}
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// A full disk never fails the load: it goes on from the store with one
// warning and leaves no entry. The cache's limit is set above the disk's
// size, so the disk, not the limit, refuses.
func TestFullDiskDoesNotFailTheLoad(t *testing.T) {
	small := tmpfs(t, "2m")
	data := model(t, 6<<20, 22)
	wantSum := want(t, data)
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			st.put(t, "full.safetensors", data)
			dir := filepath.Join(small, st.name)
			var w warnings
			o := newOpener(t, dir, 1<<30, st, &w)
			sums, _, err := load(ctxT(t), o, st.uri("full.safetensors"))
			if err != nil || sums[0] != wantSum {
				t.Fatalf("load on a full disk: %v", err)
			}
			msgs := w.all()
			if len(msgs) != 1 || !strings.Contains(msgs[0], "no space left on device") {
				t.Fatalf("warnings: %q, want one naming ENOSPC", msgs)
			}
			if e := entries(t, dir); len(e) != 0 || len(leftovers(t, dir)) != 0 {
				t.Fatalf("entries %+v, leftovers %v", e, leftovers(t, dir))
			}
		})
	}
}

// A disk that fills up after the entry's space was allocated (here: the
// allocation takes the last page, and the entry's metadata finds none)
// fails the entry when it completes, in the background: the load itself
// was already done, and no entry nor temporary file is left.
func TestDiskFullAtCommit(t *testing.T) {
	st := stores(t)[0]
	data := model(t, 3<<20, 23)
	wantSum := want(t, data)
	st.put(t, "fullcommit.safetensors", data)
	pages := (int64(len(data)) + 4095) / 4096
	small := tmpfs(t, fmt.Sprint(pages*4096))
	var w warnings
	o := newOpener(t, small, 1<<30, st, &w)
	sums, _, err := load(ctxT(t), o, st.uri("fullcommit.safetensors"))
	if err != nil || sums[0] != wantSum {
		t.Fatalf("load: %v", err)
	}
	msgs := w.all()
	if len(msgs) != 1 || !strings.Contains(msgs[0], "no space left on device") || o.Stats().Writes.Load() != 1 {
		t.Fatalf("warnings %q (writes %d): want one ENOSPC after the entry was written", msgs, o.Stats().Writes.Load())
	}
	if e := entries(t, small); len(e) != 0 || len(leftovers(t, small)) != 0 {
		t.Fatalf("entries %+v, leftovers %v", e, leftovers(t, small))
	}
}
