"""The public API: names, metadata, filters, lifecycle, settings, helpers."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import struct
import threading
import warnings
from pathlib import Path

import pytest
import torch

import runai_model_streamer
from runai_model_streamer import (
    ObjectStorageModel,
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
    S3Credentials,
    SafetensorsStreamer,
    list_safetensors,
    pull_files,
)
from conftest import (
    REPO,
    assert_matches,
    call_with_timeout,
    describe,
    reference_all,
    run_python,
    stream_and_compare,
    tensor_bytes,
    write_raw_file,
)


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


# ---------------------------------------------------------------------------
# Names and import paths
# ---------------------------------------------------------------------------

def test_both_import_paths_export_the_streamer():
    from runai_model_streamer.safetensors_streamer.safetensors_streamer import (
        SafetensorsStreamer as Old,
        list_safetensors as old_list,
        pull_files as old_pull,
        ObjectStorageModel as OldModel,
    )

    assert Old is SafetensorsStreamer
    assert old_list is list_safetensors and old_pull is pull_files
    assert OldModel is ObjectStorageModel
    for name in ("SafetensorsStreamer", "RunaiStreamerMemoryLimitException",
                 "RunaiStreamerInvalidInputException", "list_safetensors", "pull_files",
                 "ObjectStorageModel", "S3Credentials"):
        assert hasattr(runai_model_streamer, name), name
        assert name in runai_model_streamer.__all__, name


def test_exception_hierarchy():
    from runai_model_streamer.exceptions import (
        RunaiStreamerError,
        RunaiStreamerFileNotFoundError,
        RunaiStreamerPermissionError,
    )
    from runai_model_streamer import _native

    assert issubclass(RunaiStreamerInvalidInputException, ValueError)
    assert issubclass(RunaiStreamerInvalidInputException, RunaiStreamerError)
    assert issubclass(RunaiStreamerMemoryLimitException, RunaiStreamerError)
    assert issubclass(RunaiStreamerError, RuntimeError)
    e = _native.error_for(_native.MS_ERR_NOT_FOUND, "/x.safetensors: open: not found")
    assert isinstance(e, FileNotFoundError) and isinstance(e, RunaiStreamerFileNotFoundError)
    assert str(e) == "/x.safetensors: open: not found"
    assert isinstance(_native.error_for(_native.MS_ERR_PERMISSION_DENIED, "p"), PermissionError)
    assert isinstance(_native.error_for(_native.MS_ERR_PERMISSION_DENIED, "p"),
                      RunaiStreamerPermissionError)
    assert isinstance(_native.error_for(_native.MS_ERR_MEMORY_LIMIT, "m"),
                      RunaiStreamerMemoryLimitException)
    assert isinstance(_native.error_for(_native.MS_ERR_INVALID_ARGUMENT, "i"), ValueError)
    io = _native.error_for(_native.MS_ERR_IO, "f: read bytes [0, 8): EIO")
    assert type(io).__name__ == "RunaiStreamerIOError" and "EIO" in str(io)
    assert isinstance(_native.error_for(_native.MS_ERR_INTERNAL, "boom"), RunaiStreamerError)


def test_import_does_not_load_the_library(small_checkpoint):
    r = run_python(f"""
        import runai_model_streamer
        from runai_model_streamer import _native, SafetensorsStreamer
        def mapped():
            with open("/proc/self/maps") as f:
                return "libmodelstreamer" in f.read()
        assert not _native.is_loaded() and not mapped(), "loaded at import"
        with SafetensorsStreamer() as s:
            s.stream_file({str(small_checkpoint[0])!r})
            n = sum(1 for _ in s.get_tensors())
        assert _native.is_loaded() and mapped()
        print("OK", n)
    """)
    assert r.returncode == 0, r.stderr
    assert "OK 5" in r.stdout


def test_every_header_function_is_exported():
    import re
    from runai_model_streamer import _native

    ffi, lib = _native.load()
    cdef = _native.read_cdef()
    names = re.findall(r"\b(ms_[a-z_]+)\s*\(", cdef)
    assert {"ms_stream_open", "ms_stream_next", "ms_release", "ms_stream_close"} <= set(names)
    for name in names:
        assert getattr(lib, name) is not None, name
    assert _native.version()


def test_library_override(tmp_path, small_checkpoint):
    from runai_model_streamer import _native

    r = run_python("""
        from runai_model_streamer import SafetensorsStreamer
        from runai_model_streamer.exceptions import RunaiStreamerError
        try:
            with SafetensorsStreamer() as s:
                s.stream_file("unused.safetensors")
        except RunaiStreamerError as e:
            print("ERR", e)
    """, env={"MODEL_STREAMER_LIB": str(tmp_path / "nope" / "libmodelstreamer.so")})
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and str(tmp_path / "nope") in r.stdout

    lib = _native.library_path()
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(lib, other / "libmodelstreamer.so")
    r = run_python(f"""
        from runai_model_streamer import SafetensorsStreamer, _native
        with SafetensorsStreamer() as s:
            s.stream_file({str(small_checkpoint[1])!r})
            print("N", sum(1 for _ in s.get_tensors()), _native._state.path)
    """, env={"MODEL_STREAMER_LIB": str(other / "libmodelstreamer.so")})
    assert r.returncode == 0, r.stderr
    assert f"N 3 {other / 'libmodelstreamer.so'}" in r.stdout


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------

def test_files_to_tensors_metadata_and_total_size(small_checkpoint):
    with SafetensorsStreamer() as s:
        s.stream_files([str(p) for p in small_checkpoint])
        meta = s.files_to_tensors_metadata
        assert sorted(meta) == [0, 1]
        total = 0
        for index, path in enumerate(small_checkpoint):
            header = read_header(path)
            header.pop("__metadata__", None)
            entries = meta[index]
            assert sorted(m.name for m in entries) == sorted(header)
            starts = [m.offsets.start for m in entries]
            assert starts == sorted(starts), "not in file-offset order"
            for m in entries:
                h = header[m.name]
                assert m.dtype == h["dtype"]
                assert list(m.shape) == h["shape"]
                assert [m.offsets.start, m.offsets.end] == h["data_offsets"]
                assert m.get_bytesize() == h["data_offsets"][1] - h["data_offsets"][0]
                count = 1
                for d in h["shape"]:
                    count *= d
                assert m.get_item_count() == count
                assert m.get_element_size() * count == m.get_bytesize()
                assert isinstance(m.get_torch_dtype(), torch.dtype)
                total += m.get_bytesize()
        assert s.total_size == total
        ref = reference_all(small_checkpoint)
        assert total == sum(len(v[2]) for v in ref.values())
        got = {name: describe(t) for name, t in s.get_tensors()}
    assert got.keys() == ref.keys()
    for name in ref:
        assert_matches(name, got[name], ref[name])


def test_torch_dtypes_of_metadata(tmp_path):
    from conftest import DTYPES, random_tensor
    import random

    rng = random.Random(5)
    entries = []
    for i, (st, (dtype, size)) in enumerate(DTYPES.items()):
        entries.append((f"t{i}", st, [3], tensor_bytes(random_tensor(rng, st, [3]))))
    path = write_raw_file(tmp_path / "all.safetensors", entries)
    with SafetensorsStreamer() as s:
        s.stream_file(str(path))
        by_name = {m.name: m for m in s.files_to_tensors_metadata[0]}
        for i, (st, (dtype, size)) in enumerate(DTYPES.items()):
            assert by_name[f"t{i}"].dtype == st
            assert by_name[f"t{i}"].get_torch_dtype() == dtype
            assert by_name[f"t{i}"].get_element_size() == size
    stream_and_compare([path])


# ---------------------------------------------------------------------------
# tensor_names
# ---------------------------------------------------------------------------

def test_tensor_names_subset(small_checkpoint):
    names = ["layer.0.norm", "scalar", "lm_head.weight", "empty"]
    stream_and_compare(small_checkpoint, tensor_names=names)
    with SafetensorsStreamer() as s:
        s.stream_files([str(p) for p in small_checkpoint], tensor_names=set(names))
        listed = sorted(m.name for ms in s.files_to_tensors_metadata.values() for m in ms)
        assert listed == sorted(names)
        assert sorted(len(v) for v in s.files_to_tensors_metadata.values()) == [1, 3]
        got = sorted(n for n, _ in s.get_tensors())
    assert got == sorted(names)


def test_tensor_names_unknown_names_are_listed(small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError) as info:
            s.stream_files([str(p) for p in small_checkpoint],
                           tensor_names=["scalar", "no.such.tensor", "another.missing"])
    msg = str(info.value)
    assert "no.such.tensor" in msg and "another.missing" in msg
    assert isinstance(info.value, RunaiStreamerInvalidInputException)


def test_tensor_names_rejects_str_and_empty(small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError, match="str"):
            s.stream_file(str(small_checkpoint[0]), tensor_names="scalar")
        with pytest.raises(ValueError, match="empty"):
            s.stream_file(str(small_checkpoint[0]), tensor_names=[])
        with pytest.raises(ValueError, match="empty"):
            s.stream_file(str(small_checkpoint[0]), tensor_names=set())


def test_tensor_names_duplicated_across_files(tmp_path):
    data = tensor_bytes(torch.arange(4, dtype=torch.float32))
    a = write_raw_file(tmp_path / "a.safetensors", [("w", "F32", [4], data), ("x", "F32", [4], data)])
    b = write_raw_file(tmp_path / "b.safetensors", [("w", "F32", [4], data)])
    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError, match="more than one file") as info:
            s.stream_files([str(a), str(b)], tensor_names=["w", "x"])
        import re
        assert re.search(r"['\"]w['\"]", str(info.value)), str(info.value)
        assert not re.search(r"['\"]x['\"]", str(info.value)), str(info.value)
        s.stream_files([str(a), str(b)], tensor_names=["x"])
        assert [n for n, _ in s.get_tensors()] == ["x"]


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------

def test_stream_file_accepts_pathlike(small_checkpoint):
    ref = reference_all(small_checkpoint[:1])
    with SafetensorsStreamer() as s:
        s.stream_file(small_checkpoint[0])
        got = {n: describe(t) for n, t in s.get_tensors()}
    assert got.keys() == ref.keys()


def test_stream_files_rejects_a_single_str(small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="list"):
            s.stream_files(str(small_checkpoint[0]))


def test_empty_file_list_streams_nothing():
    with SafetensorsStreamer() as s:
        s.stream_files([])
        assert list(s.get_tensors()) == []
        assert s.total_size == 0 and s.files_to_tensors_metadata == {}


def test_get_tensors_before_stream_files():
    with SafetensorsStreamer() as s:
        with pytest.raises(RuntimeError, match="stream_file"):
            list(s.get_tensors())


def test_second_stream_files_replaces_the_first(small_checkpoint):
    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(str(small_checkpoint[0]), owned=False)
            first = s.get_tensors()
            next(first)
            s.stream_file(str(small_checkpoint[1]))
            # The old iterator ends; the new request is unaffected.
            assert sum(1 for _ in first) == 0
            got = {n: describe(t) for n, t in s.get_tensors()}
        return got

    got = call_with_timeout(run)
    ref = reference_all(small_checkpoint[1:])
    assert got.keys() == ref.keys()
    for n in ref:
        assert_matches(n, got[n], ref[n])


def test_two_streamers_at_once(tmp_path):
    from conftest import make_random_checkpoint

    pa = make_random_checkpoint(tmp_path / "a", 101, "safetensors", max_files=3, max_tensors=30)
    pb = make_random_checkpoint(tmp_path / "b", 102, "raw", max_files=3, max_tensors=30)
    ra, rb = reference_all(pa), reference_all(pb)

    def run():
        got_a, got_b = {}, {}
        with SafetensorsStreamer() as a, SafetensorsStreamer() as b:
            a.stream_files([str(p) for p in pa], owned=False)
            b.stream_files([str(p) for p in pb])
            ia, ib = a.get_tensors(), b.get_tensors()
            done_a = done_b = False
            while not (done_a and done_b):
                if not done_a:
                    try:
                        n, t = next(ia)
                        got_a[n] = describe(t)
                    except StopIteration:
                        done_a = True
                if not done_b:
                    try:
                        n, t = next(ib)
                        got_b[n] = describe(t)
                    except StopIteration:
                        done_b = True
        return got_a, got_b

    got_a, got_b = call_with_timeout(run)
    assert got_a.keys() == ra.keys() and got_b.keys() == rb.keys()
    for n in ra:
        assert_matches(n, got_a[n], ra[n])
    for n in rb:
        assert_matches(n, got_b[n], rb[n])


@pytest.mark.parametrize("owned", [True, False])
def test_close_in_the_middle_of_get_tensors(small_checkpoint, owned):
    def run():
        s = SafetensorsStreamer()
        s.stream_files([str(p) for p in small_checkpoint], owned=owned)
        it = s.get_tensors()
        name, tensor = next(it)
        kept = describe(tensor) if not owned else (name, tensor)
        s.close()
        s.close()  # idempotent
        assert sum(1 for _ in it) == 0
        return name, kept

    name, kept = call_with_timeout(run)
    if owned:
        # owned=True: still valid after close().
        assert_matches(name, describe(kept[1]), reference_all(small_checkpoint)[name])


def test_break_out_of_the_loop_then_stream_again(small_checkpoint):
    def run():
        with SafetensorsStreamer() as s:
            for owned in (True, False):
                s.stream_files([str(p) for p in small_checkpoint], owned=owned)
                for i, (name, tensor) in enumerate(s.get_tensors()):
                    if i == 1:
                        break
                s.stream_files([str(p) for p in small_checkpoint], owned=owned)
                gen = s.get_tensors()
                next(gen)
                gen.close()
            s.stream_files([str(p) for p in small_checkpoint])
            return {n: describe(t) for n, t in s.get_tensors()}

    got = call_with_timeout(run)
    ref = reference_all(small_checkpoint)
    assert got.keys() == ref.keys()
    for n in ref:
        assert_matches(n, got[n], ref[n])


def test_close_from_another_thread_while_iterating(tmp_path, set_env):
    # Many tensors and one reader: the consumer is still iterating when close() lands.
    from conftest import make_random_checkpoint

    paths = make_random_checkpoint(tmp_path, 7, "safetensors", max_files=4, max_tensors=100)
    set_env(RUNAI_STREAMER_CONCURRENCY=1, RUNAI_STREAMER_MEMORY_LIMIT=0)

    def run():
        s = SafetensorsStreamer()
        s.stream_files([str(p) for p in paths], owned=False)
        count = 0
        closer = None
        for _ in s.get_tensors():
            count += 1
            if count == 2:
                closer = threading.Thread(target=s.close)
                closer.start()
        closer.join(10)
        return count

    assert call_with_timeout(run) >= 2


def test_owned_tensors_outlive_the_streamer(small_checkpoint):
    ref = reference_all(small_checkpoint)
    with SafetensorsStreamer() as s:
        s.stream_files([str(p) for p in small_checkpoint])
        tensors = dict(s.get_tensors())
    del s
    gc.collect()
    # Use them after close: read, and write (the memory is the caller's now).
    for n, t in tensors.items():
        assert_matches(n, describe(t), ref[n])
    w = tensors["layer.0.norm"]
    w.mul_(2)
    assert torch.equal(w, torch.frombuffer(bytearray(ref["layer.0.norm"][2]), dtype=torch.float32) * 2)


def test_kept_tensors_do_not_block_the_stream(tmp_path, set_env):
    """owned=True, limit 0 and every tensor kept: the stream must not wait
    for memory the caller will never give back."""
    data = [tensor_bytes(torch.full((256,), i, dtype=torch.float32)) for i in range(20)]
    path = write_raw_file(tmp_path / "eq.safetensors",
                          [(f"t{i}", "F32", [256], d) for i, d in enumerate(data)])
    set_env(RUNAI_STREAMER_MEMORY_LIMIT=0, RUNAI_STREAMER_CONCURRENCY=4)
    stream_and_compare([path], owned=True, timeout=30)
    stream_and_compare([path], owned=False, timeout=30)


def test_no_warnings_while_streaming(small_checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SafetensorsStreamer() as s:
            s.stream_files([str(p) for p in small_checkpoint])
            tensors = list(s.get_tensors())
    assert len(tensors) == 8


def test_tensors_are_writable_and_zero_copy(small_checkpoint):
    with SafetensorsStreamer() as s:
        s.stream_file(str(small_checkpoint[0]))
        for name, t in s.get_tensors():
            if t.numel():
                t.view(-1)[0] = t.view(-1)[0]  # no error: the memory is writable
                assert t.is_contiguous()
        assert s.unaligned_copies == 0


# ---------------------------------------------------------------------------
# Devices and distribution
# ---------------------------------------------------------------------------

def test_device_cpu_forms(small_checkpoint):
    for device in ("cpu", torch.device("cpu"), "CPU", None):
        with SafetensorsStreamer() as s:
            s.stream_file(str(small_checkpoint[1]), device=device)
            for _, t in s.get_tensors():
                assert t.device.type == "cpu"


def test_bad_device(small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="nonsense"):
            s.stream_file(str(small_checkpoint[0]), device="nonsense:7")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_device_without_cuda_is_rejected_up_front(small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="CUDA"):
            s.stream_file(str(small_checkpoint[0]), device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("owned", [True, False])
def test_cuda_device(small_checkpoint, owned):
    ref = reference_all(small_checkpoint)
    with SafetensorsStreamer() as s:
        s.stream_files([str(p) for p in small_checkpoint], device="CUDA:0", owned=owned)
        for n, t in s.get_tensors():
            assert t.device.type == "cuda"
            assert_matches(n, describe(t.cpu()), ref[n])


def test_is_distributed_streams_normally(small_checkpoint, caplog):
    ref = reference_all(small_checkpoint)
    caplog.set_level(logging.DEBUG, logger="runai_model_streamer")
    with SafetensorsStreamer() as s:
        s.stream_files([str(p) for p in small_checkpoint], is_distributed=True)
        got = {n: describe(t) for n, t in s.get_tensors()}
    assert got.keys() == ref.keys()
    # Not initialised / local files: one line says why it streams normally.
    assert len([r for r in caplog.records if "distributed streaming off" in r.getMessage()]) == 1


# ---------------------------------------------------------------------------
# Sources and settings
# ---------------------------------------------------------------------------

def test_mixing_local_paths_and_uris_is_rejected(small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException):
            s.stream_files([str(small_checkpoint[0]), "s3://bucket/model.safetensors"])
        with pytest.raises(RunaiStreamerInvalidInputException):
            s.stream_files(["gs://bucket/a.safetensors", "s3://bucket/b.safetensors"])


def test_uri_without_a_backend_gives_a_clear_error():
    def run():
        with SafetensorsStreamer() as s:
            s.stream_file("nosuch://bucket/model.safetensors",
                          s3_credentials=S3Credentials("id", "secret"))
            list(s.get_tensors())

    with pytest.raises(runai_model_streamer.RunaiStreamerError) as info:
        call_with_timeout(run)
    assert "nosuch://bucket/model.safetensors" in str(info.value)
    assert "no storage backend" in str(info.value)


def test_settings_are_read_when_streaming(small_checkpoint, set_env):
    paths = [str(p) for p in small_checkpoint]
    set_env(RUNAI_STREAMER_CONCURRENCY="many")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="RUNAI_STREAMER_CONCURRENCY"):
            s.stream_files(paths)
    set_env(RUNAI_STREAMER_CONCURRENCY="2", RUNAI_STREAMER_MEMORY_LIMIT="lots")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="RUNAI_STREAMER_MEMORY_LIMIT"):
            s.stream_files(paths)
    set_env(RUNAI_STREAMER_MEMORY_LIMIT="4000000000", MODEL_STREAMER_READ_MODE="sideways")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="MODEL_STREAMER_READ_MODE"):
            s.stream_files(paths)
    set_env(MODEL_STREAMER_READ_MODE="BUFFERED", RUNAI_STREAMER_CHUNK_BYTESIZE="0")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="RUNAI_STREAMER_CHUNK_BYTESIZE"):
            s.stream_files(paths)
    set_env(RUNAI_STREAMER_CHUNK_BYTESIZE=None)
    stream_and_compare(small_checkpoint)


def test_config_parsing():
    from runai_model_streamer.config import StreamerConfig

    c = StreamerConfig.from_env({})
    assert (c.concurrency, c.memory_limit, c.chunk_bytes, c.read_mode) == (0, -1, 0, "auto")
    c = StreamerConfig.from_env({
        "RUNAI_STREAMER_CONCURRENCY": " 8 ", "RUNAI_STREAMER_MEMORY_LIMIT": "4000000000",
        "RUNAI_STREAMER_CHUNK_BYTESIZE": "8MiB", "MODEL_STREAMER_READ_MODE": "Direct"})
    assert (c.concurrency, c.memory_limit, c.chunk_bytes, c.read_mode) == (8, 4000000000, 8 << 20, "direct")
    assert c.read_mode_code == 2
    assert StreamerConfig.from_env({"RUNAI_STREAMER_MEMORY_LIMIT": "0"}).memory_limit == 0
    assert StreamerConfig.from_env({"RUNAI_STREAMER_MEMORY_LIMIT": "4e9"}).memory_limit == 4 * 10**9
    assert StreamerConfig.from_env({"RUNAI_STREAMER_MEMORY_LIMIT": "-1"}).memory_limit == -1
    for bad in ({"RUNAI_STREAMER_MEMORY_LIMIT": "-2"}, {"RUNAI_STREAMER_CONCURRENCY": "0"},
                {"RUNAI_STREAMER_MEMORY_LIMIT": "1.5"}):
        with pytest.raises(RunaiStreamerInvalidInputException):
            StreamerConfig.from_env(bad)


def test_small_chunks(small_checkpoint, set_env):
    set_env(RUNAI_STREAMER_CHUNK_BYTESIZE=4096, RUNAI_STREAMER_CONCURRENCY=3,
            MODEL_STREAMER_READ_MODE="buffered")
    small = stream_and_compare(small_checkpoint)
    set_env(RUNAI_STREAMER_CHUNK_BYTESIZE=None)
    default = stream_and_compare(small_checkpoint)
    assert small["reads"] > default["reads"]


def test_memory_limit_below_the_largest_tensor(tmp_path, set_env):
    big = tensor_bytes(torch.arange(1024, dtype=torch.float32))
    path = write_raw_file(tmp_path / "m.safetensors",
                          [("small", "F32", [4], big[:16]), ("big", "F32", [1024], big)])
    set_env(RUNAI_STREAMER_MEMORY_LIMIT=1000)

    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(str(path))

    with pytest.raises(RunaiStreamerMemoryLimitException) as info:
        call_with_timeout(run)
    assert "4096" in str(info.value) or "big" in str(info.value)
    set_env(RUNAI_STREAMER_MEMORY_LIMIT=4096)
    stream_and_compare([path])


def test_stats(small_checkpoint):
    with SafetensorsStreamer() as s:
        assert s.stats() == {}
        s.stream_files([str(p) for p in small_checkpoint])
        n = sum(1 for _ in s.get_tensors())
        st = s.stats()
        total = s.total_size
    for key in ("bytes_requested", "bytes_read", "reads", "retries", "tensors_delivered",
                "arena_bytes", "first_tensor_ns", "elapsed_ns", "memory_wait_ns",
                "consumer_wait_ns"):
        assert isinstance(st[key], int), key
    assert st["bytes_requested"] == total
    assert st["tensors_delivered"] == n == 8
    assert st["bytes_read"] >= total
    assert 0 <= st["first_tensor_ns"] <= st["elapsed_ns"]
    assert s.stats() == st  # after close: the last values


def test_throughput_is_logged_once(small_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="runai_model_streamer")
    with SafetensorsStreamer() as s:
        s.stream_files([str(p) for p in small_checkpoint])
        for _ in s.get_tensors():
            pass
    lines = [r for r in caplog.records
             if r.name == "runai_model_streamer" and "Overall time to stream" in r.getMessage()]
    assert len(lines) == 1
    assert "cpu" in lines[0].getMessage() and "/s" in lines[0].getMessage()


def test_next_waits_in_slices_so_signals_get_through():
    """ms_stream_next is called with a timeout, again and again, until data
    comes: Python runs between calls, so Ctrl-C is delivered."""
    from runai_model_streamer import _native

    calls = []

    class FakeLib:
        def ms_stream_next(self, handle, out, max_, n, timeout_ms, err, err_len):
            calls.append(timeout_ms)
            assert 0 < timeout_ms <= 1000
            n[0] = 0
            if len(calls) == 3:
                raise KeyboardInterrupt  # what a signal between two waits does
            return _native.MS_ERR_TIMEOUT

    ffi, _ = _native.load()
    stream = object.__new__(_native.Stream)
    stream.handle = 1
    stream._ffi, stream._lib = ffi, FakeLib()
    stream._batch = 4
    stream._out = ffi.new("ms_tensor[]", 4)
    stream._n = ffi.new("int32_t *")
    stream._err = ffi.new("char[]", 64)
    stream.ended = False
    stream._pid = os.getpid()
    with pytest.raises(KeyboardInterrupt):
        stream.next_batch()
    assert len(calls) == 3
    stream.handle = None  # nothing to close


# ---------------------------------------------------------------------------
# Helpers: list_safetensors, pull_files, ObjectStorageModel, S3Credentials
# ---------------------------------------------------------------------------

def test_list_safetensors(tmp_path):
    for name in ("b.safetensors", "a.safetensors", "c.bin", "config.json"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.safetensors").write_bytes(b"x")
    (tmp_path / "dir.safetensors").mkdir()
    assert list_safetensors(str(tmp_path)) == [
        os.path.join(str(tmp_path), "a.safetensors"),
        os.path.join(str(tmp_path), "b.safetensors"),
    ]
    assert list_safetensors(str(tmp_path / "sub")) == [os.path.join(str(tmp_path / "sub"), "d.safetensors")]
    with pytest.raises(FileNotFoundError):
        list_safetensors(str(tmp_path / "missing"))
    with pytest.raises(runai_model_streamer.RunaiStreamerError, match="no storage backend"):
        list_safetensors("nosuch://bucket/model/")


def test_pull_files_local(tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    files = {
        "model-1.safetensors": b"one",
        "model-2.safetensors": b"two",
        "config.json": b"{}",
        "nested/tokenizer.json": b"tok",
        "nested/deeper/extra.safetensors": b"three",
        "README.md": b"readme",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    dst = tmp_path / "dst"
    pull_files(str(src), str(dst), allow_pattern=["*.safetensors", "*.json"],
               ignore_pattern=["nested/deeper/*"])
    got = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert got == ["config.json", "model-1.safetensors", "model-2.safetensors",
                   "nested/tokenizer.json"]
    assert (dst / "nested" / "tokenizer.json").read_bytes() == b"tok"
    dst2 = tmp_path / "dst2"
    pull_files(str(src), str(dst2))
    assert sorted(str(p.relative_to(dst2)) for p in dst2.rglob("*") if p.is_file()) == sorted(files)
    dst3 = tmp_path / "dst3"
    pull_files(str(src), str(dst3), ignore_pattern=["*.safetensors"])
    assert not list(dst3.rglob("*.safetensors"))


def test_pull_files_through_the_library(tmp_path):
    """The object storage route (list with the library, download each) run
    against a local directory, which the library's fs backend serves."""
    from runai_model_streamer import files

    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    content = {"a.safetensors": b"A" * 1000, "nested/b.json": b"{}", "nested/c.bin": b"C"}
    for rel, data in content.items():
        (src / rel).write_bytes(data)
    dst = tmp_path / "dst"
    files.pull_remote(str(src), str(dst), ["*.safetensors", "*.json"], ["*.bin"], None)
    got = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == {"a.safetensors": b"A" * 1000, "nested/b.json": b"{}"}
    listed = files.list_remote(str(src), False, None)
    assert [os.path.basename(u) for u, _ in listed] == ["a.safetensors"]
    assert listed[0][1] == 1000


