"""Binding of libmodelstreamer.so through cffi in ABI mode.

The library is opened with ``ffi.dlopen`` the first time something needs it,
never at import: loading it starts a Go runtime. The cdef is the text between
the ``/* CDEF BEGIN */`` and ``/* CDEF END */`` markers of the C header that
ships next to the library.

Settings:
  MODEL_STREAMER_LIB     path of another libmodelstreamer.so to load.
  MODEL_STREAMER_HEADER  path of the header to read the cdef from (default: the
                         one next to the library, then the bundled one).

A Go runtime does not survive fork(): a child forked after the library was
loaded would hang on its first call. Every entry point here checks for that and
raises RunaiStreamerForkError instead; releases of memory from a forked child
are skipped (the child's copy of that memory goes away with the child).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from runai_model_streamer.exceptions import (
    RunaiStreamerChecksumError,
    RunaiStreamerError,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerForkError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerIOError,
    RunaiStreamerMemoryLimitException,
    RunaiStreamerPermissionError,
)

if TYPE_CHECKING:
    import cffi

# The precompiled declarations (and cffi's C backend) are imported with this
# module, not when the library is first loaded: the load is what a first
# stream waits for, and this is 0.5 ms of it that starts no runtime and
# survives fork() (bench/first_tensor.py: stream_files -> first tensor 5.9 ->
# 5.3 ms, import -> first tensor unchanged). _ffi_for checks they fit.
try:
    from runai_model_streamer import _ffi_abi  # noqa: F401
except Exception:  # missing, or made by an incompatible cffi: _ffi_for parses the header
    pass

LIB_NAME = "libmodelstreamer.so"
HEADER_NAME = "model_streamer.h"
CDEF_BEGIN = "/* CDEF BEGIN */"
CDEF_END = "/* CDEF END */"

LIB_ENV = "MODEL_STREAMER_LIB"
HEADER_ENV = "MODEL_STREAMER_HEADER"

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUNDLED_LIB_DIR = os.path.join(PACKAGE_DIR, "lib")

FORK_MESSAGE = (
    "model-streamer cannot be used in a process forked after it was loaded; "
    "use the 'spawn' start method"
)

# Status codes, as in the header. The loaded library's values are checked
# against these at load time.
MS_OK = 0
MS_ERR_INVALID_ARGUMENT = 1
MS_ERR_NOT_FOUND = 2
MS_ERR_PERMISSION_DENIED = 3
MS_ERR_MEMORY_LIMIT = 4
MS_ERR_IO = 5
MS_ERR_TIMEOUT = 6
MS_ERR_END = 7
MS_ERR_CLOSED = 8
MS_ERR_BAD_HANDLE = 9
MS_ERR_CANCELED = 10
MS_ERR_INTERNAL = 11
MS_ERR_FORKED = 12
MS_ERR_CHECKSUM = 13

CODE_NAMES = {
    MS_OK: "MS_OK",
    MS_ERR_INVALID_ARGUMENT: "MS_ERR_INVALID_ARGUMENT",
    MS_ERR_NOT_FOUND: "MS_ERR_NOT_FOUND",
    MS_ERR_PERMISSION_DENIED: "MS_ERR_PERMISSION_DENIED",
    MS_ERR_MEMORY_LIMIT: "MS_ERR_MEMORY_LIMIT",
    MS_ERR_IO: "MS_ERR_IO",
    MS_ERR_TIMEOUT: "MS_ERR_TIMEOUT",
    MS_ERR_END: "MS_ERR_END",
    MS_ERR_CLOSED: "MS_ERR_CLOSED",
    MS_ERR_BAD_HANDLE: "MS_ERR_BAD_HANDLE",
    MS_ERR_CANCELED: "MS_ERR_CANCELED",
    MS_ERR_INTERNAL: "MS_ERR_INTERNAL",
    MS_ERR_FORKED: "MS_ERR_FORKED",
    MS_ERR_CHECKSUM: "MS_ERR_CHECKSUM",
}

_logger = logging.getLogger("runai_model_streamer")

ERR_BUF_LEN = 16384
DEFAULT_BATCH = 256
DEFAULT_WAIT_MS = 200

_STATS_FIELDS = (
    "bytes_requested",
    "bytes_read",
    "reads",
    "retries",
    "tensors_delivered",
    "arena_bytes",
    "first_tensor_ns",
    "elapsed_ns",
    "memory_wait_ns",
    "consumer_wait_ns",
    "header_bytes_read",
)


class _State:
    """What the process knows about the loaded library."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ffi: Optional[cffi.FFI] = None
        self.lib: Any = None
        self.path: Optional[str] = None
        self.pid: Optional[int] = None  # pid of the process that loaded it
        self.forked = False  # this process is a fork of the one that loaded it
        self.at_fork_registered = False
        self.starting: Optional[threading.Thread] = None  # start_loading()'s thread
        # Clear while _dlopen_without_gil's dlopen runs (see _wait_for_dlopen).
        self.no_dlopen = threading.Event()
        self.no_dlopen.set()


