"""Every dtype safetensors 0.8 writes, streamed byte for byte.

Each dtype torch can hold is written by safetensors.torch.save_file from a
torch tensor, streamed with SafetensorsStreamer and compared (dtype, shape,
bytes) with safetensors.safe_open. F6_E2M3 and F6_E3M2, which torch has no
dtype for, are written by hand: the file must still parse, its other
tensors stream, and asking for the F6 tensor is a clear error.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch

from runai_model_streamer import RunaiStreamerInvalidInputException, SafetensorsStreamer
from conftest import (
    assert_matches,
    build_file_bytes,
    call_with_timeout,
    describe,
    reference,
    stream_and_compare,
    tensor_bytes,
    write_header_file,
)

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# safetensors 0.8's Dtype enum: name -> (bits per element, torch attribute or
# None where torch has no dtype). Written out here, independently of the
# package's own table, so the two check each other.
SAFETENSORS_08: Dict[str, tuple] = {
    "BOOL": (8, "bool"),
    "F4": (4, "float4_e2m1fn_x2"),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "C64": (64, "complex64"),
    "F64": (64, "float64"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
}
TORCH_DTYPES = {st: getattr(torch, name) for st, (_, name) in SAFETENSORS_08.items()
                if name is not None and hasattr(torch, name)}
NO_TORCH = sorted(set(SAFETENSORS_08) - set(TORCH_DTYPES))

# Torch shapes to write for each dtype: 0-d, 1-d odd, 2-d, 3-d, empty in
# each position. F4's torch element is a pair of values, so a 0-d F4 tensor
# would be one value pair but safetensors writes its shape as [] (one
# value), which it then refuses itself: no 0-d for F4.
SHAPES: List[tuple] = [(), (7,), (3, 5), (2, 3, 4), (0,), (0, 3), (3, 0)]


def _shapes(st: str) -> List[tuple]:
    return [s for s in SHAPES if not (st == "F4" and s == ())]


def _tensor(rng: random.Random, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    count = 1
    for d in shape:
        count *= d
    if count == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    n = count * dtype.itemsize
    if dtype == torch.bool:
        raw = bytes(rng.getrandbits(1) for _ in range(n))
    else:
        raw = bytes(rng.getrandbits(8) for _ in range(n))
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(tuple(shape))


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def _stream(path: Path, **kw):
    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(str(path), **kw)
            metas = {m.name: m for ms in s.files_to_tensors_metadata.values() for m in ms}
            return metas, {name: describe(t) for name, t in s.get_tensors()}
    return call_with_timeout(run, timeout=60)


def test_the_table_is_safetensors_08s():
    """The package knows exactly safetensors 0.8's dtypes and widths, and
    maps every one this torch has to the dtype safetensors.safe_open uses."""
    from runai_model_streamer import _dtypes

    assert tuple(int(x) for x in safetensors.__version__.split(".")[:2]) >= (0, 8)
    assert _dtypes.SAFETENSORS_BITS == {k: v[0] for k, v in SAFETENSORS_08.items()}
    assert _dtypes.SAFETENSORS_TO_TORCH == TORCH_DTYPES
    # torch 2.9 has every dtype but the two 6-bit floats.
    if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9):
        assert NO_TORCH == ["F6_E2M3", "F6_E3M2"]


@pytest.mark.parametrize("st", sorted(TORCH_DTYPES))
def test_dtype_round_trip(tmp_path, st):
    """save_file writes every shape of this dtype; the streamed tensors match
    safe_open's in dtype, shape and bytes, and the metadata matches the
    header safetensors wrote."""
    dtype = TORCH_DTYPES[st]
    rng = random.Random(st)
    tensors = {f"{st}.{'x'.join(map(str, s)) or 'scalar'}": _tensor(rng, dtype, s)
               for s in _shapes(st)}
    path = tmp_path / f"{st}.safetensors"
    save_file(tensors, str(path))
    header = _header(path)

    expected = reference(path)
    assert set(expected) == set(tensors)
    for name, t in tensors.items():
        # safe_open itself reads back what was written.
        assert expected[name] == describe(t), name
    stream_and_compare([path])
    stream_and_compare([path], owned=False)

    metas, _ = _stream(path)
    with safe_open(str(path), framework="pt") as f:
        for name, m in metas.items():
            assert m.dtype == header[name]["dtype"] == st == f.get_slice(name).get_dtype()
            assert m.shape == header[name]["shape"] == f.get_slice(name).get_shape()
            assert [m.offsets.start, m.offsets.end] == header[name]["data_offsets"]
            assert m.get_torch_dtype() == dtype
            assert tuple(m.get_torch_shape()) == expected[name][1]
            assert m.get_bytesize() == len(expected[name][2])


@pytest.mark.parametrize("st", sorted(TORCH_DTYPES))
def test_dtype_at_odd_offsets(tmp_path, st):
    """Hand-packed with a 1-byte tensor first, so every tensor of a wider
    dtype sits at an odd file offset: same bytes, whatever address the
    engine reads them to (copied to aligned memory when it must)."""
    dtype = TORCH_DTYPES[st]
    rng = random.Random(f"odd-{st}")
    entries = [("lead", "U8", [1], b"\x5a")]
    for i, shape in enumerate([(7,), (2, 3, 4), (0,)]):
        if st == "F4":  # the header counts 4-bit values: twice the last dim
            header_shape = list(shape[:-1]) + [shape[-1] * 2]
        else:
            header_shape = list(shape)
        entries.append((f"t{i}", st, header_shape, tensor_bytes(_tensor(rng, dtype, shape))))
    path = tmp_path / f"odd-{st}.safetensors"
    path.write_bytes(build_file_bytes(entries, pad=False))
    stream_and_compare([path])
    stream_and_compare([path], owned=False)


def test_every_dtype_in_one_file(tmp_path):
    """All of them together, as safetensors orders them (by alignment)."""
    rng = random.Random(8)
    tensors = {f"w.{st}": _tensor(rng, dtype, (4, 6)) for st, dtype in TORCH_DTYPES.items()}
    path = tmp_path / "every.safetensors"
    save_file(tensors, str(path))
    stream_and_compare([path])


# ---------------------------------------------------------------------------
# F4: two values per byte
# ---------------------------------------------------------------------------

def test_f4_shape_counts_values_not_bytes(tmp_path):
    """safetensors writes a torch [2, 3] float4_e2m1fn_x2 tensor as F4 [2, 6]
    in 6 bytes; the streamer gives back the [2, 3] torch tensor, as
    safe_open does, and reports the header's shape in its metadata."""
    t = torch.arange(6, dtype=torch.uint8).view(torch.float4_e2m1fn_x2).reshape(2, 3)
    path = tmp_path / "f4.safetensors"
    save_file({"w": t}, str(path))
    assert _header(path)["w"] == {"dtype": "F4", "shape": [2, 6], "data_offsets": [0, 6]}
    metas, got = _stream(path)
    assert metas["w"].shape == [2, 6] and metas["w"].get_item_count() == 12
    assert metas["w"].get_bytesize() == 6 and metas["w"].get_element_size() == 1
    assert metas["w"].get_torch_shape() == [2, 3]
    assert_matches("w", got["w"], reference(path)["w"])
    assert got["w"] == (torch.float4_e2m1fn_x2, (2, 3), bytes(range(6)))


