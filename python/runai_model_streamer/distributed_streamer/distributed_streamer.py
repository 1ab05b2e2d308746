"""DistributedStreamer: FileStreamer's byte ranges, shared by the processes
of a torch.distributed group.

At the reference's module path (runai_model_streamer.distributed_streamer.
distributed_streamer). With is_distributed=True and a group that can carry
the device's tensors, each process reads a share of the ranges from storage
and receives the rest from the others (the exchange of
runai_model_streamer.distributed, which SafetensorsStreamer uses too);
otherwise it is a FileStreamer. Either way every process yields every range.
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from runai_model_streamer.config import StreamerConfig, backend_settings
from runai_model_streamer.device import native_arena
from runai_model_streamer.distributed.exchange import DistributedStream, Ranges, open_exchange
from runai_model_streamer.distributed.plan import aligned_offset
from runai_model_streamer.distributed.settings import (
    CUDA_ALIGNMENT_ENV,
    DEFAULT_ALIGNMENT,
    LOG_PREFIX,
    MAX_ALIGNMENT,
    DistSettings,
    dist,
    get_dist_buffer_alignment,
    ranges_fallback_reason,
)
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException
from runai_model_streamer.file_streamer.file_streamer import (
    MIXED_SOURCES_MESSAGE,
    FileStreamer,
    _wrap,
    host_or_device,
)
from runai_model_streamer.file_streamer.requests_iterator import FileChunks
from runai_model_streamer.files import S3Credentials, storage_family
from runai_model_streamer.streamer import _parse_device

logger = logging.getLogger("runai_model_streamer")

# The reference's names for the alignment setting (see get_dist_buffer_alignment).
RUNAI_STREAMER_CUDA_ALIGNMENT_ENV_VAR = CUDA_ALIGNMENT_ENV
DEFAULT_DIST_BUFFER_ALIGNMENT = DEFAULT_ALIGNMENT
MAX_DIST_BUFFER_ALIGNMENT = MAX_ALIGNMENT

__all__ = [
    "DistributedStreamer",
    "FileChunks",
    "aligned_offset",
    "get_dist_buffer_alignment",
]


def _index(value: Any, path: str, index: int, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise RunaiStreamerInvalidInputException(
            f"{path}: range {index}: the {what} must be an int, not {type(value).__name__}"
        ) from None
    if n < 0:
        raise RunaiStreamerInvalidInputException(f"{path}: range {index}: negative {what} {n}")
    return n


class _ChunkRanges(Ranges):
    """The ranges of a list of FileChunks, file by file in request order;
    each yielded as (file id, range index) and a (1, size) uint8 tensor."""

    # Empty ranges are read too: the owner's native stream checks that they
    # lie inside the file, as FileStreamer's does.
    local_empties = False

    def __init__(self, requests: List[Tuple[FileChunks, str]], credentials: Optional[S3Credentials]
                 ) -> None:
        self.paths = [path for _, path in requests]
        schemes = {storage_family(p) for p in self.paths}
        if len(schemes) > 1:
            raise RunaiStreamerInvalidInputException(f"{MIXED_SOURCES_MESSAGE}: {sorted(schemes)}")
        self.settings = backend_settings(credentials=credentials, scheme=schemes.pop()) \
            if schemes else None
        self.ids = [chunks.id for chunks, _ in requests]
        self.spans: List[Tuple[int, int, int]] = []
        self.keys: List[Tuple[Any, int]] = []
        for fi, (chunks, path) in enumerate(requests):
            for ri, (offset, size) in enumerate(zip(chunks.offsets, chunks.sizes)):
                begin = _index(offset, path, ri, "offset")
                self.spans.append((fi, begin, begin + _index(size, path, ri, "size")))
                self.keys.append((chunks.id, ri))

    def key(self, gid: int) -> Tuple[Any, int]:
        return self.keys[gid]

    def view(self, gid: int, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(1, flat.numel())

    def empty(self, gid: int, device: torch.device) -> torch.Tensor:
        return torch.empty((1, 0), dtype=torch.uint8, device=device)

    def wrap(self, gid: int, addr: int, nbytes: int, token: int) -> Tuple[torch.Tensor, bool]:
        return _wrap(addr, nbytes, token)

    def describe(self) -> Dict[str, Any]:
        return {"paths": self.paths, "ids": [repr(i) for i in self.ids], "ranges": self.spans}


class DistributedStreamer:
    """Streams byte ranges of files (as FileStreamer), sharing the reading
    between the processes of a torch.distributed group; a context manager.

    >>> with DistributedStreamer() as streamer:
    ...     streamer.stream_files(requests, None, "cpu", is_distributed=True)
    ...     for file_id, range_index, chunk in streamer.get_chunks():
    ...         ...   # every range, on every process

    Distributed, every process of the world must call stream_files with the
    same requests and consume get_chunks to the end (see
    runai_model_streamer.distributed).
    """

    def __init__(self) -> None:
        self.file_streamer = FileStreamer()
        self.is_distributed = False
        self._dstream: Optional[DistributedStream] = None
        self._ring_info: Optional[Tuple[int, int, int]] = None
        self._last_stats: Optional[Dict[str, int]] = None

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "DistributedStreamer":
        self.file_streamer.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            self.close()
        finally:
            self.file_streamer.__exit__(exc_type, exc_value, traceback)

    def __del__(self) -> None:
        try:
            self._close_distributed()
        except Exception:
            pass

    def close(self) -> None:
        """Stops the current stream. Chunks yielded with owned=True stay
        valid. Distributed, a stream not consumed to the end makes the other
        processes of the group raise."""
        self._close_distributed()
        self.file_streamer.close()

    def _close_distributed(self) -> None:
        dstream, self._dstream = self._dstream, None
        if dstream is None:
            return
        try:
            if dstream.stream is not None and not dstream.stream.closed:
                self._last_stats = dstream.stream.stats()
        except Exception:
            pass
        dstream.close()

    # -- the group ---------------------------------------------------------
    def get_group_size(self) -> int:
        """The world's size, 1 when torch.distributed is not initialised."""
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return 1
        return dist.get_world_size()

    def get_cuda_free_memory(self) -> int:
        """Free memory of the current CUDA device in bytes, 0 without CUDA."""
        if not torch.cuda.is_available():
            return 0
        free, _ = torch.cuda.mem_get_info()
        return free

    def set_is_distributed(self, is_distributed: bool, device: Any) -> None:
        """Decides whether the next request is distributed (is_distributed).

        Not asked: no. Else RUNAI_STREAMER_DIST: 0 never; 1 whenever the
        default group can broadcast the device's tensors (gloo, mpi: CPU;
        nccl: CUDA; ucc: both); auto (default) only over nccl. Never when
        torch.distributed is not initialised or the world has one process.
        Every fallback logs one INFO line saying why. An invalid
        RUNAI_STREAMER_DIST raises ValueError (RunaiStreamerInvalidInputException).
        Whether each process has room for the staging buffers is agreed by
        the whole group when the stream opens (stream_files)."""
        if not is_distributed:
            self.is_distributed = False
            return
        reason = ranges_fallback_reason(_parse_device(device), DistSettings.from_env())
        if reason is not None:
            logger.info(f"{LOG_PREFIX} off: {reason}; each process reads every range itself")
        self.is_distributed = reason is None

    # -- streaming -------------------------------------------------------
    def stream_files(
        self,
        file_stream_requests: List[FileChunks],
        credentials: Optional[S3Credentials],
        device: Any,
        is_distributed: bool,
        owned: bool = True,
    ) -> None:
        """Starts reading every range of file_stream_requests, as
        FileStreamer.stream_files (same checks, RUNAI_STREAMER_MEMORY_LIMIT
        and other settings from the environment, owned alike); distributed
        (see set_is_distributed), each process reads a share. Take the ranges
        with get_chunks().

        Raises ValueError while the previous stream still has ranges that
        get_chunks has not yielded."""
        device = host_or_device(device)
        self._ring_info = None
        previous = self._dstream
        if previous is not None and previous.state in ("new", "running"):
            raise ValueError(
                "cannot start a new stream while chunks of the previous distributed one are "
                "outstanding: consume or close get_chunks() before calling stream_files again")
        if self.file_streamer.outstanding > 0:
            raise ValueError(
                f"cannot start a new stream while {self.file_streamer.outstanding} chunk(s) of the "
                "previous one are outstanding: consume or close get_chunks() before calling "
                "stream_files again")
        self._close_distributed()
        self._last_stats = None
        self.set_is_distributed(is_distributed, device)
        stream = None
        if self.is_distributed:
            self._dstream = self._open_distributed(file_stream_requests, credentials, device,
                                                   bool(owned))
            self.is_distributed = self._dstream is not None
            if self._dstream is not None and self._dstream.mine:
                stream = self._dstream.stream
        if not self.is_distributed:
            self.file_streamer.stream_files(file_stream_requests, credentials, device,
                                            owned=owned)
            request = self.file_streamer._request
            stream = request.stream if request is not None else None
        arena = native_arena(stream)
        if arena is not None:
            rank = dist.get_rank() if self.get_group_size() > 1 else 0
            self._ring_info = (rank, 1, arena[1])

    def _open_distributed(self, file_stream_requests: List[FileChunks],
                          credentials: Optional[S3Credentials], device: str,
                          owned: bool) -> Optional[DistributedStream]:
        config = StreamerConfig.from_env()

        def build() -> _ChunkRanges:
            return _ChunkRanges(FileStreamer._check_requests(file_stream_requests), credentials)

        return open_exchange(build, _parse_device(device), config, DistSettings.from_env(),
                             owned=owned, what="range", fields="files, ids, ranges")

    def ring_info(self) -> Optional[Tuple[int, int, int]]:
        """(rank, num_buffers, buffer_size) of the reading buffer the last
        stream_files built on this process: the native engine reads into one
        ring, so (rank, 1, its bytes). None when it built none: before any
        stream, a process whose share is empty, or files mapped rather than
        read (the default for cached local files)."""
        return self._ring_info

    def get_chunks(self) -> Iterator[Tuple[Any, int, torch.Tensor]]:
        """Yields (file id, range index, chunk) for every range of the last
        stream_files call, on every process of the group, in completion
        order; chunk is a torch.uint8 tensor of shape (1, size) on the
        requested device."""
        dstream = self._dstream
        if dstream is None:
            return self.file_streamer.get_chunks()
        return self._distributed_chunks(dstream)

    @staticmethod
    def _distributed_chunks(dstream: DistributedStream) -> Iterator[Tuple[Any, int, torch.Tensor]]:
        chunks = dstream.tensors()
        try:
            for (file_id, range_index), chunk in chunks:
                yield file_id, range_index, chunk
        finally:
            close = getattr(chunks, "close", None)  # leaving early leaves the exchange
            if close is not None:
                close()

    def stats(self) -> Dict[str, int]:
        """This process's native statistics of the current (or last) stream
        (bytes_read: what it read from storage itself); see FileStreamer.stats."""
        dstream = self._dstream
        if dstream is not None:
            if dstream.stream is not None and not dstream.stream.closed:
                return dstream.stream.stats()
            return {}
        if self._last_stats is not None:
            return dict(self._last_stats)
        return self.file_streamer.stats()