_state = _State()

# How long a fork() waits for a dlopen of the library in flight on the
# start-up thread (it takes about 1 ms).
FORK_DLOPEN_WAIT_S = 10.0


def _wait_for_dlopen() -> None:
    """os.fork's "before" hook. A child forked while another thread is inside
    dlopen can inherit the dynamic loader's lock held, and then its own next
    dlopen (an extension module's import, say) never returns: glibc made fork
    take that lock only in 2023 (not reproduced with this machine's 2.36 in
    48 tries, but the wheel targets older ones). With the GIL held around
    dlopen no fork could overlap it; the start-up thread's dlopen releases
    the GIL, so a fork waits for it here (Event.wait releases the GIL
    meanwhile)."""
    _state.no_dlopen.wait(FORK_DLOPEN_WAIT_S)


def _fresh_dlopen_event() -> None:
    # The child has no start-up thread; the event may have been mid-update.
    _state.no_dlopen = threading.Event()
    _state.no_dlopen.set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_wait_for_dlopen, after_in_child=_fresh_dlopen_event)

PRELOAD_ENV = "MODEL_STREAMER_PRELOAD"


def start_loading() -> None:
    """Loads the library and lets the Go runtime finish starting, on a daemon
    thread, so that the first stream does not wait for them.

    The cost is fixed and paid once per process: dlopen of the library (about
    260k relocations, ~5 ms here) and the Go runtime's start with every linked
    package's init (~10-15 ms here, most of it the object-storage SDKs), which
    the first exported call waits for. Measured in bench/first_tensor.py.
    cffi releases the GIL for the call that waits, so the caller's thread goes
    on; a load() meanwhile waits for the dlopen only. Errors are left to the
    real load, which reports them.

    Not done at import by default: a Go runtime does not survive fork(), so a
    process that imports the package and then forks workers that stream would
    break. SafetensorsStreamer() starts it (a streamer is made to stream in this
    process), and MODEL_STREAMER_PRELOAD=1 starts it at import."""
    if _state.lib is not None or _state.starting is not None:
        return

    def work() -> None:
        try:
            _dlopen_without_gil(library_path())
            _ffi, lib = load()
            lib.ms_version()  # returns once the runtime and package inits are done
        except Exception:  # reported by the load that needs the library
            pass

    t = threading.Thread(target=work, name="model-streamer-load", daemon=True)
    _state.starting = t
    t.start()


def _after_fork_in_child() -> None:
    if _state.lib is not None:
        _state.forked = True
    # A lock held by another thread at fork time would never be released here.
    _state.lock = threading.Lock()
    _state.starting = None


def extract_cdef(header_text: str) -> str:
    """The declarations between the CDEF markers of the header."""
    begin = header_text.find(CDEF_BEGIN)
    end = header_text.find(CDEF_END)
    if begin < 0 or end < 0 or end < begin:
        raise RunaiStreamerError(
            f"the model-streamer header has no '{CDEF_BEGIN}' ... '{CDEF_END}' section"
        )
    return header_text[begin + len(CDEF_BEGIN):end]


