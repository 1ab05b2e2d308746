"""The import path of older releases:
``from runai_model_streamer.safetensors_streamer.safetensors_streamer import SafetensorsStreamer``."""

from runai_model_streamer._lazy import lazy_getattr
from runai_model_streamer.safetensors_streamer.safetensors_streamer import (  # noqa: F401
    ObjectStorageModel,
    list_safetensors,
    pull_files,
)

# SafetensorsStreamer on first use: it imports torch (see safetensors_streamer.py).
__getattr__ = lazy_getattr(globals(), {"SafetensorsStreamer": "runai_model_streamer.streamer"})
