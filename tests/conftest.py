"""Shared fixtures and helpers for the model-streamer test suite."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON_DIR = REPO / "python"

# SafeTensors dtype -> (torch dtype, bytes per element). Every dtype the
# package maps; this torch (2.9) has them all.
DTYPES: Dict[str, Tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
    "C64": (torch.complex64, 8),
    "U16": (torch.uint16, 2),
    "U32": (torch.uint32, 4),
    "U64": (torch.uint64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "F8_E8M0": (torch.float8_e8m0fnu, 1),
}

ENV_VARS = (
    "RUNAI_STREAMER_CONCURRENCY",
    "RUNAI_STREAMER_MEMORY_LIMIT",
    "RUNAI_STREAMER_CHUNK_BYTESIZE",
    "MODEL_STREAMER_READ_MODE",
)


@pytest.fixture(autouse=True)
def _clean_streamer_env():
    """Each test starts from the documented defaults, and whatever it sets
    (the CLI sets these variables) is undone afterwards."""
    saved = {name: os.environ.pop(name) for name in ENV_VARS if name in os.environ}
    yield
    for name in ENV_VARS:
        os.environ.pop(name, None)
    os.environ.update(saved)


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a child Python that imports the package from this
    checkout (whether or not it is installed)."""
    env = dict(os.environ)
    for name in ENV_VARS:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PYTHON_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    if extra:
        env.update(extra)
    return env


def run_python(code: str, *, timeout: float = 120, env: Optional[Dict[str, str]] = None,
               args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter; fails the test if it does not finish
    within timeout seconds."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            capture_output=True, text=True, timeout=timeout,
            env=subprocess_env(env), cwd=str(REPO),
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"child python did not finish within {timeout}s (hang?)\n"
                    f"stdout: {e.stdout}\nstderr: {e.stderr}")


def call_with_timeout(fn: Callable[[], object], timeout: float = 30):
    """Runs fn in a daemon thread: returns its result, re-raises its
    exception, or fails the test when it has not finished after timeout."""
    box: Dict[str, object] = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"call did not finish within {timeout}s (hang)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


# ---------------------------------------------------------------------------
# Writing SafeTensors files
# ---------------------------------------------------------------------------

def random_tensor(rng: random.Random, dtype_name: str, shape: Sequence[int]) -> torch.Tensor:
    dtype, size = DTYPES[dtype_name]
    count = 1
    for d in shape:
        count *= d
    if dtype_name == "BOOL":
        raw = bytes(rng.getrandbits(1) for _ in range(count))
    else:
        raw = rng.randbytes(count * size) if hasattr(rng, "randbytes") else bytes(
            rng.getrandbits(8) for _ in range(count * size))
    if count == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
    return t.reshape(tuple(shape)).clone()


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def build_file_bytes(entries: Sequence[Tuple[str, str, Sequence[int], bytes]],
                     *, key_order: Optional[Sequence[str]] = None, pad: bool = True,
                     metadata: Optional[Dict[str, str]] = None) -> bytes:
    """A SafeTensors file with the tensors packed in the order given (no
    alignment padding between tensors), the JSON keys in key_order."""
    header: Dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offsets = {}
    pos = 0
    for name, dtype, shape, data in entries:
        offsets[name] = (dtype, list(shape), [pos, pos + len(data)])
        pos += len(data)
    for name in (key_order or [e[0] for e in entries]):
        dtype, shape, off = offsets[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": off}
    text = json.dumps(header).encode("utf-8")
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(e[3] for e in entries)


def write_raw_file(path: Path, entries, **kw) -> Path:
    path.write_bytes(build_file_bytes(entries, **kw))
    return path


def write_header_file(path: Path, header: object, data: bytes = b"", *,
                      header_len: Optional[int] = None) -> Path:
    """A file whose header is `header` (dict -> JSON, str/bytes as is)."""
    if isinstance(header, (dict, list)):
        text = json.dumps(header).encode("utf-8")
    elif isinstance(header, str):
        text = header.encode("utf-8")
    else:
        text = bytes(header)
    n = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def make_random_checkpoint(directory: Path, seed: int, writer: str, *,
                           max_files: int = 10, max_tensors: int = 100,
                           max_dim: int = 17, prefix: str = "") -> List[Path]:
    """A seeded random checkpoint: 1..max_files files, each 1..max_tensors
    tensors of every dtype (0-d and empty included). writer "safetensors"
    uses safetensors.torch.save_file; "raw" packs tensors in random order with
    no alignment (an odd-sized U8 tensor leads), JSON keys shuffled."""
    from safetensors.torch import save_file

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    n_files = rng.randint(1, max_files)
    paths = []
    dtype_names = list(DTYPES)
    for fi in range(n_files):
        n_tensors = rng.randint(1, max_tensors)
        tensors: Dict[str, torch.Tensor] = {}
        order: List[str] = []
        if writer == "raw":
            name = f"{prefix}f{fi}.odd_u8"
            tensors[name] = random_tensor(rng, "U8", (rng.choice([1, 3, 5, 7, 13]),))
            order.append(name)
        for ti in range(n_tensors):
            dtype = dtype_names[(ti + fi) % len(dtype_names)] if ti < len(dtype_names) \
                else rng.choice(dtype_names)
            rank = rng.choice([0, 1, 1, 2, 2, 3, 4])
            shape = [rng.randint(1, max_dim) for _ in range(rank)]
            if rank and rng.random() < 0.08:
                shape[rng.randrange(rank)] = 0  # empty tensor
            name = f"{prefix}f{fi}.layers.{ti}.{dtype.lower()}"
            tensors[name] = random_tensor(rng, dtype, shape)
            order.append(name)
        path = directory / f"{prefix}model-{fi:05d}-of-{n_files:05d}.safetensors"
        if writer == "safetensors":
            save_file(tensors, str(path), metadata={"format": "pt"})
        elif writer == "raw":
            body = order[1:]
            rng.shuffle(body)
            order = [order[0]] + body
            entries = []
            for name in order:
                t = tensors[name]
                st = next(k for k, (d, _) in DTYPES.items() if d == t.dtype)
                entries.append((name, st, list(t.shape), tensor_bytes(t)))
            keys = list(order)
            rng.shuffle(keys)
            write_raw_file(path, entries, key_order=keys, pad=rng.random() < 0.5)
        else:
            raise ValueError(writer)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------
# Reference reads
# ---------------------------------------------------------------------------

_reference_cache: Dict[str, Dict[str, Tuple[torch.dtype, Tuple[int, ...], bytes]]] = {}


def reference(path: Path) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...], bytes]]:
    """name -> (dtype, shape, bytes) as safetensors.safe_open(framework='pt') reads it."""
    from safetensors import safe_open

    key = f"{path}:{os.stat(path).st_mtime_ns}"
    if key not in _reference_cache:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = (t.dtype, tuple(t.shape), tensor_bytes(t))
        _reference_cache[key] = out
    return _reference_cache[key]