def library_path() -> str:
    """Path of the shared library that is (or would be) loaded."""
    override = os.environ.get(LIB_ENV)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    return os.path.join(BUNDLED_LIB_DIR, LIB_NAME)


def _header_candidates(lib_path: str) -> List[str]:
    override = os.environ.get(HEADER_ENV)
    if override:
        return [os.path.abspath(os.path.expanduser(override))]
    return [
        os.path.join(os.path.dirname(lib_path), HEADER_NAME),
        os.path.join(BUNDLED_LIB_DIR, HEADER_NAME),
        # A source checkout before `make build` copied the header.
        os.path.normpath(os.path.join(PACKAGE_DIR, "..", "..", "go", "capi", HEADER_NAME)),
    ]


def read_cdef(lib_path: Optional[str] = None) -> str:
    for candidate in _header_candidates(lib_path or library_path()):
        if os.path.isfile(candidate):
            with open(candidate, "r", encoding="utf-8") as f:
                return extract_cdef(f.read())
    raise RunaiStreamerError(
        f"model-streamer: C header {HEADER_NAME} not found (looked in "
        f"{', '.join(_header_candidates(lib_path or library_path()))}); "
        "run `make build` or reinstall the package"
    )


def _check_not_forked() -> None:
    if _state.forked or (_state.pid is not None and os.getpid() != _state.pid):
        _state.forked = True
        raise RunaiStreamerForkError(FORK_MESSAGE)


def is_loaded() -> bool:
    return _state.lib is not None


def _ffi_for(cdef: str) -> cffi.FFI:
    """An FFI that knows the declarations cdef: the precompiled one
    (_ffi_abi.py, see _ffi_gen.py) when it was made from exactly these, else
    one that parses them now (tens of milliseconds)."""
    try:
        from runai_model_streamer import _ffi_abi

        if _ffi_abi.CDEF_SHA256 == hashlib.sha256(cdef.encode("utf-8")).hexdigest():
            return _ffi_abi.ffi
    except Exception:  # missing, or made by an incompatible cffi
        pass
    # Imported here, not with this module: the precompiled declarations need
    # only cffi's C backend, and `import cffi` is 1 ms of every import of
    # the package.
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(cdef)
    return ffi


def _dlopen_without_gil(path: str) -> None:
    """Has the dynamic loader load path with the GIL released: cffi's dlopen
    (like ctypes.CDLL) holds it for the whole ~1 ms of relocations, so the
    thread that made the streamer could not run meanwhile, and ran its own
    work (stream_files' checks, _warm_tensor_views) before the dlopen
    instead, delaying it. libc's dlopen called through ctypes releases the
    GIL; cffi's dlopen of the same path then finds the library loaded
    (bench/first_tensor.py: stream_files -> first tensor 5.1 -> 4.8 ms).
    ctypes is imported wherever torch is. Failures are left to load(), which
    reports them. A fork() meanwhile waits for it (_wait_for_dlopen)."""
    try:
        import ctypes

        dlopen = ctypes.CDLL(None).dlopen
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = (ctypes.c_char_p, ctypes.c_int)
        # Cleared with the GIL held, so no fork can slip between this and
        # the dlopen below.
        _state.no_dlopen.clear()
        try:
            # The handle is never closed: a Go runtime cannot be unloaded.
            dlopen(os.fsencode(path), os.RTLD_NOW)
        finally:
            _state.no_dlopen.set()
    except Exception:
        pass


