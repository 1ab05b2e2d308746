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


def _write_checkpoint(d, files):
    """Writes files (each a list of (name, dtype, shape)) with pseudo-random
    bytes; returns (paths, tensor bytes in all)."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=LARGEST, dtype=np.uint8).tobytes()
    sizes = {"BF16": 2, "F32": 4, "I64": 8, "U8": 1}
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
    return paths, total_tensor_bytes


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """~600 MB in two files; the largest tensor is 64 MiB (seven of them,
    streamed one after the other)."""
    specs = []
    for i in range(7):
        specs.append((f"big.{i}", "BF16", [LARGEST // 2]))
    for i in range(100):
        specs.append((f"mid.{i}", "F32", [(1 * MiB + 4096 * i) // 4]))
    for i in range(50):
        specs.append((f"small.{i}", "I64", [1 + 37 * i]))
    specs.append(("scalar", "F32", []))
    specs.append(("empty", "F32", [0, 8]))
    paths, total_tensor_bytes = _write_checkpoint(tmp_path_factory.mktemp("big"),
                                                  [specs[0::2], specs[1::2]])
    total = sum(os.path.getsize(p) for p in paths)
    assert 550 * MiB < total < 700 * MiB
    return paths, total_tensor_bytes


@pytest.fixture(scope="module")
def one_large_checkpoint(tmp_path_factory):
    """~330 MB in two files, as a language model lays out: one 64 MiB tensor
    among 1-3 MiB ones, read once the ring has been through its pages."""
    first = [(f"a.{i}", "F32", [(MiB + 65536 * i) // 4]) for i in range(40)]
    first.insert(20, ("lm_head", "BF16", [LARGEST // 2]))  # once the ring is warm
    second = [(f"b.{i}", "BF16", [(2 * MiB + 8192 * i) // 2]) for i in range(60)]
    second += [(f"s.{i}", "I64", [1 + 37 * i]) for i in range(20)]
    return _write_checkpoint(tmp_path_factory.mktemp("onelarge"), [first, second])


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


def _measure(paths, owned, limit, code=MEASURE):
    """Runs code (MEASURE or a variant) over paths in a fresh process with
    RUNAI_STREAMER_MEMORY_LIMIT=limit; returns its figures and the peak RSS
    growth."""
    r = run_python(code, args=[json.dumps(paths), "owned" if owned else "not"],
                   env={"RUNAI_STREAMER_MEMORY_LIMIT": str(limit)}, timeout=240)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return m, m["peak"] - m["base"]


@pytest.mark.parametrize("owned", [False, True], ids=["owned=False", "owned=True"])
@pytest.mark.parametrize("limit", [0, MIDDLE_LIMIT], ids=["limit=0", "limit=200MiB"])
def test_peak_rss_under_memory_limit(big_checkpoint, limit, owned):
    paths, total_bytes = big_checkpoint
    m, grew = _measure(paths, owned, limit)
    assert m["tensors"] == 159
    effective = LARGEST if limit == 0 else limit
    # What the library allocated: the limit, plus (owned=True) room for the
    # one tensor the loop variable still holds while the next is fetched.
    arena_bound = effective + (LARGEST if owned else 0) + MiB  # + page rounding
    assert m["arena_bytes"] <= arena_bound, (
        f"the library allocated {m['arena_bytes'] / MiB:.0f} MiB, more than "
        f"{arena_bound / MiB:.0f} MiB (limit {limit}, owned={owned}, largest tensor 64 MiB)")
    bound = effective + SLACK + (LARGEST if owned else 0)
    print(f"limit {limit} owned={owned}: peak RSS +{grew / MiB:.1f} MiB, "
          f"arena {m['arena_bytes'] / MiB:.1f} MiB")
    assert grew < bound, (
        f"peak RSS grew by {grew / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"(limit {limit}, owned={owned}, arena {m['arena_bytes'] / MiB:.0f} MiB)")
    # And it did stream the whole ~600 MB, well above the bound.
    assert m["bytes"] == total_bytes > bound


def test_peak_rss_at_limit_0_owned_loop(one_large_checkpoint):
    """RUNAI_STREAMER_MEMORY_LIMIT=0, owned=True (the default) and a loop
    that drops each tensor at the next: the loop variable pins the ring
    while the next tensor is read, so that one is read outside the ring, but
    the ring's free pages go back and the readers do not refill the ring
    behind a tensor held outside it. Peak RSS growth stays under the
    largest tensor + 64 MiB (it was about 2 x the largest + 6 MiB: ring and
    standalone block both resident)."""
    paths, total_bytes = one_large_checkpoint
    m, grew = _measure(paths, True, 0)
    assert m["tensors"] == 121 and m["bytes"] == total_bytes
    print(f"limit 0 owned=True, one 64 MiB tensor: peak RSS +{grew / MiB:.1f} MiB, "
          f"arena {m['arena_bytes'] / MiB:.1f} MiB")
    bound = LARGEST + SLACK
    assert grew < bound, (
        f"peak RSS grew by {grew / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"(arena {m['arena_bytes'] / MiB:.0f} MiB)")


def test_peak_rss_at_limit_0_owned_consumer_that_deletes(big_checkpoint):
    """RUNAI_STREAMER_MEMORY_LIMIT=0, owned=True, seven 64 MiB tensors back
    to back, and a consumer that really drops each tensor before asking for
    the next (`del t` at the end of the loop body): peak RSS growth stays
    under the largest tensor + 64 MiB. (With the plain loop, the loop
    variable holds one 64 MiB tensor while the next is read: two at once,
    which test_peak_rss_under_memory_limit bounds.)"""
    paths, total_bytes = big_checkpoint
    code = MEASURE.replace("        nbytes += t.numel() * t.element_size()\n",
                           "        nbytes += t.numel() * t.element_size()\n        del t\n")
    assert "del t" in code
    m, grew = _measure(paths, True, 0, code)
    assert m["tensors"] == 159 and m["bytes"] == total_bytes
    print(f"limit 0 owned=True, del each tensor: peak RSS +{grew / MiB:.1f} MiB")
    bound = LARGEST + SLACK
    assert grew < bound, f"peak RSS grew by {grew / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB"
