"""SafetensorsStreamer: stream the tensors of SafeTensors files as torch tensors."""

from __future__ import annotations

import logging
import os
import platform
import weakref
from collections import Counter, deque
from timeit import default_timer as timer
from typing import Any, Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from runai_model_streamer import _native
from runai_model_streamer._dtypes import element_size
from runai_model_streamer.config import READ_MODES, StreamerConfig, backend_settings
from runai_model_streamer.exceptions import (
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
)
from runai_model_streamer.files import S3Credentials, storage_family
from runai_model_streamer.metadata import SafetensorMetadata


# Whether a CPU tensor may view memory at an address its element size does
# not divide (a file whose header length leaves its tensors misaligned). On
# x86-64 every load and store may be unaligned, and torch 2.9 computes the
# same results there for every dtype and the ops measured (==, clone, copy_,
# .to(dtype), sum, max, matmul, view/reshape/contiguous, in-place mul_ and
# copy_, .numpy(): bench/misaligned_ops.py): such tensors are handed out
# without a copy. Elsewhere (unmeasured; some CPUs fault on unaligned
# vector loads or atomics) they are copied to aligned memory.
MISALIGNED_VIEWS_OK = platform.machine().lower() in ("x86_64", "amd64")

logger = logging.getLogger("runai_model_streamer")


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _rank() -> int:
    """This process's torch.distributed rank, 0 when it is not initialised."""
    try:
        import torch.distributed as dist  # noqa: PLC0415

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:
        pass
    return 0


def _parse_device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device)
    if not isinstance(device, str):
        raise RunaiStreamerInvalidInputException(f"Unusable device {device!r}: expected a str")
    try:
        return torch.device(device)
    except RuntimeError as first:
        try:
            return torch.device(device.strip().lower())
        except RuntimeError:
            raise RunaiStreamerInvalidInputException(
                f"Unusable device {device!r}: {first}"
            ) from None


