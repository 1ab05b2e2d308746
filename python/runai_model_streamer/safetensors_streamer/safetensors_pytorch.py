"""Compatibility module: tensor metadata and the dtype map at their historical path."""

from runai_model_streamer._dtypes import SAFETENSORS_TO_TORCH as safetensors_to_torch_dtype  # noqa: F401
from runai_model_streamer._dtypes import element_size as element_size_of  # noqa: F401
from runai_model_streamer.metadata import Offsets, SafetensorMetadata  # noqa: F401
