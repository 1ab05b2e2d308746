"""runai_model_streamer.safetensors_streamer.safetensors_pytorch: the
reference's helpers, over this library's header reader, checked byte for
byte against safetensors.safe_open."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from runai_model_streamer import RunaiStreamerInvalidInputException
from runai_model_streamer.safetensors_streamer import safetensors_pytorch as sp
from runai_model_streamer.safetensors_streamer.safetensors_pytorch import (
    Offsets,
    SafetensorMetadata,
    create_torch_tensor,
    element_size_of,
    get_safetensors_dtype_map,
    prepare_request,
    requires_alignment_copy,
)
from conftest import (
    assert_matches,
    build_file_bytes,
    describe,
    make_random_checkpoint,
    reference,
    tensor_bytes,
    write_header_file,
)

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# Every dtype this torch holds, by safetensors name, as torch names it.
_TORCH_NAMES = {
    "BOOL": "bool", "F4": "float4_e2m1fn_x2", "U8": "uint8", "I8": "int8",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "I16": "int16",
    "U16": "uint16", "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
    "F32": "float32", "C64": "complex64", "F64": "float64", "I64": "int64", "U64": "uint64",
}
TORCH_DTYPES = {st: getattr(torch, n) for st, n in _TORCH_NAMES.items() if hasattr(torch, n)}


def _random(rng: random.Random, dtype: torch.dtype, shape) -> torch.Tensor:
    count = int(np.prod(shape)) if shape else 1
    if count == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    raw = bytes(rng.getrandbits(1 if dtype == torch.bool else 8)
                for _ in range(count * dtype.itemsize))
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(tuple(shape))


@pytest.fixture
def every_dtype_file(tmp_path) -> Path:
    """Every dtype this torch has, in several shapes (0-d and empty too),
    written by safetensors."""
    rng = random.Random(11)
    tensors = {}
    for st, dtype in TORCH_DTYPES.items():
        for shape in [(5, 4), (6,), (), (0, 2), (2, 0)]:
            if st == "F4" and shape == ():
                continue  # safetensors cannot write a 0-d F4 tensor
            tensors[f"{st}.{len(shape)}.{'x'.join(map(str, shape))}"] = _random(rng, dtype, shape)
    path = tmp_path / "every.safetensors"
    save_file(tensors, str(path))
    return path


def _header(path: Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n, json.loads(raw[8:8 + n]), raw


# ---------------------------------------------------------------------------
# The dtype map and element sizes
# ---------------------------------------------------------------------------

def test_dtype_map_is_what_safe_open_returns(every_dtype_file):
    m = get_safetensors_dtype_map()
    assert set(m) == set(TORCH_DTYPES)
    _, header, _ = _header(every_dtype_file)
    with safe_open(str(every_dtype_file), framework="pt") as f:
        for name in f.keys():
            assert m[header[name]["dtype"]] == f.get_tensor(name).dtype, name


def test_dtype_map_is_a_copy():
    m = get_safetensors_dtype_map()
    m["F32"] = torch.int8
    del m["BF16"]
    assert get_safetensors_dtype_map()["F32"] == torch.float32
    assert sp.safetensors_to_torch_dtype["BF16"] == torch.bfloat16


def test_element_size_of_every_dtype():
    for dtype in get_safetensors_dtype_map().values():
        assert element_size_of(dtype) == torch.tensor([], dtype=dtype).element_size(), dtype


def test_offsets():
    o = Offsets([16, 48])
    assert (o.start, o.end, o.get_diff()) == (16, 48, 32)
    assert o == Offsets((16, 48)) and o != Offsets([16, 47])


# ---------------------------------------------------------------------------
# SafetensorMetadata
# ---------------------------------------------------------------------------

def test_metadata_of_every_header_entry(every_dtype_file):
    _, header, _ = _header(every_dtype_file)
    with safe_open(str(every_dtype_file), framework="pt") as f:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            m = SafetensorMetadata(name, entry)
            t = f.get_tensor(name)
            assert m.name == name and m.dtype == entry["dtype"] and m.shape == entry["shape"]
            assert (m.offsets.start, m.offsets.end) == tuple(entry["data_offsets"])
            assert m.get_bytesize() == len(tensor_bytes(t))
            count = 1
            for d in entry["shape"]:
                count *= d
            assert m.get_item_count() == count
            assert m.get_torch_dtype() == t.dtype
            assert m.get_element_size() == t.element_size()
            assert tuple(m.get_torch_shape()) == tuple(t.shape)


def test_metadata_f4_counts_values():
    m = SafetensorMetadata("w", {"dtype": "F4", "shape": [2, 6], "data_offsets": [0, 6]})
    assert (m.get_item_count(), m.get_element_size(), m.get_bytesize()) == (12, 1, 6)
    assert m.get_torch_shape() == [2, 3] and m.get_torch_dtype() == torch.float4_e2m1fn_x2


@pytest.mark.parametrize("entry, pattern", [
    ({"dtype": "F32", "shape": [10], "data_offsets": [0, 4]},
     r"Corrupted Tensor 'w': Shape claims 40 bytes \(\[10\] x F32\), but offsets reserve 4 bytes"),
    ({"dtype": "F4", "shape": [2, 6], "data_offsets": [0, 12]},
     r"Shape claims 6 bytes .*offsets reserve 12"),
    ({"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}, r"byte boundary"),
    ({"dtype": "ALIEN_TYPE_128", "shape": [1], "data_offsets": [0, 4]},
     r"Unsupported dtype 'ALIEN_TYPE_128' in tensor 'w'"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, r"start"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, r"negative"),
    ({"dtype": "F32", "shape": [1]}, r"data_offsets"),
    ({"dtype": "F32", "data_offsets": [0, 4]}, r"shape"),
])
def test_metadata_refuses_inconsistent_entries(entry, pattern):
    with pytest.raises(RunaiStreamerInvalidInputException, match=pattern) as info:
        SafetensorMetadata("w", entry, path="/x/model.safetensors")
    assert "/x/model.safetensors" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_metadata_of_a_dtype_torch_lacks():
    """F6 is a valid entry (6 bits a value: 8 values in 6 bytes); only asking
    for its torch dtype fails, naming tensor, dtype and torch version."""
    m = SafetensorMetadata("w", {"dtype": "F6_E2M3", "shape": [8], "data_offsets": [0, 6]},
                           path="/x/m.safetensors")
    assert m.get_bytesize() == 6 and m.get_item_count() == 8
    with pytest.raises(RunaiStreamerInvalidInputException) as info:
        m.get_torch_dtype()
    msg = str(info.value)
    for part in ("Unsupported dtype 'F6_E2M3'", "'w'", "/x/m.safetensors", torch.__version__):
        assert part in msg, msg
    with pytest.raises(RunaiStreamerInvalidInputException):
        m.get_element_size()


# ---------------------------------------------------------------------------
# create_torch_tensor and requires_alignment_copy
# ---------------------------------------------------------------------------

def _buffers(path: Path):
    """(metadata, uint8 buffer of exactly its bytes) for every tensor, the
    buffer shaped (1, n) over the file's bytes, as the reference's chunks
    are."""
    data_offset, header, raw = _header(path)
    pool = np.frombuffer(bytearray(raw), dtype=np.uint8)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        m = SafetensorMetadata(name, entry, path=str(path))
        begin = data_offset + m.offsets.start
        yield m, torch.from_numpy(pool[begin:begin + m.get_bytesize()]).view(1, -1)


def test_create_torch_tensor_matches_safe_open(every_dtype_file):
    expected = reference(every_dtype_file)
    seen = 0
    for m, buf in _buffers(every_dtype_file):
        if requires_alignment_copy(buf, m):
            buf = buf.clone()
        t = create_torch_tensor(buf, m)
        assert_matches(m.name, describe(t), expected[m.name])
        if m.get_item_count():
            assert t.data_ptr() == buf.data_ptr(), f"{m.name}: copied"
        seen += 1
    assert seen == len(expected)


def test_create_torch_tensor_at_odd_offsets(tmp_path):
    """A raw file with no alignment: each tensor's buffer at an odd address
    is flagged, and its copy (made the way a caller would) gives safe_open's
    bytes."""
    rng = random.Random(3)
    entries = [("lead", "U8", [3], b"\x01\x02\x03")]
    for st, dtype in TORCH_DTYPES.items():
        entries.append((f"t.{st}", st, [4, 2] if st != "F4" else [4, 4],
                        tensor_bytes(_random(rng, dtype, (4, 2)))))
    path = tmp_path / "odd.safetensors"
    path.write_bytes(build_file_bytes(entries, pad=False))
    expected = reference(path)
    flagged = 0
    for m, buf in _buffers(path):
        needs = requires_alignment_copy(buf, m)
        assert needs == (m.get_element_size() > 1 and buf.data_ptr() % m.get_element_size() != 0)
        if needs:
            flagged += 1
            buf = buf.clone()
            assert not requires_alignment_copy(buf, m)
        assert_matches(m.name, describe(create_torch_tensor(buf, m)), expected[m.name])
    assert flagged > 0, "the fixture must put some tensor at an address its dtype cannot use"


def test_requires_alignment_copy_cases():
    pool = np.zeros(4096, dtype=np.uint8)
    assert pool.ctypes.data % 8 == 0

    def at(offset, n):
        return torch.from_numpy(pool[offset:offset + n]).view(1, -1)

    def meta(shape, dtype, n):
        return SafetensorMetadata("w", {"shape": shape, "dtype": dtype, "data_offsets": [0, n]})

    assert not requires_alignment_copy(at(0, 8), meta([4], "BF16", 8))
    assert requires_alignment_copy(at(1, 8), meta([4], "BF16", 8))
    assert requires_alignment_copy(at(4, 16), meta([2], "F64", 16))
    assert not requires_alignment_copy(at(8, 16), meta([2], "F64", 16))
    assert not requires_alignment_copy(at(1, 4), meta([4], "F8_E4M3", 4))
    assert not requires_alignment_copy(at(1, 2), meta([2, 2], "F4", 2))
    assert not requires_alignment_copy(at(1, 0), meta([0], "BF16", 0))


def test_create_torch_tensor_zero_size():
    m = SafetensorMetadata("z", {"dtype": "BF16", "shape": [0, 7], "data_offsets": [16, 16]})
    t = create_torch_tensor(torch.empty(0, dtype=torch.uint8), m)
    assert t.dtype == torch.bfloat16 and tuple(t.shape) == (0, 7)
    m = SafetensorMetadata("z", {"dtype": "F4", "shape": [3, 0], "data_offsets": [0, 0]})
    t = create_torch_tensor(torch.empty(0, dtype=torch.uint8), m)
    assert t.dtype == torch.float4_e2m1fn_x2 and tuple(t.shape) == (3, 0)


def test_create_torch_tensor_refuses_a_wrong_buffer():
    m = SafetensorMetadata("w", {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})
    with pytest.raises(RunaiStreamerInvalidInputException, match="8 bytes, the buffer holds 4"):
        create_torch_tensor(torch.zeros(4, dtype=torch.uint8), m)
    with pytest.raises(RunaiStreamerInvalidInputException, match="uint8"):
        create_torch_tensor(torch.zeros(2, dtype=torch.float32), m)
    odd = SafetensorMetadata("w", {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]})
    with pytest.raises(RunaiStreamerInvalidInputException, match="multiple of 2"):
        create_torch_tensor(torch.zeros(3, dtype=torch.uint8), odd)


# ---------------------------------------------------------------------------
# prepare_request
# ---------------------------------------------------------------------------

def _check_prepared(paths: List[Path], prepared) -> int:
    """Each file's entry against its header, and the bytes it describes,
    read at data_offset + start with the read sizes, against safe_open."""
    assert len(prepared) == len(paths)
    count = 0
    for path, (data_offset, metas, sizes) in zip(paths, prepared):
        want_offset, header, raw = _header(path)
        assert data_offset == want_offset
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        assert sorted(m.name for m in metas) == sorted(entries)
        assert [(m.offsets.start, m.get_bytesize()) for m in metas] == \
            sorted((m.offsets.start, m.get_bytesize()) for m in metas)
        assert sizes == [m.get_bytesize() for m in metas]
        expected = reference(path)
        pos = data_offset
        for m, size in zip(metas, sizes):
            e = entries[m.name]
            assert (m.dtype, m.shape, [m.offsets.start, m.offsets.end]) == \
                (e["dtype"], e["shape"], e["data_offsets"])
            assert data_offset + m.offsets.start == pos  # the read sizes tile the data
            chunk = bytearray(raw[pos:pos + size])
            buf = torch.frombuffer(chunk, dtype=torch.uint8) if size else \
                torch.empty(0, dtype=torch.uint8)
            assert_matches(m.name, describe(create_torch_tensor(buf, m)), expected[m.name])
            pos += size
            count += 1
        assert pos == len(raw)
    return count


@pytest.mark.parametrize("writer", ["safetensors", "raw"])
def test_prepare_request_matches_the_files(tmp_path, writer):
    paths = make_random_checkpoint(tmp_path, seed=21, writer=writer, max_files=4,
                                   max_tensors=30)
    prepared = prepare_request(object(), [str(p) for p in paths], None)  # fs is ignored
    assert _check_prepared(paths, prepared) > 0


def test_prepare_request_every_dtype(every_dtype_file):
    assert _check_prepared([every_dtype_file], prepare_request(None, [str(every_dtype_file)], None))


def test_prepare_request_zero_size_tensor_sorts_first(tmp_path):
    """data_offsets [16, 16] and [16, 48] share a start: the empty one comes
    first, whatever the key order."""
    path = write_header_file(tmp_path / "z.safetensors", {
        "real": {"dtype": "F32", "shape": [8], "data_offsets": [16, 48]},
        "head": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "empty": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]},
    }, bytes(range(48)))
    [(offset, metas, sizes)] = prepare_request(None, [str(path)], None)
    assert [m.name for m in metas] == ["head", "empty", "real"]
    assert sizes == [16, 0, 32]
    assert _check_prepared([path], [(offset, metas, sizes)]) == 3


def test_prepare_request_lists_a_dtype_torch_lacks(tmp_path):
    """Every tensor of the file is listed, the F6 one too (its bytes
    counted at 6 bits a value); only its torch dtype is refused."""
    path = tmp_path / "f6.safetensors"
    path.write_bytes(build_file_bytes([
        ("a", "F32", [2], bytes(8)),
        ("f6", "F6_E3M2", [4, 4], bytes(range(12))),
        ("b", "U8", [3], b"xyz"),
    ]))
    [(offset, metas, sizes)] = prepare_request(None, [str(path)], None)
    assert [m.name for m in metas] == ["a", "f6", "b"] and sizes == [8, 12, 3]
    with pytest.raises(RunaiStreamerInvalidInputException, match="F6_E3M2"):
        metas[1].get_torch_dtype()
    raw = path.read_bytes()
    with safe_open(str(path), framework="pt") as f:
        b = create_torch_tensor(torch.frombuffer(bytearray(raw[offset + 20:offset + 23]),
                                                 dtype=torch.uint8), metas[2])
        assert_matches("b", describe(b), describe(f.get_tensor("b")))


def test_prepare_request_arguments(tmp_path, every_dtype_file):
    assert prepare_request(None, [], None) == []
    with pytest.raises(RunaiStreamerInvalidInputException, match="list"):
        prepare_request(None, str(every_dtype_file), None)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        prepare_request(None, [str(tmp_path / "missing.safetensors")], None)
    # PathLike entries are fine.
    [(offset, metas, _)] = prepare_request(None, [every_dtype_file], None)
    assert offset == _header(every_dtype_file)[0] and metas
