"""In-process tests of the pieces of distributed streaming and GPU delivery
that need neither a process group nor a GPU: settings, the decision to
distribute, the partition, header reading, the copier's bookkeeping."""

from __future__ import annotations

import random

import pytest
import torch

from runai_model_streamer import _native, device as device_mod, distributed
from runai_model_streamer.distributed import errors, headers, settings as dist_settings
from runai_model_streamer.distributed import (
    DistSettings,
    backend_for,
    can_broadcast,
    fallback_reason,
    partition,
    slot_layout,
)
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

from conftest import make_random_checkpoint


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------

def test_settings_defaults():
    s = DistSettings.from_env({})
    assert (s.mode, s.global_mode, s.timeout_s, s.node) == ("auto", False, 600.0, None)
    assert s.buffer_min == 32 << 20


def test_settings_values():
    s = DistSettings.from_env({"RUNAI_STREAMER_DIST": "1", "RUNAI_STREAMER_DIST_GLOBAL": "1",
                               "RUNAI_STREAMER_DIST_TIMEOUT": "2.5",
                               "RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE": "1MiB",
                               "RUNAI_STREAMER_DIST_NODE": "n1"})
    assert (s.mode, s.global_mode, s.timeout_s, s.buffer_min, s.node) == ("on", True, 2.5,
                                                                          1 << 20, "n1")
    assert DistSettings.from_env({"RUNAI_STREAMER_DIST": "0"}).mode == "off"


@pytest.mark.parametrize("env", [
    {"RUNAI_STREAMER_DIST": "yes"},
    {"RUNAI_STREAMER_DIST_GLOBAL": "2"},
    {"RUNAI_STREAMER_DIST_TIMEOUT": "0"},
    {"RUNAI_STREAMER_DIST_TIMEOUT": "soon"},
])
def test_settings_rejected(env):
    with pytest.raises(RunaiStreamerInvalidInputException):
        DistSettings.from_env(env)


# ---------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------

def test_backend_mapping():
    assert backend_for("cpu", "gloo") == "gloo"
    assert backend_for("cuda", "NCCL") == "nccl"
    assert backend_for("cuda", "cpu:gloo,cuda:nccl") == "nccl"
    assert backend_for("cpu", "cpu:gloo,cuda:nccl") == "gloo"
    assert backend_for("cpu", "cuda:nccl") is None
    assert can_broadcast("gloo", "cpu") and can_broadcast("nccl", "cuda")
    assert not can_broadcast("nccl", "cpu")
    assert not can_broadcast("gloo", "cuda")
    assert not can_broadcast("weird", "cpu") and not can_broadcast(None, "cpu")


class _FakeDist:
    def __init__(self, backend="gloo", world=2, initialized=True):
        self.backend, self.world, self.initialized = backend, world, initialized

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def get_world_size(self):
        return self.world

    def get_backend(self):
        return self.backend


CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("mode,scheme,dev,fake,reader,why", [
    ("off", "s3", CUDA, _FakeDist("nccl"), True, "RUNAI_STREAMER_DIST=0"),
    ("auto", "file", CUDA, _FakeDist("nccl"), True, "on by default only for object storage"),
    ("auto", "s3", CPU, _FakeDist("gloo"), True, "not for cpu tensors"),
    ("on", "file", CPU, _FakeDist(initialized=False), True, "not initialised"),
    ("on", "file", CPU, _FakeDist(world=1), True, "the world has one process"),
    ("on", "file", CPU, _FakeDist("nccl"), True, "cannot broadcast cpu tensors"),
    ("on", "file", CUDA, _FakeDist("gloo"), True, "cannot broadcast cuda tensors"),
    ("on", "file", torch.device("meta"), _FakeDist(), True, "not supported"),
    ("auto", "s3", CUDA, _FakeDist("nccl"), False, "no ms_read_headers"),
    # distributed:
    ("on", "file", CPU, _FakeDist("gloo"), False, None),
    ("on", "file", CPU, _FakeDist("cpu:gloo,cuda:nccl"), False, None),
    ("auto", "s3", CUDA, _FakeDist("nccl"), True, None),
    ("auto", "gs", CUDA, _FakeDist("cpu:gloo,cuda:nccl"), True, None),
])
def test_fallback_reason(monkeypatch, mode, scheme, dev, fake, reader, why):
    monkeypatch.setattr(dist_settings, "dist", fake)
    monkeypatch.setattr(dist_settings, "_has_header_reader", lambda: reader)
    monkeypatch.setattr(dist_settings, "_has_range_reader", lambda: True)
    reason = fallback_reason(scheme, dev, DistSettings(mode=mode))
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason, reason


