"""The local cache's share of a distributed load (MODEL_STREAMER_CACHE_DIR).

Each process reads only its share of every object from the store; the
process writing an object's cache entry needs every byte, so the ranges it
receives from the others are handed to that entry as they arrive.
"""

from __future__ import annotations

from typing import Callable

import torch

from runai_model_streamer import _native

#: Received bytes on a device come back to host memory for the local cache
#: in pieces of at most this many bytes (the size of the host buffer).
CONTRIBUTE_PIECE_BYTES = 64 << 20


def contribute(uri: str, offset: int, flat: torch.Tensor,
               host_buffer: Callable[[int], torch.Tensor]) -> bool:
    """Hands flat (uint8: the bytes at offset of the object uri) to the local
    cache entry this process writes for uri, if it writes one; True if it
    took them. Host memory goes as it is; bytes on a device are first copied
    back through host_buffer(n), and only when an entry wants them, so a
    distributed load to a GPU fills the node's cache in one load too (for a
    device-to-host copy of what this process received, on the first load
    only), and without a cache copies nothing."""
    if flat.device.type == "cpu":
        return _native.cache_contribute(uri, offset, flat.data_ptr(), flat.numel())
    if not _native.cache_writing(uri):
        return False
    return contribute_via_host(uri, offset, flat, host_buffer)


def contribute_via_host(uri: str, offset: int, flat: torch.Tensor,
                        host_buffer: Callable[[int], torch.Tensor],
                        piece: int = CONTRIBUTE_PIECE_BYTES) -> bool:
    """contribute's device path: flat copied to host memory piece by piece
    (the copy waits for the bytes to arrive: it is queued on the stream the
    broadcast was), each piece handed to the entry."""
    for lo in range(0, flat.numel(), piece):
        part = flat[lo:lo + piece]
        host = host_buffer(part.numel())
        host.copy_(part)
        if not _native.cache_contribute(uri, offset + lo, host.data_ptr(), host.numel()):
            return False
    return True

