"""GPU delivery: host -> device copies that overlap the reading.

``HostToDevice`` copies each streamed tensor to a CUDA device on a side stream
(``copy_(non_blocking=True)``), records a CUDA event per copy, makes the
caller's current stream wait for that event (a wait on the GPU, not on the
host), and returns the device tensor at once. The host memory of a tensor (its
token) goes back to the streamer only once its copy has finished: ``poll()``
releases the tokens whose events have completed, in order; ``close()`` waits
for the rest.

Pinned memory: the native stream's ring buffer (``ms_stream_arena``) is
registered with CUDA (``cudaHostRegister``) so that copies from it are true
asynchronous DMA. For a CUDA destination the streamer reads cached files into
that ring (read mode auto-read) rather than mapping them, and when nothing is
ready it waits for its copies to finish (releasing their ring memory) before
it waits for the library: so the readers never leave the ring for fresh,
unpinned memory. The ring is max(256 MiB, twice the largest read region)
with no memory limit, the limit (at least the largest tensor) otherwise.
Tensors outside it (an explicit MODEL_STREAMER_READ_MODE=mmap, unaligned
tensors copied on the host) are copied from pageable memory, which CUDA stages
synchronously: correct, just slower. Registration pins (and populates) the
whole ring up front, so it is skipped for rings larger than
MODEL_STREAMER_PIN_MAX_BYTES (default 16 GiB; 0 disables pinning). The ring
is unregistered before the stream can free it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Deque, Optional, Tuple

import torch

from runai_model_streamer import _native
from runai_model_streamer.config import parse_size
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

logger = logging.getLogger("runai_model_streamer")

PIN_MAX_ENV = "MODEL_STREAMER_PIN_MAX_BYTES"
DEFAULT_PIN_MAX = 16 << 30
CUDA_HOST_REGISTER_PORTABLE = 1


def pin_max_bytes() -> int:
    raw = os.environ.get(PIN_MAX_ENV, "").strip()
    if not raw:
        return DEFAULT_PIN_MAX
    value = parse_size(raw, PIN_MAX_ENV)
    if value < 0:
        raise RunaiStreamerInvalidInputException(f"{PIN_MAX_ENV}={raw!r}: must be >= 0")
    return value


def native_arena(stream: Any) -> Optional[Tuple[int, int]]:
    """(base address, length) of a native stream's ring buffer, or None when
    the library cannot tell (no ms_stream_arena) or the stream has none."""
    if stream is None or getattr(stream, "handle", None) is None:
        return None
    ffi, lib = _native.load()
    fn = _native._function(lib, "ms_stream_arena")
    if fn is None:
        return None
    base = ffi.new("void **")
    length = ffi.new("uint64_t *")
    if fn(stream.handle, base, length) != _native.MS_OK or base[0] == ffi.NULL:
        return None
    n = int(length[0])
    return (int(ffi.cast("uintptr_t", base[0])), n) if n > 0 else None


def _cuda_ok(rc: Any) -> bool:
    try:
        return int(rc) == 0
    except (TypeError, ValueError):
        return str(rc).endswith("success")


def _clear_cuda_error() -> None:
    """A failed runtime call leaves a (non-sticky) last error that a later
    kernel-launch check would report as its own; clear it. torch has already
    loaded its CUDA runtime, so dlopen by soname finds that one."""
    import ctypes

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            ctypes.CDLL(name).cudaGetLastError()
            return
        except (OSError, AttributeError):
            continue


class PinnedRange:
    """A host range registered with CUDA for as long as this object is open."""

    def __init__(self, base: int, length: int) -> None:
        self.base = base
        self.length = length
        self.registered = False
        cudart = torch.cuda.cudart()
        rc = cudart.cudaHostRegister(base, length, CUDA_HOST_REGISTER_PORTABLE)
        if _cuda_ok(rc):
            self.registered = True
        else:
            _clear_cuda_error()
            logger.debug("[model-streamer] cudaHostRegister of %d bytes failed (%s); "
                         "copying from pageable memory", length, rc)

    def contains(self, addr: int, nbytes: int) -> bool:
        return self.registered and self.base <= addr and addr + nbytes <= self.base + self.length

    def close(self) -> None:
        if self.registered:
            self.registered = False
            rc = torch.cuda.cudart().cudaHostUnregister(self.base)
            if not _cuda_ok(rc):
                _clear_cuda_error()
                logger.debug("[model-streamer] cudaHostUnregister failed (%s)", rc)


class HostToDevice:
    """Asynchronous host -> device copies of streamed tensors (see module doc).

    copy() must be called from the thread that uses the returned tensors; the
    tensors are ready for work queued on the current stream of `device`."""

    def __init__(self, device: torch.device, stream: Any = None, *, pin: bool = True) -> None:
        if device.index is None:
            device = torch.device(device.type, torch.cuda.current_device())
        self.device = device
        self.side = self._new_stream()
        # (event, token or None, host tensor kept alive until the copy is done)
        self._pending: Deque[Tuple[Any, Optional[int], Any]] = deque()
        self.pinned: Optional[PinnedRange] = None
        self.copies = 0
        self.pinned_copies = 0
        self._closed = False
        if pin and stream is not None:
            arena = native_arena(stream)
            if arena is not None:
                limit = pin_max_bytes()
                if 0 < arena[1] <= limit:
                    self.pinned = PinnedRange(*arena)
                elif arena[1] > limit:
                    logger.debug(
                        "[model-streamer] not pinning a %d-byte buffer (over %s=%d); set "
                        "RUNAI_STREAMER_MEMORY_LIMIT for a smaller, pinned ring",
                        arena[1], PIN_MAX_ENV, limit)

    # -- hooks (replaced in tests without CUDA) --------------------------------
    def _new_stream(self) -> Any:
        return torch.cuda.Stream(device=self.device)

    def _current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def _new_event(self) -> Any:
        return torch.cuda.Event()

    def _use_stream(self, stream: Any) -> Any:
        return torch.cuda.stream(stream)

    def _keep_for(self, tensor: torch.Tensor, stream: Any) -> None:
        tensor.record_stream(stream)

    @property
    def pending(self) -> int:
        """Copies whose host memory has not been released yet."""
        return len(self._pending)

    # -- copies -------------------------------------------------------------------
    def reuse(self) -> None:
        """Before writing into a buffer that work on the current stream may
        still read (a reused staging buffer): the side stream waits for it."""
        self.side.wait_stream(self._current_stream())

    def copy(self, host: torch.Tensor, token: Optional[int] = None,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Enqueues host -> device; returns the device tensor (`out`, or a new
        one). `token`, when given, is released once the copy has finished;
        `host` is kept alive until then."""
        current = self._current_stream()
        fresh = out is None
        with self._use_stream(self.side):
            if fresh:
                out = torch.empty(host.shape, dtype=host.dtype, device=self.device)
            out.copy_(host, non_blocking=True)
        event = self._new_event()
        event.record(self.side)
        current.wait_event(event)
        if fresh:
            # Allocated for the side stream, used on the current one: the
            # allocator must not hand it out again before that use is done.
            self._keep_for(out, current)
        self.copies += 1
        if self.pinned is not None and host.numel() and self.pinned.contains(
                host.data_ptr(), host.numel() * host.element_size()):
            self.pinned_copies += 1
        self._pending.append((event, token, host))
        self.poll()
        return out

    def poll(self) -> None:
        """Releases the host memory of the copies that have finished."""
        pending = self._pending
        while pending and pending[0][0].query():
            _, token, _host = pending.popleft()
            if token is not None:
                _native.release(token)

    def synchronize(self) -> None:
        """Waits for every copy; releases their host memory."""
        if self._pending:
            self.side.synchronize()
        while self._pending:
            _, token, _host = self._pending.popleft()
            if token is not None:
                _native.release(token)

    def close(self) -> None:
        """Waits for the copies, unpins the ring (before anything of it can be
        freed: the copies' tokens are released after), releases. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            try:
                self.side.synchronize()
            except Exception:  # pragma: no cover - a broken context; still release
                pass
        if self.pinned is not None:
            self.pinned.close()
        while self._pending:
            _, token, _host = self._pending.popleft()
            if token is not None:
                _native.release(token)
