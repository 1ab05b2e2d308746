"""Peak CPU memory stays within RUNAI_STREAMER_MEMORY_LIMIT (plus the tensors
the caller holds), measured in a fresh process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import run_python

MiB = 1 << 20
LARGEST = 64 * MiB
SLACK = 64 * MiB
MIDDLE_LIMIT = 200 * MiB


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """~600 MB in two files; the largest tensor is 64 MiB."""
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=LARGEST, dtype=np.uint8).tobytes()
    specs = []
    for i in range(7):
        specs.append((f"big.{i}", "BF16", [LARGEST // 2]))
    for i in range(100):
        specs.append((f"mid.{i}", "F32", [(1 * MiB + 4096 * i) // 4]))
    for i in range(50):
        specs.append((f"small.{i}", "I64", [1 + 37 * i]))
    specs.append(("scalar", "F32", []))
    specs.append(("empty", "F32", [0, 8]))
    sizes = {"BF16": 2, "F32": 4, "I64": 8}
    files = [specs[0::2], specs[1::2]]
    paths = []
    total_tensor_bytes = 0
    for fi, group in enumerate(files):
        header, off = {}, 0
        for name, dtype, shape in group:
            n = sizes[dtype]
            for s in shape:
                n *= s
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
            off += n
        total_tensor_bytes += off
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path = d / f"big-{fi}.safetensors"
        with open(path, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            left, k = off, 0
            while left:
                rot = (k * 1048583) % len(block)
                piece = (block[rot:] + block[:rot])[:left]
                f.write(piece)
                left -= len(piece)
                k += 1
        paths.append(str(path))
    total = sum(os.path.getsize(p) for p in paths)
    assert 550 * MiB < total < 700 * MiB
    return paths, total_tensor_bytes


MEASURE = r'''
import gc, json, os, sys
import torch
import runai_model_streamer
from runai_model_streamer import SafetensorsStreamer, _native

_native.load()

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

paths = json.loads(sys.argv[1])
owned = sys.argv[2] == "owned"
gc.collect()
base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    reset = True
except OSError:
    base = status("VmHWM")
    reset = False
n = nbytes = 0
with SafetensorsStreamer() as s:
    s.stream_files(paths, owned=owned)
    for name, t in s.get_tensors():  # t is rebound: each tensor is dropped at the next
        n += 1
        nbytes += t.numel() * t.element_size()
    stats = s.stats()
print(json.dumps({"base": base, "peak": status("VmHWM"), "reset": reset, "tensors": n,
                  "bytes": nbytes, "arena_bytes": stats["arena_bytes"]}))
'''


@pytest.mark.parametrize("owned", [False, True], ids=["owned=False", "owned=True"])
@pytest.mark.parametrize("limit", [0, MIDDLE_LIMIT], ids=["limit=0", "limit=200MiB"])
def test_peak_rss_under_memory_limit(big_checkpoint, limit, owned):
    paths, total_bytes = big_checkpoint
    r = run_python(MEASURE, args=[json.dumps(paths), "owned" if owned else "not"],
                   env={"RUNAI_STREAMER_MEMORY_LIMIT": str(limit)}, timeout=240)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["tensors"] == 159
    effective = LARGEST if limit == 0 else limit
    # What the library allocated: the limit, plus (owned=True) room for the
    # one tensor the loop variable still holds while the next is fetched.
    arena_bound = effective + (LARGEST if owned else 0) + MiB  # + page rounding
    assert m["arena_bytes"] <= arena_bound, (
        f"the library allocated {m['arena_bytes'] / MiB:.0f} MiB, more than "
        f"{arena_bound / MiB:.0f} MiB (limit {limit}, owned={owned}, largest tensor 64 MiB)")
    bound = effective + SLACK + (LARGEST if owned else 0)
    grew = m["peak"] - m["base"]
    assert grew < bound, (
        f"peak RSS grew by {grew / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"(limit {limit}, owned={owned}, arena {m['arena_bytes'] / MiB:.0f} MiB)")
    # And it did stream the whole ~600 MB, well above the bound.
    assert m["bytes"] == total_bytes > bound