def load() -> Tuple[cffi.FFI, Any]:
    """Returns (ffi, lib), loading the library on first use."""
    lib = _state.lib
    if lib is not None:
        _check_not_forked()
        return _state.ffi, lib
    with _state.lock:
        if _state.lib is not None:
            _check_not_forked()
            return _state.ffi, _state.lib
        path = library_path()
        if not os.path.isfile(path):
            hint = (
                f"(set by {LIB_ENV})" if os.environ.get(LIB_ENV) else
                "(build it with `make build` in a source checkout, or reinstall the package)"
            )
            raise RunaiStreamerError(f"model-streamer native library not found: {path} {hint}")
        ffi = _ffi_for(read_cdef(path))
        try:
            lib = ffi.dlopen(path)
        except OSError as e:
            raise RunaiStreamerError(f"cannot load the model-streamer library {path}: {e}") from e
        abi = getattr(lib, "MS_ABI_VERSION", None)
        if abi != 1:
            raise RunaiStreamerError(
                f"{path}: unsupported model-streamer ABI version {abi} (this package speaks 1)"
            )
        for value, name in CODE_NAMES.items():
            if getattr(lib, name, value) != value:
                raise RunaiStreamerError(
                    f"{path}: {name} is {getattr(lib, name)} in the header, this package "
                    f"expects {value}; the package and its header are out of step"
                )
        if not _state.at_fork_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _state.at_fork_registered = True
        _state.ffi = ffi
        _state.path = path
        _state.pid = os.getpid()
        _state.forked = False
        _state.lib = lib
        atexit.register(_finish_cache_entries, lib, os.getpid())
        return ffi, lib


# How long the interpreter's exit waits for the local cache's entries to be
# synced and renamed into place (MODEL_STREAMER_CACHE_DIR).
CACHE_EXIT_WAIT_MS = 600_000


def cache_wait(timeout_ms: int = -1) -> bool:
    """Waits until the local cache entries of this process's closed streams
    are complete (synced and renamed into place, in the background); False
    when timeout_ms (>= 0) passed first."""
    ffi, lib = load()
    fn = _function(lib, "ms_cache_wait")
    return fn is None or fn(int(timeout_ms)) == MS_OK


def cache_contribute(uri: str, offset: int, address: int, nbytes: int) -> bool:
    """Hands nbytes at address (host memory), the bytes at offset of the
    object uri, to the local cache entry this process is writing for it;
    False when it writes none (no cache, or another process writes it)."""
    ffi, lib = load()
    fn = _function(lib, "ms_cache_contribute")
    if fn is None:
        return False
    rc = fn(uri.encode("utf-8"), int(offset), ffi.cast("void *", address), int(nbytes))
    if rc < 0:
        raise error_for(rc, f"{uri}: ms_cache_contribute failed")
    return rc == 1


def cache_writing(uri: str) -> bool:
    """Whether this process is writing a local cache entry for uri now
    (cache_contribute would take its bytes)."""
    ffi, lib = load()
    fn = _function(lib, "ms_cache_contribute")
    if fn is None:
        return False
    rc = fn(uri.encode("utf-8"), 0, ffi.NULL, 0)
    if rc < 0:
        raise error_for(rc, f"{uri}: ms_cache_contribute failed")
    return rc == 1


def _finish_cache_entries(lib: Any, pid: int) -> None:
    """Lets the cache entries of this process's closed streams complete
    (they are synced in the background, so closing a stream never waits for
    the disk). An entry cut short stays a temporary file that no load uses."""
    fn = _function(lib, "ms_cache_wait")
    if fn is None or os.getpid() != pid:
        return
    if fn(CACHE_EXIT_WAIT_MS) == MS_ERR_TIMEOUT:
        logger.warning("model-streamer: local cache entries still being written at exit were left "
                       "incomplete (no later load uses them)")


def version() -> str:
    ffi, lib = load()
    return ffi.string(lib.ms_version()).decode("utf-8", "replace")