@pytest.mark.parametrize("asked,mode,dev,fake,why", [
    (False, "1", "cpu", _FakeDist("gloo"), "silent"),
    (True, "0", "cpu", _FakeDist("gloo"), "RUNAI_STREAMER_DIST=0"),
    (True, "1", "cpu", _FakeDist(initialized=False), "not initialised"),
    (True, "1", "cpu", _FakeDist(world=1), "the world has one process"),
    (True, "1", "cuda:0", _FakeDist("gloo"), "cannot broadcast cuda tensors"),
    (True, "1", "cpu", _FakeDist("nccl"), "cannot broadcast cpu tensors"),
    (True, "auto", "cpu", _FakeDist("gloo"), "on by default only over the nccl backend"),
    (True, None, "cpu", _FakeDist("cpu:gloo,cuda:nccl"), "only over the nccl backend"),
    (True, "auto", "cpu", _FakeDist("nccl"), "cannot broadcast cpu tensors"),
    # distributed:
    (True, "1", "cpu", _FakeDist("gloo"), None),
    (True, "1", None, _FakeDist("gloo"), None),
    (True, "1", torch.device("cpu"), _FakeDist("ucc"), None),
    (True, "auto", "cuda:0", _FakeDist("nccl"), None),
    (True, None, "cuda:1", _FakeDist("cpu:gloo,cuda:nccl"), None),
])
def test_set_is_distributed(monkeypatch, caplog, asked, mode, dev, fake, why):
    """DistributedStreamer's decision, the reference's rules: 0 never, 1 when
    the group can broadcast the device's tensors, auto only over nccl; never
    without an initialised world of several processes. One INFO line per
    fallback; none when not asked."""
    from runai_model_streamer.distributed_streamer import DistributedStreamer

    monkeypatch.setattr(dist_settings, "dist", fake)
    monkeypatch.setattr(dist_settings, "_has_range_reader", lambda: True)
    if mode is None:
        monkeypatch.delenv("RUNAI_STREAMER_DIST", raising=False)
    else:
        monkeypatch.setenv("RUNAI_STREAMER_DIST", mode)
    streamer = DistributedStreamer()
    with caplog.at_level("INFO", logger="runai_model_streamer"):
        streamer.set_is_distributed(asked, dev)
    lines = [r for r in caplog.records if "distributed streaming off" in r.getMessage()]
    assert streamer.is_distributed == (why is None)
    if why is None or why == "silent":
        assert lines == []
    else:
        assert len(lines) == 1 and why in lines[0].getMessage(), lines
        assert lines[0].levelname == "INFO"


def test_set_is_distributed_rejects_a_bad_setting(monkeypatch):
    from runai_model_streamer.distributed_streamer import DistributedStreamer

    monkeypatch.setattr(dist_settings, "dist", _FakeDist("gloo"))
    monkeypatch.setenv("RUNAI_STREAMER_DIST", "sometimes")
    with pytest.raises(ValueError, match="RUNAI_STREAMER_DIST"):
        DistributedStreamer().set_is_distributed(True, "cpu")


