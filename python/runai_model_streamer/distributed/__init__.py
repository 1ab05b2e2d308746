"""Distributed streaming: the processes of a torch.distributed group share the
reading of one request, each reading a share from storage and receiving the
rest from the others.

Two callers: ``SafetensorsStreamer.stream_files(..., is_distributed=True)``
(tensors.py) and ``DistributedStreamer`` (byte ranges of any files; the
distributed_streamer package). Both describe their request as byte ranges of
files and run the same exchange. The modules, one reason to change each:

- settings.py: the RUNAI_STREAMER_DIST* and RUNAI_STREAMER_CUDA_ALIGNMENT
  settings, and the decisions whether to distribute (no collective);
- groups.py: node discovery, group creation and caching, dropping a broken
  group, the collectives run over a group;
- errors.py: RunaiStreamerDistributedError and the classes a failure carries
  to the other processes;
- plan.py: the partition of the ranges between processes, the slot layout of
  staging buffers, the batch budget, the request's fingerprint;
- exchange.py: opening each process's share (a native stream over its
  ranges), the agreement before any data moves, and the rounds;
- headers.py, tensors.py: SafeTensors headers and tensors as ranges.

This package re-exports the names its callers and tests use.
"""

from runai_model_streamer.distributed.errors import RunaiStreamerDistributedError
from runai_model_streamer.distributed.exchange import DistributedStream, Ranges, open_exchange
from runai_model_streamer.distributed.headers import read_headers, select_tensors
from runai_model_streamer.distributed.plan import (
    aligned_offset,
    block_target,
    partition,
    slot_layout,
)
from runai_model_streamer.distributed.settings import (
    DistSettings,
    backend_for,
    can_broadcast,
    fallback_reason,
    get_dist_buffer_alignment,
    ranges_fallback_reason,
)
from runai_model_streamer.distributed.tensors import open_stream

__all__ = [
    "DistSettings",
    "DistributedStream",
    "Ranges",
    "RunaiStreamerDistributedError",
    "aligned_offset",
    "backend_for",
    "block_target",
    "can_broadcast",
    "fallback_reason",
    "get_dist_buffer_alignment",
    "open_exchange",
    "open_stream",
    "partition",
    "ranges_fallback_reason",
    "read_headers",
    "select_tensors",
    "slot_layout",
]
