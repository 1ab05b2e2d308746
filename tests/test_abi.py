"""The hand-written header is the ABI: every function it declares must be
exported by the built library, and its cdef section must parse."""

import ctypes
import pathlib
import re

import cffi

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADER = ROOT / "go" / "capi" / "model_streamer.h"
LIB = ROOT / "python" / "runai_model_streamer" / "lib" / "libmodelstreamer.so"


def cdef_text():
    text = HEADER.read_text()
    m = re.search(r"/\* CDEF BEGIN \*/(.*)/\* CDEF END \*/", text, re.S)
    assert m, "header lacks CDEF markers"
    return m.group(1)


def declared_functions():
    names = re.findall(r"\b(ms_[a-z_]+)\s*\(", cdef_text())
    assert len(names) >= 7, names
    return sorted(set(names))


def test_every_declared_function_is_exported():
    lib = ctypes.CDLL(str(LIB))
    missing = [name for name in declared_functions() if not hasattr(lib, name)]
    assert not missing, f"declared in the header but not exported: {missing}"


def test_cdef_parses_and_bundled_header_matches():
    ffi = cffi.FFI()
    ffi.cdef(cdef_text())
    bundled = LIB.parent / "model_streamer.h"
    assert bundled.read_text() == HEADER.read_text(), "bundled header is stale: run make build"


def test_stale_handle_is_an_error_not_a_crash():
    ffi = cffi.FFI()
    ffi.cdef(cdef_text())
    lib = ffi.dlopen(str(LIB))
    err = ffi.new("char[256]")
    out = ffi.new("ms_tensor[4]")
    n = ffi.new("int32_t *")
    assert lib.ms_stream_next(987654, out, 4, n, 0, err, 256) == lib.MS_ERR_BAD_HANDLE
    assert b"987654" in ffi.string(err)
    assert lib.ms_stream_close(987654) == lib.MS_ERR_BAD_HANDLE
    assert lib.ms_release(123456789) == lib.MS_OK  # unknown tokens are a no-op
    assert ffi.string(lib.ms_version()).decode()


def test_precompiled_ffi_matches_the_header():
    """_ffi_abi.py (the declarations precompiled by cffi, so loading parses no
    C) must be made from this header; the library is loaded through it."""
    import hashlib

    from runai_model_streamer import _ffi_abi, _native

    digest = hashlib.sha256(cdef_text().encode("utf-8")).hexdigest()
    assert _ffi_abi.CDEF_SHA256 == digest, "python/runai_model_streamer/_ffi_abi.py is stale: run make ffi"
    ffi, lib = _native.load()
    assert ffi is _ffi_abi.ffi
    parsed = cffi.FFI()
    parsed.cdef(cdef_text())
    for ctype in ("ms_config", "ms_tensor", "ms_stats"):
        assert ffi.sizeof(ctype) == parsed.sizeof(ctype), ctype
        assert [f for f, _ in ffi.typeof(ctype).fields] == [f for f, _ in parsed.typeof(ctype).fields]


def test_other_declarations_are_parsed_at_load():
    """A header that differs from the precompiled declarations (another
    library through MODEL_STREAMER_LIB) is parsed instead, and works."""
    from runai_model_streamer import _ffi_abi, _native

    ffi = _native._ffi_for(cdef_text() + "\n/* another build */\n")
    assert ffi is not _ffi_abi.ffi
    lib = ffi.dlopen(str(LIB))
    assert ffi.string(lib.ms_version()).decode()


GIL_FREE_DLOPEN = r'''
import collections, ctypes, sys, threading, time
from runai_model_streamer import _native

ctypes.CDLL(None)  # ctypes' own first-use costs, outside the window
# A thread that takes the GIL keeps it this long unless it lets go itself, so
# no forced switch falls inside the 1 ms dlopen below.
sys.setswitchinterval(0.05)

ticks = collections.deque(maxlen=1 << 20)  # when the other thread ran Python
stop = False

def spin():
    while not stop:
        ticks.append(time.perf_counter())

t = threading.Thread(target=spin)
t.start()
time.sleep(0.01)  # the GIL taken back from the spinner just now
t0 = time.perf_counter()
_native._dlopen_without_gil(_native.library_path())
t1 = time.perf_counter()
stop = True
t.join()
during = sum(1 for x in ticks if t0 < x < t1)
maps = open("/proc/self/maps").read()
print(during, _native.library_path() in maps, _native.is_loaded())
'''


def test_start_up_dlopen_releases_the_gil():
    """The start-up thread loads the library through libc's dlopen with the
    GIL released (cffi's holds it): another thread runs meanwhile, and the
    library is mapped before cffi ever loads it."""
    import subprocess
    import sys

    from conftest import subprocess_env

    r = subprocess.run([sys.executable, "-c", GIL_FREE_DLOPEN], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    during, mapped, loaded = r.stdout.split()
    assert mapped == "True", "the library was not loaded"
    assert loaded == "False", "cffi loaded it, not the GIL-free dlopen"
    assert int(during) > 0, "no other thread ran during the dlopen: the GIL was held"
