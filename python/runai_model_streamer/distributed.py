"""Distributed streaming: the processes of a torch.distributed group share the
reading of one checkpoint.

``SafetensorsStreamer.stream_files(..., is_distributed=True)`` with
torch.distributed initialised:

1. Every process reads the headers (no tensor data) and computes the same
   partition of the tensors: contiguous runs of tensors ("blocks", so each
   process still reads long ranges) handed out largest first to the least
   loaded process. Each process opens a native stream of its own share only
   (the library's tensor-name filter), so every byte is read from storage once
   per group. RUNAI_STREAMER_MEMORY_LIMIT applies to that stream.
2. The processes then run rounds. A round starts with an all_gather of a small
   int64 record per process: a status word (active / done / failed), how many
   tensors it offers, their total size and their ids. A failed process sends
   its error (class and message) in a second all_gather, and every process
   raises it, naming the process that failed. Otherwise, for each process
   with something to offer, in rank order, the owner broadcasts its offer: the
   tensors under 1 MiB packed into one flat uint8 buffer (slots aligned to
   RUNAI_STREAMER_CUDA_ALIGNMENT, default 512 bytes), each larger one alone,
   straight from its own memory. Everyone
   slices what it received and yields the tensors. Every process yields every
   tensor.

Groups: local mode (default) forms one group per node (hostnames gathered with
all_gather_object over the world; RUNAI_STREAMER_DIST_NODE overrides the
hostname); RUNAI_STREAMER_DIST_GLOBAL=1 forms one group of every process.
Groups are created once (new_group is collective: every process creates every
group in the same order) with the timeout RUNAI_STREAMER_DIST_TIMEOUT (seconds,
default 600) and reused by later requests; the default group is used only to
learn the hostnames, never for the exchange itself.

Staging: one send and one receive buffer per process on the requested device,
each max(largest tensor, RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE (32 MiB; 0 or
less: just the largest tensor)), capped at the request's size: about twice the
largest tensor. Each staging buffer starts at an address that is a multiple of
RUNAI_STREAMER_CUDA_ALIGNMENT (0 to 1 MiB, default 512) and so does every
tensor packed in it, on every process (see DistSettings.slot_align). owned=True: each
yielded tensor is the caller's own (cloned out of staging, or received straight
into its own memory when it travels alone); owned=False: tensors are views into
staging (or the library's buffer), valid until the iteration advances.

Every process must pass the same paths and tensor_names and consume the whole
iterator; the requests are compared (a hash) before any data moves. A process
that stops early, dies or stalls makes the others raise, at the latest after
the timeout.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from runai_model_streamer import _native
from runai_model_streamer.config import parse_size
from runai_model_streamer.exceptions import (
    RunaiStreamerError,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerIOError,
    RunaiStreamerMemoryLimitException,
    RunaiStreamerPermissionError,
)
from runai_model_streamer.files import local_path

try:  # torch builds without distributed support exist
    import torch.distributed as dist
except ImportError:  # pragma: no cover
    dist = None  # type: ignore[assignment]

logger = logging.getLogger("runai_model_streamer")

LOG_PREFIX = "[model-streamer] distributed streaming"

DIST_ENV = "RUNAI_STREAMER_DIST"
DIST_GLOBAL_ENV = "RUNAI_STREAMER_DIST_GLOBAL"
DIST_TIMEOUT_ENV = "RUNAI_STREAMER_DIST_TIMEOUT"
DIST_BUFFER_MIN_ENV = "RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE"
DIST_NODE_ENV = "RUNAI_STREAMER_DIST_NODE"
CUDA_ALIGNMENT_ENV = "RUNAI_STREAMER_CUDA_ALIGNMENT"

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_BUFFER_MIN = 32 << 20
# RUNAI_STREAMER_CUDA_ALIGNMENT: the alignment, in bytes, of every tensor
# packed in a staging buffer (and of the buffers themselves), with the
# reference's default and range.
DEFAULT_ALIGNMENT = 512
MAX_ALIGNMENT = 1 << 20
# Packed tensors are torch views of the buffer, which need offsets that are
# multiples of their element size (8 bytes at most; 16 leaves room): slots
# are aligned to a multiple of this too, even with an alignment of 0 or 1.
DTYPE_ALIGN = 16
# Tensors of at least this size travel alone, straight from (and, owned=True,
# into) their own memory: no packing copy, no clone.
SOLO_BYTES = 1 << 20
MAX_BATCH_TENSORS = 1024  # ids per offer (fixed record size)
MSG_LEN = 4096  # bytes of an error message sent to the other ranks
POLL_MS = 200
# A process that waits this share of the timeout for its own storage reports
# the stall itself, before the others' collectives time out.
OWN_WAIT_SHARE = 0.8

# Which device types each backend can broadcast. gloo also moves CUDA tensors,
# through host memory; that is no faster than every process reading for
# itself, so CUDA over gloo falls back.
_BACKEND_DEVICES = {
    "gloo": {"cpu"},
    "mpi": {"cpu"},
    "nccl": {"cuda"},
    "ucc": {"cpu", "cuda"},
}

# Status words of a round's record.
_ACTIVE = 0  # more to come after this offer
_DONE = 1  # this offer (possibly empty) is the last
_FAILED = 2
_FALLBACK = 3  # setup only: this process cannot take part (see _local_fallback)

_HDR = 3  # status, count, nbytes; then MAX ids

# Exception classes carried to the other ranks by index.
_ERROR_CLASSES = (
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerPermissionError,
    RunaiStreamerIOError,
)


class RunaiStreamerDistributedError(RunaiStreamerError):
    """Distributed streaming failed: a collective failed or timed out, or
    another process of the group failed (its message is included)."""


def _error_class_index(e: BaseException) -> int:
    for i in range(len(_ERROR_CLASSES) - 1, 0, -1):
        if isinstance(e, _ERROR_CLASSES[i]):
            return i
    return 0


def _remote_error(index: int, message: str) -> RunaiStreamerError:
    cls = _ERROR_CLASSES[index] if 0 <= index < len(_ERROR_CLASSES) else RunaiStreamerError
    if cls is RunaiStreamerError:
        cls = RunaiStreamerDistributedError
        return cls(message)
    # The same class as on the failing rank, so callers catching e.g.
    # FileNotFoundError see the same on every rank.
    err = type("RunaiStreamerDistributed" + cls.__name__.replace("RunaiStreamer", ""),
               (cls, RunaiStreamerDistributedError), {})
    return err(message)


# ---------------------------------------------------------------------------
# Settings and the decision
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DistSettings:
    mode: str = "auto"  # "auto" | "on" | "off"
    global_mode: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    buffer_min: int = DEFAULT_BUFFER_MIN
    node: Optional[str] = None
    alignment: int = DEFAULT_ALIGNMENT

    @property
    def slot_align(self) -> int:
        """The alignment of packed tensors: RUNAI_STREAMER_CUDA_ALIGNMENT (0
        and 1 mean none), made a multiple of DTYPE_ALIGN so that a packed
        tensor stays a view of the buffer whatever its dtype."""
        return math.lcm(max(1, self.alignment), DTYPE_ALIGN)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "DistSettings":
        env = os.environ if env is None else env
        raw = env.get(DIST_ENV, "").strip().lower()
        if raw in ("", "auto"):
            mode = "auto"
        elif raw == "1":
            mode = "on"
        elif raw == "0":
            mode = "off"
        else:
            raise RunaiStreamerInvalidInputException(
                f"{DIST_ENV}={env.get(DIST_ENV)!r}: expected 0, 1 or auto")
        raw = env.get(DIST_GLOBAL_ENV, "").strip()
        if raw not in ("", "0", "1"):
            raise RunaiStreamerInvalidInputException(
                f"{DIST_GLOBAL_ENV}={raw!r}: expected 0 or 1")
        global_mode = raw == "1"
        timeout = DEFAULT_TIMEOUT_S
        raw = env.get(DIST_TIMEOUT_ENV, "").strip()
        if raw:
            try:
                timeout = float(raw)
            except ValueError:
                timeout = -1.0
            if not timeout > 0 or timeout == float("inf"):
                raise RunaiStreamerInvalidInputException(
                    f"{DIST_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
        buffer_min = DEFAULT_BUFFER_MIN
        raw = env.get(DIST_BUFFER_MIN_ENV, "").strip()
        if raw:
            # Any integer, as the reference: the buffers are max(this, the
            # largest tensor), so 0 (or less) means just the largest tensor.
            buffer_min = max(0, parse_size(raw, DIST_BUFFER_MIN_ENV))
        node = env.get(DIST_NODE_ENV, "").strip() or None
        alignment = DEFAULT_ALIGNMENT
        raw = env.get(CUDA_ALIGNMENT_ENV, "").strip()
        if raw:
            alignment = parse_size(raw, CUDA_ALIGNMENT_ENV)
            if not 0 <= alignment <= MAX_ALIGNMENT:
                raise RunaiStreamerInvalidInputException(
                    f"{CUDA_ALIGNMENT_ENV}={raw!r}: must be between 0 and {MAX_ALIGNMENT} bytes")
        return cls(mode, global_mode, timeout, buffer_min, node, alignment)


def backend_for(device_type: str, backend: Optional[str] = None) -> Optional[str]:
    """The backend the default group uses for tensors of device_type
    ("gloo", "nccl", ... or a "cpu:gloo,cuda:nccl" mapping)."""
    if backend is None:
        backend = str(dist.get_backend())
    backend = backend.strip().lower()
    if ":" not in backend:
        return backend
    mapping = {}
    for part in backend.split(","):
        dev, _, name = part.partition(":")
        mapping[dev.strip()] = name.strip()
    return mapping.get(device_type)


def can_broadcast(backend: Optional[str], device_type: str) -> bool:
    return backend is not None and device_type in _BACKEND_DEVICES.get(backend, ())


def _has_header_reader() -> bool:
    _, lib = _native.load()
    return _native._function(lib, "ms_read_headers") is not None


def fallback_reason(scheme: str, device: torch.device, settings: DistSettings) -> Optional[str]:
    """Why this request is streamed without distribution, or None to
    distribute. Depends only on what every process of a job shares (the
    settings, the request, torch.distributed's state), so every process
    reaches the same answer without talking to the others."""
    if settings.mode == "off":
        return f"{DIST_ENV}=0"
    if settings.mode == "auto" and (scheme == "file" or device.type != "cuda"):
        what = "local files" if scheme == "file" else f"{device.type} tensors"
        return (f"it is on by default only for object storage to CUDA devices, not for {what} "
                f"(set {DIST_ENV}=1 to force it)")
    if device.type not in ("cpu", "cuda"):
        return f"device type {device.type!r} is not supported"
    if dist is None or not dist.is_available():
        return "this torch build has no torch.distributed"
    if not dist.is_initialized():
        return "torch.distributed is not initialised"
    if dist.get_world_size() <= 1:
        return "the world has one process"
    backend = backend_for(device.type)
    if not can_broadcast(backend, device.type):
        return (f"the default group's backend {dist.get_backend()!r} cannot broadcast "
                f"{device.type} tensors here")
    if scheme != "file" and not _has_header_reader():
        return "the native library cannot read headers alone (no ms_read_headers)"
    return None


# ---------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------

@dataclass
class _Group:
    group: Any
    ranks: List[int]  # global ranks, in group-rank order
    node: str
    world: Any  # the default group the group belongs to
    key: Tuple[Any, ...]


_groups: Dict[Tuple[Any, ...], _Group] = {}
_groups_lock = threading.Lock()


def _gather_nodes(node: str, timeout: timedelta) -> List[str]:
    """Every process's node name, over the default group (setup only)."""
    world = dist.get_world_size()
    out: List[Any] = [None] * world
    helper = None
    if not can_broadcast(backend_for("cpu"), "cpu") and dist.is_gloo_available():
        # all_gather_object over NCCL would allocate on whichever GPU is
        # current; a short-lived gloo group keeps this on the host.
        helper = dist.new_group(list(range(world)), timeout=timeout, backend="gloo")
    try:
        dist.all_gather_object(out, node, group=helper)
    finally:
        if helper is not None:
            try:
                dist.destroy_process_group(helper)
            except Exception:  # pragma: no cover - best effort
                pass
    return [str(x) for x in out]


def _my_group(settings: DistSettings) -> _Group:
    """This process's group, created (collectively) on first use."""
    world = dist.group.WORLD
    key = (id(world), dist.get_world_size(), settings.global_mode, settings.timeout_s,
           None if settings.global_mode else settings.node)
    with _groups_lock:
        for k in [k for k, g in _groups.items() if g.world is not world]:
            del _groups[k]  # a previous world (destroyed and re-initialised)
        entry = _groups.get(key)
        if entry is not None:
            return entry
        timeout = timedelta(seconds=settings.timeout_s)
        me = dist.get_rank()
        size = dist.get_world_size()
        if settings.global_mode:
            ranks = list(range(size))
            group = dist.new_group(ranks, timeout=timeout)
            entry = _Group(group, ranks, "*", world, key)
        else:
            node = settings.node or socket.gethostname()
            nodes = _gather_nodes(node, timeout)
            by_node: Dict[str, List[int]] = {}
            for rank, name in enumerate(nodes):
                by_node.setdefault(name, []).append(rank)
            mine = None
            # Every process creates every node's group, in the order of the
            # nodes' first ranks.
            for name, ranks in sorted(by_node.items(), key=lambda kv: kv[1][0]):
                group = dist.new_group(ranks, timeout=timeout)
                if me in ranks:
                    mine = _Group(group, ranks, name, world, key)
            assert mine is not None
            entry = mine
        _groups[key] = entry
        return entry


def _forget_group(entry: _Group) -> None:
    """Drops a group after a failed or abandoned exchange: its peers may be
    mid-collective. Destroying it closes its connections, so peers blocked on
    it fail at once rather than at the timeout. Every process of the group
    drops it (each sees a failure), so the next request creates new groups on
    all of them alike."""
    with _groups_lock:
        if _groups.get(entry.key) is entry:
            del _groups[entry.key]
        group, entry.group = entry.group, None
    if group is None:
        return
    # destroy_process_group alone leaves gloo's connections open while any
    # reference remains; abort() closes them, so a peer blocked on this group
    # fails at once.
    try:
        group.abort()
    except Exception:
        pass
    try:
        if dist.is_initialized():
            dist.destroy_process_group(group)
    except Exception:  # pragma: no cover - best effort
        pass


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------

_MAX_HEADER = 100 << 20


def _parse_local_header(path: str) -> Dict[str, Any]:
    """One file's entry, as ms_stream_metadata describes files, read in
    Python (local files). The native stream validates strictly later."""
    fs_path = local_path(path)
    try:
        with open(fs_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) < 8:
                raise RunaiStreamerInvalidInputException(
                    f"{path}: not a SafeTensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise RunaiStreamerInvalidInputException(
                    f"{path}: header length {n} does not fit the file ({size} bytes)")
            text = f.read(n)
    except FileNotFoundError as e:
        raise RunaiStreamerFileNotFoundError(f"{path}: {e.strerror or e}") from None
    except PermissionError as e:
        raise RunaiStreamerPermissionError(f"{path}: {e.strerror or e}") from None
    except IsADirectoryError:
        raise RunaiStreamerInvalidInputException(f"{path}: is a directory") from None
    except OSError as e:
        raise RunaiStreamerIOError(f"{path}: reading the header: {e}") from None
    try:
        header = json.loads(text)
        tensors = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = (int(x) for x in entry["data_offsets"])
            tensors.append({"name": name, "dtype": str(entry["dtype"]),
                            "shape": [int(d) for d in entry["shape"]],
                            "offsets": [begin, end]})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise RunaiStreamerInvalidInputException(f"{path}: invalid header: {e}") from None
    tensors.sort(key=lambda t: (t["offsets"][0], t["offsets"][1]))
    return {"uri": path, "data_offset": 8 + n, "size": size, "tensors": tensors}


def read_headers(paths: Sequence[str], config: Any,
                 settings: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Every tensor of every file, as {"files": [{"uri", "data_offset",
    "size", "tensors": [...]}]} (tensors in file-offset order), without
    reading tensor data: through ms_read_headers when the library has it,
    else (local files only) in Python."""
    ffi, lib = _native.load()
    fn = _native._function(lib, "ms_read_headers")
    if fn is None:
        return {"files": [_parse_local_header(p) for p in paths]}
    keep: list = []
    c_uris = ffi.new("char *[]", max(1, len(paths)))
    for i, p in enumerate(paths):
        cs = ffi.new("char[]", p.encode("utf-8"))
        keep.append(cs)
        c_uris[i] = cs
    cfg = _native._config(ffi, keep, concurrency=getattr(config, "concurrency", 0),
                          chunk_bytes=getattr(config, "chunk_bytes", 0), settings=settings)
    out = ffi.new("char **")
    err = ffi.new("char[]", _native.ERR_BUF_LEN)
    rc = fn(c_uris, len(paths), cfg, out, err, _native.ERR_BUF_LEN)
    if rc != _native.MS_OK:
        raise _native.error_for(rc, ffi.string(err).decode("utf-8", "replace").strip())
    try:
        text = ffi.string(out[0]).decode("utf-8")
    finally:
        if out[0] != ffi.NULL:
            lib.ms_free(out[0])
    return json.loads(text)


def select_tensors(meta: Dict[str, Any], names: Optional[Sequence[str]]) -> Dict[str, Any]:
    """meta with only the named tensors (all when names is None)."""
    if names is None:
        return meta
    wanted = set(names)
    files = []
    for f in meta.get("files", []):
        g = dict(f)
        g["tensors"] = [t for t in f.get("tensors", []) if t["name"] in wanted]
        files.append(g)
    return {"files": files}


# ---------------------------------------------------------------------------
# The partition
# ---------------------------------------------------------------------------

def block_target(total: int, n: int) -> int:
    """Bytes per block: small enough for balance, large enough that each
    process reads long ranges."""
    return min(64 << 20, max(64 << 10, total // max(1, 8 * n)))


def partition(spans: Sequence[Tuple[int, int, int]], n: int,
              target: Optional[int] = None) -> List[int]:
    """Owners (0..n-1) of tensors given as (file index, begin, end) in request
    order (file by file, offsets ascending); -1 for empty tensors, which need no
    reading.

    Consecutive back-to-back tensors of a file form blocks of about `target`
    bytes (a larger tensor is a block alone); blocks go, largest first, to the
    least loaded process (ties: the lowest rank). Deterministic."""
    owners = [-1] * len(spans)
    total = sum(max(0, e - b) for _, b, e in spans)
    if target is None:
        target = block_target(total, n)
    blocks: List[Tuple[int, int, List[int]]] = []  # (bytes, first index, members)
    cur: List[int] = []
    cur_bytes = 0
    last: Optional[Tuple[int, int]] = None  # (file, end) of the previous member
    for i, (fi, b, e) in enumerate(spans):
        nb = e - b
        if nb <= 0:
            continue
        contiguous = last is not None and last == (fi, b)
        if cur and (not contiguous or cur_bytes + nb > target):
            blocks.append((cur_bytes, cur[0], cur))
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nb
        last = (fi, e)
    if cur:
        blocks.append((cur_bytes, cur[0], cur))
    blocks.sort(key=lambda blk: (-blk[0], blk[1]))
    heap = [(0, r) for r in range(n)]
    for nbytes, _, members in blocks:
        load, r = heapq.heappop(heap)
        for i in members:
            owners[i] = r
        heapq.heappush(heap, (load + nbytes, r))
    return owners


def _align_up(pos: int, align: int) -> int:
    return (pos + align - 1) // align * align


def slot_layout(sizes: Sequence[int], align: int = DEFAULT_ALIGNMENT) -> Tuple[List[int], int]:
    """Offsets of tensors packed in one buffer (each a multiple of align) and
    its size."""
    offsets = []
    pos = 0
    for nb in sizes:
        pos = _align_up(pos, align)
        offsets.append(pos)
        pos += nb
    return offsets, pos


# ---------------------------------------------------------------------------
# Opening a distributed request
# ---------------------------------------------------------------------------

def _fingerprint(paths: Sequence[str], names: Optional[Sequence[str]], metas: Mapping[int, Any],
                 device: torch.device, batch: int, max_ids: int, align: int) -> List[int]:
    doc = json.dumps({
        "paths": list(paths),
        "names": None if names is None else sorted(names),
        "tensors": [[m.name, m.offsets.start, m.offsets.end] for fi in sorted(metas)
                    for m in metas[fi]],
        "device": device.type,
        "batch": batch,
        "ids": max_ids,
        "align": align,
    }, sort_keys=True).encode("utf-8")
    digest = hashlib.sha256(doc).digest()
    return [int.from_bytes(digest[i:i + 8], "little", signed=True) for i in range(0, 32, 8)]


def _comm_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def open_stream(paths: List[str], names: Optional[List[str]], device: torch.device,
                scheme: str, config: Any, settings: Optional[Sequence[str]], *,
                open_native: Callable[[Optional[List[str]]], "_native.Stream"],
                validate: Callable[[Dict[str, Any]], Dict[int, List[Any]]],
                wrap: Callable[..., Tuple[torch.Tensor, bool]],
                owned: bool) -> Optional["DistributedStream"]:
    """A DistributedStream for the request, or None (after one log line
    saying why) when it is to be streamed without distribution.

    open_native(names) opens this process's native stream of the named
    tensors; validate(meta) checks the full request's metadata and returns
    files_to_tensors_metadata; wrap is SafetensorsStreamer._wrap."""
    ds = DistSettings.from_env()
    reason = fallback_reason(scheme, device, ds)
    if reason is not None:
        logger.info(f"{LOG_PREFIX} off: {reason}; each process reads every tensor itself")
        return None
    device = _comm_device(device)
    entry = _my_group(ds)
    if len(entry.ranks) == 1:
        logger.info(f"{LOG_PREFIX} off: this process is alone in its group (node {entry.node!r}; "
                    f"set {DIST_GLOBAL_ENV}=1 to share across nodes); it reads every tensor itself")
        return None

    n = len(entry.ranks)
    me = entry.ranks.index(dist.get_rank())
    failure: Optional[BaseException] = None
    stream = None
    plan = None
    fp = [0, 0, 0, 0]
    local_reason = None
    try:
        meta = select_tensors(read_headers(paths, config, settings), names)
        metas = validate(meta)
        plan = _Plan(metas, n, ds)
        fp = _fingerprint(paths, names, metas, device, plan.batch_bytes, plan.max_ids,
                          plan.align)
        local_reason = _local_fallback(plan, device)
        if local_reason is None:
            mine = [plan.tensors[g].name for g in range(len(plan.tensors))
                    if plan.owners[g] == me]
            stream = open_native(mine)
            plan.bind(stream, me)
    except Exception as e:  # reported to the group below, then raised
        failure = e
    try:
        proceed = _agree(entry, me, device, failure, fp, local_reason)
    except BaseException:
        if stream is not None:
            stream.close()
        raise
    if not proceed:
        if stream is not None:
            stream.close()
        return None
    assert plan is not None and stream is not None
    dstream = DistributedStream(entry, me, plan, stream, device, ds, wrap, owned)
    limit = int(getattr(config, "memory_limit", -1))
    if limit >= 0:
        # Offer no more than the ring holds: asking the library for more
        # while this process holds the ring would make it read on in fresh
        # memory, past RUNAI_STREAMER_MEMORY_LIMIT.
        largest = max(plan.sizes, default=0)
        dstream.offer_budget = min(plan.batch_bytes, max(largest, limit))
    return dstream


def _local_fallback(plan: "_Plan", device: torch.device) -> Optional[str]:
    """Why this process cannot take part (it tells the others, and the whole
    group falls back), or None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        need = 2 * plan.batch_bytes
        if free < need:
            return (f"not enough free memory on {device} for the staging buffers "
                    f"({free} bytes free, {need} needed)")
    return None


def _agree(entry: _Group, me: int, device: torch.device, failure: Optional[BaseException],
           fp: List[int], local_reason: Optional[str]) -> bool:
    """One all_gather: every process learns whether the others opened their
    share and asked for the same thing. Raises on every process otherwise.
    False (after one log line) when a process cannot take part: the whole
    group then streams without distribution."""
    status = _ACTIVE
    if failure is not None:
        status = _FAILED
    elif local_reason is not None:
        status = _FALLBACK
    record = torch.tensor([status, _error_class_index(failure) if failure is not None else 0]
                          + fp, dtype=torch.int64)
    rows = _all_gather_rows(entry, record, device, "comparing the requests")
    failed = [r for r in range(len(rows)) if rows[r][0] == _FAILED]
    if failed:
        _raise_failure(entry, me, device, failure, rows, failed, "opening its share")
    out = [r for r in range(len(rows)) if rows[r][0] == _FALLBACK]
    if out:
        who = entry.ranks[out[0]]
        why = local_reason if out[0] == me else "see that process's log"
        logger.info(f"{LOG_PREFIX} off: rank {who} of the group {entry.ranks} cannot take part "
                    f"({why}); each process reads every tensor itself")
        return False
    first = rows[0][2:]
    differ = [entry.ranks[r] for r in range(len(rows)) if rows[r][2:] != first]
    if differ:
        raise RunaiStreamerInvalidInputException(
            f"{LOG_PREFIX}: the processes of the group (ranks {entry.ranks}) asked for different "
            f"things (paths, tensor_names, device type, {DIST_BUFFER_MIN_ENV} or "
            f"{CUDA_ALIGNMENT_ENV} differ; ranks "
            f"{differ} differ from rank {entry.ranks[0]}); every process must make the same request")
    return True


def _all_gather_rows(entry: _Group, record: torch.Tensor, device: torch.device,
                     what: str) -> List[List[int]]:
    n = len(entry.ranks)
    record = record.to(device)
    outs = [torch.empty_like(record) for _ in range(n)]
    group = _group_of(entry)
    try:
        dist.all_gather(outs, record, group=group)
    except Exception as e:
        _forget_group(entry)
        raise _collective_error(entry, what, e) from e
    return torch.stack(outs).cpu().tolist()


def _group_of(entry: _Group) -> Any:
    """The group to use; never None (which would mean the default group)."""
    group = entry.group
    if group is None:
        raise RunaiStreamerDistributedError(
            f"{LOG_PREFIX}: the group of ranks {entry.ranks} was dropped after a failure or an "
            "abandoned request; start a new request")
    return group


def _collective_error(entry: _Group, what: str, e: BaseException) -> RunaiStreamerDistributedError:
    return RunaiStreamerDistributedError(
        f"{LOG_PREFIX}: {what} failed on rank {dist.get_rank()} (group of ranks {entry.ranks}): "
        f"{e}. Another process of the group failed, stopped consuming, exited or stalled longer "
        f"than {DIST_TIMEOUT_ENV}")


def _raise_failure(entry: _Group, me: int, device: torch.device,
                   failure: Optional[BaseException], rows: List[List[int]], failed: List[int],
                   doing: str) -> None:
    """Exchanges the failed processes' messages and raises on every process:
    the process's own exception where it failed, else the first failed
    process's, same class, naming that process."""
    text = ""
    if failure is not None:
        text = f"{type(failure).__name__}: {failure}"
    data = text.encode("utf-8", "replace")[:MSG_LEN]
    buf = torch.zeros(MSG_LEN, dtype=torch.uint8)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    n = len(entry.ranks)
    buf = buf.to(device)
    outs = [torch.empty_like(buf) for _ in range(n)]
    try:
        dist.all_gather(outs, buf, group=_group_of(entry))
        messages = [bytes(o.cpu().numpy().tobytes()).rstrip(b"\0").decode("utf-8", "replace")
                    for o in outs]
    except Exception as e:
        _forget_group(entry)
        messages = [f"(message lost: {e})"] * n
    if failure is not None:
        raise failure
    r = failed[0]
    raise _remote_error(int(rows[r][1]),
                        f"{LOG_PREFIX}: rank {entry.ranks[r]} of the group {entry.ranks} failed "
                        f"{doing}: {messages[r]}")


# ---------------------------------------------------------------------------
# The plan of one request
# ---------------------------------------------------------------------------

class _Plan:
    """The request's tensors in request order (gid), their owners, the batch
    budget and the record size; identical on every process."""

    def __init__(self, metas: Mapping[int, List[Any]], n: int, ds: DistSettings) -> None:
        self.tensors = [m for fi in sorted(metas) for m in metas[fi]]
        file_of = [fi for fi in sorted(metas) for _ in metas[fi]]
        spans = [(file_of[g], m.offsets.start, m.offsets.end) for g, m in enumerate(self.tensors)]
        self.owners = partition(spans, n)
        self.sizes = [m.get_bytesize() for m in self.tensors]
        self.align = ds.slot_align  # of packed tensors and staging buffers
        largest = max(self.sizes, default=0)
        total = slot_layout([s for s in self.sizes if s > 0], self.align)[1]
        self.batch_bytes = max(1, largest, min(ds.buffer_min, total))
        counts = [0] * n
        self.loads = [0] * n
        for g, r in enumerate(self.owners):
            if r >= 0:
                counts[r] += 1
                self.loads[r] += self.sizes[g]
        self.max_ids = max(1, min(MAX_BATCH_TENSORS, max(counts, default=1)))
        self.empties = [g for g, r in enumerate(self.owners) if r < 0]
        self.by_name = {m.name: g for g, m in enumerate(self.tensors)}
        self.total_bytes = sum(self.sizes)
        self.native_to_gid: Dict[Tuple[int, int], int] = {}
        self.mine = 0

    def bind(self, stream: "_native.Stream", me: int) -> None:
        """Maps the native stream's (file, tensor) indices to gids."""
        meta = stream.metadata()
        count = 0
        for fi, f in enumerate(meta.get("files", [])):
            for ti, t in enumerate(f.get("tensors", [])):
                g = self.by_name.get(t["name"])
                if g is None or self.owners[g] != me:
                    raise RunaiStreamerError(
                        f"{LOG_PREFIX}: the library streams {t['name']!r}, not in this share")
                self.native_to_gid[(fi, ti)] = g
                count += 1
        self.mine = count
        expected = sum(1 for r in self.owners if r == me)
        if count != expected:
            raise RunaiStreamerError(
                f"{LOG_PREFIX}: the library streams {count} tensor(s) of this share of {expected}")


# ---------------------------------------------------------------------------
# The exchange
# ---------------------------------------------------------------------------

class DistributedStream:
    """One distributed request: this process's native stream (its share) and
    the rounds that exchange the shares."""

    def __init__(self, entry: _Group, me: int, plan: _Plan, stream: "_native.Stream",
                 device: torch.device, ds: DistSettings,
                 wrap: Callable[..., Tuple[torch.Tensor, bool]], owned: bool) -> None:
        self.entry = entry
        self.me = me
        self.n = len(entry.ranks)
        self.plan = plan
        self.stream = stream
        self.device = device
        self.settings = ds
        self.owned = owned
        self._wrap = wrap
        self._pending: deque = deque()  # (file, tensor, addr, nbytes, token) fetched, not offered
        self._held: List[int] = []  # tokens to release when the iteration advances
        self._offered = 0
        self._yielded = 0
        self.offer_budget = plan.batch_bytes  # bytes this process offers per round
        self._state = "new"  # new -> running -> done | failed | abandoned
        self._send: Optional[torch.Tensor] = None
        self._recv: Optional[torch.Tensor] = None
        self._copier = None
        self._lock = threading.Lock()
        self.rounds = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        ffi, lib = _native.load()
        self._ffi, self._lib = ffi, lib
        self._out = ffi.new("ms_tensor[]", _native.DEFAULT_BATCH)
        self._nout = ffi.new("int32_t *")
        self._err = ffi.new("char[]", _native.ERR_BUF_LEN)
        logger.info(
            f"{LOG_PREFIX} over {self.n} processes ({'global' if ds.global_mode else 'local'} mode"
            f"{'' if ds.global_mode else ', node ' + repr(entry.node)}): rank {dist.get_rank()} "
            f"reads {plan.mine} of {len(plan.tensors)} tensors, {plan.loads[me]} of "
            f"{plan.total_bytes} bytes")

    # -- native polling -----------------------------------------------------
    def _poll(self, timeout_ms: int) -> Optional[List[Tuple[int, int, int, int, int]]]:
        """Ready tensors of the own stream: a list (empty on timeout), or None
        once it has delivered everything."""
        handle = self.stream.handle
        if handle is None:
            raise RunaiStreamerError("model-streamer: the stream is closed")
        ffi = self._ffi
        rc = self._lib.ms_stream_next(handle, self._out, _native.DEFAULT_BATCH, self._nout,
                                      timeout_ms, self._err, _native.ERR_BUF_LEN)
        if rc == _native.MS_OK:
            out = self._out
            return [(out[i].file_index, out[i].tensor_index,
                     int(ffi.cast("uintptr_t", out[i].data)), out[i].nbytes, out[i].token)
                    for i in range(self._nout[0])]
        if rc == _native.MS_ERR_TIMEOUT:
            return []
        if rc == _native.MS_ERR_END:
            return None
        raise _native.error_for(rc, ffi.string(self._err).decode("utf-8", "replace").strip())

    def _make_offer(self) -> Tuple[int, List[Tuple[int, torch.Tensor, int, bool]]]:
        """(status, [(gid, host tensor, token, zero_copy)]) of this round."""
        plan = self.plan
        remaining = plan.mine - self._offered
        if remaining == 0:
            return _DONE, []
        pending = self._pending
        wait = self.settings.timeout_s * OWN_WAIT_SHARE
        deadline = time.monotonic() + wait
        copier = self._copier
        while not pending:
            if copier is not None and copier.pending:
                # Peek while copies hold ring memory; with nothing ready,
                # finish them before waiting (see streamer._next_batch).
                batch = self._poll(0)
                if batch == []:
                    copier.synchronize()
                    continue
            else:
                batch = self._poll(POLL_MS)
            if batch is None:
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: the library ended this share after {self._offered} of "
                    f"{plan.mine} tensors")
            if batch:
                pending.extend(batch)
            elif time.monotonic() > deadline:
                raise RunaiStreamerIOError(
                    f"{LOG_PREFIX}: no data from storage for {wait:.0f}s "
                    f"({self._offered} of {plan.mine} tensors of this share delivered)")
        # Take whatever else is ready, up to the budget.
        budget, max_ids = self.offer_budget, plan.max_ids
        while len(pending) < max_ids and sum(p[3] for p in pending) < budget:
            more = self._poll(0)
            if not more:
                break
            pending.extend(more)
        items: List[Tuple[int, torch.Tensor, int, bool]] = []
        pos = 0
        while pending and len(items) < max_ids:
            fi, ti, addr, nbytes, token = pending[0]
            start = _align_up(pos, plan.align) if items else 0
            if items and start + nbytes > budget:
                break
            pending.popleft()
            gid = plan.native_to_gid.get((fi, ti))
            if gid is None:
                _native.release(token)
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: the library delivered an unknown tensor ({fi}, {ti})")
            tensor, zero_copy = self._wrap(plan.tensors[gid], addr, nbytes, token)
            items.append((gid, tensor, token, zero_copy))
            pos = start + nbytes
        self._offered += len(items)
        return (_DONE if self._offered == plan.mine else _ACTIVE), items

    # -- staging -------------------------------------------------------------
    def _staging(self, which: str, size: int) -> torch.Tensor:
        buf = self._send if which == "send" else self._recv
        if buf is None or buf.numel() < size:
            n = max(size, self.plan.batch_bytes)
            align = self.plan.align
            # Over-allocated, then sliced to an aligned start: the slots'
            # offsets are then aligned addresses on every process.
            raw = torch.empty(n + align - 1, dtype=torch.uint8, device=self.device)
            start = (-raw.data_ptr()) % align
            buf = raw[start:start + n]
            if which == "send":
                self._send = buf
            else:
                self._recv = buf
        return buf[:size]

    def _broadcast(self, buf: torch.Tensor, src: int) -> None:
        group = _group_of(self.entry)
        try:
            dist.broadcast(buf, src=self.entry.ranks[src], group=group)
        except Exception as e:
            raise _collective_error(self.entry, f"broadcast from rank {self.entry.ranks[src]}",
                                    e) from e

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for token in held:
            _native.release(token)

    # -- iteration -------------------------------------------------------------
    def tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        with self._lock:
            if self._state != "new":
                if self._state == "done":
                    return iter(())
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: get_tensors() was already called for this request")
            self._state = "running"
        return self._run()

    def _run(self) -> Iterator[Tuple[str, torch.Tensor]]:
        plan = self.plan
        try:
            for g in plan.empties:
                m = plan.tensors[g]
                self._count()
                yield m.name, torch.empty(m.get_torch_shape(), dtype=m.get_torch_dtype(), device=self.device)
            if all(r < 0 for r in plan.owners):  # nothing to read: no rounds
                self._state = "done"
                return
            if self.device.type == "cuda":
                from runai_model_streamer.device import HostToDevice
                self._copier = HostToDevice(self.device, self.stream)
            delivered = len(plan.empties)
            while True:
                if self._state != "running":  # close() while suspended
                    return
                self.rounds += 1
                failure: Optional[BaseException] = None
                status, items = _ACTIVE, []
                try:
                    status, items = self._make_offer()
                except Exception as e:
                    failure = e
                    status = _FAILED
                record = torch.zeros(_HDR + plan.max_ids, dtype=torch.int64)
                record[0] = status
                if failure is None:
                    gids = [g for g, *_ in items]
                    record[1] = len(items)
                    record[2] = sum(total for _, total in self._segments(gids))
                    if items:
                        record[_HDR:_HDR + len(items)] = torch.tensor(gids)
                else:
                    record[1] = _error_class_index(failure)
                rows = _all_gather_rows(self.entry, record, self.device, "a round's all_gather")
                failed = [r for r in range(self.n) if rows[r][0] == _FAILED]
                if failed:
                    self._state = "failed"
                    for _, _, token, _ in items:
                        _native.release(token)
                    _raise_failure(self.entry, self.me, self.device, failure, rows, failed,
                                   "reading its share from storage")
                for src in range(self.n):
                    count, nbytes = rows[src][1], rows[src][2]
                    if count == 0:
                        continue
                    gids = rows[src][_HDR:_HDR + count]
                    segments = self._segments(gids)
                    if src != self.me and (sum(t for _, t in segments) != nbytes or any(
                            plan.owners[g] != src for g in gids)):
                        raise RunaiStreamerDistributedError(
                            f"{LOG_PREFIX}: rank {self.entry.ranks[src]} offered tensors this "
                            f"process does not expect from it; the processes disagree")
                    by_gid = {it[0]: it for it in items} if src == self.me else {}
                    for seg, total in segments:
                        if src == self.me:
                            batch = self._send_batch([by_gid.pop(g) for g in seg])
                        else:
                            batch = self._receive_batch(src, seg, total)
                        for item in batch:
                            self._count()
                            yield item
                            if self._state == "abandoned":  # close() while suspended
                                return
                    if src == self.me:
                        items = []
                        del by_gid
                    delivered += count
                if self._copier is not None:
                    self._copier.poll()
                if all(rows[r][0] == _DONE for r in range(self.n)):
                    break
            if delivered != len(plan.tensors):
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: delivered {delivered} of {len(plan.tensors)} tensors")
            self._state = "done"
        finally:
            self._release_held()
            if self._state == "running":
                self._state = "abandoned"
                self._abandon()
            self._finish_copies()

    def _send_batch(self, items: List[Tuple[int, torch.Tensor, int, bool]]
                    ) -> Iterator[Tuple[str, torch.Tensor]]:
        plan = self.plan
        sizes = [plan.sizes[g] for g, *_ in items]
        offsets, total = slot_layout(sizes, plan.align)
        single = len(items) == 1
        if self.device.type == "cpu":
            if single:
                buf = _as_bytes(items[0][1])  # the tensor's own memory: no copy
            else:
                buf = self._staging("send", total)
                for (g, tensor, _, _), off, nb in zip(items, offsets, sizes):
                    buf[off:off + nb].copy_(_as_bytes(tensor))
            self._broadcast(buf, self.me)
            self.bytes_sent += total
            for i, (g, tensor, token, zero_copy) in enumerate(items):
                items[i] = (g, None, token, zero_copy)  # type: ignore[assignment]
                if not self.owned and zero_copy:
                    self._held.append(token)
                yield plan.tensors[g].name, tensor
                del tensor
                self._release_held()
            return
        # CUDA: host -> device into the buffer to broadcast, on a side stream.
        copier = self._copier
        if single and self.owned:
            buf = torch.empty(total, dtype=torch.uint8, device=self.device)
        else:
            buf = self._staging("send", total)
        copier.reuse()  # work queued on the current stream may still use buf
        gids = [g for g, *_ in items]
        for (g, tensor, token, zero_copy), off, nb in zip(items, offsets, sizes):
            copier.copy(_as_bytes(tensor), token if zero_copy else None, out=buf[off:off + nb])
        del items[:]  # the copier keeps the host memory until its copy is done
        self._broadcast(buf, self.me)
        self.bytes_sent += total
        yield from self._slices(buf, gids, offsets, single)

    def _segments(self, gids: List[int]) -> List[Tuple[List[int], int]]:
        """How an offer travels: its small tensors packed in one buffer, then
        each large one alone. (gids, bytes) per broadcast; every process
        derives the same from the ids."""
        sizes = self.plan.sizes
        small = [g for g in gids if sizes[g] < SOLO_BYTES]
        out = [(small, slot_layout([sizes[g] for g in small], self.plan.align)[1])] if small else []
        out.extend(([g], sizes[g]) for g in gids if sizes[g] >= SOLO_BYTES)
        return out

    def _receive_batch(self, src: int, gids: List[int], total: int
                       ) -> Iterator[Tuple[str, torch.Tensor]]:
        plan = self.plan
        offsets = slot_layout([plan.sizes[g] for g in gids], plan.align)[0]
        single = len(gids) == 1
        if single and self.owned:
            buf = torch.empty(total, dtype=torch.uint8, device=self.device)
        else:
            buf = self._staging("recv", total)
        self._broadcast(buf, src)
        self.bytes_received += total
        yield from self._slices(buf, gids, offsets, single)

    def _slices(self, buf: torch.Tensor, gids: List[int], offsets: List[int],
                single: bool) -> Iterator[Tuple[str, torch.Tensor]]:
        plan = self.plan
        clone = self.owned and not single
        for g, off in zip(gids, offsets):
            m = plan.tensors[g]
            t = buf[off:off + plan.sizes[g]].view(m.get_torch_dtype()).view(m.get_torch_shape())
            yield m.name, (t.clone() if clone else t)

    def _count(self) -> None:
        """Before each yield: once the last tensor is handed out no collective
        is left, so a consumer that stops there has not left the group behind."""
        self._yielded += 1
        if self._yielded == len(self.plan.tensors) and self._state == "running":
            self._state = "done"

    # -- teardown ---------------------------------------------------------------
    def _abandon(self) -> None:
        """The exchange stopped before the end on this process (the consumer
        stopped, close() or an error in a collective): the group's peers may
        be mid-collective, so the group is dropped."""
        _forget_group(self.entry)

    def _finish_copies(self) -> None:
        copier, self._copier = self._copier, None
        if copier is not None:
            copier.close()

    def close(self) -> None:
        """Releases what this process holds and closes its native stream."""
        self._release_held()
        while self._pending:
            _native.release(self._pending.popleft()[4])
        if self._state in ("new", "running"):
            # Never iterated to the end: the others may wait for this process.
            self._state = "abandoned"
            self._abandon()
        self._finish_copies()  # unpins the arena before the stream frees it
        self.stream.close()


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous tensor, as a flat uint8 view."""
    return tensor.reshape(-1).view(torch.uint8)
