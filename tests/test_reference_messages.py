"""The phrases callers of the reference implementation match in its errors.

Its tests (and so, likely, its users') match "exceeds limit", "not valid
JSON", "Shape claims N bytes ... but offsets reserve M", "overlaps with next
tensor", "Unsupported dtype ... <name>", "truncated", "extra" and "start"
with assertRaisesRegex(ValueError, ...). Each case here is a real malformed
file, which safetensors.safe_open refuses too; the error must be a
RunaiStreamerInvalidInputException (a ValueError), carry the phrase, and
still name the file. Both entry points that read headers are checked:
SafetensorsStreamer.stream_file and safetensors_pytorch.prepare_request.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runai_model_streamer import RunaiStreamerInvalidInputException, SafetensorsStreamer
from runai_model_streamer.safetensors_streamer import safetensors_pytorch
from conftest import call_with_timeout, write_header_file

safe_open = pytest.importorskip("safetensors").safe_open


def _u8(begin, end, n=None):
    return {"dtype": "U8", "shape": [end - begin if n is None else n], "data_offsets": [begin, end]}


# case -> (header, header length or None for its own, data, regex)
CASES = {
    "header_too_large": (b"{}", 100 * 1024 * 1024 + 1, b"", r"exceeds limit"),
    "invalid_json": ('{"test": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]', None, b"",
                     r"not valid JSON"),
    "shape_mismatch": ({"test_tensor": {"dtype": "F32", "shape": [10], "data_offsets": [0, 4]}},
                       None, b"\x00" * 4, r"Shape claims 40 bytes.*but offsets reserve 4"),
    "overlapping": ({"A": _u8(0, 10), "B": _u8(5, 15)}, None, b"\x00" * 20,
                    r"overlaps with next tensor"),
    "overlapping_keys_reversed": ({"B": _u8(5, 15), "A": _u8(0, 10)}, None, b"\x00" * 15,
                                  r"overlaps with next tensor"),
    "unknown_dtype": ({"test_tensor": {"dtype": "ALIEN_TYPE_128", "shape": [1],
                                       "data_offsets": [0, 4]}}, None, b"\x00" * 4,
                      r"Unsupported dtype.*ALIEN_TYPE_128"),
    "truncated_header": (b"short", 100, b"", r"truncated"),
    "truncated_data": ({"test_tensor": _u8(0, 100)}, None, b"\x00" * 10, r"truncated"),
    "extra_trailing_bytes": ({"test_tensor": _u8(0, 10)}, None, b"\x00" * 25, r"extra"),
    "gap_before_first_tensor": ({"test_tensor": _u8(5, 15, 10)}, None, b"\x00" * 15, r"start"),
    "no_tensors_but_data": ({}, None, b"\x00" * 3, r"extra"),
}


def _make(tmp_path: Path, case: str) -> Path:
    header, header_len, data, _ = CASES[case]
    return write_header_file(tmp_path / f"{case}.st", header, data, header_len=header_len)


def _stream_file(path: Path, **kw) -> None:
    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(str(path), None, "cpu", **kw)
            list(s.get_tensors())
    call_with_timeout(run, timeout=30)


def _prepare(path: Path, **_kw) -> None:
    call_with_timeout(lambda: safetensors_pytorch.prepare_request(None, [str(path)], None),
                      timeout=30)


ENTRY_POINTS = {"stream_file": _stream_file, "prepare_request": _prepare}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_phrase(tmp_path, case, entry):
    path = _make(tmp_path, case)
    # The file is malformed by safetensors' own judgement, not just ours.
    with pytest.raises(Exception):
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    with pytest.raises(ValueError) as info:
        ENTRY_POINTS[entry](path)
    err = info.value
    assert isinstance(err, RunaiStreamerInvalidInputException), repr(err)
    msg = str(err)
    assert re.search(CASES[case][3], msg), f"{CASES[case][3]!r} not in {msg!r}"
    assert str(path) in msg, f"the message does not name the file: {msg}"


def test_tensor_names_does_not_bypass_validation(tmp_path):
    """An overlap among tensors that tensor_names does not ask for still
    fails the load: the offset table as a whole cannot be trusted."""
    path = write_header_file(tmp_path / "filtered_overlap.st", {
        "A": _u8(0, 10), "B": _u8(10, 20), "C": _u8(15, 25, 10),
    }, b"\x00" * 25)
    with pytest.raises(RunaiStreamerInvalidInputException, match="overlaps with next tensor"):
        _stream_file(path, tensor_names={"A"})


def test_tensor_names_does_not_avoid_truncation(tmp_path):
    path = write_header_file(tmp_path / "filtered_truncated.st", {
        "A": _u8(0, 10), "B": _u8(10, 110),
    }, b"\x01" * 10 + b"\x00" * 10)
    with pytest.raises(RunaiStreamerInvalidInputException, match="truncated"):
        _stream_file(path, tensor_names={"A"})


def test_shape_message_format(tmp_path):
    """The whole sentence, as the reference words it, plus our detail."""
    path = _make(tmp_path, "shape_mismatch")
    with pytest.raises(RunaiStreamerInvalidInputException) as info:
        _stream_file(path)
    assert ("Shape claims 40 bytes ([10] x F32), but offsets reserve 4 bytes"
            in str(info.value)), str(info.value)
    assert "test_tensor" in str(info.value)


def test_overlap_names_both_tensors(tmp_path):
    path = _make(tmp_path, "overlapping_keys_reversed")
    with pytest.raises(RunaiStreamerInvalidInputException) as info:
        _stream_file(path)
    assert re.search(r'"A" \[0,10\) overlaps with next tensor "B" \[5,15\)', str(info.value)), \
        str(info.value)

