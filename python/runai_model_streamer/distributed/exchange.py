"""The exchange of a distributed request: opening each process's share and
the rounds that hand every range to every process.

1. Every process describes the same request (a Ranges: byte ranges of its
   files, and how each becomes the tensor to yield) and computes the same
   plan (plan.py). Each process opens a native stream of its own share only
   (ms_stream_open_ranges over its ranges), so every byte is read from
   storage once per group. RUNAI_STREAMER_MEMORY_LIMIT applies to that
   stream. One all_gather then compares the requests (a hash) and carries
   every process's setup error, before any data moves.
2. The processes then run rounds. A round starts with an all_gather of a small
   int64 record per process: a status word (active / done / failed), how many
   ranges it offers, their total size and their ids. A failed process sends
   its error (class and message) in a second all_gather, and every process
   raises it, naming the process that failed. Otherwise, for each process
   with something to offer, in rank order, the owner broadcasts its offer:
   the ranges under 1 MiB packed into one flat uint8 buffer (slots aligned to
   RUNAI_STREAMER_CUDA_ALIGNMENT, default 512 bytes), each larger one alone,
   straight from its own memory. Everyone slices what it received and yields
   it. Every process yields every range.

Staging: one send and one receive buffer per process on the requested device,
each max(largest range, RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE (32 MiB; 0 or
less: just the largest range)), capped at the request's size: about twice the
largest range. Each staging buffer starts at an address that is a multiple of
RUNAI_STREAMER_CUDA_ALIGNMENT (0 to 1 MiB, default 512) and so does every
range packed in it, on every process (see DistSettings.slot_align).
owned=True: each yielded tensor is the caller's own (cloned out of staging, or
received straight into its own memory when it travels alone); owned=False:
tensors are views into staging (or the library's buffer), valid until the
iteration advances.

Every process must make the same request and consume the whole iterator. A
process that stops early, dies or stalls makes the others raise, at the
latest after the timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from runai_model_streamer import _native
from runai_model_streamer.config import READ_MODES
from runai_model_streamer.distributed.cache_fill import contribute
from runai_model_streamer.distributed.errors import (
    RunaiStreamerDistributedError,
    error_class_index,
)
from runai_model_streamer.distributed.groups import (
    Group,
    all_gather_rows,
    broadcast,
    forget_group,
    my_group,
    raise_failure,
)
from runai_model_streamer.distributed.plan import (
    Plan,
    Span,
    aligned_offset,
    fingerprint,
    slot_layout,
)
from runai_model_streamer.distributed.settings import (
    CUDA_ALIGNMENT_ENV,
    DIST_BUFFER_MIN_ENV,
    DIST_GLOBAL_ENV,
    LOG_PREFIX,
    DistSettings,
    dist,
)
from runai_model_streamer.exceptions import (
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerIOError,
)

logger = logging.getLogger("runai_model_streamer")

# Ranges of at least this size travel alone, straight from (and, owned=True,
# into) their own memory: no packing copy, no clone.
SOLO_BYTES = 1 << 20
POLL_MS = 200
# A process that waits this share of the timeout for its own storage reports
# the stall itself, before the others' collectives time out.
OWN_WAIT_SHARE = 0.8

# Status words of a round's record.
_ACTIVE = 0  # more to come after this offer
_DONE = 1  # this offer (possibly empty) is the last
_FAILED = 2
_FALLBACK = 3  # setup only: this process cannot take part (see _local_fallback)

_HDR = 3  # status, count, nbytes; then MAX ids


class Ranges:
    """What a distributed request exchanges: byte ranges of ``paths`` in
    request order (gid), and how each becomes what is yielded. The same on
    every process."""

    paths: List[str]
    spans: List[Span]  # (file index, begin, end): absolute file offsets
    settings: Optional[Sequence[str]] = None  # the storage backends' settings of the paths
    local_empties: bool = True  # empty ranges are made locally, not read

    def key(self, gid: int) -> Any:
        """What identifies range gid to the caller (yielded with it)."""
        raise NotImplementedError

    def view(self, gid: int, flat: torch.Tensor) -> torch.Tensor:
        """The tensor to yield over flat, the range's bytes (1-D uint8)."""
        raise NotImplementedError

    def empty(self, gid: int, device: torch.device) -> torch.Tensor:
        """The tensor to yield for an empty range (local_empties)."""
        raise NotImplementedError

    def wrap(self, gid: int, addr: int, nbytes: int, token: int) -> Tuple[torch.Tensor, bool]:
        """A host tensor over the library's bytes of range gid; (tensor,
        zero_copy): when zero_copy is False the token is already released."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """The request, for the fingerprint the processes compare."""
        raise NotImplementedError


def comm_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def open_exchange(build: Callable[[], Ranges], device: torch.device, config: Any,
                  ds: DistSettings, *, owned: bool, what: str,
                  fields: str) -> Optional["DistributedStream"]:
    """A DistributedStream for the request, or None (after one log line
    saying why) when the group streams it without distribution. Collective:
    every process of the world calls it for the same request.

    build() describes the request (on every process; an error there is
    raised on all of them); what ("tensor", "range") and fields (what the
    caller passed, e.g. "paths, tensor_names") word the log and errors."""
    device = comm_device(device)
    entry = my_group(ds)
    if len(entry.ranks) == 1:
        logger.info(f"{LOG_PREFIX} off: this process is alone in its group (node {entry.node!r}; "
                    f"set {DIST_GLOBAL_ENV}=1 to share across nodes); it reads every {what} "
                    "itself")
        return None

    n = len(entry.ranks)
    me = entry.ranks.index(dist.get_rank())
    failure: Optional[BaseException] = None
    share: Optional[_Share] = None
    ranges = plan = None
    fp = [0, 0, 0, 0]
    local_reason = None
    try:
        ranges = build()
        plan = Plan(ranges.spans, n, ds, ranges.local_empties, ranges.paths)
        fp = fingerprint(dict(ranges.describe(), device=device.type, batch=plan.batch_bytes,
                              ids=plan.max_ids, align=plan.align))
        local_reason = _local_fallback(plan, device)
        if local_reason is None:
            share = _Share.open(ranges, plan, me, config, device)
    except Exception as e:  # reported to the group below, then raised
        failure = e
    try:
        proceed = _agree(entry, me, device, failure, fp, local_reason, what, fields)
    except BaseException:
        if share is not None:
            share.close()
        raise
    if not proceed:
        if share is not None:
            share.close()
        return None
    assert ranges is not None and plan is not None and share is not None
    dstream = DistributedStream(entry, me, ranges, plan, share, device, ds, owned, what)
    limit = int(getattr(config, "memory_limit", -1))
    if limit >= 0:
        # Offer no more than the ring holds: asking the library for more
        # while this process holds the ring would make it read on in fresh
        # memory, past RUNAI_STREAMER_MEMORY_LIMIT.
        largest = max(plan.sizes, default=0)
        dstream.offer_budget = min(plan.batch_bytes, max(largest, limit))
    return dstream


class _Share:
    """This process's native stream over its share of the ranges, and the
    map from the stream's (file, range) indices to gids."""

    def __init__(self, stream: Optional[_native.Stream], gids: Dict[Tuple[int, int], int]) -> None:
        self.stream = stream
        self.gids = gids

    @classmethod
    def open(cls, ranges: Ranges, plan: Plan, me: int, config: Any,
             device: torch.device) -> "_Share":
        if not ranges.paths:
            return cls(None, {})
        # Only the files this process reads from, each once however often the
        # request names it (the engine reads bytes ranges share once per
        # file); with none, the first file and no range (the stream still
        # reports this process's stats).
        by_path: Dict[str, List[int]] = {}
        for fi, gids in enumerate(plan.share(me, len(ranges.paths))):
            if gids:
                by_path.setdefault(ranges.paths[fi], []).extend(gids)
        if not by_path:
            by_path[ranges.paths[0]] = []
        paths = list(by_path)
        spans = plan.spans
        stream = _native.Stream(
            paths,
            concurrency=getattr(config, "concurrency", 0),
            memory_limit=getattr(config, "memory_limit", -1),
            chunk_bytes=getattr(config, "chunk_bytes", 0),
            read_mode=READ_MODES[config.read_mode_for(device.type)],
            settings=ranges.settings,
            ranges=[([spans[g][1] for g in by_path[p]], [spans[g][2] - spans[g][1] for g in by_path[p]])
                    for p in paths],
        )
        gids = {(j, ri): g for j, p in enumerate(paths) for ri, g in enumerate(by_path[p])}
        return cls(stream, gids)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def _local_fallback(plan: Plan, device: torch.device) -> Optional[str]:
    """Why this process cannot take part (it tells the others, and the whole
    group falls back), or None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        need = 2 * plan.batch_bytes
        if free < need:
            return (f"not enough free memory on {device} for the staging buffers "
                    f"({free} bytes free, {need} needed)")
    return None


def _agree(entry: Group, me: int, device: torch.device, failure: Optional[BaseException],
           fp: List[int], local_reason: Optional[str], what: str, fields: str) -> bool:
    """One all_gather: every process learns whether the others opened their
    share and asked for the same thing. Raises on every process otherwise.
    False (after one log line) when a process cannot take part: the whole
    group then streams without distribution."""
    status = _ACTIVE
    if failure is not None:
        status = _FAILED
    elif local_reason is not None:
        status = _FALLBACK
    record = torch.tensor([status, error_class_index(failure) if failure is not None else 0]
                          + fp, dtype=torch.int64)
    rows = all_gather_rows(entry, record, device, "comparing the requests")
    failed = [r for r in range(len(rows)) if rows[r][0] == _FAILED]
    if failed:
        raise_failure(entry, me, device, failure, rows, failed, "opening its share")
    out = [r for r in range(len(rows)) if rows[r][0] == _FALLBACK]
    if out:
        who = entry.ranks[out[0]]
        why = local_reason if out[0] == me else "see that process's log"
        logger.info(f"{LOG_PREFIX} off: rank {who} of the group {entry.ranks} cannot take part "
                    f"({why}); each process reads every {what} itself")
        return False
    first = rows[0][2:]
    differ = [entry.ranks[r] for r in range(len(rows)) if rows[r][2:] != first]
    if differ:
        raise RunaiStreamerInvalidInputException(
            f"{LOG_PREFIX}: the processes of the group (ranks {entry.ranks}) asked for different "
            f"things ({fields}, device type, {DIST_BUFFER_MIN_ENV} or {CUDA_ALIGNMENT_ENV} "
            f"differ; ranks {differ} differ from rank {entry.ranks[0]}); every process must make "
            "the same request")
    return True


# An offered range: (gid, host tensor, token, zero_copy).
_Item = Tuple[int, torch.Tensor, int, bool]


class DistributedStream:
    """One distributed request: this process's native stream (its share) and
    the rounds that exchange the shares."""

    def __init__(self, entry: Group, me: int, ranges: Ranges, plan: Plan, share: _Share,
                 device: torch.device, ds: DistSettings, owned: bool, what: str = "range") -> None:
        self.entry = entry
        self.me = me
        self.n = len(entry.ranks)
        self.ranges = ranges
        self.plan = plan
        self.stream = share.stream
        self._native_to_gid = share.gids
        self.mine = len(share.gids)  # ranges this process reads
        self.device = device
        self.settings = ds
        self.owned = owned
        self.what = what
        self._pending: deque = deque()  # (file, range, addr, nbytes, token) fetched, not offered
        self._held: List[int] = []  # tokens to release when the iteration advances
        self._offered = 0
        self._yielded = 0
        self.offer_budget = plan.batch_bytes  # bytes this process offers per round
        self._state = "new"  # new -> running -> done | failed | abandoned
        self._send: Optional[torch.Tensor] = None
        self._recv: Optional[torch.Tensor] = None
        self._cache_host: Optional[torch.Tensor] = None  # see _contribute_host
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
            f"reads {self.mine} of {plan.count} {what}s, {plan.loads[me]} of "
            f"{plan.total_bytes} bytes")

    @property
    def state(self) -> str:
        """new, running, done (every range handed out), failed or abandoned."""
        return self._state

    # -- native polling -----------------------------------------------------
    def _poll(self, timeout_ms: int) -> Optional[List[Tuple[int, int, int, int, int]]]:
        """Ready ranges of the own stream: a list (empty on timeout), or None
        once it has delivered everything."""
        stream = self.stream
        handle = stream.handle if stream is not None else None
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

    def _make_offer(self) -> Tuple[int, List[_Item]]:
        """(status, [(gid, host tensor, token, zero_copy)]) of this round."""
        plan = self.plan
        remaining = self.mine - self._offered
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
                    f"{self.mine} {self.what}s")
            if batch:
                pending.extend(batch)
            elif time.monotonic() > deadline:
                raise RunaiStreamerIOError(
                    f"{LOG_PREFIX}: no data from storage for {wait:.0f}s "
                    f"({self._offered} of {self.mine} {self.what}s of this share delivered)")
        # Take whatever else is ready, up to the budget.
        budget, max_ids = self.offer_budget, plan.max_ids
        while len(pending) < max_ids and sum(p[3] for p in pending) < budget:
            more = self._poll(0)
            if not more:
                break
            pending.extend(more)
        items: List[_Item] = []
        pos = 0
        while pending and len(items) < max_ids:
            fi, ri, addr, nbytes, token = pending[0]
            start = aligned_offset(0, pos, plan.align) if items else 0
            if items and start + nbytes > budget:
                break
            pending.popleft()
            gid = self._native_to_gid.get((fi, ri))
            if gid is None:
                _native.release(token)
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: the library delivered an unknown {self.what} ({fi}, {ri})")
            if nbytes != plan.sizes[gid]:
                _native.release(token)
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: the library delivered {nbytes} bytes for {self.what} "
                    f"{self.ranges.key(gid)!r} of {plan.sizes[gid]}")
            tensor, zero_copy = self.ranges.wrap(gid, addr, nbytes, token)
            items.append((gid, tensor, token, zero_copy))
            pos = start + nbytes
        self._offered += len(items)
        return (_DONE if self._offered == self.mine else _ACTIVE), items

    # -- staging -------------------------------------------------------------
    def _staging(self, which: str, size: int) -> torch.Tensor:
        buf = self._send if which == "send" else self._recv
        if buf is None or buf.numel() < size:
            n = max(size, self.plan.batch_bytes)
            align = self.plan.align
            # Over-allocated, then sliced to an aligned start: the slots'
            # offsets are then aligned addresses on every process.
            raw = torch.empty(n + align - 1, dtype=torch.uint8, device=self.device)
            start = aligned_offset(raw.data_ptr(), 0, align)
            buf = raw[start:start + n]
            if which == "send":
                self._send = buf
            else:
                self._recv = buf
        return buf[:size]

    def _broadcast(self, buf: torch.Tensor, src: int) -> None:
        if buf.numel():  # a batch of empty ranges moves no bytes
            broadcast(self.entry, buf, src)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for token in held:
            _native.release(token)

    # -- iteration -------------------------------------------------------------
    def tensors(self) -> Iterator[Tuple[Any, torch.Tensor]]:
        """(key, tensor) for every range of the request, on every process."""
        with self._lock:
            if self._state != "new":
                if self._state == "done":
                    return iter(())
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: the {self.what}s of this request were already iterated")
            self._state = "running"
        return self._run()

    def _run(self) -> Iterator[Tuple[Any, torch.Tensor]]:
        plan = self.plan
        try:
            for g in plan.empties:
                self._count()
                yield self.ranges.key(g), self.ranges.empty(g, self.device)
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
                    record[1] = error_class_index(failure)
                rows = all_gather_rows(self.entry, record, self.device, "a round's all_gather")
                failed = [r for r in range(self.n) if rows[r][0] == _FAILED]
                if failed:
                    self._state = "failed"
                    for _, _, token, _ in items:
                        _native.release(token)
                    raise_failure(self.entry, self.me, self.device, failure, rows, failed,
                                  "reading its share from storage")
                for src in range(self.n):
                    count, nbytes = rows[src][1], rows[src][2]
                    if count == 0:
                        continue
                    gids = rows[src][_HDR:_HDR + count]
                    if src != self.me and any(not 0 <= g < plan.count or plan.owners[g] != src
                                              for g in gids):
                        raise RunaiStreamerDistributedError(
                            f"{LOG_PREFIX}: rank {self.entry.ranks[src]} offered {self.what}s "
                            "this process does not expect from it; the processes disagree")
                    segments = self._segments(gids)
                    if src != self.me and sum(t for _, t in segments) != nbytes:
                        raise RunaiStreamerDistributedError(
                            f"{LOG_PREFIX}: rank {self.entry.ranks[src]} offered {nbytes} bytes "
                            f"where this process expects {sum(t for _, t in segments)}; the "
                            "processes disagree")
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
            if delivered != plan.count:
                raise RunaiStreamerError(
                    f"{LOG_PREFIX}: delivered {delivered} of {plan.count} {self.what}s")
            self._state = "done"
        finally:
            self._release_held()
            if self._state == "running":
                self._state = "abandoned"
                self._abandon()
            self._finish_copies()

    def _send_batch(self, items: List[_Item]) -> Iterator[Tuple[Any, torch.Tensor]]:
        plan = self.plan
        ranges = self.ranges
        sizes = [plan.sizes[g] for g, *_ in items]
        offsets, total = slot_layout(sizes, plan.align)
        single = len(items) == 1
        if self.device.type == "cpu":
            if single:
                buf = _as_bytes(items[0][1])  # the range's own memory: no copy
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
                yield ranges.key(g), tensor
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
            if nb:  # an empty range's token is already released
                copier.copy(_as_bytes(tensor), token if zero_copy else None,
                            out=buf[off:off + nb])
        del items[:]  # the copier keeps the host memory until its copy is done
        self._broadcast(buf, self.me)
        self.bytes_sent += total
        yield from self._slices(buf, gids, offsets, single)

    def _segments(self, gids: List[int]) -> List[Tuple[List[int], int]]:
        """How an offer travels: its small ranges packed in one buffer, then
        each large one alone. (gids, bytes) per broadcast; every process
        derives the same from the ids."""
        sizes = self.plan.sizes
        small = [g for g in gids if sizes[g] < SOLO_BYTES]
        out = [(small, slot_layout([sizes[g] for g in small], self.plan.align)[1])] if small else []
        out.extend(([g], sizes[g]) for g in gids if sizes[g] >= SOLO_BYTES)
        return out

    def _receive_batch(self, src: int, gids: List[int], total: int
                       ) -> Iterator[Tuple[Any, torch.Tensor]]:
        plan = self.plan
        offsets = slot_layout([plan.sizes[g] for g in gids], plan.align)[0]
        single = len(gids) == 1
        if single and self.owned:
            buf = torch.empty(total, dtype=torch.uint8, device=self.device)
        else:
            buf = self._staging("recv", total)
        self._broadcast(buf, src)
        self.bytes_received += total
        self._contribute(buf, gids, offsets)
        yield from self._slices(buf, gids, offsets, single)

    def _contribute(self, buf: torch.Tensor, gids: List[int], offsets: List[int]) -> None:
        """Hands the received ranges to the local cache entries this process
        writes (MODEL_STREAMER_CACHE_DIR): it read only its share of each
        object, and the entry needs every byte. A no-op without a cache, or
        where another process of the node writes the entry."""
        for g, off in zip(gids, offsets):
            fi, begin, end = self.plan.spans[g]
            if end > begin:
                contribute(self.ranges.paths[fi], begin, buf[off:off + end - begin], self._contribute_host)

    def _contribute_host(self, n: int) -> torch.Tensor:
        """Host memory (pinned where CUDA is) to bring received device bytes
        back through for the cache, reused across ranges."""
        buf = self._cache_host
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
            self._cache_host = buf
        return buf[:n]

    def _slices(self, buf: torch.Tensor, gids: List[int], offsets: List[int],
                single: bool) -> Iterator[Tuple[Any, torch.Tensor]]:
        plan = self.plan
        ranges = self.ranges
        clone = self.owned and not single
        for g, off in zip(gids, offsets):
            flat = buf[off:off + plan.sizes[g]]
            # The bytes are cloned, not the view: torch cannot copy some
            # dtypes (float4_e2m1fn_x2) as such.
            yield ranges.key(g), ranges.view(g, flat.clone() if clone else flat)

    def _count(self) -> None:
        """Before each yield: once the last range is handed out no collective
        is left, so a consumer that stops there has not left the group behind."""
        self._yielded += 1
        if self._yielded == self.plan.count and self._state == "running":
            self._state = "done"

    # -- teardown ---------------------------------------------------------------
    def _abandon(self) -> None:
        """The exchange stopped before the end on this process (the consumer
        stopped, close() or an error in a collective): the group's peers may
        be mid-collective, so the group is dropped."""
        forget_group(self.entry)

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
        if self.stream is not None:
            self.stream.close()


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous tensor, as a flat uint8 view."""
    return tensor.reshape(-1).view(torch.uint8)
