"""The import path of older releases:
``from runai_model_streamer.safetensors_streamer.safetensors_streamer import SafetensorsStreamer``."""

from runai_model_streamer.safetensors_streamer.safetensors_streamer import (  # noqa: F401
    ObjectStorageModel,
    list_safetensors,
    pull_files,
)


def __getattr__(name: str):
    # SafetensorsStreamer on first use: it imports torch (see safetensors_streamer.py).
    if name == "SafetensorsStreamer":
        from runai_model_streamer.streamer import SafetensorsStreamer

        globals()[name] = SafetensorsStreamer
        return SafetensorsStreamer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
