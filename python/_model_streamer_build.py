"""setuptools hooks for model-streamer (not installed; used at build time only).

BuildPy runs the Go build before the package files are collected, so that
python/runai_model_streamer/lib/libmodelstreamer.so (and the C header next to
it) exist and are packaged. BdistWheel tags the wheel
py3-none-manylinux_X_Y_<arch>: the library is opened with cffi in ABI mode, so
one wheel per platform serves every Python 3 version, and X.Y is the newest
glibc symbol version the library needs (_manylinux.py), so it installs on
every Linux with that glibc or newer.

Environment:
  MODEL_STREAMER_SKIP_GO_BUILD=1  use the library already in place.
  GO                              the go command (default: go).
"""

import importlib.util
import os
import shutil
import subprocess
import sys

from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

try:  # setuptools >= 70.1
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # pragma: no cover - older setuptools with the wheel package
    from wheel.bdist_wheel import bdist_wheel as _bdist_wheel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB_DIR = os.path.join(ROOT, "python", "runai_model_streamer", "lib")
LIB = os.path.join(LIB_DIR, "libmodelstreamer.so")
HEADER_SRC = os.path.join(ROOT, "go", "capi", "model_streamer.h")
HEADER_DST = os.path.join(LIB_DIR, "model_streamer.h")


def _log(msg):
    print(f"model-streamer build: {msg}", file=sys.stderr, flush=True)


def build_native():
    """Builds libmodelstreamer.so in place (python/runai_model_streamer/lib)."""
    if os.environ.get("MODEL_STREAMER_SKIP_GO_BUILD") == "1":
        if not os.path.isfile(LIB):
            raise RuntimeError(f"MODEL_STREAMER_SKIP_GO_BUILD=1 but {LIB} does not exist")
        _log("MODEL_STREAMER_SKIP_GO_BUILD=1: using the library in place")
        return
    go = os.environ.get("GO", "go")
    have_go = shutil.which(go) is not None
    have_sources = os.path.isdir(os.path.join(ROOT, "go", "capi"))
    if not have_go or not have_sources:
        if os.path.isfile(LIB) and os.path.isfile(HEADER_DST):
            why = "no Go toolchain" if not have_go else "no Go sources"
            _log(f"{why}; packaging the prebuilt {LIB}")
            return
        raise RuntimeError(
            "model-streamer: building the native library needs the Go toolchain "
            f"(`{go}` on PATH) and the go/ sources next to python/ (looked in {ROOT})"
        )
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "1")
    if shutil.which("make") and os.path.isfile(os.path.join(ROOT, "Makefile")):
        cmd = ["make", "-C", ROOT, "build", f"GO={go}"]
        _log(" ".join(cmd))
        subprocess.check_call(cmd, env=env)
    else:
        os.makedirs(LIB_DIR, exist_ok=True)
        ldflags = f"-s -w -X main.version={_version()}"  # as the Makefile's
        cmd = [go, "build", "-trimpath", f"-ldflags={ldflags}", "-buildmode=c-shared", "-o", LIB,
               "./capi"]
        _log(" ".join(cmd))
        subprocess.check_call(cmd, cwd=os.path.join(ROOT, "go"), env=env)
        shutil.copyfile(HEADER_SRC, HEADER_DST)
        generated = os.path.splitext(LIB)[0] + ".h"
        if os.path.exists(generated):
            os.remove(generated)
    if not os.path.isfile(LIB):
        raise RuntimeError(f"the Go build did not produce {LIB}")


def _version():
    """The version, from the one place it is written."""
    path = os.path.join(ROOT, "python", "runai_model_streamer", "_version.py")
    scope = {}
    with open(path) as f:
        exec(f.read(), scope)
    return scope["__version__"]


class BuildPy(_build_py):
    def run(self):
        build_native()
        # The package data list may have been computed before the library existed.
        self.__dict__.pop("data_files", None)
        super().run()


class BdistWheel(_bdist_wheel):
    def finalize_options(self):
        # The package carries a shared library: a platform wheel whose files
        # install to platlib (at the wheel's root, not under .data/purelib).
        self.distribution.has_ext_modules = lambda: True
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        if plat.startswith("linux_") and os.path.isfile(LIB):
            # The tag is measured from the library that goes in (built by now:
            # bdist_wheel runs build_py before it names the wheel).
            manylinux = _load_manylinux().platform_tag(LIB)
            if manylinux:
                plat = manylinux
        return "py3", "none", plat


def _load_manylinux():
    """python/_manylinux.py, by path: this file is loaded by setuptools from
    pyproject.toml, not as part of a package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_manylinux.py")
    spec = importlib.util.spec_from_file_location("_model_streamer_manylinux", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sdist(_sdist):
    """Adds what BuildPy needs to build from the source distribution: the Go
    module, the Makefile and this file."""

    def make_release_tree(self, base_dir, files):
        # No built library: a source distribution builds it (package data
        # would otherwise carry the one in the tree, for this machine's glibc).
        built = os.path.relpath(LIB_DIR, ROOT) + os.sep
        files = [f for f in files if not os.path.normpath(f).startswith(built)]
        extra = ["Makefile", os.path.join("python", "_model_streamer_build.py"),
                 os.path.join("python", "_manylinux.py")]
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "go")):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                extra.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
        extra = [f for f in extra if os.path.isfile(os.path.join(ROOT, f))]
        super().make_release_tree(base_dir, list(dict.fromkeys(list(files) + extra)))