def reference_all(paths: Iterable[Path]) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...], bytes]]:
    out = {}
    for p in paths:
        for name, v in reference(Path(p)).items():
            assert name not in out, f"duplicate tensor {name} in test data"
            out[name] = v
    return out


def describe(t: torch.Tensor) -> Tuple[torch.dtype, Tuple[int, ...], bytes]:
    """(dtype, shape, bytes) of a tensor: plain data, safe to keep and to show
    in a failure report after the tensor's memory has gone back (owned=False)."""
    return t.dtype, tuple(t.shape), tensor_bytes(t)


def assert_matches(name: str, got, expected) -> None:
    """got, expected: (dtype, shape, bytes) tuples."""
    gdtype, gshape, gdata = got
    dtype, shape, data = expected
    assert gdtype == dtype, f"{name}: dtype {gdtype} != {dtype}"
    assert gshape == shape, f"{name}: shape {gshape} != {shape}"
    if gdata != data:
        first = next(i for i, (a, b) in enumerate(zip(gdata, data)) if a != b) \
            if len(gdata) == len(data) else min(len(gdata), len(data))
        pytest.fail(f"{name}: bytes differ ({len(gdata)} vs {len(data)} bytes, "
                    f"first difference at byte {first})")


def assert_tensor_matches(name: str, tensor: torch.Tensor, expected) -> None:
    assert_matches(name, describe(tensor), expected)


def stream_and_compare(paths: Sequence[Path], *, owned: bool = True,
                       tensor_names=None, timeout: float = 60) -> Dict[str, int]:
    """Streams paths, compares every tensor (before the iterator advances)
    with the reference, checks that every expected tensor came exactly once.
    Returns stats plus unaligned_copies."""
    from runai_model_streamer import SafetensorsStreamer

    expected = reference_all(paths)
    if tensor_names is not None:
        expected = {k: v for k, v in expected.items() if k in set(tensor_names)}

    def run():
        seen = {}
        kept = []
        with SafetensorsStreamer() as streamer:
            streamer.stream_files([str(p) for p in paths], owned=owned,
                                  tensor_names=tensor_names)
            assert streamer.total_size == sum(len(v[2]) for v in expected.values())
            for name, tensor in streamer.get_tensors():
                assert name in expected, f"unexpected tensor {name}"
                assert name not in seen, f"tensor {name} delivered twice"
                assert_matches(name, describe(tensor), expected[name])
                seen[name] = True
                if owned:
                    kept.append((name, tensor))
            stats = streamer.stats()
            stats["unaligned_copies"] = streamer.unaligned_copies
        assert set(seen) == set(expected), f"missing: {sorted(set(expected) - set(seen))[:10]}"
        # owned=True: the tensors stay valid after the loop and after close().
        for name, tensor in kept:
            assert_tensor_matches(name, tensor, expected[name])
        return stats

    return call_with_timeout(run, timeout)


@pytest.fixture
def set_env(monkeypatch):
    def _set(**values):
        for k, v in values.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, str(v))
    return _set


@pytest.fixture
def small_checkpoint(tmp_path) -> List[Path]:
    """Two files with a handful of tensors of a few dtypes."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    a = {
        "embed.weight": torch.randn(64, 32, generator=g).to(torch.bfloat16),
        "layer.0.norm": torch.randn(32, generator=g),
        "layer.0.ids": torch.arange(10, dtype=torch.int64),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 8),
    }
    b = {
        "layer.1.weight": torch.randn(32, 32, generator=g).to(torch.float16),
        "layer.1.mask": torch.rand(7, generator=g) > 0.5,
        "lm_head.weight": torch.randn(16, 32, generator=g),
    }
    pa, pb = tmp_path / "model-1.safetensors", tmp_path / "model-2.safetensors"
    save_file(a, str(pa))
    save_file(b, str(pb))
    return [pa, pb]