def _normalize_paths(paths: Any) -> List[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise RunaiStreamerInvalidInputException(
            "stream_files() takes a list of paths; use stream_file() for a single path"
        )
    try:
        items = list(paths)
    except TypeError:
        raise RunaiStreamerInvalidInputException(
            f"stream_files() takes a list of paths, not {type(paths).__name__}"
        ) from None
    result = []
    for p in items:
        if isinstance(p, os.PathLike):
            p = os.fspath(p)
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if not isinstance(p, str):
            raise RunaiStreamerInvalidInputException(
                f"a path must be a str, not {type(p).__name__}: {p!r}"
            )
        if not p:
            raise RunaiStreamerInvalidInputException("an empty string is not a path")
        if p.startswith("hf://"):
            from runai_model_streamer import hf
            p = hf.resolve(p)  # the Hub's https URL of the file
        result.append(p)
    return result


def _check_schemes(paths: Sequence[str]) -> str:
    schemes = {storage_family(p) for p in paths}
    if len(schemes) > 1:
        if "file" in schemes:
            raise RunaiStreamerInvalidInputException(
                "Cannot stream local paths and object storage URIs in one stream_files() call: "
                f"{sorted(schemes)}"
            )
        raise RunaiStreamerInvalidInputException(
            f"Cannot stream files from different storage schemes in one call: {sorted(schemes)}"
        )
    return schemes.pop() if schemes else "file"


def _check_tensor_names(tensor_names: Optional[Collection[str]]) -> Optional[List[str]]:
    if tensor_names is None:
        return None
    if isinstance(tensor_names, (str, bytes)):
        raise RunaiStreamerInvalidInputException(
            "tensor_names must be a collection of names, not a single str"
        )
    names = list(tensor_names)
    if not names:
        raise RunaiStreamerInvalidInputException(
            "tensor_names must not be empty - pass None to load every tensor"
        )
    for n in names:
        if not isinstance(n, str):
            raise RunaiStreamerInvalidInputException(
                f"tensor_names must hold str names, not {type(n).__name__}: {n!r}"
            )
    # Duplicates in the request itself are harmless; ask for each name once.
    return list(dict.fromkeys(names))


_tensor_views_warm = False


def _warm_tensor_views() -> None:
    """Makes torch's first frombuffer and view calls of the process, which
    cost 0.3 ms (20 us afterwards). Called before the first stream opens: in
    a fresh process the library is still loading on the start-up thread
    (_native.start_loading) and the open would wait for it, so this runs
    meanwhile instead of on the way to the first tensor
    (bench/first_tensor.py: `stream_files` -> first tensor 5.9 -> 5.6 ms,
    median of 40 interleaved fresh processes)."""
    global _tensor_views_warm
    if not _tensor_views_warm:
        torch.frombuffer(bytearray(4), dtype=torch.float32).view(1, 1)
        _tensor_views_warm = True


class SafetensorsStreamer:
    """Streams SafeTensors files; a context manager.

    >>> with SafetensorsStreamer() as streamer:
    ...     streamer.stream_files(paths)
    ...     for name, tensor in streamer.get_tensors():
    ...         ...

    After ``stream_files``:
      files_to_tensors_metadata  {file index: [SafetensorMetadata, ...]} (the
                                 requested tensors, in file-offset order)
      total_size                 bytes of the requested tensors
      unaligned_copies           tensors copied because their address did not
                                 suit their dtype
    """

    def __init__(self) -> None:
        self.files_to_tensors_metadata: Dict[int, List[SafetensorMetadata]] = {}
        self.total_size = 0
        self.device_str: Optional[str] = None
        self.start_time: Optional[float] = None
        self.unaligned_copies = 0
        self.read_strategies: List[Optional[str]] = []
        self.paths: List[str] = []
        self.first_tensor_time: Optional[float] = None
        self._stream: Optional[_native.Stream] = None
        self._requested = False
        # Start loading the library and the Go runtime now, on a thread, so that
        # stream_files waits for as little of that fixed cost as possible.
        _native.start_loading()
        self._owned = True
        self._device = torch.device("cpu")
        self._last_stats: Optional[Dict[str, int]] = None
        self._iterators: "weakref.WeakSet[_IterState]" = weakref.WeakSet()
        self._dist: Any = None  # a distributed.DistributedStream (is_distributed)

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "SafetensorsStreamer":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- requests ---------------------------------------------------------
    def stream_file(
        self,
        path: str,
        s3_credentials: Optional[S3Credentials] = None,
        device: Optional[str] = "cpu",
        is_distributed: bool = False,
        tensor_names: Optional[Collection[str]] = None,
        owned: bool = True,
    ) -> None:
        """Streams one file; see stream_files."""
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            raise RunaiStreamerInvalidInputException(
                f"stream_file() takes one path as a str, not {type(path).__name__}"
            )
        return self.stream_files(
            [path],
            s3_credentials=s3_credentials,
            device=device,
            is_distributed=is_distributed,
            tensor_names=tensor_names,
            owned=owned,
        )

    def stream_files(
        self,
        paths: List[str],
        s3_credentials: Optional[S3Credentials] = None,
        device: Optional[str] = "cpu",
        is_distributed: bool = False,
        tensor_names: Optional[Collection[str]] = None,
        owned: bool = True,
    ) -> None:
        """Starts streaming the tensors of ``paths`` (all local, or all of one
        object storage scheme).

        Reads and validates every header, then starts reading in the
        background; take the tensors with get_tensors().

        owned=True (default): each yielded tensor is the caller's, valid for as
        long as it is referenced (no copy is made; its memory returns to the
        streamer when the tensor is garbage-collected).
        owned=False: a yielded tensor is valid only until the iteration
        advances (its memory is then reused) or the streamer is closed.

        Settings come from the environment at this call: RUNAI_STREAMER_CONCURRENCY,
        RUNAI_STREAMER_MEMORY_LIMIT, RUNAI_STREAMER_CHUNK_BYTESIZE,
        MODEL_STREAMER_READ_MODE, and the storage backends' variables (AWS_*,
        AZURE_*, ...; see config.backend_settings), which ``s3_credentials``
        overrides.
        """
        names = _check_tensor_names(tensor_names)
        path_list = _normalize_paths(paths)
        scheme = _check_schemes(path_list)
        dev = _parse_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RunaiStreamerInvalidInputException(
                f"Unusable device {device!r}: CUDA is not available"
            )
        config = StreamerConfig.from_env()

        # A new request replaces the previous one.
        self.close()
        self.files_to_tensors_metadata = {}
        self.total_size = 0
        self.unaligned_copies = 0
        self.read_strategies = []
        self.device_str = str(dev)
        self.paths = path_list
        self.first_tensor_time = None
        self._last_stats = None
        self._owned = bool(owned)
        self._device = dev
        self._requested = False

        if s3_credentials is not None and scheme == "file":
            logger.debug("[model-streamer] s3_credentials ignored for local paths")

        self.start_time = timer()
        if not path_list:
            self._requested = True
            return

        settings = backend_settings(credentials=s3_credentials, scheme=scheme)
        read_mode = config.read_mode_for(dev.type)

        def open_native(subset: Optional[List[str]]) -> _native.Stream:
            return _native.Stream(
                path_list,
                subset,
                concurrency=config.concurrency,
                memory_limit=config.memory_limit,
                chunk_bytes=config.chunk_bytes,
                read_mode=READ_MODES[read_mode],
                settings=settings,
            )

        _warm_tensor_views()
        if is_distributed and self._open_distributed(
                path_list, names, dev, scheme, config, settings):
            return
        stream = open_native(names)
        try:
            self._load_metadata(stream, path_list, names)
        except BaseException:
            stream.close()
            self.files_to_tensors_metadata = {}
            self.total_size = 0
            raise
        self._stream = stream
        self._requested = True
        logger.debug(
            "[model-streamer] streaming %d tensor(s), %s from %d file(s): concurrency %d, "
            "memory limit %d, read mode %s",
            sum(len(v) for v in self.files_to_tensors_metadata.values()),
            format_bytes(self.total_size), len(path_list), config.concurrency,
            config.memory_limit, read_mode,
        )

    def _open_distributed(self, paths: List[str], names: Optional[List[str]],
                          dev: torch.device, scheme: str, config: StreamerConfig,
                          settings: List[str]) -> bool:
        """is_distributed=True: sets up distributed streaming (see
        the distributed package); False when this request falls back to plain
        streaming."""
        from runai_model_streamer import distributed

        def validate(meta: Dict[str, Any]) -> Dict[int, List[SafetensorMetadata]]:
            self._load_metadata(None, paths, names, meta=meta)
            return self.files_to_tensors_metadata

        try:
            dstream = distributed.open_stream(
                paths, names, dev, scheme, config, settings,
                validate=validate, wrap=self._wrap, owned=self._owned)
        except BaseException:
            self.files_to_tensors_metadata = {}
            self.total_size = 0
            raise
        if dstream is None:
            self.files_to_tensors_metadata = {}
            self.total_size = 0
            return False
        self._dist = dstream
        self._stream = dstream.stream  # this process's share: stats() are its reads
        self._requested = True
        return True

    def _load_metadata(self, stream: Optional[_native.Stream], paths: List[str],
                       names: Optional[List[str]], meta: Optional[Dict[str, Any]] = None) -> None:
        if meta is None:
            meta = stream.metadata()
        files = meta.get("files", [])
        if len(files) != len(paths):
            raise RunaiStreamerError(
                f"model-streamer: the library described {len(files)} file(s) for "
                f"{len(paths)} requested"
            )
        result: Dict[int, List[SafetensorMetadata]] = {}
        total = 0
        for index, entry in enumerate(files):
            path = paths[index]
            tensors = []
            for t in entry.get("tensors", []):
                m = SafetensorMetadata(t["name"], t, path=path)  # checks shape x dtype vs offsets
                dtype = m.get_torch_dtype()  # raises for a dtype torch lacks
                m.get_torch_shape()  # raises for a packed (F4) shape torch cannot hold
                m._element_size = element_size(dtype)
                tensors.append(m)
                total += m.get_bytesize()
            result[index] = tensors

        if names is not None:
            found = [m.name for tensors in result.values() for m in tensors]
            missing = set(names) - set(found)
            if missing:
                raise RunaiStreamerInvalidInputException(
                    f"tensor_names not found in checkpoint: {sorted(missing)}"
                )
            if len(found) != len(set(found)):
                counts = Counter(found)
                duplicates = sorted(n for n, c in counts.items() if c > 1)
                raise RunaiStreamerInvalidInputException(
                    f"tensor_names requested tensors that appear in more than one file: "
                    f"{duplicates}"
                )
        self.files_to_tensors_metadata = result
        self.total_size = total
        # Per file, the read path the engine chose ("mmap", "buffered", "direct", ...):
        # a mapping hands out page-cache pages, the others copy, and a throughput
        # figure means different things for each.
        self.read_strategies = [entry.get("strategy") for entry in files]

    # -- consumption ------------------------------------------------------
    def get_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """Yields (name, tensor) as each tensor's bytes arrive (completion
        order, not file order)."""
        if not self._requested:
            raise RunaiStreamerError(
                "get_tensors() called before stream_file() / stream_files()"
            )
        if self._dist is not None:
            return self._iterate_distributed(self._dist)
        return self._iterate(self._stream, self.files_to_tensors_metadata,
                             self._owned, self._device)

    def _iterate_distributed(self, dstream: Any) -> Iterator[Tuple[str, torch.Tensor]]:
        tensors = dstream.tensors()
        try:
            for item in tensors:
                if self.first_tensor_time is None:
                    self.first_tensor_time = timer()
                yield item
        finally:
            tensors.close()
        if dstream._state == "done":
            self._log_throughput()

    def _iterate(self, stream: Optional[_native.Stream],
                 metas: Dict[int, List[SafetensorMetadata]], owned: bool,
                 device: torch.device) -> Iterator[Tuple[str, torch.Tensor]]:
        to_device = device.type != "cpu"
        state = _IterState()
        pending = state.pending
        if stream is not None:
            self._iterators.add(state)
            if device.type == "cuda":
                from runai_model_streamer.device import HostToDevice

                # Copies on a side stream from the pinned ring; a tensor's
                # host memory returns once its copy is done.
                state.copier = HostToDevice(device, stream)
        copier = state.copier
        completed = False
        try:
            if stream is None:
                completed = True
                return
            while True:
                if stream.closed:  # close(), or a new request replaced this one
                    return
                if not pending:
                    try:
                        batch = self._next_batch(stream, copier)
                    except RunaiStreamerError:
                        if stream.closed:  # closed under us (close() from another thread)
                            return
                        raise
                    if batch is None:
                        completed = True
                        return
                    pending.extend(batch)
                try:
                    file_index, tensor_index, addr, nbytes, token = pending.popleft()
                except IndexError:  # drained by close() from another thread
                    continue
                try:
                    meta = metas[file_index][tensor_index]
                except (KeyError, IndexError):
                    _native.release(token)
                    raise RunaiStreamerError(
                        f"model-streamer: the library delivered an unknown tensor "
                        f"(file {file_index}, tensor {tensor_index})"
                    ) from None
                tensor, zero_copy = self._wrap(meta, addr, nbytes, token)
                if copier is not None:
                    tensor = copier.copy(tensor, token if zero_copy else None)
                    zero_copy = False  # the copier releases the token
                elif to_device:
                    tensor = tensor.to(device)
                    if not owned and zero_copy:
                        # The copy to the device is done; the host bytes are free.
                        _native.release(token)
                        zero_copy = False
                if self.first_tensor_time is None:
                    self.first_tensor_time = timer()
                if not owned and zero_copy:
                    state.held = token
                yield meta.name, tensor
                del tensor
                state.release_held()
        finally:
            state.release_all()
            self._iterators.discard(state)
            if completed:
                self._log_throughput()

    @staticmethod
    def _next_batch(stream: _native.Stream, copier: Any) -> Optional[List[Any]]:
        """The next ready tensors. With copies to a device in flight, their
        host memory goes back to the library only once they finish: when
        nothing is ready yet, wait for those copies first (the device is busy
        with them anyway), so that a reader waiting for ring space is never
        left waiting on a consumer that is waiting on it."""
        if copier is not None and copier.pending:
            batch = stream.next_batch(wait=False)
            if batch != []:
                return batch
            copier.synchronize()
        return stream.next_batch()

    def _wrap(self, meta: SafetensorMetadata, addr: int, nbytes: int,
              token: int) -> Tuple[torch.Tensor, bool]:
        """A tensor over the bytes at addr. Returns (tensor, zero_copy): when
        zero_copy is False the token has already been released."""
        dtype = meta._torch_dtype
        shape = meta._torch_shape  # the header's, but F4's last dim counts byte pairs
        if nbytes != meta.get_bytesize():
            _native.release(token)
            raise RunaiStreamerError(
                f"{meta.path}: tensor {meta.name!r}: the library delivered {nbytes} bytes, "
                f"the header says {meta.get_bytesize()}"
            )
        if nbytes == 0 or meta.get_item_count() == 0:
            _native.release(token)
            return torch.empty(shape, dtype=dtype), False
        ffi = _native._state.ffi
        esize = meta._element_size
        if addr % esize and not MISALIGNED_VIEWS_OK:
            src = torch.frombuffer(ffi.buffer(ffi.cast("char *", addr), nbytes), dtype=torch.uint8)
            copy = torch.empty(nbytes, dtype=torch.uint8)
            copy.copy_(src)
            del src
            _native.release(token)
            self.unaligned_copies += 1
            return copy.view(dtype).view(shape), False
        ptr = ffi.gc(ffi.cast("void *", addr), _native.make_releaser(token))
        tensor = torch.frombuffer(ffi.buffer(ptr, nbytes), dtype=dtype)
        return tensor.view(shape), True

    # -- reporting ---------------------------------------------------------
    def _log_throughput(self) -> None:
        if self.start_time is None:
            return
        try:
            # Once per load, naming the rank: in a distributed load every
            # rank has a buffer of its own and logs this line.
            arena = self.stats().get("arena_bytes")
            if arena is not None:
                logger.info(
                    f"[model-streamer] Rank {_rank()}: CPU buffer {format_bytes(arena)} for "
                    f"{format_bytes(self.total_size)} in {len(self.files_to_tensors_metadata)} "
                    "file(s)"
                )
        except Exception:  # a log line must never break a load
            pass
        try:
            elapsed = timer() - self.start_time
            rate = self.total_size / elapsed if elapsed > 0 else 0.0
            logger.info(
                f"[model-streamer] Overall time to stream {format_bytes(self.total_size)} of all "
                f"files to {self.device_str}: {round(elapsed, 2)}s, {format_bytes(rate)}/s"
            )
            if self.unaligned_copies:
                logger.debug(
                    f"[model-streamer] Copied {self.unaligned_copies} tensor(s) whose address "
                    "their dtype could not use"
                )
        except Exception:  # a log line must never break a load
            pass

    def stats(self) -> Dict[str, int]:
        """The native stream statistics (ms_stream_stats): bytes_requested,
        bytes_read, reads, retries, tensors_delivered, arena_bytes,
        first_tensor_ns, elapsed_ns, memory_wait_ns, consumer_wait_ns.
        After close(), the last values seen."""
        if self._stream is not None and not self._stream.closed:
            self._last_stats = self._stream.stats()
        return dict(self._last_stats or {})

    def close(self) -> None:
        """Stops streaming and frees the stream. Tensors yielded with
        owned=True stay valid."""
        # Tensors fetched but not yet yielded, and (owned=False) the one
        # yielded last, go back now, even if their iterator is never resumed.
        for state in list(self._iterators):
            state.release_all()
        self._iterators.clear()
        dstream, self._dist = self._dist, None
        stream = self._stream
        if stream is None:
            return
        self._stream = None
        try:
            if not stream.closed:
                try:
                    self._last_stats = stream.stats()
                except Exception:
                    pass
        finally:
            if dstream is not None:
                dstream.close()  # leaves the group's exchange; unpins; closes the stream
            stream.close()


class _IterState:
    """What one get_tensors() iterator holds: tokens fetched but not yet
    yielded, and (owned=False) the token of the tensor yielded last."""

    __slots__ = ("pending", "held", "copier", "__weakref__")

    def __init__(self) -> None:
        self.pending: deque = deque()
        self.held: Optional[int] = None
        self.copier: Any = None  # device.HostToDevice for CUDA devices

    def release_held(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            _native.release(held)

    def release_all(self) -> None:
        self.release_held()
        copier, self.copier = self.copier, None
        if copier is not None:
            copier.close()  # unpins the ring before the stream can free it
        pending = self.pending
        while True:
            try:
                entry = pending.popleft()
            except IndexError:
                break
            _native.release(entry[4])
