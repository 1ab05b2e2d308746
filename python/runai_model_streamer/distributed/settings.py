"""The settings of distributed streaming (RUNAI_STREAMER_DIST*, the CUDA
alignment) and the decisions whether a request is distributed.

Both decisions depend only on what every process of a job shares (the
settings, the request, torch.distributed's state), so every process reaches
the same answer without talking to the others.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from runai_model_streamer import _native
from runai_model_streamer.config import parse_size
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

try:  # torch builds without distributed support exist
    import torch.distributed as dist
except ImportError:  # pragma: no cover
    dist = None  # type: ignore[assignment]

LOG_PREFIX = "[model-streamer] distributed streaming"

DIST_ENV = "RUNAI_STREAMER_DIST"
DIST_GLOBAL_ENV = "RUNAI_STREAMER_DIST_GLOBAL"
DIST_TIMEOUT_ENV = "RUNAI_STREAMER_DIST_TIMEOUT"
DIST_BUFFER_MIN_ENV = "RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE"
DIST_NODE_ENV = "RUNAI_STREAMER_DIST_NODE"
CUDA_ALIGNMENT_ENV = "RUNAI_STREAMER_CUDA_ALIGNMENT"

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_BUFFER_MIN = 32 << 20
# RUNAI_STREAMER_CUDA_ALIGNMENT: the alignment, in bytes, of every range
# packed in a staging buffer (and of the buffers themselves), with the
# reference's default and range.
DEFAULT_ALIGNMENT = 512
MAX_ALIGNMENT = 1 << 20
# Packed tensors are torch views of the buffer, which need offsets that are
# multiples of their element size (8 bytes at most; 16 leaves room): slots
# are aligned to a multiple of this too, even with an alignment of 0 or 1.
DTYPE_ALIGN = 16

# Which device types each backend can broadcast. gloo also moves CUDA tensors,
# through host memory; that is no faster than every process reading for
# itself, so CUDA over gloo falls back.
_BACKEND_DEVICES = {
    "gloo": {"cpu"},
    "mpi": {"cpu"},
    "nccl": {"cuda"},
    "ucc": {"cpu", "cuda"},
}


def parse_alignment(env: Optional[Mapping[str, str]] = None) -> int:
    """RUNAI_STREAMER_CUDA_ALIGNMENT (default 512): 0 to 1 MiB, else
    RunaiStreamerInvalidInputException (a ValueError) naming the variable."""
    env = os.environ if env is None else env
    raw = env.get(CUDA_ALIGNMENT_ENV, "").strip()
    if not raw:
        return DEFAULT_ALIGNMENT
    alignment = parse_size(raw, CUDA_ALIGNMENT_ENV)
    if not 0 <= alignment <= MAX_ALIGNMENT:
        raise RunaiStreamerInvalidInputException(
            f"{CUDA_ALIGNMENT_ENV}={raw!r}: must be between 0 and {MAX_ALIGNMENT} bytes")
    return alignment


def get_dist_buffer_alignment() -> int:
    """The alignment of ranges in the staging buffers, from
    RUNAI_STREAMER_CUDA_ALIGNMENT now (see parse_alignment)."""
    return parse_alignment()


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
        """The alignment of packed ranges: RUNAI_STREAMER_CUDA_ALIGNMENT (0
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
            # largest range), so 0 (or less) means just the largest range.
            buffer_min = max(0, parse_size(raw, DIST_BUFFER_MIN_ENV))
        node = env.get(DIST_NODE_ENV, "").strip() or None
        return cls(mode, global_mode, timeout, buffer_min, node, parse_alignment(env))


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


def _has_native(name: str) -> bool:
    _, lib = _native.load()
    return _native._function(lib, name) is not None


def _has_header_reader() -> bool:
    return _has_native("ms_read_headers")


def _has_range_reader() -> bool:
    return _has_native("ms_stream_open_ranges")


def _group_reason(device: torch.device) -> Optional[str]:
    """Why torch.distributed cannot carry this request, or None."""
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
    return None


def fallback_reason(scheme: str, device: torch.device, settings: DistSettings) -> Optional[str]:
    """SafetensorsStreamer: why this request is streamed without
    distribution, or None to distribute. auto distributes object storage to
    CUDA devices only."""
    if settings.mode == "off":
        return f"{DIST_ENV}=0"
    if settings.mode == "auto" and (scheme == "file" or device.type != "cuda"):
        what = "local files" if scheme == "file" else f"{device.type} tensors"
        return (f"it is on by default only for object storage to CUDA devices, not for {what} "
                f"(set {DIST_ENV}=1 to force it)")
    reason = _group_reason(device)
    if reason is not None:
        return reason
    if scheme != "file" and not _has_header_reader():
        return "the native library cannot read headers alone (no ms_read_headers)"
    if not _has_range_reader():
        return "the native library cannot stream byte ranges (no ms_stream_open_ranges)"
    return None


def ranges_fallback_reason(device: torch.device, settings: DistSettings) -> Optional[str]:
    """DistributedStreamer (the reference's rules): why these byte ranges are
    streamed without distribution, or None to distribute. auto distributes
    only over NCCL (to CUDA devices); 1 over any backend that can broadcast
    the device's tensors."""
    if settings.mode == "off":
        return f"{DIST_ENV}=0"
    reason = _group_reason(device)
    if reason is not None:
        return reason
    if settings.mode == "auto" and backend_for(device.type) != "nccl":
        return (f"it is on by default only over the nccl backend, not "
                f"{dist.get_backend()!r} (set {DIST_ENV}=1 to allow it)")
    if not _has_range_reader():
        return "the native library cannot stream byte ranges (no ms_stream_open_ranges)"
    return None
