"""Checksum sidecars on local files: `model-streamer checksum` writes
<file>.checksums.json, the streamer checks every tensor against it before
yielding it (every read mode, tensor_names, FileStreamer ranges of whole
tensors), a stale sidecar is an error, and `model-streamer verify` reports
what matched. Every delivered tensor is compared with safetensors.safe_open."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from runai_model_streamer import (
    FileChunks,
    FileStreamer,
    RunaiStreamerChecksumError,
    SafetensorsStreamer,
)
from runai_model_streamer import cli

from conftest import assert_matches, call_with_timeout, describe, reference

SUFFIX = ".checksums.json"


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """One file of 12 tensors of 64 KiB, its sidecar written by the CLI."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    path = tmp_path / "model.safetensors"
    save_file({f"layer.{i:02d}": torch.randn(128, 128, generator=g) for i in range(12)}, str(path))
    assert cli.main(["checksum", "--no-progress", str(path)]) == 0
    return path


def sidecar_of(path: Path) -> dict:
    return json.loads(Path(str(path) + SUFFIX).read_text())


def flip(path: Path, offset: int, bit: int = 4) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def stream(path: Path, tensor_names=None, seen: List[str] = None) -> Dict[str, tuple]:
    def run():
        got = {}
        with SafetensorsStreamer() as s:
            s.stream_file(str(path), tensor_names=tensor_names)
            for name, t in s.get_tensors():
                got[name] = describe(t)
                if seen is not None:
                    seen.append(name)
        return got
    return call_with_timeout(run, 60)


def test_sidecar_format(ckpt):
    """CRC32 (zlib's, and S3's full-object CRC32) of the header, each tensor
    and the whole file, absolute offsets, a format name and a version."""
    data = ckpt.read_bytes()
    doc = sidecar_of(ckpt)
    assert doc["format"] == "model-streamer-checksums" and doc["version"] == 1
    assert doc["algorithm"] == "crc32" and doc["size"] == len(data)
    assert doc["total"] == f"{zlib.crc32(data):08x}"
    hdr_end = 8 + struct.unpack("<Q", data[:8])[0]
    assert doc["header"] == {"offsets": [0, hdr_end], "checksum": f"{zlib.crc32(data[:hdr_end]):08x}"}
    ref = reference(ckpt)
    assert [t["name"] for t in doc["tensors"]] == sorted(ref)
    for t in doc["tensors"]:
        b, e = t["offsets"]
        assert data[b:e] == ref[t["name"]][2]
        assert t["checksum"] == f"{zlib.crc32(data[b:e]):08x}"


@pytest.mark.parametrize("read_mode", ["auto", "buffered", "direct", "mmap"])
@pytest.mark.parametrize("verify", [None, "require"])
def test_clean_file_streams_byte_exact_and_checked(monkeypatch, ckpt, read_mode, verify):
    monkeypatch.setenv("MODEL_STREAMER_READ_MODE", read_mode)
    if verify:
        monkeypatch.setenv("MODEL_STREAMER_VERIFY", verify)  # the sidecar satisfies require
    got = stream(ckpt)
    want = reference(ckpt)
    assert set(got) == set(want)
    for n in want:
        assert_matches(n, got[n], want[n])
    from runai_model_streamer import _native
    st = _native.Stream([str(ckpt)])
    try:
        v = st.metadata()["files"][0]["verify"]
    finally:
        st.close()
    assert v["sidecar"] == str(ckpt) + SUFFIX and v["sidecar_entries"] == 12
    assert v["sidecar_algorithm"] == "crc32" and "sidecar_uncovered" not in v


@pytest.mark.parametrize("read_mode", ["auto", "buffered", "direct", "mmap"])
def test_flipped_byte_raises_before_the_tensor_is_yielded(monkeypatch, ckpt, read_mode):
    """A byte changed after `checksum`: RunaiStreamerChecksumError names the
    file, the tensor, the algorithm and both values; the corrupt tensor is
    never yielded, those before it are, bit for bit."""
    want = reference(ckpt)
    doc = sidecar_of(ckpt)
    bad = doc["tensors"][7]
    flip(ckpt, bad["offsets"][0] + 1000)
    monkeypatch.setenv("MODEL_STREAMER_READ_MODE", read_mode)
    monkeypatch.setenv("RUNAI_STREAMER_CONCURRENCY", "1")
    monkeypatch.setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", "65536")
    paced = read_mode in ("buffered", "direct")
    if paced:
        # The ring holds one tensor: the reader reads a tensor only once the
        # one before was taken, so every tensor before the corrupt one is
        # yielded before the error. (A mapped file cannot be paced: the
        # error may then overtake tensors already checked.)
        monkeypatch.setenv("RUNAI_STREAMER_MEMORY_LIMIT", "0")
    seen: List[str] = []
    got = {}

    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(str(ckpt))
            for name, t in s.get_tensors():
                seen.append(name)
                got[name] = describe(t)

    with pytest.raises(RunaiStreamerChecksumError) as e:
        call_with_timeout(run, 60)
    err = e.value
    assert err.uri == str(ckpt) and err.tensor == bad["name"] and err.algorithm == "crc32"
    assert err.expected == bad["checksum"] and err.computed != err.expected
    assert err.sidecar == str(ckpt) + SUFFIX
    assert bad["name"] not in seen
    if paced:
        assert seen == [t["name"] for t in doc["tensors"][:7]]
    for n in seen:
        assert_matches(n, got[n], want[n])


