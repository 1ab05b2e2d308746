"""model-streamer: stream SafeTensors checkpoints into torch tensors, fast.

Drop-in compatible with Run:ai Model Streamer's Python API:

    from runai_model_streamer import SafetensorsStreamer

    with SafetensorsStreamer() as streamer:
        streamer.stream_files(paths)
        for name, tensor in streamer.get_tensors():
            ...

Importing the package does not load the native library (nor start its Go
runtime); the first stream does.
"""

import logging as _logging
import os as _os
import sys as _sys

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
from runai_model_streamer.files import S3Credentials

# Defined at the reference's module path, where callers patch them. These,
# the CLI's ls and pull, and s3_utils import no torch: a loader image runs
# them without it (torch is imported where tensors are made).
from runai_model_streamer.safetensors_streamer.safetensors_streamer import (  # noqa: E402
    ObjectStorageModel,
    list_safetensors,
    pull_files,
)

from runai_model_streamer._lazy import lazy_getattr  # noqa: E402
from runai_model_streamer._version import __version__  # noqa: E402

# Imported on first use (PEP 562): the range streamers and the distributed
# exchange are not needed by a plain SafetensorsStreamer load, whose import
# is part of its start-up cost (they would double the package's import time);
# the streamer and the metadata import torch, which downloads do not need.
_LAZY = {
    "SafetensorsStreamer": "runai_model_streamer.streamer",
    "SafetensorMetadata": "runai_model_streamer.metadata",
    "FileStreamer": "runai_model_streamer.file_streamer",
    "FileChunks": "runai_model_streamer.file_streamer",
    "DistributedStreamer": "runai_model_streamer.distributed_streamer",
}
__getattr__ = lazy_getattr(globals(), _LAZY)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "SafetensorsStreamer",
    "FileStreamer",
    "FileChunks",
    "DistributedStreamer",
    "SafetensorMetadata",
    "ObjectStorageModel",
    "S3Credentials",
    "list_safetensors",
    "pull_files",
    "RunaiStreamerError",
    "RunaiStreamerInvalidInputException",
    "RunaiStreamerMemoryLimitException",
    "RunaiStreamerFileNotFoundError",
    "RunaiStreamerPermissionError",
    "RunaiStreamerIOError",
    "RunaiStreamerForkError",
    "RunaiStreamerChecksumError",
]

_logger = _logging.getLogger(__name__)
try:
    _logger.setLevel(_os.environ.get("RUNAI_STREAMER_LOG_LEVEL", "INFO").strip().upper() or "INFO")
except ValueError:
    _logger.setLevel(_logging.INFO)
if _os.environ.get("RUNAI_STREAMER_LOG_TO_STDERR") == "1" and not any(
    getattr(h, "_model_streamer_stderr", False) for h in _logger.handlers
):
    _handler = _logging.StreamHandler(_sys.stderr)
    _handler._model_streamer_stderr = True
    _handler.setFormatter(_logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    _logger.addHandler(_handler)
    _logger.propagate = False

if _os.environ.get("MODEL_STREAMER_PRELOAD") == "1":
    # Load the library and start the Go runtime now, in the background (see
    # _native.start_loading: opt-in, because the runtime does not survive fork()).
    from runai_model_streamer import _native as _native_mod

    _native_mod.start_loading()
