"""Caps a running process's CPU time with a cgroup, for benchmarks that want
a store slower than the client and not sharing its cores, as a remote store
is: MinIO on loopback otherwise takes whatever CPU the client leaves, so the
client's every extra cycle shows as time.

    release = cap_cpu(pid, 0.5)   # at most half a core, all its threads
    ...
    release()                     # after the process stopped (or to lift the cap)

Needs write access to the cgroup hierarchy (root, or a delegated subtree):
cgroup v2's cpu.max or v1's cpu.cfs_quota_us. Threads the process starts
later are capped too. Raises CpuCapError saying what is missing otherwise.
"""

from __future__ import annotations

import os

PERIOD_US = 100_000
V2_ROOT = "/sys/fs/cgroup"
V1_ROOT = "/sys/fs/cgroup/cpu"


class CpuCapError(RuntimeError):
    pass


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2_usable() -> bool:
    return os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers"))


def cap_cpu(pid: int, cores: float, name: str = "model-streamer-bench"):
    """Moves pid into a new cgroup allowed `cores` CPUs' worth of time per
    100 ms period; returns a function that moves it back (if it still runs)
    and removes the cgroup."""
    if cores <= 0:
        raise CpuCapError(f"a CPU cap must be above 0 cores, not {cores}")
    quota = max(1000, int(cores * PERIOD_US))
    if _v2_usable():
        root = V2_ROOT
        try:
            with open(os.path.join(root, "cgroup.subtree_control")) as f:
                enabled = f.read().split()
            if "cpu" not in enabled:
                _write(os.path.join(root, "cgroup.subtree_control"), "+cpu")
        except OSError as e:
            raise CpuCapError(f"cannot enable the cpu controller in {root}: {e}") from e
        limit_file, limit = "cpu.max", f"{quota} {PERIOD_US}"
    elif os.path.isdir(V1_ROOT):
        root = V1_ROOT
        limit_file, limit = "cpu.cfs_quota_us", str(quota)
    else:
        raise CpuCapError("no cgroup cpu controller found (neither cgroup v2 nor v1's cpu hierarchy)")
    path = os.path.join(root, f"{name}-{pid}")
    try:
        os.mkdir(path)
        if root == V1_ROOT:
            _write(os.path.join(path, "cpu.cfs_period_us"), str(PERIOD_US))
        _write(os.path.join(path, limit_file), limit)
        # cgroup.procs moves every thread of the process (v1 and v2).
        _write(os.path.join(path, "cgroup.procs"), str(pid))
    except OSError as e:
        try:
            os.rmdir(path)
        except OSError:
            pass
        raise CpuCapError(f"cannot cap process {pid} at {cores} cores in {path}: {e} "
                          "(this needs root or a delegated cgroup)") from e

    def release() -> None:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                left = f.read().split()
            for p in left:
                try:
                    _write(os.path.join(root, "cgroup.procs"), p)
                except OSError:
                    pass  # exited meanwhile
            os.rmdir(path)
        except OSError:
            pass  # best effort: an empty leftover cgroup is harmless

    return release
