"""list_safetensors, pull_files and ObjectStorageModel, at the reference's path.

They are defined here, not re-exported, because callers (the reference's
tests, vLLM's) replace them by patching this module's attributes:
``ObjectStorageModel.pull_files`` calls this module's ``pull_files``, which
calls this module's ``s3_pull_files`` / ``gcs_pull_files`` /
``azure_pull_files``; ``list_safetensors`` calls ``s3_glob`` /
``gcs_glob`` / ``azure_glob``. Each name is looked up here at call time, so
a patch of any one of them takes effect. The package's top level exports
these same objects.

The older import path ``from runai_model_streamer.safetensors_streamer.
safetensors_streamer import SafetensorsStreamer`` works too.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from typing import List, Optional

from runai_model_streamer import files as _files
from runai_model_streamer.exceptions import (  # noqa: F401 - public at this path
    RunaiStreamerError,
    RunaiStreamerFileNotFoundError,  # noqa: F401
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
)
from runai_model_streamer.files import (  # noqa: F401 - public at this path
    SAFETENSORS_PATTERN,
    S3Credentials,
    is_azure_path,
    is_gs_path,
    is_object_storage_path,
    is_s3_path,
    local_path,
)
from runai_model_streamer.s3_utils.s3_utils import (  # noqa: F401 - patch points
    azure_glob,
    azure_pull_files,
    gcs_glob,
    gcs_pull_files,
    s3_glob,
    s3_pull_files,
)

from runai_model_streamer._lazy import lazy_getattr

# Public at this path too, but imported on first use (PEP 562): they import
# torch, which list_safetensors, pull_files and ObjectStorageModel do not need.
_LAZY = {
    "SafetensorsStreamer": "runai_model_streamer.streamer",
    "SafetensorMetadata": "runai_model_streamer.metadata",
}
__getattr__ = lazy_getattr(globals(), _LAZY)


__all__ = [
    "SafetensorsStreamer",
    "ObjectStorageModel",
    "S3Credentials",
    "list_safetensors",
    "pull_files",
    "SafetensorMetadata",
]


def list_safetensors(path: str, s3_credentials: Optional[S3Credentials] = None) -> List[str]:
    """The ``*.safetensors`` files directly in ``path`` (not recursive),
    sorted, as full paths: full URIs for object storage.

    A local directory that does not exist raises FileNotFoundError (the
    reference returns an empty list, which callers then report as "no
    weights found", without the reason)."""
    path = os.fspath(path)
    if is_s3_path(path):
        return s3_glob(path, [SAFETENSORS_PATTERN], s3_credentials)
    if is_gs_path(path):
        return gcs_glob(path, [SAFETENSORS_PATTERN])
    if is_azure_path(path):
        return azure_glob(path, [SAFETENSORS_PATTERN])
    return _files.list_safetensors(path, s3_credentials)


def pull_files(
    model_path: str,
    dst: str,
    allow_pattern: Optional[List[str]] = None,
    ignore_pattern: Optional[List[str]] = None,
    s3_credentials: Optional[S3Credentials] = None,
) -> None:
    """Copies the files under ``model_path`` (an object storage prefix or,
    unlike the reference, a local directory) into ``dst`` recursively,
    keeping relative paths. ``allow_pattern`` / ``ignore_pattern``: fnmatch
    patterns matched against the path relative to model_path. Nothing is
    written outside ``dst``; each file appears under its name only when
    complete. An http(s) URL of a file, or a list of such URLs, is
    downloaded into ``dst`` (there is no listing over HTTP)."""
    if not isinstance(model_path, (str, bytes, os.PathLike)):  # a list of URLs
        return _files.pull_files(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)
    model_path = os.fspath(model_path)
    if is_s3_path(model_path):
        return s3_pull_files(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)
    if is_gs_path(model_path):
        return gcs_pull_files(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)
    if is_azure_path(model_path):
        return azure_pull_files(model_path, dst, allow_pattern, ignore_pattern)
    return _files.pull_files(model_path, dst, allow_pattern, ignore_pattern, s3_credentials)


class ObjectStorageModel:
    """A model directory, downloaded once per host.

    For an object storage URI one process per host downloads into ``dst``
    under a file lock (``dst + '.lock'``, fcntl.flock: every process of one
    host, whatever the file system; not across hosts sharing an NFS mount);
    the others wait for it and reuse the result. A sentinel file
    (``SENTINEL_NAME``) marks a completed download: it is written on a clean
    exit from the ``with`` block, never after an exception, so the next
    process retries. For a local directory (the reference refuses one) it
    just points at it: ``dir`` is that directory and pull_files() does
    nothing.

        with ObjectStorageModel(model_path=uri, dst=cache_dir) as model:
            model.pull_files(allow_pattern=["*.safetensors"])
            model.pull_files(ignore_pattern=["*.safetensors"])
        # model.dir holds the files
    """

    SENTINEL_NAME = ".runai_complete"

    def __init__(self, model_path: str, dst: str,
                 s3_credentials: Optional[S3Credentials] = None) -> None:
        model_path = os.fspath(model_path)
        dst = os.fspath(dst)
        self._lock_file = None
        self._s3_credentials = s3_credentials
        if not is_object_storage_path(model_path):
            directory = local_path(model_path)
            if not os.path.isdir(directory):
                # A ValueError, as the reference's for any non-URI path.
                raise RunaiStreamerInvalidInputException(
                    f"model_path {model_path!r} is neither an object storage URI (s3://, gs://, "
                    "az://) nor an existing local directory"
                )
            self.dir = directory
            self._model_path = directory
            self._skip = True
            return

        self.dir = dst.rstrip("/") or "/"
        self._model_path = model_path if model_path.endswith("/") else model_path + "/"
        self._sentinel = os.path.join(self.dir, self.SENTINEL_NAME)
        lock_path = self.dir + ".lock"
        os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
        self._lock_file = open(lock_path, "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_SH)
            if os.path.exists(self._sentinel):
                self._skip = True
                return
            # Upgrading SH -> EX in place can deadlock between two upgraders.
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            if os.path.exists(self._sentinel):
                self._skip = True
                fcntl.flock(self._lock_file, fcntl.LOCK_SH)
                return
            self._skip = False
            if os.path.exists(self.dir):
                shutil.rmtree(self.dir)
            os.makedirs(self.dir, exist_ok=True)
        except BaseException:
            self._unlock()
            raise

    def pull_files(self, allow_pattern: Optional[List[str]] = None,
                   ignore_pattern: Optional[List[str]] = None) -> None:
        if self._skip:
            return
        # The module attribute, looked up now: callers patch it.
        pull_files(self._model_path, self.dir, allow_pattern, ignore_pattern,
                   self._s3_credentials)

    def _unlock(self) -> None:
        lock_file = self._lock_file
        self._lock_file = None
        if lock_file is None or lock_file.closed:
            return
        try:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
        finally:
            lock_file.close()

    def __enter__(self) -> "ObjectStorageModel":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        try:
            if exc_type is None and not self._skip:
                downloaded = [f for f in os.listdir(self.dir) if f != self.SENTINEL_NAME]
                if not downloaded:
                    raise RunaiStreamerError(
                        f"No files were downloaded to {self.dir!r} from {self._model_path!r}: "
                        "check that the model path is correct"
                    )
                try:
                    with open(self._sentinel, "w"):
                        pass
                except OSError as e:
                    raise RunaiStreamerError(
                        f"could not write the download sentinel {self._sentinel!r}: {e}"
                    ) from e
        finally:
            self._unlock()
        return False

    def __del__(self) -> None:
        try:
            self._unlock()
        except Exception:
            pass