def error_for(code: int, message: str) -> RunaiStreamerError:
    """The exception for a native status code and its message."""
    if not message:
        message = f"model-streamer: {CODE_NAMES.get(code, code)}"
    if code == MS_ERR_INVALID_ARGUMENT:
        return RunaiStreamerInvalidInputException(message, code)
    if code == MS_ERR_MEMORY_LIMIT:
        return RunaiStreamerMemoryLimitException(message, code)
    if code == MS_ERR_NOT_FOUND:
        return RunaiStreamerFileNotFoundError(message, code)
    if code == MS_ERR_PERMISSION_DENIED:
        return RunaiStreamerPermissionError(message, code)
    if code == MS_ERR_FORKED:
        return RunaiStreamerForkError(FORK_MESSAGE, code)
    if code == MS_ERR_IO:
        return RunaiStreamerIOError(message, code)
    if code == MS_ERR_CHECKSUM:
        return RunaiStreamerChecksumError(message, code)
    return RunaiStreamerError(message, code)


def _message(ffi: cffi.FFI, err: Any) -> str:
    return ffi.string(err).decode("utf-8", "replace").strip()


def release(token: int) -> None:
    """Returns a tensor's memory to the library (idempotent)."""
    lib = _state.lib
    if lib is None or _state.forked or os.getpid() != _state.pid:
        return
    lib.ms_release(token)


def make_releaser(token: int):
    """A cffi gc destructor that releases ``token``; a no-op in a forked child."""
    lib = _state.lib
    pid = _state.pid
    getpid = os.getpid
    state = _state

    def _destructor(_cdata: Any) -> None:
        if not state.forked and getpid() == pid:
            lib.ms_release(token)

    return _destructor


def _config(ffi: cffi.FFI, keep: list, *, concurrency: int = 0, chunk_bytes: int = 0,
            settings: Optional[Sequence[str]] = None) -> Any:
    config = ffi.new("ms_config *")
    config.concurrency = int(concurrency)
    config.memory_limit = -1
    config.chunk_bytes = int(chunk_bytes)
    if settings and _has_field(ffi, "ms_config", "settings"):
        arr = ffi.new("char *[]", len(settings))
        for i, item in enumerate(settings):
            cs = ffi.new("char[]", str(item).encode("utf-8"))
            keep.append(cs)
            arr[i] = cs
        keep.append(arr)
        config.settings = arr
        config.n_settings = len(settings)
    return config


def _function(lib: Any, name: str) -> Any:
    try:
        return getattr(lib, name)
    except Exception:  # an older library without it
        return None


def list_objects(uri: str, recursive: bool = False,
                 settings: Optional[Sequence[str]] = None) -> List[Tuple[str, int]]:
    """(uri, size) of the objects under uri (a directory or key prefix),
    sorted by uri; direct children only unless recursive."""
    ffi, lib = load()
    fn = _function(lib, "ms_list")
    if fn is None:
        raise RunaiStreamerInvalidInputException(
            f"{uri}: this model-streamer library cannot list (no ms_list)"
        )
    keep: list = []
    config = _config(ffi, keep, settings=settings)
    out = ffi.new("char **")
    err = ffi.new("char[]", ERR_BUF_LEN)
    rc = fn(uri.encode("utf-8"), 1 if recursive else 0, config, out, err, ERR_BUF_LEN)
    if rc != MS_OK:
        raise error_for(rc, _message(ffi, err))
    try:
        text = ffi.string(out[0]).decode("utf-8") if out[0] != ffi.NULL else '{"objects": []}'
    finally:
        if out[0] != ffi.NULL:
            lib.ms_free(out[0])
    result = []
    for o in json.loads(text).get("objects") or []:
        result.append((o.get("uri", o.get("URI")), int(o.get("size", o.get("Size", 0)))))
    return result


def cache_manage(op: str, directory: str, max_bytes: int = 0) -> Dict[str, Any]:
    """Runs a cache operation ("ls", "du", "prune", "clear") on the local
    cache in directory (MODEL_STREAMER_CACHE_DIR) and returns its JSON
    answer. max_bytes <= 0: the default limit."""
    ffi, lib = load()
    fn = _function(lib, "ms_cache")
    if fn is None:
        raise RunaiStreamerInvalidInputException(
            f"{directory}: this model-streamer library has no local cache (no ms_cache)"
        )
    out = ffi.new("char **")
    err = ffi.new("char[]", ERR_BUF_LEN)
    rc = fn(op.encode("utf-8"), os.fsencode(directory), int(max_bytes), out, err, ERR_BUF_LEN)
    if rc != MS_OK:
        raise error_for(rc, _message(ffi, err))
    try:
        text = ffi.string(out[0]).decode("utf-8") if out[0] != ffi.NULL else "{}"
    finally:
        if out[0] != ffi.NULL:
            lib.ms_free(out[0])
    return json.loads(text)


