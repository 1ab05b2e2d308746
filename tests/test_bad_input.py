"""Bad files and bad requests: a clear exception naming the file and the
problem; no crash, no hang."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest
import torch

from runai_model_streamer import (
    RunaiStreamerInvalidInputException,
    SafetensorsStreamer,
)
from runai_model_streamer.exceptions import RunaiStreamerError
from conftest import call_with_timeout, tensor_bytes, write_header_file, write_raw_file

F32_8 = tensor_bytes(torch.arange(8, dtype=torch.float32))  # 32 bytes


def _t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _make(case: str, d: Path) -> Path:
    """Writes the bad file for a case; returns its path."""
    p = d / f"{case}.safetensors"
    if case == "missing":
        return p
    if case == "directory":
        p.mkdir()
        return p
    if case == "empty":
        p.write_bytes(b"")
    elif case == "shorter_than_8":
        p.write_bytes(b"\x10\x00\x00")
    elif case == "header_beyond_file":
        write_header_file(p, {"a": _t("F32", [8], 0, 32)}, F32_8, header_len=10_000)
    elif case == "header_too_large":
        write_header_file(p, b"{}", b"", header_len=100 * 1024 * 1024 + 8)
    elif case == "header_not_utf8":
        write_header_file(p, b'{"a\xff\xfe": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}', F32_8)
    elif case == "header_not_json":
        write_header_file(p, b"this is not json at all!", F32_8)
    elif case == "header_not_object":
        write_header_file(p, b"[1, 2, 3]", F32_8)
    elif case == "missing_data_offsets":
        write_header_file(p, {"a": {"dtype": "F32", "shape": [8]}}, F32_8)
    elif case == "malformed_data_offsets":
        write_header_file(p, {"a": {"dtype": "F32", "shape": [8], "data_offsets": "0-32"}}, F32_8)
    elif case == "data_offsets_one_number":
        write_header_file(p, {"a": {"dtype": "F32", "shape": [8], "data_offsets": [32]}}, F32_8)
    elif case == "data_offsets_reversed":
        write_header_file(p, {"a": _t("F32", [0], 32, 0)}, F32_8)
    elif case == "data_offsets_negative":
        write_header_file(p, {"a": _t("F32", [8], -32, 0)}, F32_8)
    elif case == "overlapping":
        write_header_file(p, {"a": _t("F32", [8], 0, 32), "b": _t("F32", [4], 16, 32)}, F32_8)
    elif case == "gap":
        write_header_file(p, {"b": _t("F32", [4], 24, 40), "a": _t("F32", [4], 0, 16)},
                          F32_8 + F32_8[:8])
    elif case == "past_end_of_file":
        write_header_file(p, {"a": _t("F32", [8], 0, 32), "b": _t("F32", [8], 32, 64)}, F32_8)
    elif case == "shape_mismatch":
        write_header_file(p, {"a": _t("F32", [3, 3], 0, 32)}, F32_8)
    elif case == "dtype_mismatch":
        write_header_file(p, {"a": _t("F64", [8], 0, 32)}, F32_8)
    elif case == "unknown_dtype":
        write_header_file(p, {"a": _t("F33", [8], 0, 32)}, F32_8)
    elif case == "negative_shape":
        write_header_file(p, {"a": _t("F32", [-8], 0, 32)}, F32_8)
    elif case == "no_permission":
        write_header_file(p, {"a": _t("F32", [8], 0, 32)}, F32_8)
        p.chmod(0)
    else:
        raise ValueError(case)
    return p


# case -> (exception class, regex the message must match besides the path)
CASES = {
    "missing": (FileNotFoundError, r"no such file|not (be )?found|does not exist"),
    "directory": (RunaiStreamerError, r"directory"),
    "no_permission": (PermissionError, r"permission|denied"),
    "empty": (ValueError, r"empty|short|truncat|8 bytes|header|too small"),
    "shorter_than_8": (ValueError, r"short|truncat|8 bytes|header|too small"),
    "header_beyond_file": (ValueError, r"header"),
    "header_too_large": (ValueError, r"header"),
    "header_not_utf8": (ValueError, r"utf-?8|encod"),
    "header_not_json": (ValueError, r"json"),
    "header_not_object": (ValueError, r"json|object|header"),
    "missing_data_offsets": (ValueError, r"data_offsets"),
    "malformed_data_offsets": (ValueError, r"data_offsets"),
    "data_offsets_one_number": (ValueError, r"data_offsets"),
    "data_offsets_reversed": (ValueError, r"data_offsets|offset|begin|start|end"),
    "data_offsets_negative": (ValueError, r"data_offsets|offset|negative"),
    "overlapping": (ValueError, r"overlap"),
    "gap": (ValueError, r"gap|hole|not contiguous|contiguous|cover"),
    "past_end_of_file": (ValueError, r"end of (the )?file|past|beyond|truncat|size|short"),
    "shape_mismatch": (ValueError, r"shape|bytes|size"),
    "dtype_mismatch": (ValueError, r"shape|dtype|bytes|size"),
    "unknown_dtype": (ValueError, r"dtype|F33"),
    "negative_shape": (ValueError, r"shape|negative"),
}

# Byte-level problems the message should also locate (the tensor's name).
NAMES_TENSOR = {"missing_data_offsets", "malformed_data_offsets", "shape_mismatch",
                "dtype_mismatch", "unknown_dtype", "overlapping"}


def _stream(path: Path):
    with SafetensorsStreamer() as s:
        s.stream_file(str(path))
        return [(n, t.shape) for n, t in s.get_tensors()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file(tmp_path, case):
    if case == "no_permission" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = _make(case, tmp_path)
    exc_type, problem = CASES[case]
    with pytest.raises(RunaiStreamerError) as info:
        call_with_timeout(lambda: _stream(path), timeout=30)
    err = info.value
    msg = str(err)
    assert isinstance(err, exc_type), f"{type(err).__name__} is not {exc_type.__name__}: {msg}"
    assert str(path) in msg, f"the message does not name the file: {msg}"
    assert re.search(problem, msg, re.IGNORECASE), f"the message does not say {problem!r}: {msg}"
    if case in NAMES_TENSOR:
        assert re.search(r"[\"']a[\"']", msg.replace(str(path), "")), f"tensor not named: {msg}"


def test_bad_file_among_good_ones_names_the_bad_one(tmp_path, small_checkpoint):
    bad = _make("overlapping", tmp_path)

    def run():
        with SafetensorsStreamer() as s:
            s.stream_files([str(small_checkpoint[0]), str(bad), str(small_checkpoint[1])])
            list(s.get_tensors())

    with pytest.raises(ValueError) as info:
        call_with_timeout(run)
    assert str(bad) in str(info.value)
    assert str(small_checkpoint[0]) not in str(info.value)


def test_file_truncated_after_open_fails_cleanly(tmp_path, set_env):
    """The header is fine but the data vanish before they are read: an error
    naming the file, or (if the read won the race) correct data, never a hang."""
    big = tensor_bytes(torch.arange(1 << 20, dtype=torch.float32))
    path = write_raw_file(tmp_path / "shrinks.safetensors",
                          [(f"t{i}", "F32", [1 << 20], big) for i in range(8)])
    set_env(RUNAI_STREAMER_CONCURRENCY=1, RUNAI_STREAMER_MEMORY_LIMIT=0,
            MODEL_STREAMER_READ_MODE="buffered")

    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(str(path), owned=False)
            it = s.get_tensors()
            next(it)
            with open(path, "r+b") as f:
                f.truncate(64 * 1024)
            return sum(1 for _ in it)

    try:
        call_with_timeout(run, timeout=30)
    except RunaiStreamerError as e:
        assert str(path) in str(e)


def test_unsupported_dtype_for_torch(tmp_path):
    """A dtype the format allows but torch cannot hold (F6_E2M3: torch has
    no 6-bit float) fails at stream_files, naming file, tensor and dtype,
    before any tensor. (tests/test_dtypes.py covers every dtype.)"""
    path = write_header_file(tmp_path / "f6.safetensors",
                             {"fp6": _t("F6_E2M3", [8], 0, 6), "ok": _t("F32", [1], 6, 10)},
                             b"\x00" * 10)
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            s.stream_file(str(path))
    msg = str(info.value)
    assert str(path) in msg and "fp6" in msg and "F6_E2M3" in msg


def test_dtype_this_torch_lacks(tmp_path, monkeypatch):
    """A dtype the library accepts but this torch cannot represent (simulated
    by hiding F8_E8M0, as on an older torch): InvalidInput naming the file,
    the tensor and the dtype, at stream_files, before any tensor is yielded."""
    from runai_model_streamer import _dtypes

    path = write_raw_file(tmp_path / "e8m0.safetensors", [
        ("fine", "F32", [8], F32_8),
        ("scales", "F8_E8M0", [4], b"\x7f\x80\x81\x82"),
    ])
    monkeypatch.delitem(_dtypes.SAFETENSORS_TO_TORCH, "F8_E8M0")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            s.stream_file(str(path))
        assert s.files_to_tensors_metadata == {} and s.total_size == 0
    msg = str(info.value)
    assert str(path) in msg and "scales" in msg and "F8_E8M0" in msg
    # Without that tensor the file streams fine.
    with SafetensorsStreamer() as s:
        s.stream_file(str(path), tensor_names=["fine"])
        assert [n for n, _ in s.get_tensors()] == ["fine"]


def test_no_read_permission_without_dac_override(tmp_path):
    """As root, drop the capabilities that bypass file permissions (setpriv)
    so the permission check is real."""
    import shutil
    import sys

    from conftest import REPO, subprocess_env
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("covered by test_bad_file[no_permission]")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not available")
    path = _make("no_permission", tmp_path)
    code = (
        "import sys\n"
        "from runai_model_streamer import SafetensorsStreamer\n"
        "try:\n"
        "    with SafetensorsStreamer() as s:\n"
        "        s.stream_file(sys.argv[1])\n"
        "        list(s.get_tensors())\n"
        "except PermissionError as e:\n"
        "    print('PERMISSION', e)\n"
    )
    r = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
         code, str(path)],
        capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    assert "PERMISSION" in r.stdout, r.stdout + r.stderr
    assert str(path) in r.stdout
    assert re.search(r"permission|denied", r.stdout, re.IGNORECASE)
