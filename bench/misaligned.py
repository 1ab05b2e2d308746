"""Misaligned tensors against aligned ones, side by side in one run.

Two copies of the same ~1 GiB checkpoint (bench/run.py's Llama-like tensors,
2 shards): one whose header is padded so the data starts at a multiple of 8
(what safetensors writes), one with 3 more bytes of padding, as a writer that
does not pad makes: every tensor of 2 bytes or more is then at an address its
dtype does not divide. Each measured run is a fresh process on a hot page
cache, alternating aligned and misaligned, and times two consumers:

- hand-out: stream_files -> every tensor handed out (owned=True, default);
- use: the same, copying each tensor into a pre-faulted destination of its
  dtype (what a load into a model's parameters does), so bytes are read.

    .venv/bin/python bench/misaligned.py [--size 1g] [--reps 3]

Prints the median GB/s of each and the ratio misaligned / aligned, plus the
streamer's count of tensors it copied because of their address.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import run as harness  # noqa: E402  (the shared harness: checkpoints, cache warming)

CHILD = r'''
import json, sys, time
import torch
from runai_model_streamer import SafetensorsStreamer
files, mode, largest = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
dst = torch.empty(largest, dtype=torch.uint8)
dst.fill_(0)  # pre-faulted
n = nbytes = 0
t0 = time.perf_counter()
with SafetensorsStreamer() as s:
    s.stream_files(files)
    for name, t in s.get_tensors():
        b = t.numel() * t.element_size()
        if mode == "use" and b:
            dst[:b].view(t.dtype).view(t.shape).copy_(t)
        n += 1
        nbytes += b
    dt = time.perf_counter() - t0
    copies = s.unaligned_copies
print(json.dumps({"seconds": dt, "bytes": nbytes, "tensors": n, "unaligned_copies": copies}))
'''


def make(data_dir: str, size: int, misalign: int):
    d = os.path.join(data_dir, f"{'mis' if misalign else 'aligned'}-{size >> 20}m")
    os.makedirs(d, exist_ok=True)
    tensors = harness.model_tensors(size)
    shards = harness.shard(tensors, 2)
    paths = []
    block = None
    for i, ts in enumerate(shards):
        p = os.path.join(d, f"model-{i}.safetensors")
        want = sum(harness.nbytes_of(dt, s) for _, dt, s in ts)
        if not (os.path.exists(p) and os.path.getsize(p) > want):
            block = block or harness.random_block()
            harness.write_safetensors(p, ts, block, salt=zlib.crc32(b"mis") % 1000 + i,
                                      misalign=misalign)
        paths.append(p)
    largest = max(harness.nbytes_of(dt, s) for _, dt, s in tensors)
    with open(paths[0], "rb") as f:
        data_offset = 8 + int.from_bytes(f.read(8), "little")
    return paths, largest, data_offset


def measure(python: str, paths, largest: int, mode: str) -> dict:
    harness.warm_cache(paths)
    r = subprocess.run([python, "-c", CHILD, json.dumps(paths), mode, str(largest)],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"measured run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1g", help="checkpoint size (default 1g)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data-dir", default="/tmp/model-streamer-bench")
    ap.add_argument("--python", default=os.path.join(harness.REPO, ".venv", "bin", "python"))
    args = ap.parse_args()
    size = harness.parse_bytes(args.size)
    sets = {}
    for name, mis in (("aligned", 0), ("misaligned", 3)):
        sets[name] = make(args.data_dir, size, mis)
    print(f"checkpoint: {size / 1e9:.2f} GB in 2 files; data offset aligned {sets['aligned'][2]}, "
          f"misaligned {sets['misaligned'][2]}; {os.cpu_count()} CPUs; hot page cache")
    results = {}
    for rep in range(args.reps):
        for mode in ("hand-out", "use"):
            for name in ("aligned", "misaligned"):
                paths, largest, _ = sets[name]
                r = measure(args.python, paths, largest, "use" if mode == "use" else "hand")
                results.setdefault((mode, name), []).append(r)
    out = {}
    for mode in ("hand-out", "use"):
        row = {}
        for name in ("aligned", "misaligned"):
            rs = results[(mode, name)]
            gbps = statistics.median(r["bytes"] / r["seconds"] / 1e9 for r in rs)
            row[name] = {"gbps": gbps, "unaligned_copies": rs[-1]["unaligned_copies"],
                         "tensors": rs[-1]["tensors"]}
        ratio = row["misaligned"]["gbps"] / row["aligned"]["gbps"]
        out[mode] = dict(row, ratio=ratio)
        print(f"{mode:9s} aligned {row['aligned']['gbps']:6.2f} GB/s   misaligned "
              f"{row['misaligned']['gbps']:6.2f} GB/s ({row['misaligned']['unaligned_copies']} of "
              f"{row['misaligned']['tensors']} tensors copied)   ratio {ratio:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