def test_pull_files_refuses_paths_outside_dst(tmp_path):
    from runai_model_streamer.files import safe_destination

    dst = tmp_path / "dst"
    dst.mkdir()
    assert safe_destination(str(dst), "a/b.json") == str(dst / "a" / "b.json")
    for bad in ("../escape.json", "a/../../escape.json", "/etc/passwd", "a/../.."):
        with pytest.raises(ValueError):
            safe_destination(str(dst), bad)
    # A symlink inside dst pointing outside is not followed out either.
    (dst / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        safe_destination(str(dst), "link/escape.json")


def test_object_storage_model_for_a_local_directory(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.safetensors").write_bytes(b"x")
    cache = tmp_path / "cache"
    with ObjectStorageModel(model_path=str(model), dst=str(cache)) as obj:
        assert obj.dir == str(model)
        obj.pull_files(allow_pattern=["*.safetensors"])
        obj.pull_files(ignore_pattern=["*.safetensors"])
    assert not cache.exists()


def test_object_storage_model_uri_reports_missing_backend(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(runai_model_streamer.RunaiStreamerError, match="no storage backend"):
        with ObjectStorageModel(model_path="nosuch://bucket/model", dst=str(cache)) as obj:
            obj.pull_files()
    # The lock is released: a second user gets as far as the download again.
    with pytest.raises(runai_model_streamer.RunaiStreamerError, match="no storage backend"):
        with ObjectStorageModel(model_path="nosuch://bucket/model", dst=str(cache)) as obj:
            obj.pull_files()
    assert not (cache / ObjectStorageModel.SENTINEL_NAME).exists()


def test_s3_credentials():
    c = S3Credentials(access_key_id="AK", secret_access_key="SECRET", session_token="TOK",
                      region_name="us-east-1", endpoint="http://localhost:9000")
    assert (c.access_key_id, c.secret_access_key, c.session_token, c.region_name, c.endpoint) == \
        ("AK", "SECRET", "TOK", "us-east-1", "http://localhost:9000")
    assert "SECRET" not in repr(c) and "TOK" not in repr(c) and "AK" in repr(c)
    d = S3Credentials()
    assert d.access_key_id is None and d.endpoint is None
    assert S3Credentials("a", "b") == S3Credentials("a", "b")
    from runai_model_streamer.s3_utils.s3_utils import S3Credentials as Old
    assert Old is S3Credentials


def test_backend_settings_reach_the_library(small_checkpoint, monkeypatch):
    """The library never reads the environment: Python hands it the backend
    variables. A malformed one is reported by the library, by name."""
    from runai_model_streamer.config import backend_settings

    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "HOME": "/root",
           "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "AZURE_STORAGE_ACCOUNT_NAME": "acct",
           "MODEL_STREAMER_MAX_RETRIES": "2", "PATH": "/bin"}
    got = backend_settings(env, S3Credentials("AK", "SK", region_name="eu-west-1"))
    assert got == sorted([
        "AWS_ENDPOINT_URL=http://127.0.0.1:9", "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0",
        "AZURE_STORAGE_ACCOUNT_NAME=acct", "MODEL_STREAMER_MAX_RETRIES=2",
        "AWS_ACCESS_KEY_ID=AK", "AWS_SECRET_ACCESS_KEY=SK", "AWS_REGION=eu-west-1"])

    monkeypatch.setenv("MODEL_STREAMER_MAX_RETRIES", "lots")
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="MODEL_STREAMER_MAX_RETRIES"):
            s.stream_file(str(small_checkpoint[0]))
    monkeypatch.setenv("MODEL_STREAMER_MAX_RETRIES", "3")
    stream_and_compare(small_checkpoint)


def test_get_tensors_after_a_failed_stream_files(tmp_path, small_checkpoint):
    with SafetensorsStreamer() as s:
        with pytest.raises(FileNotFoundError):
            s.stream_file(str(tmp_path / "missing.safetensors"))
        with pytest.raises(RuntimeError, match="stream_file"):
            s.get_tensors()
        s.stream_file(str(small_checkpoint[1]))
        assert sum(1 for _ in s.get_tensors()) == 3


def test_preload_starts_the_library_at_import_only_when_asked(small_checkpoint):
    # MODEL_STREAMER_PRELOAD=1 loads it on a thread at import; a streamer made
    # without it starts the same thread (the import alone loads nothing: above).
    code = f"""
        import os
        import runai_model_streamer
        from runai_model_streamer import _native, SafetensorsStreamer
        t = _native._state.starting
        print("AT IMPORT", t is not None)
        if t is None:
            s = SafetensorsStreamer()
            t = _native._state.starting
        t.join(60)
        print("LOADED", _native.is_loaded())
        with SafetensorsStreamer() as s:
            s.stream_file({str(small_checkpoint[0])!r})
            print("TENSORS", sum(1 for _ in s.get_tensors()))
    """
    r = run_python(code, env={"MODEL_STREAMER_PRELOAD": "1"})
    assert r.returncode == 0, r.stderr
    assert "AT IMPORT True" in r.stdout and "LOADED True" in r.stdout and "TENSORS 5" in r.stdout
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert "AT IMPORT False" in r.stdout and "LOADED True" in r.stdout and "TENSORS 5" in r.stdout