def test_tensor_names(ckpt):
    """Partial reads are checked too: a request that leaves the corrupt
    tensor out succeeds, one that names it fails before yielding it."""
    want = reference(ckpt)
    doc = sidecar_of(ckpt)
    bad = doc["tensors"][3]["name"]
    flip(ckpt, doc["tensors"][3]["offsets"][1] - 1)
    names = ["layer.00", "layer.05", "layer.11"]
    got = stream(ckpt, tensor_names=names)
    assert set(got) == set(names)
    for n in names:
        assert_matches(n, got[n], want[n])
    seen: List[str] = []
    with pytest.raises(RunaiStreamerChecksumError) as e:
        stream(ckpt, tensor_names=["layer.00", bad], seen=seen)
    assert e.value.tensor == bad and bad not in seen


def test_file_streamer_ranges_of_whole_tensors(ckpt):
    """FileStreamer ranges that hold whole tensors are checked; a range that
    cuts a tensor is not (it is read as it is)."""
    data = ckpt.read_bytes()
    doc = sidecar_of(ckpt)
    t = doc["tensors"][5]
    flip(ckpt, t["offsets"][0] + 10)

    def run(req):
        with FileStreamer() as fs:
            fs.stream_files([req])
            return {i: c.numpy().tobytes() for _, i, c in fs.get_chunks()}

    spans = [x["offsets"] for x in doc["tensors"][4:7]]
    whole = FileChunks(0, str(ckpt), offsets=[b for b, _ in spans], sizes=[e - b for b, e in spans])
    with pytest.raises(RunaiStreamerChecksumError) as e:
        call_with_timeout(lambda: run(whole), 60)
    assert e.value.tensor == t["name"]
    b, end = t["offsets"]
    cut = FileChunks(0, str(ckpt), offsets=[b + 1], sizes=[end - b - 2])
    got = call_with_timeout(lambda: run(cut), 60)
    assert got[0] != data[b + 1:end - 1]  # unchecked: the flip shows
    assert got[0] == ckpt.read_bytes()[b + 1:end - 1]


def test_stale_sidecar_is_an_error(tmp_path, ckpt):
    """The file rewritten after `checksum` (same size, other header): a
    clear error naming the sidecar, before any tensor; off ignores it."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ckpt))
    renamed = {k.replace("layer.", "layer_"): v for k, v in tensors.items()}
    save_file(renamed, str(ckpt))
    with pytest.raises(RunaiStreamerChecksumError) as e:
        stream(ckpt)
    assert e.value.sidecar == str(ckpt) + SUFFIX and e.value.uri == str(ckpt)
    assert "stale" in str(e.value) and "model-streamer checksum" in str(e.value)
    # A file of another size.
    save_file({"x": torch.zeros(3)}, str(ckpt))
    with pytest.raises(RunaiStreamerChecksumError) as e:
        stream(ckpt)
    assert "bytes" in str(e.value) and e.value.sidecar
    import os
    os.environ["MODEL_STREAMER_VERIFY"] = "off"
    try:
        assert set(stream(ckpt)) == {"x"}
    finally:
        del os.environ["MODEL_STREAMER_VERIFY"]


def test_verify_cli(tmp_path, ckpt, capsys):
    """verify prints one line per file (OK, MISMATCH, UNVERIFIABLE) and a
    total, exit status 1 when any fails; --json says the same."""
    plain = tmp_path / "plain"
    plain.mkdir()
    other = plain / "nosidecar.safetensors"
    shutil.copyfile(ckpt, other)
    assert cli.main(["verify", "--no-progress", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"OK           {ckpt}: header + 12 tensors match {ckpt}{SUFFIX} (crc32)")
    assert out.splitlines()[-1] == "1 of 1 file(s) verified"

    corrupt = tmp_path / "c"
    corrupt.mkdir()
    bad = corrupt / "model.safetensors"
    shutil.copyfile(ckpt, bad)
    shutil.copyfile(str(ckpt) + SUFFIX, str(bad) + SUFFIX)
    t = sidecar_of(bad)["tensors"][9]
    flip(bad, t["offsets"][0])
    assert cli.main(["verify", "--no-progress", str(ckpt), str(bad), str(other)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"OK           {ckpt}:")
    assert lines[1].startswith(f"MISMATCH     {bad}: {bad}: checksum mismatch: crc32 expected {t['checksum']}")
    assert f'tensor "{t["name"]}"' in lines[1]
    assert lines[2].startswith(f"UNVERIFIABLE {other}:") and "no checksum sidecar" in lines[2]
    assert lines[3] == "1 of 3 file(s) verified, 2 failed"

    assert cli.main(["verify", "--json", "--no-progress", str(bad), str(ckpt)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert [f["status"] for f in doc["files"]] == ["mismatch", "ok"]
    assert doc["files"][0]["tensor"] == t["name"]


def test_checksum_cli_directory_and_progress(tmp_path, capsys):
    """checksum on a directory writes one sidecar per *.safetensors file; the
    progress bar goes to stderr only when asked (stderr is not a TTY here)."""
    from safetensors.torch import save_file

    for i in range(2):
        save_file({f"t{i}": torch.arange(1000, dtype=torch.int32)}, str(tmp_path / f"m-{i}.safetensors"))
    assert cli.main(["checksum", "--no-progress", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-0.safetensors", "m-0.safetensors" + SUFFIX, "m-1.safetensors", "m-1.safetensors" + SUFFIX]
    assert cap.out.count("wrote ") == 2 and "header + 1 tensors, crc32" in cap.out
    assert cli.main(["verify", "--progress", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert "100.0%" in cap.err and "2 of 2 file(s) verified" in cap.out