def download(uri: str, path: str, *, concurrency: int = 0, chunk_bytes: int = 0,
             settings: Optional[Sequence[str]] = None) -> None:
    """Copies the object at uri to the local file path (atomically renamed
    into place when complete)."""
    ffi, lib = load()
    fn = _function(lib, "ms_download")
    if fn is None:
        raise RunaiStreamerInvalidInputException(
            f"{uri}: this model-streamer library cannot download (no ms_download)"
        )
    keep: list = []
    config = _config(ffi, keep, concurrency=concurrency, chunk_bytes=chunk_bytes,
                     settings=settings)
    err = ffi.new("char[]", ERR_BUF_LEN)
    rc = fn(uri.encode("utf-8"), os.fsencode(path), config, err, ERR_BUF_LEN)
    if rc != MS_OK:
        raise error_for(rc, _message(ffi, err))


def put(uri: str, data: bytes, settings: Optional[Sequence[str]] = None) -> None:
    """Writes data as the object (or local file) uri, replacing it (ms_put):
    one request on object storage, a temporary file renamed into place
    locally."""
    ffi, lib = load()
    fn = _function(lib, "ms_put")
    if fn is None:
        raise RunaiStreamerInvalidInputException(
            f"{uri}: this model-streamer library cannot write objects (no ms_put)"
        )
    keep: list = []
    config = _config(ffi, keep, settings=settings)
    err = ffi.new("char[]", ERR_BUF_LEN)
    buf = ffi.from_buffer(data)
    rc = fn(uri.encode("utf-8"), buf, len(data), config, err, ERR_BUF_LEN)
    if rc != MS_OK:
        raise error_for(rc, _message(ffi, err))


def _log_verification(meta: Dict[str, Any]) -> None:
    """One DEBUG line per file on how it is checked (MODEL_STREAMER_VERIFY)."""
    if not _logger.isEnabledFor(logging.DEBUG):
        return
    for f in meta.get("files") or []:
        v = f.get("verify") or {}
        if v.get("algorithm"):
            _logger.debug("[model-streamer] %s: verified against %s %s (%s)", f.get("uri"),
                          v["algorithm"], v.get("expected", ""), v.get("source", ""))
        elif v.get("skipped"):
            _logger.debug("[model-streamer] %s: not verified: %s", f.get("uri"), v["skipped"])
        if v.get("sidecar"):
            _logger.debug("[model-streamer] %s: %d tensors checked against the sidecar %s "
                          "(%d requested not covered)", f.get("uri"), v.get("sidecar_entries", 0),
                          v["sidecar"], v.get("sidecar_uncovered", 0))


def _has_field(ffi: cffi.FFI, struct: str, field: str) -> bool:
    return any(name == field for name, _ in ffi.typeof(struct).fields)


