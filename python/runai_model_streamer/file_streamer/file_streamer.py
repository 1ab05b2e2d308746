"""FileStreamer: stream byte ranges of any files as uint8 tensors.

At the reference's module path (runai_model_streamer.file_streamer.
file_streamer). The ranges go to the native engine as they are
(ms_stream_open_ranges): it plans them in file order across all files at
once, reads them into its bounded buffer (or maps a cached local file), and
reports each range as soon as its bytes are in. Each yielded chunk is a
torch tensor *viewing* that memory: no copy is made.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections import deque
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from runai_model_streamer import _native
from runai_model_streamer.config import READ_MODES, StreamerConfig, backend_settings
from runai_model_streamer.exceptions import (  # noqa: F401 - public at this path
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
)
from runai_model_streamer.file_streamer.requests_iterator import FileChunks
from runai_model_streamer.files import S3Credentials, local_path, uri_scheme
from runai_model_streamer.streamer import _parse_device

logger = logging.getLogger("runai_model_streamer")

MIXED_SOURCES_MESSAGE = "Cannot stream files from multiple source types in parallel"


def host_or_device(device: Optional[Union[str, int, torch.device]]) -> str:
    """The device as a string: "cpu" for every spelling of the host (None,
    "cpu", torch.device("cpu")), else the device torch parses it as
    ("cuda:0"). A device torch does not know raises
    RunaiStreamerInvalidInputException."""
    parsed = _parse_device(device)
    return "cpu" if parsed.type == "cpu" else str(parsed)


def homogeneous_paths(paths: Sequence[str]) -> bool:
    """Whether every path is of one source type: all local, or all of one
    object storage scheme (an empty list is)."""
    return len({uri_scheme(os.fspath(p)) for p in paths}) <= 1


def _memory_limit(memory_limit: Optional[int], config: StreamerConfig) -> int:
    if memory_limit is None:
        return config.memory_limit
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, int):
        try:
            memory_limit = int(memory_limit.__index__())
        except (AttributeError, TypeError):
            raise RunaiStreamerInvalidInputException(
                f"memory_limit must be an int, not {type(memory_limit).__name__}"
            ) from None
    if memory_limit < -1:
        raise RunaiStreamerInvalidInputException(
            f"memory_limit={memory_limit}: must be -1 (the whole request), 0 (the largest "
            "range) or a positive number of bytes"
        )
    return memory_limit


def _relative_key(prefix: str, uri: str) -> str:
    """uri's path below the listed prefix, '/'-separated, which allow and
    ignore patterns are matched against."""
    base = prefix if prefix.endswith("/") else prefix + "/"
    if uri.startswith(base):
        return uri[len(base):]
    if uri_scheme(prefix) == "file":
        rel = os.path.relpath(local_path(uri), local_path(prefix))
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return uri.rsplit("/", 1)[-1]


class _Request:
    """One stream_files call: its native stream and what get_chunks has not
    handed out yet."""

    __slots__ = ("stream", "ids", "outstanding", "owned", "device", "pending", "held",
                 "last_stats")

    def __init__(self, stream: Optional[_native.Stream], ids: List[Any], outstanding: int,
                 owned: bool, device: torch.device) -> None:
        self.stream = stream
        self.ids = ids
        self.outstanding = outstanding  # ranges not yet yielded
        self.owned = owned
        self.device = device
        self.pending: deque = deque()  # ready ranges fetched, not yet yielded
        self.held: Optional[int] = None  # owned=False: the token of the chunk yielded last
        self.last_stats: Optional[Dict[str, int]] = None

    def release_held(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            _native.release(held)

    def close(self) -> None:
        """Gives back what was never yielded (and, owned=False, the chunk
        yielded last) and closes the native stream. Chunks yielded with
        owned=True stay valid."""
        self.release_held()
        while self.pending:
            _native.release(self.pending.popleft()[4])
        self.outstanding = 0
        stream, self.stream = self.stream, None
        if stream is not None and not stream.closed:
            try:
                self.last_stats = stream.stats()
            except Exception:
                pass
            stream.close()


class FileStreamer:
    """Streams byte ranges of files (local, s3://, gs://, az://); a context
    manager.

    >>> with FileStreamer() as streamer:
    ...     streamer.stream_files([FileChunks(0, "/data/blob.bin", [4096, 0], [100, 10])])
    ...     for file_id, range_index, chunk in streamer.get_chunks():
    ...         ...   # chunk: torch.uint8 tensor of shape (1, size)
    """

    def __init__(self) -> None:
        self.device_str: Optional[str] = None
        self._credentials: Optional[S3Credentials] = None
        self._request: Optional[_Request] = None

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "FileStreamer":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stops the current stream, if any. Chunks yielded with owned=True
        stay valid; the streamer can stream again."""
        request = self._request
        if request is not None:
            request.close()

    # -- listing ---------------------------------------------------------
    def list_files(
        self,
        prefix: str,
        is_recursive: bool = True,
        allow_patterns: Optional[List[str]] = None,
        ignore_patterns: Optional[List[str]] = None,
    ) -> List[Tuple[str, int]]:
        """(path, size) of the files under ``prefix`` (a directory or an
        object storage prefix), recursively unless ``is_recursive`` is False.

        ``allow_patterns`` / ``ignore_patterns``: fnmatch patterns matched
        against each file's path relative to the prefix; a file is listed
        when it matches an allow pattern (any, when none is given) and no
        ignore pattern. Works inside or outside the context manager, with the
        credentials of the last stream_files call, else the environment's."""
        prefix = os.fspath(prefix)
        if isinstance(allow_patterns, str):
            allow_patterns = [allow_patterns]
        if isinstance(ignore_patterns, str):
            ignore_patterns = [ignore_patterns]
        settings = backend_settings(credentials=self._credentials, scheme=uri_scheme(prefix))
        results = []
        for uri, size in _native.list_objects(prefix, bool(is_recursive), settings=settings):
            if uri.endswith("/"):
                continue  # a "directory" marker of an object store
            rel = _relative_key(prefix, uri)
            if allow_patterns and not any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                continue
            if ignore_patterns and any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                continue
            results.append((uri, int(size)))
        return results

    # -- streaming -------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Ranges of the current stream not yet yielded by get_chunks (0 once
        it is drained, abandoned or closed)."""
        return self._request.outstanding if self._request is not None else 0

    def stream_files(
        self,
        file_stream_requests: List[FileChunks],
        credentials: Optional[S3Credentials] = None,
        device: Optional[str] = "cpu",
        memory_limit: Optional[int] = None,
        owned: bool = True,
    ) -> None:
        """Starts reading every range of ``file_stream_requests`` (all local
        files, or all of one object storage scheme) in the background; take
        them with get_chunks().

        device: where the yielded chunks go ("cpu", "cuda:0", ...).
        memory_limit: bytes the streamer may hold in flight; -1 the whole
        request, 0 the largest range, None the RUNAI_STREAMER_MEMORY_LIMIT
        setting. Below the largest range: RunaiStreamerMemoryLimitException.
        owned=True: a yielded chunk stays valid for as long as it is
        referenced (its memory returns to the streamer when the tensor is
        garbage-collected); owned=False: valid only until the iteration
        advances. Other settings (RUNAI_STREAMER_CONCURRENCY,
        RUNAI_STREAMER_CHUNK_BYTESIZE, MODEL_STREAMER_READ_MODE, the storage
        backends' variables, which ``credentials`` overrides) are read from
        the environment now.

        Raises ValueError while the previous stream still has ranges that
        get_chunks has not yielded (consume them, or close its iterator).
        """
        previous = self._request
        if previous is not None and previous.outstanding > 0:
            raise ValueError(
                f"cannot start a new stream while {previous.outstanding} chunk(s) of the previous "
                "one are outstanding: consume or close get_chunks() before calling stream_files again"
            )
        requests = self._check_requests(file_stream_requests)
        paths = [path for _, path in requests]
        schemes = {uri_scheme(p) for p in paths}
        if not homogeneous_paths(paths):
            raise RunaiStreamerInvalidInputException(
                f"{MIXED_SOURCES_MESSAGE}: {sorted(schemes)}"
            )
        dev = _parse_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RunaiStreamerInvalidInputException(
                f"Unusable device {device!r}: CUDA is not available"
            )
        config = StreamerConfig.from_env()
        limit = _memory_limit(memory_limit, config)

        if previous is not None:
            previous.close()
        self._request = None
        self.device_str = "cpu" if dev.type == "cpu" else str(dev)
        self._credentials = credentials
        ids = [chunks.id for chunks, _ in requests]
        total = sum(len(chunks.sizes) for chunks, _ in requests)
        if not requests:
            self._request = _Request(None, ids, 0, bool(owned), dev)
            return
        stream = _native.Stream(
            paths,
            concurrency=config.concurrency,
            memory_limit=limit,
            chunk_bytes=config.chunk_bytes,
            read_mode=READ_MODES[config.read_mode_for(dev.type)],
            settings=backend_settings(credentials=credentials, scheme=schemes.pop()),
            ranges=[(chunks.offsets, chunks.sizes) for chunks, _ in requests],
        )
        self._request = _Request(stream, ids, total, bool(owned), dev)
        logger.debug("[model-streamer] streaming %d range(s) of %d file(s), memory limit %d",
                     total, len(paths), limit)

    @staticmethod
    def _check_requests(file_stream_requests: Sequence[FileChunks]) -> List[Tuple[FileChunks, str]]:
        if isinstance(file_stream_requests, FileChunks):
            raise RunaiStreamerInvalidInputException(
                "stream_files() takes a list of FileChunks, not one FileChunks"
            )
        try:
            items = list(file_stream_requests)
        except TypeError:
            raise RunaiStreamerInvalidInputException(
                f"stream_files() takes a list of FileChunks, not "
                f"{type(file_stream_requests).__name__}"
            ) from None
        out = []
        seen = set()
        for chunks in items:
            if not all(hasattr(chunks, a) for a in ("id", "path", "offsets", "sizes")):
                raise RunaiStreamerInvalidInputException(
                    f"stream_files() takes FileChunks, not {type(chunks).__name__}"
                )
            path = chunks.path
            if isinstance(path, os.PathLike):
                path = os.fspath(path)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if not isinstance(path, str) or not path:
                raise RunaiStreamerInvalidInputException(
                    f"FileChunks {chunks.id!r}: the path must be a non-empty str, not {path!r}"
                )
            if len(chunks.offsets) != len(chunks.sizes):
                raise RunaiStreamerInvalidInputException(
                    f"{path}: {len(chunks.offsets)} offsets but {len(chunks.sizes)} sizes"
                )
            try:
                hash(chunks.id)
            except TypeError:
                raise RunaiStreamerInvalidInputException(
                    f"{path}: FileChunks id {chunks.id!r} is not hashable"
                ) from None
            if chunks.id in seen:
                raise RunaiStreamerInvalidInputException(
                    f"{path}: FileChunks id {chunks.id!r} is used by another file of this request; "
                    "ids must be unique within one stream_files call"
                )
            seen.add(chunks.id)
            out.append((chunks, path))
        return out

    def get_chunks(self) -> Iterator[Tuple[Any, int, torch.Tensor]]:
        """Yields (file id, range index, chunk) for every range of the last
        stream_files call, as each range's bytes arrive (completion order,
        not request order). chunk is a torch.uint8 tensor of shape (1, size)
        on the requested device. Leaving the loop early (break, an
        exception) stops the stream."""
        request = self._request
        if request is None:
            raise ValueError("get_chunks() called before stream_files()")
        return self._chunks(request)

    def _chunks(self, request: _Request) -> Iterator[Tuple[Any, int, torch.Tensor]]:
        device = request.device
        to_device = device.type != "cpu"
        pending = request.pending
        ids = request.ids
        try:
            while True:
                stream = request.stream
                if stream is None or stream.closed:  # closed, replaced or empty
                    return
                if not pending:
                    batch = stream.next_batch()
                    if batch is None:
                        return
                    pending.extend(batch)
                try:
                    file_index, range_index, addr, nbytes, token = pending.popleft()
                except IndexError:  # drained by close() from another thread
                    continue
                try:
                    file_id = ids[file_index]
                except IndexError:
                    _native.release(token)
                    raise RunaiStreamerError(
                        f"model-streamer: the library delivered a range of an unknown file "
                        f"(file {file_index}, range {range_index})"
                    ) from None
                chunk, zero_copy = _wrap(addr, nbytes, token)
                if to_device:
                    chunk = chunk.to(device)
                    if zero_copy:
                        # A copy from pageable host memory has finished reading it
                        # when .to() returns: the host bytes can go back now.
                        _native.release(token)
                        zero_copy = False
                request.outstanding -= 1
                if zero_copy and not request.owned:
                    request.held = token
                yield file_id, range_index, chunk
                del chunk
                request.release_held()
        finally:
            # Drained, abandoned (break, an exception, the iterator collected)
            # or failed: the stream ends here either way. Yielded owned chunks
            # keep their memory.
            request.close()

    # -- reporting -------------------------------------------------------
    def stats(self) -> Dict[str, int]:
        """The native statistics of the current (or last) stream:
        bytes_requested, bytes_read, reads, retries, tensors_delivered (ranges),
        arena_bytes (peak buffer memory), first_tensor_ns, elapsed_ns, ..."""
        request = self._request
        if request is None:
            return {}
        if request.stream is not None and not request.stream.closed:
            return request.stream.stats()
        return dict(request.last_stats or {})


def _wrap(addr: int, nbytes: int, token: int) -> Tuple[torch.Tensor, bool]:
    """A (1, nbytes) uint8 tensor viewing the bytes at addr, and whether it
    does (zero copy: the token is released when the tensor is collected). An
    empty range gets a tensor of its own (its token is released now)."""
    if nbytes == 0:
        _native.release(token)
        return torch.empty((1, 0), dtype=torch.uint8), False
    ffi = _native._state.ffi
    ptr = ffi.gc(ffi.cast("void *", addr), _native.make_releaser(token))
    return torch.frombuffer(ffi.buffer(ptr, nbytes), dtype=torch.uint8).view(1, -1), True
