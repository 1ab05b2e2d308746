"""Files whose header length leaves every tensor at an address its dtype does
not divide (writers other than safetensors do not pad the header): streamed
bytes equal the file's, for every dtype, read path, memory limit and
ownership; on x86-64 such tensors are handed out without a copy
(streamer.MISALIGNED_VIEWS_OK) and compute as aligned ones do."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from conftest import DTYPES, random_tensor, tensor_bytes
from runai_model_streamer import SafetensorsStreamer
from runai_model_streamer import streamer as streamer_mod

N = 1000  # elements a tensor: long enough for torch's vectorised loops


def _write(path: Path, misalign: int, seed: int) -> Dict[str, Tuple[str, List[int], bytes]]:
    """One tensor of every dtype, each a multiple of 8 bytes long, after a
    header padded so the data starts at 8k + misalign: every tensor's file
    offset is then misalign modulo 8."""
    rng = random.Random(seed)
    header, blobs, off, want = {}, [], 0, {}
    for name_, (dtype, size) in DTYPES.items():
        shape = [N // 10, 10] if size > 1 else [N]
        if dtype.is_floating_point and size > 1:  # finite values: matmul means something
            g = torch.Generator().manual_seed(seed * 100 + size)
            raw = tensor_bytes(torch.randn(shape, generator=g).to(dtype))
        else:
            raw = tensor_bytes(random_tensor(rng, name_, shape))
        name = f"m{misalign}.{name_.lower()}"
        header[name] = {"dtype": name_, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        want[name] = (name_, shape, raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text)) % 8) + misalign)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    assert (8 + len(text)) % 8 == misalign
    return want


@pytest.fixture(scope="module")
def misaligned_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("misaligned")
    files = {}
    for m in range(1, 8):
        p = d / f"m{m}.safetensors"
        files[m] = (p, _write(p, m, seed=m))
    return files


def _from_file(path: Path) -> Dict[str, bytes]:
    """The reference: each tensor's bytes read straight from the file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {k: data[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize("mode,limit,owned", [
    ("auto", "-1", True),       # hot file: views of the file mapping
    ("auto", "-1", False),
    ("buffered", "-1", True),   # pread into the ring
    ("buffered", "0", True),    # ring of one region, fresh memory behind the loop variable
    ("buffered", "0", False),
    ("direct", "65536", True),  # O_DIRECT where the file system allows it
])
def test_misaligned_bytes_exact(misaligned_files, monkeypatch, mode, limit, owned):
    monkeypatch.setenv("MODEL_STREAMER_READ_MODE", mode)
    monkeypatch.setenv("RUNAI_STREAMER_MEMORY_LIMIT", limit)
    paths = [str(p) for p, _ in misaligned_files.values()]
    ref = {}
    for p, want in misaligned_files.values():
        from_file = _from_file(p)
        for name, (dtype_name, shape, raw) in want.items():
            assert from_file[name] == raw
            ref[(str(p), name)] = (DTYPES[dtype_name][0], shape, raw)
    ref = {name: v for (_, name), v in ref.items()}
    seen = misaligned = 0
    with SafetensorsStreamer() as s:
        s.stream_files(paths, owned=owned)
        for name, t in s.get_tensors():
            rdtype, rshape, rraw = ref[name]
            assert (t.dtype, list(t.shape)) == (rdtype, rshape), name
            # Compared while the tensor is current: owned=False memory is
            # reused once the loop moves on.
            assert tensor_bytes(t) == rraw, f"{name}: bytes differ"
            seen += 1
            misaligned += t.data_ptr() % t.element_size() != 0
        copies = s.unaligned_copies
    assert seen == len(paths) * len(DTYPES)
    multi_byte = sum(1 for _, size in DTYPES.values() if size > 1)
    if streamer_mod.MISALIGNED_VIEWS_OK:
        # Handed out in place, at the file's misalignment: the test did see
        # misaligned tensors, and nothing was copied for them.
        assert copies == 0
        # m = 2, 4, 6 leave some dtypes aligned (2 divides 4): count per file.
        expect = sum(1 for m in range(1, 8) for _, size in DTYPES.values()
                     if size > 1 and m % size)
        assert misaligned == expect, (misaligned, expect)
    else:
        assert misaligned == 0 and copies > 0
    assert multi_byte > 0


def _ops(t: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The ops the tests use, on t (a 2-D tensor)."""
    out = {"eq": (t == t.clone()).all().reshape(1), "clone": t.clone(),
           "view_reshape": t.reshape(-1).view(t.shape[0], -1).T.contiguous(),
           "sum": (t.sum() if t.is_floating_point() or t.is_complex()
                   else t.to(torch.int64).sum() if t.dtype not in (torch.uint64,) else t.view(torch.int64).sum())}
    d = torch.empty_like(t)
    d.copy_(t)
    out["copy_"] = d
    for target in (torch.float32, torch.float64, torch.bfloat16):
        if not t.is_complex():
            out[f"to_{target}"] = t.to(target)
    if t.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        out["matmul"] = t @ t.T
    return out


@pytest.mark.skipif(not streamer_mod.MISALIGNED_VIEWS_OK,
                    reason="misaligned tensors are copied on this architecture")
def test_misaligned_tensors_compute_as_aligned(misaligned_files):
    """Streamed misaligned tensors give the same results as aligned copies of
    them, for every dtype and op the tests use (matmul within float
    tolerance: BLAS may take another kernel for another address)."""
    p, _ = misaligned_files[3]
    checked = 0
    with SafetensorsStreamer() as s:
        s.stream_files([str(p)])
        for name, t in s.get_tensors():
            if t.element_size() == 1:
                continue
            assert t.data_ptr() % t.element_size() != 0, name
            aligned = t.clone()
            assert aligned.data_ptr() % 64 == 0
            got, want = _ops(t), _ops(aligned)
            for op in want:
                a, b = got[op], want[op]
                if op == "matmul":
                    assert torch.allclose(a.double(), b.double(), rtol=1e-2, atol=1e-2, equal_nan=True), (name, op)
                elif a.is_floating_point() or a.is_complex():
                    # bitwise (NaN payloads included)
                    assert tensor_bytes(a) == tensor_bytes(b), (name, op)
                else:
                    assert torch.equal(a, b), (name, op)
                checked += 1
    assert checked > 40