class Stream:
    """One native stream (a handle from ms_stream_open).

    With ``ranges`` (one ``(offsets, sizes)`` pair of int sequences per uri)
    the stream reads those byte ranges of the files as they are, parsing no
    header (ms_stream_open_ranges): next_batch then reports (file index,
    range index, ...) and ``names`` must be None.
    """

    def __init__(
        self,
        uris: Sequence[str],
        names: Optional[Sequence[str]] = None,
        *,
        concurrency: int = 0,
        memory_limit: int = -1,
        chunk_bytes: int = 0,
        read_mode: int = 0,
        settings: Optional[Sequence[str]] = None,
        batch: int = DEFAULT_BATCH,
        ranges: Optional[Sequence[Tuple[Sequence[int], Sequence[int]]]] = None,
        checksum: bool = False,
    ) -> None:
        self.handle: Optional[int] = None
        ffi, lib = load()
        self._ffi = ffi
        self._lib = lib
        self._pid = os.getpid()
        self.uris = [str(u) for u in uris]
        self._batch = max(1, int(batch))
        self._out = ffi.new("ms_tensor[]", self._batch)
        self._n = ffi.new("int32_t *")
        self._err = ffi.new("char[]", ERR_BUF_LEN)
        self.ended = False

        keep = []  # keeps the C strings alive for the call

        def c_strings(items: Sequence[str]):
            arr = ffi.new("char *[]", max(1, len(items)))
            for i, s in enumerate(items):
                cs = ffi.new("char[]", s.encode("utf-8"))
                keep.append(cs)
                arr[i] = cs
            return arr

        c_uris = c_strings(self.uris)
        if names is None:
            c_names, n_names = ffi.NULL, -1
        else:
            names = list(names)
            c_names, n_names = c_strings(names), len(names)

        config = ffi.new("ms_config *")
        config.concurrency = int(concurrency)
        config.memory_limit = int(memory_limit)
        config.chunk_bytes = int(chunk_bytes)
        config.read_mode = int(read_mode)
        if settings and _has_field(ffi, "ms_config", "settings"):
            settings = [str(x) for x in settings]
            c_settings = c_strings(settings)
            keep.append(c_settings)
            config.settings = c_settings
            config.n_settings = len(settings)
        handle = ffi.new("int64_t *")
        err = ffi.new("char[]", ERR_BUF_LEN)
        if checksum:
            fn = _function(lib, "ms_stream_open_checksum")
            if fn is None or names is not None or ranges is not None:
                raise RunaiStreamerInvalidInputException(
                    "checksum streams read whole files (no names, no ranges) and need "
                    "ms_stream_open_checksum")
            rc = fn(c_uris, len(self.uris), config, handle, err, ERR_BUF_LEN)
        elif ranges is None:
            rc = lib.ms_stream_open(
                c_uris, len(self.uris), c_names, n_names, config, handle, err, ERR_BUF_LEN
            )
        else:
            rc = self._open_ranges(ffi, lib, c_uris, ranges, names, config, handle, err)
        del keep
        if rc != MS_OK:
            raise error_for(rc, _message(ffi, err))
        self.handle = int(handle[0])

    def _open_ranges(self, ffi: cffi.FFI, lib: Any, c_uris: Any,
                     ranges: Sequence[Tuple[Sequence[int], Sequence[int]]],
                     names: Optional[Sequence[str]], config: Any, handle: Any, err: Any) -> int:
        fn = _function(lib, "ms_stream_open_ranges")
        if fn is None:
            raise RunaiStreamerInvalidInputException(
                "this model-streamer library cannot stream byte ranges (no ms_stream_open_ranges)"
            )
        if names is not None:
            raise RunaiStreamerInvalidInputException("tensor names do not apply to byte ranges")
        ranges = list(ranges)
        if len(ranges) != len(self.uris):
            raise RunaiStreamerInvalidInputException(
                f"{len(ranges)} range lists for {len(self.uris)} files"
            )
        counts, offsets, sizes = [], [], []
        for uri, (offs, lens) in zip(self.uris, ranges):
            if len(offs) != len(lens):
                raise RunaiStreamerInvalidInputException(
                    f"{uri}: {len(offs)} offsets but {len(lens)} sizes (they are parallel lists)"
                )
            counts.append(len(offs))
            offsets.extend(offs)
            sizes.extend(lens)
        try:
            c_counts = ffi.new("int32_t[]", counts or [0])
            c_offsets = ffi.new("int64_t[]", offsets or [0])
            c_sizes = ffi.new("int64_t[]", sizes or [0])
        except (TypeError, OverflowError) as e:
            raise RunaiStreamerInvalidInputException(
                f"byte ranges must be integers that fit in 64 bits: {e}"
            ) from None
        return fn(c_uris, len(self.uris), c_counts, c_offsets, c_sizes, config, handle,
                  err, ERR_BUF_LEN)

    # -- helpers ---------------------------------------------------------
    def _check(self) -> None:
        _check_not_forked()
        if self.handle is None:
            raise RunaiStreamerError("model-streamer: the stream is closed")

    @property
    def closed(self) -> bool:
        return self.handle is None

    # -- calls -----------------------------------------------------------
    def metadata(self) -> Dict[str, Any]:
        self._check()
        ffi, lib = self._ffi, self._lib
        # The first call only asks for the size: a guessed buffer (it was
        # 64 KiB, which ffi.new zero-fills) costs more than the call.
        buf, size = ffi.NULL, 0
        needed = ffi.new("size_t *")
        err = ffi.new("char[]", ERR_BUF_LEN)
        for _ in range(4):
            rc = lib.ms_stream_metadata(self.handle, buf, size, needed, err, ERR_BUF_LEN)
            if rc == MS_OK:
                meta = json.loads(ffi.string(buf).decode("utf-8"))
                _log_verification(meta)
                return meta
            if needed[0] > size:
                size = int(needed[0])
                buf = ffi.new("char[]", size)
                continue
            raise error_for(rc, _message(ffi, err))
        raise RunaiStreamerError("model-streamer: the stream metadata kept growing")

    def next_batch(self, timeout_ms: int = DEFAULT_WAIT_MS,
                   wait: bool = True) -> Optional[List[Tuple[int, int, int, int, int]]]:
        """Waits for ready tensors: a list of (file_index, tensor_index,
        data_address, nbytes, token), or None once every tensor is delivered.

        Waits in slices of ``timeout_ms`` so KeyboardInterrupt (and other
        signals) are delivered between them. wait=False does not wait: an
        empty list when nothing is ready yet.
        """
        self._check()
        if self.ended:
            return None
        ffi, lib = self._ffi, self._lib
        out, n, err = self._out, self._n, self._err
        handle, batch = self.handle, self._batch
        if not wait:
            timeout_ms = 0
        while True:
            rc = lib.ms_stream_next(handle, out, batch, n, timeout_ms, err, ERR_BUF_LEN)
            if rc == MS_OK:
                count = n[0]
                result = []
                append = result.append
                for i in range(count):
                    t = out[i]
                    append((
                        t.file_index,
                        t.tensor_index,
                        int(ffi.cast("uintptr_t", t.data)),
                        t.nbytes,
                        t.token,
                    ))
                if result or not wait:
                    return result
                continue
            if rc == MS_ERR_TIMEOUT:
                if not wait:
                    return []
                continue
            if rc == MS_ERR_END:
                self.ended = True
                return None
            raise error_for(rc, _message(ffi, err))

    def checksums(self) -> Dict[str, Any]:
        """For a stream opened with checksum=True that has ended: {"files":
        [{"uri", "sidecar", "checksums": the sidecar document}]}."""
        self._check()
        ffi, lib = self._ffi, self._lib
        out = ffi.new("char **")
        err = ffi.new("char[]", ERR_BUF_LEN)
        rc = lib.ms_stream_checksums(self.handle, out, err, ERR_BUF_LEN)
        if rc != MS_OK:
            raise error_for(rc, _message(ffi, err))
        try:
            return json.loads(ffi.string(out[0]).decode("utf-8"))
        finally:
            lib.ms_free(out[0])

    def stats(self) -> Dict[str, int]:
        self._check()
        out = self._ffi.new("ms_stats *")
        rc = self._lib.ms_stream_stats(self.handle, out)
        if rc != MS_OK:
            raise error_for(rc, "")
        return {f: int(getattr(out, f)) for f in _STATS_FIELDS}

    def close(self) -> None:
        handle = self.handle
        if handle is None:
            return
        self.handle = None
        if _state.forked or os.getpid() != self._pid:
            return  # the handle belongs to the parent's Go runtime
        self._lib.ms_stream_close(handle)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
