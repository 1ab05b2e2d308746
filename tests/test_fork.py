"""After fork() the child gets a clear error instead of a hang; the parent
goes on; a spawned process works."""

from __future__ import annotations

import sys
import subprocess

from conftest import REPO, subprocess_env

SCRIPT = r'''
import gc, os, sys, multiprocessing as mp
from runai_model_streamer import SafetensorsStreamer

def count(path):
    with SafetensorsStreamer() as s:
        s.stream_file(path)
        return sum(1 for _ in s.get_tensors())

if __name__ == "__main__":
    path = sys.argv[1]
    with SafetensorsStreamer() as s:
        s.stream_file(path)
        kept = [t for _, t in s.get_tensors()]  # owned tensors, alive across the fork
    open_streamer = SafetensorsStreamer()
    open_streamer.stream_file(path)             # a stream still open at fork time

    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            count(path)
            print("CHILD: no error", flush=True)
        except RuntimeError as e:
            msg = str(e)
            ok = "forked" in msg and "spawn" in msg
            print(("CHILD OK: " if ok else "CHILD WRONG MESSAGE: ") + msg, flush=True)
            code = 0 if ok else 4
        # Dropping the parent's tensors and streamer must not call into Go.
        kept_sum = float(kept[0].float().sum()) if kept[0].numel() else 0.0
        del kept, open_streamer
        gc.collect()
        print("CHILD cleaned up", flush=True)
        os._exit(code)

    _, status = os.waitpid(pid, 0)
    print("PARENT: child exit", os.waitstatus_to_exitcode(status), flush=True)
    # The parent still works, including its open stream.
    print("PARENT: open stream", sum(1 for _ in open_streamer.get_tensors()), flush=True)
    open_streamer.close()
    print("PARENT: again", count(path), flush=True)
    # A spawned process loads its own copy and works.
    with mp.get_context("spawn").Pool(1) as pool:
        print("SPAWN:", pool.apply(count, (path,)), flush=True)
'''


def test_fork_child_gets_a_clear_error(tmp_path, small_checkpoint):
    script = tmp_path / "fork_script.py"
    script.write_text(SCRIPT)
    try:
        r = subprocess.run([sys.executable, str(script), str(small_checkpoint[0])],
                           capture_output=True, text=True, timeout=180,
                           env=subprocess_env(), cwd=str(REPO))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"hang after fork:\n{e.stdout}\n{e.stderr}")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "CHILD OK: model-streamer cannot be used in a process forked after it was loaded" in out, out
    assert "CHILD cleaned up" in out, out
    assert "PARENT: child exit 0" in out, out
    assert "PARENT: open stream 5" in out, out
    assert "PARENT: again 5" in out, out
    assert "SPAWN: 5" in out, out


def test_fork_before_loading_is_fine(tmp_path, small_checkpoint):
    """A child forked before the library was ever loaded loads its own."""
    code = r'''
import os, sys
from runai_model_streamer import SafetensorsStreamer
pid = os.fork()
if pid == 0:
    with SafetensorsStreamer() as s:
        s.stream_file(sys.argv[1])
        n = sum(1 for _ in s.get_tensors())
    os._exit(0 if n == 5 else 1)
_, status = os.waitpid(pid, 0)
print("CHILD", os.waitstatus_to_exitcode(status))
'''
    try:
        r = subprocess.run([sys.executable, "-c", code, str(small_checkpoint[0])],
                           capture_output=True, text=True, timeout=120,
                           env=subprocess_env(), cwd=str(REPO))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"hang:\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0, r.stderr
    assert "CHILD 0" in r.stdout, r.stdout + r.stderr


WAIT_SCRIPT = r'''
import os, sys, threading, time
from runai_model_streamer import _native

# As while the start-up thread's dlopen (GIL released) is in flight.
_native._state.no_dlopen.clear()
threading.Timer(0.3, _native._state.no_dlopen.set).start()
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    import ctypes
    ctypes.CDLL("libm.so.6")  # the child's own dlopen works
    os._exit(0)
waited = time.monotonic() - t0
_, status = os.waitpid(pid, 0)
print("WAITED %.3f EXIT %d" % (waited, os.waitstatus_to_exitcode(status)), flush=True)
'''


def test_fork_waits_for_a_dlopen_in_flight(tmp_path):
    """A child forked while another thread is inside dlopen can inherit the
    dynamic loader's lock held (and, with an older glibc, hang at its own
    next dlopen): fork waits until the start-up thread's GIL-free dlopen is
    over."""
    script = tmp_path / "wait_script.py"
    script.write_text(WAIT_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("WAITED")][0]
    waited, code = float(line.split()[1]), int(line.split()[3])
    assert code == 0
    assert waited >= 0.25, f"fork went ahead after {waited:.3f} s, while the dlopen was in flight"
