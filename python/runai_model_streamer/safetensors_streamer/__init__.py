"""The import path of older releases:
``from runai_model_streamer.safetensors_streamer.safetensors_streamer import SafetensorsStreamer``."""

from runai_model_streamer.safetensors_streamer.safetensors_streamer import (  # noqa: F401
    ObjectStorageModel,
    SafetensorsStreamer,
    list_safetensors,
    pull_files,
)
