"""Compatibility module: the public names at their historical path."""

from runai_model_streamer.exceptions import (  # noqa: F401
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
)
from runai_model_streamer.files import (  # noqa: F401
    SAFETENSORS_PATTERN,
    ObjectStorageModel,
    S3Credentials,
    list_safetensors,
    pull_files,
)
from runai_model_streamer.metadata import SafetensorMetadata  # noqa: F401
from runai_model_streamer.streamer import SafetensorsStreamer  # noqa: F401

__all__ = [
    "SafetensorsStreamer",
    "ObjectStorageModel",
    "S3Credentials",
    "list_safetensors",
    "pull_files",
    "SafetensorMetadata",
]
