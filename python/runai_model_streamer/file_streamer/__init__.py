"""FileStreamer and FileChunks: stream byte ranges of any file (local or
object storage) as uint8 tensors, at the reference's import path."""

from runai_model_streamer.file_streamer.file_streamer import FileStreamer
from runai_model_streamer.file_streamer.requests_iterator import FileChunks

__all__ = [
    "FileStreamer",
    "FileChunks",
]