def test_f4_odd_last_dim(tmp_path):
    """F4 [2, 3] is 6 values in 3 bytes: a valid file (safe_open opens it)
    whose tensor torch cannot shape, since a torch element holds two values
    of the last dimension. safe_open's get_tensor
    refuses it; so does the streamer, naming file and tensor, while the
    file's other tensors still stream."""
    path = write_header_file(tmp_path / "f4odd.safetensors", {
        "odd": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]},
        "ok": {"dtype": "F4", "shape": [1, 2], "data_offsets": [3, 4]},
    }, b"\x01\x02\x03\x04")
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("odd").get_shape() == [2, 3]
        with pytest.raises(Exception):
            f.get_tensor("odd")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            s.stream_file(str(path))
    msg = str(info.value)
    assert str(path) in msg and "'odd'" in msg and "F4" in msg and "multiple of 2" in msg
    _, got = _stream(path, tensor_names=["ok"])
    with safe_open(str(path), framework="pt") as f:
        assert_matches("ok", got["ok"], describe(f.get_tensor("ok")))
    assert got["ok"] == (torch.float4_e2m1fn_x2, (1, 1), b"\x04")


@pytest.mark.parametrize("shape, nbytes", [([3], 2), ([3], 1), ([1], 1), ([], 0), ([5, 1], 3)])
def test_f4_not_on_a_byte_boundary(tmp_path, shape, nbytes):
    """An odd number of F4 values ends mid-byte: safetensors refuses the
    header, and so does the library, saying why."""
    path = write_header_file(tmp_path / "f4.safetensors",
                             {"w": {"dtype": "F4", "shape": shape, "data_offsets": [0, nbytes]}},
                             b"\x00" * nbytes)
    with pytest.raises(Exception):
        with safe_open(str(path), framework="pt"):
            pass
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            s.stream_file(str(path))
    msg = str(info.value)
    assert str(path) in msg and '"w"' in msg and "byte boundary" in msg


def test_f4_zero_size(tmp_path):
    """[3, 0] F4 is an empty [3, 0] tensor, like safe_open's; [0, 3] has an
    odd last dim, which safe_open refuses, and so does the streamer."""
    path = write_header_file(tmp_path / "f4z.safetensors", {
        "e30": {"dtype": "F4", "shape": [3, 0], "data_offsets": [0, 0]},
        "e03": {"dtype": "F4", "shape": [0, 3], "data_offsets": [0, 0]},
        "e0": {"dtype": "F4", "shape": [0], "data_offsets": [0, 0]},
    })
    _, got = _stream(path, tensor_names=["e30", "e0"])
    with safe_open(str(path), framework="pt") as f:
        for name in ("e30", "e0"):
            assert_matches(name, got[name], describe(f.get_tensor(name)))
        with pytest.raises(Exception):
            f.get_tensor("e03")
    with pytest.raises(RunaiStreamerInvalidInputException, match="e03"):
        _stream(path, tensor_names=["e03"])


