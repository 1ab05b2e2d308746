"""Planning a distributed request, identically on every process: which
process reads which byte ranges (the partition), how ranges are packed in a
staging buffer (the slot layout), the batch budget, and the fingerprint the
processes compare before any data moves.

A request is a list of byte ranges of its files, (file index, begin, end)
with absolute file offsets, indexed by their position in the request (gid).
A tensor of a SafeTensors file is one such range.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from runai_model_streamer.distributed.settings import DEFAULT_ALIGNMENT, DistSettings

MAX_BATCH_RANGES = 1024  # ids per offer (fixed record size)

Span = Tuple[int, int, int]  # (file index, begin, end)


def aligned_offset(base_ptr: int, current_offset: int, alignment: int) -> int:
    """The smallest offset >= current_offset at which base_ptr + offset is a
    multiple of alignment (current_offset itself for an alignment of 0 or 1)."""
    if alignment <= 1:
        return current_offset
    return current_offset + (-(base_ptr + current_offset)) % alignment


def slot_layout(sizes: Sequence[int], align: int = DEFAULT_ALIGNMENT) -> Tuple[List[int], int]:
    """Offsets of ranges packed in one buffer (each a multiple of align) and
    its size."""
    offsets = []
    pos = 0
    for nb in sizes:
        pos = aligned_offset(0, pos, align)
        offsets.append(pos)
        pos += nb
    return offsets, pos


def block_target(total: int, n: int) -> int:
    """Bytes per block: small enough for balance, large enough that each
    process reads long ranges."""
    return min(64 << 20, max(64 << 10, total // max(1, 8 * n)))


def partition(spans: Sequence[Span], n: int, target: Optional[int] = None,
              local_empties: bool = True) -> List[int]:
    """Owners (0..n-1) of ranges given as (file index, begin, end), in any
    order; -1 for empty ranges when local_empties (they need no reading).

    In file and offset order, ranges that touch form blocks of about `target`
    bytes (a larger range is a block alone); ranges that overlap a block
    always join it, so bytes two ranges share are read by one process, once.
    Blocks go, largest first, to the least loaded process (ties: the block
    that comes first). Deterministic."""
    owners = [-1] * len(spans)
    total = sum(max(0, e - b) for _, b, e in spans)
    if target is None:
        target = block_target(total, n)
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1], spans[i][2], i))
    blocks: List[Tuple[int, int, List[int]]] = []  # (bytes read, first position, members)
    cur: List[int] = []
    cur_bytes = 0
    cur_first = 0
    cur_file, cur_end = -1, 0
    for pos, i in enumerate(order):
        fi, b, e = spans[i]
        nb = e - b
        if nb <= 0 and local_empties:
            continue
        same = bool(cur) and fi == cur_file
        if same and b < cur_end:
            joins = True  # overlaps: its shared bytes must not be read twice
        else:
            joins = same and b == cur_end and cur_bytes + nb <= target
        if not joins and cur:
            blocks.append((cur_bytes, cur_first, cur))
            cur, cur_bytes = [], 0
        if not cur:
            cur_first, cur_file, cur_end = pos, fi, b
        cur.append(i)
        cur_bytes += max(0, e - max(b, cur_end))
        cur_end = max(cur_end, e)
    if cur:
        blocks.append((cur_bytes, cur_first, cur))
    blocks.sort(key=lambda blk: (-blk[0], blk[1]))
    heap = [(0, r) for r in range(n)]
    for nbytes, _, members in blocks:
        load, r = heapq.heappop(heap)
        for i in members:
            owners[i] = r
        heapq.heappush(heap, (load + nbytes, r))
    return owners


def fingerprint(doc: Mapping[str, Any]) -> List[int]:
    """sha256 of a JSON document describing a request, as four int64s."""
    data = json.dumps(doc, sort_keys=True, default=repr).encode("utf-8")
    digest = hashlib.sha256(data).digest()
    return [int.from_bytes(digest[i:i + 8], "little", signed=True) for i in range(0, 32, 8)]


class Plan:
    """The request's ranges in request order (gid), their owners, the batch
    budget and the record size; identical on every process."""

    def __init__(self, spans: Sequence[Span], n: int, ds: DistSettings,
                 local_empties: bool = True, paths: Optional[Sequence[str]] = None) -> None:
        self.spans = list(spans)
        # A file named twice in the request is one file to the partition, so
        # that its overlapping ranges are read by one process.
        first: dict = {}
        same = [first.setdefault(p, i) for i, p in enumerate(paths or ())]
        keyed = [(same[f] if f < len(same) else f, b, e) for f, b, e in self.spans]
        self.owners = partition(keyed, n, local_empties=local_empties)
        self.sizes = [e - b for _, b, e in self.spans]
        self.align = ds.slot_align  # of packed ranges and staging buffers
        largest = max(self.sizes, default=0)
        total = slot_layout([s for s in self.sizes if s > 0], self.align)[1]
        self.batch_bytes = max(1, largest, min(ds.buffer_min, total))
        counts = [0] * n
        self.loads = [0] * n  # bytes each process delivers
        for g, r in enumerate(self.owners):
            if r >= 0:
                counts[r] += 1
                self.loads[r] += self.sizes[g]
        self.max_ids = max(1, min(MAX_BATCH_RANGES, max(counts, default=1)))
        self.empties = [g for g, r in enumerate(self.owners) if r < 0]
        self.total_bytes = sum(self.sizes)
        self.count = len(self.spans)

    def share(self, me: int, n_files: int) -> List[List[int]]:
        """The gids process me reads, per file, in gid order."""
        out: List[List[int]] = [[] for _ in range(n_files)]
        for g, r in enumerate(self.owners):
            if r == me:
                out[self.spans[g][0]].append(g)
        return out