def test_not_initialised_delegates_to_the_file_streamer(monkeypatch, tmp_path):
    """In this (uninitialised) process: is_distributed=True streams through
    FileStreamer, every range byte for byte."""
    import torch.distributed as dist
    from runai_model_streamer.distributed_streamer import DistributedStreamer
    from runai_model_streamer.file_streamer import FileChunks

    assert not dist.is_initialized()
    monkeypatch.setenv("RUNAI_STREAMER_DIST", "1")
    monkeypatch.setenv("MODEL_STREAMER_READ_MODE", "buffered")  # read into a ring, not mapped
    data = random.Random(1).randbytes(10_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    chunks = FileChunks(3, str(path), [9_000, 0, 10, 10_000], [1_000, 20, 5_000, 0])
    with DistributedStreamer() as streamer:
        assert streamer.ring_info() is None
        streamer.stream_files([chunks], None, "cpu", True)
        assert not streamer.is_distributed and streamer.get_group_size() == 1
        rank, buffers, size = streamer.ring_info()
        assert (rank, buffers) == (0, 1) and size >= 6_000
        with pytest.raises(ValueError, match="outstanding"):
            streamer.stream_files([chunks], None, "cpu", True)
        got = {i: c.numpy().tobytes() for _, i, c in streamer.get_chunks()}
        assert streamer.stats()["bytes_read"] == 6_010  # [0, 5010) and [9000, 10000)
    assert got == {i: data[o:o + n] for i, (o, n) in enumerate(zip(chunks.offsets, chunks.sizes))}


# ---------------------------------------------------------------------------
# The reference's alignment helpers
# ---------------------------------------------------------------------------

def test_aligned_offset():
    from runai_model_streamer.distributed_streamer import aligned_offset

    assert aligned_offset(0, 0, 512) == 0
    assert aligned_offset(0, 1, 512) == 512
    assert aligned_offset(100, 0, 512) == 412  # (100 + 412) % 512 == 0
    assert aligned_offset(512, 512, 512) == 512
    assert aligned_offset(7, 3, 1) == 3 and aligned_offset(7, 3, 0) == 3
    for base in (0, 1, 511, 4096 + 17):
        for off in (0, 5, 600):
            got = aligned_offset(base, off, 64)
            assert got >= off and (base + got) % 64 == 0 and got - off < 64


@pytest.mark.parametrize("raw,want", [(None, 512), ("0", 0), ("4096", 4096), ("1048576", 1 << 20)])
def test_get_dist_buffer_alignment(monkeypatch, raw, want):
    from runai_model_streamer.distributed_streamer import get_dist_buffer_alignment
    from runai_model_streamer.distributed_streamer.distributed_streamer import (
        RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR,
    )

    if raw is None:
        monkeypatch.delenv(RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR, raw)
    assert get_dist_buffer_alignment() == want


@pytest.mark.parametrize("raw", ["-1", "1048577", "x"])
def test_get_dist_buffer_alignment_out_of_range(monkeypatch, raw):
    from runai_model_streamer.distributed_streamer import get_dist_buffer_alignment

    monkeypatch.setenv("RUNAI_STREAMER_CUDA_ALIGNMENT", raw)
    with pytest.raises(ValueError, match="RUNAI_STREAMER_CUDA_ALIGNMENT"):
        get_dist_buffer_alignment()


# ---------------------------------------------------------------------------
# The partition
# ---------------------------------------------------------------------------

def _spans(sizes_per_file):
    spans = []
    for fi, sizes in enumerate(sizes_per_file):
        pos = 0
        for nb in sizes:
            spans.append((fi, pos, pos + nb))
            pos += nb
    return spans


def test_partition_balances_and_is_deterministic():
    rng = random.Random(3)
    files = [[rng.choice([0, 1, 10, 1000, 50_000, 300_000]) for _ in range(200)] for _ in range(5)]
    spans = _spans(files)
    for n in (2, 3, 4, 8):
        owners = partition(spans, n)
        assert owners == partition(spans, n)
        loads = [0] * n
        for (fi, b, e), r in zip(spans, owners):
            if e == b:
                assert r == -1
            else:
                assert 0 <= r < n
                loads[r] += e - b
        total = sum(loads)
        target = distributed.block_target(total, n)
        # Greedy largest-first: no rank exceeds the mean by more than a block.
        assert max(loads) <= total / n + max(target, 300_000), (n, loads)


def test_partition_keeps_runs_contiguous():
    spans = _spans([[1000] * 64])
    owners = partition(spans, 2, target=16_000)
    # Blocks of 16 tensors: owners change only at block edges.
    changes = [i for i in range(1, len(owners)) if owners[i] != owners[i - 1]]
    assert all(i % 16 == 0 for i in changes), changes
    assert sorted(set(owners)) == [0, 1]


def test_partition_more_ranks_than_tensors_and_one_huge():
    assert sorted(partition(_spans([[5, 7, 9]]), 8, target=1)) == [0, 1, 2]
    assert partition(_spans([[1 << 26]]), 4) == [0]
    assert partition(_spans([[0, 0]]), 2) == [-1, -1]
    assert partition([], 3) == []


def test_partition_keeps_overlapping_ranges_together():
    """Ranges in any order: overlapping ones share an owner (their common
    bytes are read once); touching ones may be split; with local_empties
    False empty ranges get owners too."""
    spans = [(0, 5000, 9000), (0, 0, 4000), (0, 3000, 6000), (1, 0, 100), (0, 4000, 4000),
             (0, 9000, 13000), (0, 20000, 20000)]
    owners = partition(spans, 3, target=4000)
    assert owners[0] == owners[1] == owners[2]  # [0, 4000) overlaps [3000, 6000) overlaps [5000, ...)
    assert owners[4] == -1 and owners[6] == -1
    assert owners[5] != owners[0]  # touches the block, which is full
    owners = partition(spans, 3, target=4000, local_empties=False)
    assert all(r >= 0 for r in owners)
    assert owners[4] == owners[0]  # inside the block
    assert partition(list(reversed(spans)), 3, target=4000)[::-1] == partition(spans, 3, target=4000)


def test_slot_layout_aligns_every_tensor():
    offsets, total = slot_layout([3, 64, 1, 0, 100], 64)
    assert offsets == [0, 64, 128, 192, 192]
    assert total == 292
    assert slot_layout([]) == ([], 0)


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------

def test_python_headers_match_the_library(tmp_path):
    paths = [str(p) for p in make_random_checkpoint(tmp_path, 11, "raw", max_files=3)]
    ours = {"files": [headers._parse_local_header(p) for p in paths]}
    stream = _native.Stream(paths, None, read_mode=1)
    try:
        theirs = stream.metadata()
    finally:
        stream.close()
    for a, b in zip(ours["files"], theirs["files"]):
        assert a["data_offset"] == b["data_offset"] and a["size"] == b["size"]
        assert a["tensors"] == b["tensors"]


def test_header_errors(tmp_path):
    from runai_model_streamer.exceptions import (
        RunaiStreamerFileNotFoundError,
    )

    with pytest.raises(RunaiStreamerFileNotFoundError):
        headers._parse_local_header(str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(RunaiStreamerInvalidInputException):
        headers._parse_local_header(str(bad))


def test_select_tensors():
    meta = {"files": [{"uri": "a", "tensors": [{"name": "x"}, {"name": "y"}]},
                      {"uri": "b", "tensors": [{"name": "z"}]}]}
    assert distributed.select_tensors(meta, None) is meta
    got = distributed.select_tensors(meta, ["y", "z"])
    assert [[t["name"] for t in f["tensors"]] for f in got["files"]] == [["y"], ["z"]]


def test_remote_error_keeps_the_class():
    from runai_model_streamer.exceptions import RunaiStreamerFileNotFoundError

    idx = errors.error_class_index(RunaiStreamerFileNotFoundError("gone"))
    err = errors.remote_error(idx, "rank 3 failed: gone")
    assert isinstance(err, RunaiStreamerFileNotFoundError)
    assert isinstance(err, FileNotFoundError)
    assert isinstance(err, distributed.RunaiStreamerDistributedError)
    plain = errors.remote_error(errors.error_class_index(ValueError("x")), "m")
    assert type(plain) is distributed.RunaiStreamerDistributedError


# ---------------------------------------------------------------------------
# GPU delivery: the library's ring and the copier's bookkeeping (no GPU)
# ---------------------------------------------------------------------------

def test_native_arena_covers_the_tensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "a.safetensors"
    save_file({f"t{i}": torch.full((1024,), float(i)) for i in range(8)}, str(path))
    stream = _native.Stream([str(path)], None, memory_limit=0, read_mode=1)
    try:
        arena = device_mod.native_arena(stream)
        if arena is None:
            pytest.skip("this library has no ms_stream_arena")
        base, length = arena
        assert base % 4096 == 0 and length >= 4096
        batch = stream.next_batch()
        for _, _, addr, nbytes, token in batch:
            assert base <= addr and addr + nbytes <= base + length
            _native.release(token)
    finally:
        stream.close()
    assert device_mod.native_arena(stream) is None  # closed


class _Event:
    def __init__(self, log):
        self.done = False
        self.log = log

    def record(self, stream):
        self.log.append("record")

    def query(self):
        return self.done


class _Stream:
    def __init__(self, log):
        self.log = log

    def wait_stream(self, other):
        self.log.append("side waits current")

    def wait_event(self, event):
        self.log.append("current waits event")

    def synchronize(self):
        self.log.append("synchronize")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _FakeCopier(device_mod.HostToDevice):
    """HostToDevice with its CUDA calls replaced: copies on the CPU, events
    completed by the test."""

    def __init__(self, log):
        self.log = log
        self.events = []
        super().__init__(torch.device("cuda", 0), None, pin=False)

    def _new_stream(self):
        return _Stream(self.log)

    def _current_stream(self):
        return _Stream(self.log)

    def _new_event(self):
        e = _Event(self.log)
        self.events.append(e)
        return e

    def _use_stream(self, stream):
        return _Null()


def test_copier_releases_a_token_only_after_its_copy(monkeypatch):
    released = []
    monkeypatch.setattr(_native, "release", lambda token: released.append(token))
    log = []
    copier = _FakeCopier(log)
    outs = [torch.empty(4) for _ in range(3)]
    for i in range(3):
        copier.copy(torch.full((4,), float(i)), token=100 + i, out=outs[i])
    assert released == []  # no copy has finished
    assert [o[0].item() for o in outs] == [0.0, 1.0, 2.0]
    copier.events[0].done = True
    copier.poll()
    assert released == [100]
    copier.events[2].done = True  # in order: 101 is not done yet
    copier.poll()
    assert released == [100]
    copier.events[1].done = True
    copier.poll()
    assert released == [100, 101, 102]
    assert log.count("current waits event") == 3


def test_copier_close_unpins_before_releasing(monkeypatch):
    order = []
    monkeypatch.setattr(_native, "release", lambda token: order.append(("release", token)))
    copier = _FakeCopier([])

    class _Pin:
        def close(self):
            order.append(("unpin",))

        def contains(self, addr, n):
            return False

    copier.pinned = _Pin()
    copier.copy(torch.ones(2), token=7, out=torch.empty(2))
    copier.close()
    assert order == [("unpin",), ("release", 7)]
    copier.close()  # idempotent
    assert order == [("unpin",), ("release", 7)]


def test_pin_limit_setting(monkeypatch):
    monkeypatch.delenv(device_mod.PIN_MAX_ENV, raising=False)
    assert device_mod.pin_max_bytes() == 16 << 30
    monkeypatch.setenv(device_mod.PIN_MAX_ENV, "0")
    assert device_mod.pin_max_bytes() == 0
    monkeypatch.setenv(device_mod.PIN_MAX_ENV, "-5")
    with pytest.raises(RunaiStreamerInvalidInputException):
        device_mod.pin_max_bytes()


class _LazyDevice(_FakeCopier):
    """A copier whose copies never finish by themselves (event.query() stays
    False): only synchronize() completes them, as a busy GPU would. Copies go
    to CPU tensors."""

    def __init__(self, stream):
        super().__init__([])
        self.device = torch.device("cpu")
        self.synchronized = 0
        self.peak_pending = 0

    def _keep_for(self, tensor, stream):
        pass

    def copy(self, host, token=None, out=None):
        result = super().copy(host, token, out)
        self.peak_pending = max(self.peak_pending, self.pending)
        return result

    def synchronize(self):
        self.synchronized += 1
        super().synchronize()


@pytest.mark.parametrize("memory_limit", [64 << 10, 0])
def test_device_delivery_waits_for_copies_instead_of_starving_the_reader(
        checkpoints, monkeypatch, set_env, memory_limit):
    """CUDA delivery keeps each tensor's host memory until its copy is done.
    With a small ring the reader needs that memory back: the iterator must
    wait for the copies when nothing is ready (not block on the reader, not
    make the library allocate past its limit) and still deliver every
    tensor's exact bytes."""
    from runai_model_streamer import SafetensorsStreamer
    from conftest import assert_matches, describe, reference_all

    copiers = []

    def make(device, stream):
        copiers.append(_LazyDevice(stream))
        return copiers[-1]

    monkeypatch.setattr(device_mod, "HostToDevice", make)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_env(RUNAI_STREAMER_MEMORY_LIMIT=memory_limit, MODEL_STREAMER_READ_MODE="buffered")
    paths = checkpoints["many"]
    expected = reference_all(paths)

    def stream(device):
        seen = set()
        with SafetensorsStreamer() as streamer:
            streamer.stream_files([str(p) for p in paths], device=device, owned=False)
            for name, tensor in streamer.get_tensors():
                assert_matches(name, describe(tensor), expected[name])
                seen.add(name)
                stats = streamer._stream.stats()
        assert seen == set(expected)
        return stats["arena_bytes"]

    # A CPU consumer that releases each tensor at once sets the bound.
    cpu_arena = stream("cpu")
    assert stream("cuda:0") <= cpu_arena
    (copier,) = copiers
    assert copier.synchronized > 0 and copier.pending == 0
    assert copier.peak_pending > 1  # copies did overlap the reading


def test_auto_reads_cached_files_into_the_arena_for_cuda(checkpoints):
    """Bound for a CUDA device, auto reads a cached file into the (pinnable)
    arena instead of mapping it."""
    from runai_model_streamer.config import READ_MODES, StreamerConfig

    config = StreamerConfig.from_env({})
    assert config.read_mode_for("cuda") == "auto-read"
    assert config.read_mode_for("cpu") == "auto"
    assert StreamerConfig.from_env({"MODEL_STREAMER_READ_MODE": "mmap"}).read_mode_for("cuda") == "mmap"

    path = str(checkpoints["one_file"][0])
    with open(path, "rb") as f:
        f.read()  # cached
    inside = {}
    for mode in ("auto", "auto-read"):
        stream = _native.Stream([path], None, read_mode=READ_MODES[mode])
        try:
            base, length = device_mod.native_arena(stream) or (0, 0)
            n = 0
            while (batch := stream.next_batch()) is not None:
                for _, _, addr, nbytes, token in batch:
                    n += base <= addr and addr + nbytes <= base + length
                    _native.release(token)
            inside[mode] = n
        finally:
            stream.close()
    assert inside == {"auto": 0, "auto-read": 3}, inside
