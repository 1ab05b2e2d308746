"""FileStreamer / FileChunks (the reference's runai_model_streamer.file_streamer):
byte ranges of local files, streamed as uint8 tensors without a copy.

Every chunk is compared byte for byte with a plain read of its file."""

from __future__ import annotations

import gc
import os
import random
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from runai_model_streamer import (
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
)
from runai_model_streamer.file_streamer import FileChunks, FileStreamer
from runai_model_streamer.file_streamer import file_streamer as file_streamer_module
from runai_model_streamer.file_streamer import requests_iterator

from conftest import call_with_timeout, make_random_checkpoint

TIMEOUT = 60


def write_blob(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def random_chunks(rng: random.Random, file_id: int, path: Path, size: int, n: int) -> FileChunks:
    """n ranges of a file: unordered, overlapping (copies, nested), empty ones
    (at the very end too), a few large."""
    offsets: List[int] = []
    sizes: List[int] = []
    for i in range(n):
        kind = rng.randrange(6)
        if kind == 0:
            off, length = rng.randint(0, size), 0
        elif kind == 1:
            off = rng.randrange(max(1, size // 2))
            length = rng.randint(0, size - off)
        elif kind == 2 and i:
            j = rng.randrange(i)
            off, length = offsets[j], sizes[j]
        else:
            off = rng.randrange(size)
            length = min(rng.randint(1, 30000), size - off)
        offsets.append(off)
        sizes.append(length)
    return FileChunks(file_id, str(path), offsets, sizes)


def stream_and_check(requests: List[FileChunks], data: Dict[int, bytes], *, owned: bool = True,
                     memory_limit=None, keep: bool = False, device="cpu") -> Dict[str, int]:
    """Streams requests; checks every chunk (shape, dtype, bytes) when it is
    yielded, that every range comes exactly once, and (keep) that the kept
    chunks still hold their bytes after the loop and after the streamer is
    closed. Returns the stream's stats."""
    expected = {}
    for r in requests:
        for i, (off, n) in enumerate(zip(r.offsets, r.sizes)):
            expected[(r.id, i)] = data[r.id][off:off + n]

    def run():
        seen = set()
        kept: List[Tuple[Tuple[int, int], torch.Tensor]] = []
        with FileStreamer() as streamer:
            streamer.stream_files(requests, device=device, memory_limit=memory_limit, owned=owned)
            for file_id, index, chunk in streamer.get_chunks():
                key = (file_id, index)
                assert key in expected, f"unexpected chunk {key}"
                assert key not in seen, f"chunk {key} delivered twice"
                seen.add(key)
                want = expected[key]
                assert chunk.dtype == torch.uint8
                assert tuple(chunk.shape) == (1, len(want)), f"{key}: shape {tuple(chunk.shape)}"
                assert chunk.device.type == torch.device(device or "cpu").type
                got = chunk.cpu().numpy().tobytes()
                assert got == want, f"{key}: bytes differ ({len(got)} vs {len(want)})"
                if keep:
                    kept.append((key, chunk))
            assert streamer.outstanding == 0
            stats = streamer.stats()
            for key, chunk in kept:
                assert chunk.cpu().numpy().tobytes() == expected[key], f"kept {key} changed"
        assert seen == set(expected), f"missing {sorted(set(expected) - seen)[:5]}"
        gc.collect()
        for key, chunk in kept:
            assert chunk.cpu().numpy().tobytes() == expected[key], f"kept {key} changed after close"
        return stats

    return call_with_timeout(run, TIMEOUT)


@pytest.fixture
def blob(tmp_path) -> Tuple[Path, bytes]:
    """A 1.5 MB binary file that is not SafeTensors (and not block sized)."""
    p = tmp_path / "blob.bin"
    return p, write_blob(p, 1_500_007, 1)


# ---------------------------------------------------------------------------
# Imports and FileChunks


def test_reference_import_paths():
    from runai_model_streamer.file_streamer.file_streamer import FileStreamer as A
    from runai_model_streamer.file_streamer.requests_iterator import FileChunks as B

    assert A is FileStreamer and B is FileChunks
    assert file_streamer_module.FileStreamer is FileStreamer
    assert requests_iterator.RUNAI_STREAMER_MEMORY_LIMIT_ENV_VAR_NAME == "RUNAI_STREAMER_MEMORY_LIMIT"
    assert requests_iterator.DEFAULT_MEMORY_LIMIT_STRING == "-1"


def test_file_chunks():
    c = FileChunks.contiguous(3, "/x", 10, [5, 0, 7])
    assert (c.id, c.path, c.offsets, c.sizes) == (3, "/x", [10, 15, 15], [5, 0, 7])
    assert c.total_size() == 12 and c.max_chunk_size() == 7
    assert repr(c) == "FileChunks(id='3', path='/x', num_ranges=3, total_size=12)"
    assert FileChunks(1, "/y", [], []).max_chunk_size() == 0
    with pytest.raises(ValueError, match="parallel"):
        FileChunks(1, "/y", [0, 1], [1])


@pytest.mark.parametrize("device", ["cpu", None, torch.device("cpu")])
def test_host_spellings(device):
    assert file_streamer_module.host_or_device(device) == "cpu"


def test_unknown_device():
    with pytest.raises(RunaiStreamerInvalidInputException):
        file_streamer_module.host_or_device("tpu:7")


# ---------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize("mode", ["auto", "buffered", "direct", "mmap"])
@pytest.mark.parametrize("limit", ["-1", "0", "300000"])
@pytest.mark.parametrize("owned", [True, False])
def test_whole_file_in_chunks(blob, set_env, mode, limit, owned):
    path, data = blob
    set_env(MODEL_STREAMER_READ_MODE=mode, RUNAI_STREAMER_MEMORY_LIMIT=limit,
            RUNAI_STREAMER_CHUNK_BYTESIZE="64KiB")
    sizes = [100_000] * 15 + [7]
    chunks = [FileChunks.contiguous(0, str(path), 0, sizes)]
    stats = stream_and_check(chunks, {0: data}, owned=owned, keep=owned)
    assert stats["tensors_delivered"] == len(sizes)
    assert stats["bytes_requested"] == len(data)
    assert stats["header_bytes_read"] == 0
    if limit != "-1" and not owned:
        # The ring is bounded by the limit (or the largest range, for 0).
        bound = max(int(limit), 100_000) + 3 * 4096
        assert stats["arena_bytes"] <= bound, stats


@pytest.mark.parametrize("mode", ["auto", "buffered", "direct"])
@pytest.mark.parametrize("memory_limit", [-1, 0, 2_000_000])
def test_unordered_overlapping_ranges_of_many_files(tmp_path, set_env, mode, memory_limit):
    """Random ranges of a SafeTensors checkpoint and of raw binary files, one
    request."""
    set_env(MODEL_STREAMER_READ_MODE=mode, RUNAI_STREAMER_CHUNK_BYTESIZE="128KiB")
    rng = random.Random(17)
    files = make_random_checkpoint(tmp_path / "ckpt", 5, "raw", max_files=2, max_tensors=30)
    files += [tmp_path / "a.bin", tmp_path / "b.dat"]
    write_blob(files[-2], 1_000_000, 2)
    write_blob(files[-1], 12_345, 3)
    data = {}
    requests = []
    for i, p in enumerate(files):
        file_id = 100 + i
        data[file_id] = p.read_bytes()
        requests.append(random_chunks(rng, file_id, p, len(data[file_id]), 60))
    largest = max(r.max_chunk_size() for r in requests)
    limit = max(memory_limit, largest) if memory_limit > 0 else memory_limit
    stream_and_check(requests, data, memory_limit=limit, owned=False)
    stream_and_check(requests, data, memory_limit=limit, owned=True, keep=True)


def test_overlapping_ranges_are_read_once(blob, set_env):
    path, data = blob
    set_env(MODEL_STREAMER_READ_MODE="buffered")
    chunks = FileChunks(1, str(path), [1000, 1000, 500, 1500, 90000], [2000, 2000, 1000, 100, 1000])
    stats = stream_and_check([chunks], {1: data})
    assert stats["bytes_read"] == 2500 + 1000  # the union, once
    assert stats["bytes_requested"] == chunks.total_size()


def test_zero_size_ranges_and_empty_requests(tmp_path, blob):
    path, data = blob
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    requests = [
        FileChunks(17, str(empty), [], []),
        FileChunks(18, str(path), [0, len(data), 5, 5], [0, 0, 10, 0]),
        FileChunks(19, str(empty), [0, 0], [0, 0]),
    ]
    stream_and_check(requests, {17: b"", 18: data, 19: b""})
    stream_and_check([FileChunks(1, str(empty), [], [])], {1: b""})
    with FileStreamer() as fs:
        fs.stream_files([])
        assert list(fs.get_chunks()) == []


def test_ids_are_returned_as_given(blob):
    path, data = blob
    requests = [FileChunks("weights", str(path), [10], [5]), FileChunks(("t", 2), str(path), [0], [3])]
    got = {}
    with FileStreamer() as fs:
        fs.stream_files(requests)
        for file_id, index, chunk in fs.get_chunks():
            got[(file_id, index)] = chunk.numpy().tobytes()
    assert got == {("weights", 0): data[10:15], (("t", 2), 0): data[0:3]}


def test_memory_limit_argument_overrides_the_setting(blob, set_env):
    path, data = blob
    set_env(RUNAI_STREAMER_MEMORY_LIMIT="10")  # below the largest range
    chunks = [FileChunks.contiguous(0, str(path), 0, [200_000] * 7)]
    with pytest.raises(RunaiStreamerMemoryLimitException, match=str(path)):
        with FileStreamer() as fs:
            fs.stream_files(chunks)
    stats = stream_and_check(chunks, {0: data}, memory_limit=0, owned=False)
    assert stats["arena_bytes"] <= 200_000 + 3 * 4096


@pytest.mark.parametrize("how", ["argument", "setting"])
def test_memory_limit_below_the_largest_range(blob, set_env, how):
    path, _ = blob
    chunks = [FileChunks(0, str(path), [0, 50, 7000], [100, 5000, 10])]
    kwargs = {}
    if how == "argument":
        kwargs["memory_limit"] = 4999
    else:
        set_env(RUNAI_STREAMER_MEMORY_LIMIT="4999")
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerMemoryLimitException) as e:
            fs.stream_files(chunks, **kwargs)
        assert str(path) in str(e.value) and "range 1" in str(e.value)
        # Exactly the largest range is enough.
        fs.stream_files(chunks, memory_limit=5000)
        assert len(list(fs.get_chunks())) == 3


def test_bad_memory_limit_argument(blob):
    path, _ = blob
    with FileStreamer() as fs:
        for bad in (-2, "1", 1.5):
            with pytest.raises(RunaiStreamerInvalidInputException):
                fs.stream_files([FileChunks(0, str(path), [0], [1])], memory_limit=bad)


# ---------------------------------------------------------------------------
# Ownership


def test_owned_chunks_survive_a_later_unowned_stream(blob, tmp_path):
    """owned=True chunks are the caller's: a later owned=False stream that
    reuses its ring (and the caller scribbling on those chunks) cannot reach
    them."""
    path, data = blob
    other = tmp_path / "other.bin"
    write_blob(other, 800_000, 9)
    with FileStreamer() as fs:
        fs.stream_files([FileChunks.contiguous(0, str(path), 0, [100_000] * 10)],
                        memory_limit=0, owned=True)
        held = {index: chunk for _, index, chunk in fs.get_chunks()}
        fs.stream_files([FileChunks.contiguous(1, str(other), 0, [100_000] * 8)],
                        memory_limit=0, owned=False)
        for _, _, chunk in fs.get_chunks():
            chunk.fill_(0xFF)
    gc.collect()
    for index, chunk in held.items():
        assert chunk.numpy().tobytes() == data[index * 100_000:(index + 1) * 100_000]


def test_unowned_chunk_is_given_back_when_the_iterator_advances(blob):
    """owned=False with a ring of one range: each chunk's memory is reused
    once the loop moves on, even though the loop variable still refers to
    the previous chunk, and the stream never needs memory past the ring."""
    path, data = blob
    sizes = [150_000] * 10

    def run():
        with FileStreamer() as fs:
            fs.stream_files([FileChunks.contiguous(0, str(path), 0, sizes)], memory_limit=0,
                            owned=False)
            for _, index, chunk in fs.get_chunks():
                assert chunk.numpy().tobytes() == data[index * 150_000:(index + 1) * 150_000]
            return fs.stats()

    stats = call_with_timeout(run, TIMEOUT)
    assert stats["tensors_delivered"] == 10
    assert stats["arena_bytes"] <= 150_000 + 3 * 4096, stats


def test_owned_chunks_kept_past_the_limit_do_not_stall(blob):
    """A consumer keeping every owned chunk of a capped stream: the streamer
    goes on in fresh memory rather than waiting for memory it will never get."""
    path, data = blob
    chunks = [FileChunks.contiguous(0, str(path), 0, [100_000] * 15)]
    stream_and_check(chunks, {0: data}, memory_limit=0, owned=True, keep=True)


# ---------------------------------------------------------------------------
# Abandoning, restarting


def test_new_stream_while_chunks_are_outstanding(blob):
    path, data = blob
    request = [FileChunks.contiguous(0, str(path), 0, [1000] * 8)]
    with FileStreamer() as fs:
        fs.stream_files(request)
        with pytest.raises(ValueError, match="outstanding"):
            fs.stream_files(request)  # nothing consumed yet
        chunks = fs.get_chunks()
        next(chunks)
        assert fs.outstanding == 7
        with pytest.raises(ValueError, match="outstanding"):
            fs.stream_files(request)
        assert fs.outstanding == 7  # the refusal changed nothing
        rest = {i: c.numpy().tobytes() for _, i, c in chunks}
        assert len(rest) == 7
        fs.stream_files(request)  # drained: allowed
        assert {i: c.numpy().tobytes() for _, i, c in fs.get_chunks()} == {
            i: data[i * 1000:(i + 1) * 1000] for i in range(8)}


def test_abandoning_the_iterator_allows_a_new_stream(blob):
    path, data = blob
    request = [FileChunks.contiguous(0, str(path), 0, [1000] * 8)]
    with FileStreamer() as fs:
        fs.stream_files(request, owned=True)
        for _, index, first in fs.get_chunks():
            break  # closes the generator: the stream stops
        assert fs.outstanding == 0
        fs.stream_files(request)
        assert len(list(fs.get_chunks())) == 8
    assert first.numpy().tobytes() == data[index * 1000:(index + 1) * 1000]


def test_a_generator_outliving_its_context(blob):
    path, data = blob
    request = [FileChunks.contiguous(0, str(path), 0, [1000] * 8)]
    fs = FileStreamer()
    with fs:
        fs.stream_files(request)
        chunks = fs.get_chunks()
        next(chunks)
    assert list(chunks) == []  # the context closed the stream
    with fs:
        fs.stream_files(request)
        assert len(list(fs.get_chunks())) == 8


def test_get_chunks_before_stream_files():
    with pytest.raises(ValueError):
        FileStreamer().get_chunks()


def test_two_streamers_at_once(blob):
    path, data = blob
    request = [FileChunks.contiguous(0, str(path), 0, [10_000] * 20)]
    with FileStreamer() as a, FileStreamer() as b:
        a.stream_files(request, memory_limit=0)
        b.stream_files(request, memory_limit=0)
        ia, ib = a.get_chunks(), b.get_chunks()
        got_a = {}
        _, i, c = next(ia)
        got_a[i] = c.numpy().tobytes()
        got_b = {i: c.numpy().tobytes() for _, i, c in ib}
        got_a.update({i: c.numpy().tobytes() for _, i, c in ia})
    want = {i: data[i * 10_000:(i + 1) * 10_000] for i in range(20)}
    assert got_a == want and got_b == want


# ---------------------------------------------------------------------------
# Errors


def test_missing_file_names_it(tmp_path, blob):
    path, _ = blob
    missing = tmp_path / "missing.bin"
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerFileNotFoundError, match=str(missing)):
            fs.stream_files([FileChunks(0, str(path), [0], [1]), FileChunks(1, str(missing), [0], [1])])


@pytest.mark.parametrize("offsets,sizes,says", [
    ([0, 1_500_000], [10, 8], ["range 1", "offset 1500000", "size 8", "1500007 bytes"]),
    ([1_500_008], [0], ["range 0", "offset 1500008"]),
    ([-1], [1], ["range 0", "negative offset"]),
    ([0], [-5], ["range 0", "negative size"]),
])
def test_bad_ranges_name_the_file_and_the_range(blob, offsets, sizes, says):
    path, _ = blob
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerInvalidInputException) as e:
            fs.stream_files([FileChunks(0, str(path), offsets, sizes)])
        assert isinstance(e.value, ValueError)
        for word in [str(path)] + says:
            assert word in str(e.value)
        assert fs.outstanding == 0
        fs.stream_files([FileChunks(0, str(path), [0], [4])])  # still usable
        assert len(list(fs.get_chunks())) == 1


