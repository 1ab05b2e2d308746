#!/usr/bin/env python3
"""Fresh memory with owned=True (issue 8): how much of a load lands in freshly
mapped pages (which the kernel zeroes on first touch) instead of the reused
ring, for a consumer that drops each tensor after reading it (the loop
variable holds only the previous one), side by side for two builds of the
library.

    .venv/bin/python bench/fresh_memory.py --data-dir /dev/shm/arena/data \
        --gen-size 1GiB --lib before=/tmp/before/libmodelstreamer.so --lib after=DEFAULT

Each configuration runs in a fresh subprocess, interleaved over --reps, with
MODEL_STREAMER_READ_MODE=buffered (pread into the arena: a hot local file would
otherwise be mapped, zero copy, and never touch the arena) and
RUNAI_STREAMER_MEMORY_LIMIT unset. Reported per run: the client's CPU seconds
per GB (getrusage over the load, imports excluded), minor page faults per GB
(fresh pages; 2 MiB huge pages count once), and the stream's peak CPU buffer
(arena_bytes: the ring plus blocks mapped outside it). The consumer sums one
byte per 4 KiB page of each tensor (reads its memory, cheap on the CPU).
"""
import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_size(s):
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
    low = s.lower()
    for u, m in units.items():
        if low.endswith(u):
            return int(float(low[: -len(u)]) * m)
    return int(s)


def generate(out_dir, total, shards=2):
    """Shards of U8 tensors of 1-24 MiB (deterministic sizes and bytes)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"model-{i}.safetensors") for i in range(shards)]
    if all(os.path.exists(p) for p in paths) and sum(os.path.getsize(p) for p in paths) >= total * 0.95:
        return paths
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))
    per = total // shards
    seed = 12345
    for si, path in enumerate(paths):
        sizes, left = [], per
        while left > 0:
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            n = min(left, (1 << 20) + seed % (23 << 20))
            sizes.append(n)
            left -= n
        hdr, off = {}, 0
        for i, n in enumerate(sizes):
            hdr[f"s{si}.t{i}"] = {"dtype": "U8", "shape": [n], "data_offsets": [off, off + n]}
            off += n
        h = json.dumps(hdr).encode()
        h += b" " * (-len(h) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for n in sizes:
                while n > 0:
                    k = min(n, len(pattern))
                    f.write(pattern[:k])
                    n -= k
    return paths


def child(paths, owned):
    import torch  # noqa: F401  (imported before the measurement)
    from runai_model_streamer import SafetensorsStreamer

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    total = 0
    acc = 0
    with SafetensorsStreamer() as st:
        st.stream_files(paths, owned=owned)
        for _name, t in st.get_tensors():
            b = t.view(-1).view(torch.uint8)
            acc += int(b[::4096].sum())
            total += b.numel()
        stats = st.stats()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    gb = total / 1e9
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({
        "gb": gb, "wall_s": wall, "gbps": gb / wall,
        "cpu_per_gb": cpu / gb, "sys_per_gb": (r1.ru_stime - r0.ru_stime) / gb,
        "minflt_per_gb": (r1.ru_minflt - r0.ru_minflt) / gb,
        "arena_mib": stats.get("arena_bytes", 0) / 2**20,
        "file": __import__("runai_model_streamer").__file__,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--gen-size", default="1GiB")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--lib", action="append", default=[],
                   help="NAME=PATH of a libmodelstreamer.so (PATH 'DEFAULT': the bundled one); repeatable")
    p.add_argument("--owned", default="true,false", help="comma list of true,false")
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        child(a.child[1:], a.child[0] == "true")
        return
    paths = generate(a.data_dir, parse_size(a.gen_size))
    libs = [x.split("=", 1) for x in (a.lib or ["default=DEFAULT"])]
    configs = [(name, lib, owned) for name, lib in libs for owned in a.owned.split(",")]
    results = {}
    for rep in range(a.reps):
        for i in range(len(configs)):
            name, lib, owned = configs[(i + rep) % len(configs)]
            env = dict(os.environ, MODEL_STREAMER_READ_MODE="buffered")
            env.pop("RUNAI_STREAMER_MEMORY_LIMIT", None)
            env.pop("MODEL_STREAMER_LIB", None)
            if lib != "DEFAULT":
                env["MODEL_STREAMER_LIB"] = lib
            out = subprocess.run([sys.executable, __file__, "--data-dir", a.data_dir, "--child", owned, *paths],
                                 env=env, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.setdefault((name, owned), []).append(r)
            print(f"rep {rep} {name:>8} owned={owned:<5} {r['gbps']:.2f} GB/s  CPU {r['cpu_per_gb']:.3f} s/GB "
                  f"(sys {r['sys_per_gb']:.3f})  minflt {r['minflt_per_gb']:.0f}/GB  arena {r['arena_mib']:.0f} MiB",
                  flush=True)
    print(f"\nmedians over {a.reps} reps ({results[next(iter(results))][0]['gb']:.2f} GB, buffered reads, limit unset):")
    for (name, owned), rs in results.items():
        m = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"  {name:>8} owned={owned:<5} {m('gbps'):.2f} GB/s  CPU {m('cpu_per_gb'):.3f} s/GB "
              f"(sys {m('sys_per_gb'):.3f})  minflt {m('minflt_per_gb'):.0f}/GB  arena {m('arena_mib'):.0f} MiB")


if __name__ == "__main__":
    main()