# ---------------------------------------------------------------------------
# F6: no torch dtype
# ---------------------------------------------------------------------------

def _f6_file(tmp_path: Path) -> Path:
    rng = random.Random(6)
    f32 = tensor_bytes(_tensor(rng, torch.float32, (3,)))
    f4 = tensor_bytes(_tensor(rng, torch.float4_e2m1fn_x2, (2, 2)))
    entries = [
        ("before", "F32", [3], f32),
        ("e2m3", "F6_E2M3", [2, 4], bytes(rng.getrandbits(8) for _ in range(6))),  # 8 x 6 bits
        ("e3m2", "F6_E3M2", [4], bytes(rng.getrandbits(8) for _ in range(3))),
        ("f4", "F4", [2, 4], f4),
        ("after", "U8", [5], bytes(range(5))),
    ]
    path = tmp_path / "f6.safetensors"
    path.write_bytes(build_file_bytes(entries))
    return path


@pytest.mark.parametrize("st", NO_TORCH)
def test_dtype_torch_lacks_is_a_clear_error(tmp_path, st):
    path = _f6_file(tmp_path)
    name = {"F6_E2M3": "e2m3", "F6_E3M2": "e3m2"}[st]
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            s.stream_file(str(path), tensor_names=[name, "before"])
        assert s.files_to_tensors_metadata == {} and s.total_size == 0
    msg = str(info.value)
    for part in (str(path), repr(name), st, torch.__version__, "Unsupported dtype"):
        assert part in msg, f"{part!r} not in {msg!r}"


def test_file_with_f6_streams_its_other_tensors(tmp_path):
    """safe_open opens the file (the header is valid); the library parses it
    too, so the tensors torch can hold stream with tensor_names."""
    path = _f6_file(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("e2m3").get_dtype() == "F6_E2M3"
        assert f.get_slice("e3m2").get_shape() == [4]
        expected = {n: describe(f.get_tensor(n)) for n in ("before", "f4", "after")}
    metas, got = _stream(path, tensor_names=["before", "f4", "after"])
    assert got.keys() == expected.keys()
    for name in expected:
        assert_matches(name, got[name], expected[name])
    # Streaming everything names the first tensor torch cannot hold.
    with pytest.raises(RunaiStreamerInvalidInputException, match="F6_E"):
        _stream(path)


def test_f6_byte_size_is_six_bits_a_value(tmp_path):
    """F6 [8] is 6 bytes; offsets reserving 8 (as if one byte a value) are a
    shape mismatch, in the reference's words."""
    path = write_header_file(tmp_path / "f6bad.safetensors",
                             {"w": {"dtype": "F6_E3M2", "shape": [8], "data_offsets": [0, 8]}},
                             b"\x00" * 8)
    with pytest.raises(Exception):
        with safe_open(str(path), framework="pt"):
            pass
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException,
                           match=r"Shape claims 6 bytes.*but offsets reserve 8"):
            s.stream_file(str(path))


def test_torch_without_a_dtype_says_which_is_missing(tmp_path, monkeypatch):
    """On a torch without float4_e2m1fn_x2 (simulated), asking for an F4
    tensor names the torch attribute it needs and this torch's version."""
    from runai_model_streamer import _dtypes

    t = torch.arange(4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    path = tmp_path / "f4.safetensors"
    save_file({"w": t, "ok": torch.ones(2)}, str(path))
    monkeypatch.delitem(_dtypes.SAFETENSORS_TO_TORCH, "F4")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            s.stream_file(str(path))
    msg = str(info.value)
    for part in (str(path), "'w'", "F4", "float4_e2m1fn_x2", torch.__version__):
        assert part in msg, f"{part!r} not in {msg!r}"
    _, got = _stream(path, tensor_names=["ok"])
    assert_matches("ok", got["ok"], reference(path)["ok"])


def test_unsigned_values_survive(tmp_path):
    """U16/U32/U64 values above the signed range come back unchanged (no
    sign reinterpretation on the way)."""
    tensors = {
        "u16": torch.tensor([0, 1, 0x7FFF, 0x8000, 0xFFFF], dtype=torch.int32).to(torch.uint16),
        "u32": torch.tensor([0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF], dtype=torch.int64).to(torch.uint32),
        "u64": torch.tensor([0, 2**63 - 1, -(2**63), -1], dtype=torch.int64).view(torch.uint64),
        "c64": torch.tensor([1 + 2j, -3.5 + 0.25j, float("inf") + float("nan") * 1j],
                            dtype=torch.complex64),
    }
    path = tmp_path / "unsigned.safetensors"
    save_file(tensors, str(path))
    _, got = _stream(path)
    for name, t in tensors.items():
        assert_matches(name, got[name], describe(t))
        assert_matches(name, got[name], reference(path)[name])