def test_a_directory_is_refused(tmp_path):
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerInvalidInputException, match=str(tmp_path)):
            fs.stream_files([FileChunks(0, str(tmp_path), [0], [1])])


@pytest.mark.parametrize("paths", [
    ["/tmp/a.bin", "s3://bucket/b.bin"],
    ["s3://bucket/a.bin", "gs://bucket/b.bin"],
    ["az://container/a", "/tmp/b"],
])
def test_mixed_source_types(paths):
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerInvalidInputException,
                           match="Cannot stream files from multiple source types in parallel"):
            fs.stream_files([FileChunks(i, p, [0], [1]) for i, p in enumerate(paths)])


def test_bad_requests(blob):
    path, _ = blob
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerInvalidInputException, match="unique"):
            fs.stream_files([FileChunks(0, str(path), [0], [1]), FileChunks(0, str(path), [1], [1])])
        with pytest.raises(RunaiStreamerInvalidInputException, match="list of FileChunks"):
            fs.stream_files(FileChunks(0, str(path), [0], [1]))
        bad = FileChunks(0, str(path), [0], [1])
        bad.sizes = [1, 2]
        with pytest.raises(RunaiStreamerInvalidInputException, match="1 offsets but 2 sizes"):
            fs.stream_files([bad])
        with pytest.raises(RunaiStreamerInvalidInputException, match="integers"):
            fs.stream_files([FileChunks(0, str(path), [0.5], [1])])
        with pytest.raises(RunaiStreamerInvalidInputException, match="CUDA|Unusable"):
            if torch.cuda.is_available():
                raise RunaiStreamerInvalidInputException("Unusable (CUDA present: not checked)")
            fs.stream_files([FileChunks(0, str(path), [0], [1])], device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunks_on_a_cuda_device(blob):
    path, data = blob
    rng = random.Random(4)
    stream_and_check([random_chunks(rng, 0, path, len(data), 40)], {0: data},
                     device="cuda:0", memory_limit=0, keep=True)


# ---------------------------------------------------------------------------
# list_files


def test_list_files(tmp_path):
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    content = {"a.txt": b"hello", "b.safetensors": b"world!", "sub/c.json": b"{}",
               "sub/deeper/d.safetensors": b"x" * 10}
    for rel, b in content.items():
        (root / rel).write_bytes(b)
    want = {str(root / rel): len(b) for rel, b in content.items()}

    fs = FileStreamer()  # outside the context manager
    assert dict(fs.list_files(str(root))) == want
    for prefix in (str(root) + "/", "file://" + str(root)):
        listed = dict(fs.list_files(prefix, allow_patterns=["*.safetensors"]))
        assert sorted(os.path.basename(p) for p in listed) == ["b.safetensors", "d.safetensors"]
    assert dict(fs.list_files(str(root), is_recursive=False)) == {
        str(root / "a.txt"): 5, str(root / "b.safetensors"): 6}
    assert dict(fs.list_files(str(root), ignore_patterns=["sub/*"])) == {
        str(root / "a.txt"): 5, str(root / "b.safetensors"): 6}
    assert dict(fs.list_files(str(root), allow_patterns=["sub/*"], ignore_patterns=["*.json"])) == {
        str(root / "sub/deeper/d.safetensors"): 10}
    assert fs.list_files(str(root), allow_patterns=[]) == fs.list_files(str(root))  # [] filters nothing
    with fs:
        assert dict(fs.list_files(str(root))) == want
    (tmp_path / "empty").mkdir()
    assert fs.list_files(str(tmp_path / "empty")) == []
    with pytest.raises(RunaiStreamerFileNotFoundError):
        fs.list_files(str(tmp_path / "does-not-exist"))
