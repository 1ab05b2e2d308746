"""The reference's tensor helpers at their historical path, over this engine.

``SafetensorMetadata``/``Offsets`` (runai_model_streamer.metadata), the dtype
map, ``element_size_of``, ``create_torch_tensor``,
``requires_alignment_copy`` and ``prepare_request``. Errors are
RunaiStreamerInvalidInputException, a ValueError, as the reference's are.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from runai_model_streamer._dtypes import SAFETENSORS_TO_TORCH as safetensors_to_torch_dtype  # noqa: F401
from runai_model_streamer._dtypes import element_size as element_size_of  # noqa: F401
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException
from runai_model_streamer.metadata import Offsets, SafetensorMetadata  # noqa: F401

__all__ = [
    "MAX_HEADER_SIZE",
    "Offsets",
    "SafetensorMetadata",
    "create_torch_tensor",
    "element_size_of",
    "get_safetensors_dtype_map",
    "prepare_request",
    "requires_alignment_copy",
    "safetensors_to_torch_dtype",
]

SAFETENSORS_DATA_OFFSETS_KEY = "data_offsets"
SAFETENSORS_NAME_KEY = "name"
SAFETENSORS_SHAPE_KEY = "shape"
SAFETENSORS_DTYPE_KEY = "dtype"
SAFETENSORS_HEADER_BUFFER_SIZE = 8
# The largest JSON header accepted (the native parser's limit too).
MAX_HEADER_SIZE = 100 * 1024 * 1024


def get_safetensors_dtype_map() -> Dict[str, torch.dtype]:
    """SafeTensors dtype name -> torch dtype, for the dtypes this torch has
    (a new dict each call). Dtypes of the format that torch cannot hold
    (F6_E2M3, F6_E3M2) are absent."""
    return dict(safetensors_to_torch_dtype)


def requires_alignment_copy(buffer: torch.Tensor, tensor_metadata: SafetensorMetadata) -> bool:
    """Whether ``buffer``'s address is one the tensor's dtype cannot be read
    from (not a multiple of its element size), so that the caller must copy
    the bytes to aligned memory before create_torch_tensor. Torch itself
    does not refuse such a view. Zero-element tensors never need a copy:
    create_torch_tensor does not look at their buffer."""
    if tensor_metadata.get_item_count() == 0:
        return False
    size = tensor_metadata.get_element_size()
    return size > 1 and buffer.data_ptr() % size != 0


def create_torch_tensor(buffer: torch.Tensor, tensor_metadata: SafetensorMetadata) -> torch.Tensor:
    """The tensor that ``buffer`` (a uint8 tensor holding exactly the
    tensor's bytes) represents: a view of it with the tensor's torch dtype
    and shape, no copy (a non-contiguous buffer is made contiguous first).
    A zero-element tensor is a fresh torch.empty of its shape.

    For F4, the header's shape counts 4-bit values and the tensor is a
    torch.float4_e2m1fn_x2 one with half the last dimension, as
    safetensors.safe_open returns it."""
    dtype = tensor_metadata.get_torch_dtype()
    shape = tensor_metadata.get_torch_shape()
    if tensor_metadata.get_item_count() == 0:
        return torch.empty(shape, dtype=dtype)
    where = f" of {tensor_metadata.path}" if tensor_metadata.path else ""
    if buffer.dtype != torch.uint8:
        raise RunaiStreamerInvalidInputException(
            f"create_torch_tensor: tensor {tensor_metadata.name!r}{where}: the buffer is "
            f"{buffer.dtype}, want torch.uint8")
    flat = buffer.contiguous().view(-1)
    if flat.numel() != tensor_metadata.get_bytesize():
        raise RunaiStreamerInvalidInputException(
            f"create_torch_tensor: tensor {tensor_metadata.name!r}{where} is "
            f"{tensor_metadata.get_bytesize()} bytes, the buffer holds {flat.numel()}")
    return flat.view(dtype).view(shape)


def prepare_request(
    fs: Any, paths: List[str], s3_credentials: Optional[Any] = None,
) -> List[Tuple[int, List[SafetensorMetadata], List[int]]]:
    """Reads and validates the header of every file, reading no tensor data.

    Returns, per file and in the order of ``paths``: (the file offset of the
    data section, the file's tensors as SafetensorMetadata sorted by start
    offset (zero-size tensors first at a shared offset), the byte size of
    each, in the same order).

    ``fs`` is accepted for the reference's signature and ignored: the
    headers are read by this library's native reader (in parallel, from
    local paths or object storage, with ``s3_credentials`` and the storage
    settings of the environment), not through a DistributedStreamer.
    Every tensor of each file is listed, including those of a dtype this
    torch lacks (their get_torch_dtype() raises); bad files raise
    RunaiStreamerInvalidInputException naming the file and the problem.
    """
    del fs  # see the docstring
    from runai_model_streamer.config import StreamerConfig, backend_settings
    from runai_model_streamer.distributed import read_headers
    from runai_model_streamer.files import storage_family

    if isinstance(paths, (str, bytes, os.PathLike)):
        raise RunaiStreamerInvalidInputException(
            "prepare_request() takes a list of paths, not a single path")
    path_list = [os.fspath(p) for p in paths]
    if not path_list:
        return []
    schemes = sorted({storage_family(p) for p in path_list})
    if len(schemes) > 1:
        raise RunaiStreamerInvalidInputException(
            f"prepare_request() cannot mix storage schemes in one call: {schemes}")
    settings = backend_settings(credentials=s3_credentials, scheme=schemes[0])
    files = read_headers(path_list, StreamerConfig.from_env(), settings).get("files", [])
    if len(files) != len(path_list):
        raise RunaiStreamerInvalidInputException(
            f"model-streamer: the header reader described {len(files)} file(s) for "
            f"{len(path_list)} requested")
    result = []
    for path, entry in zip(path_list, files):
        tensors = [SafetensorMetadata(t["name"], t, path=path) for t in entry.get("tensors", [])]
        tensors.sort(key=lambda m: (m.offsets.start, m.get_bytesize()))
        result.append((int(entry["data_offset"]), tensors, [m.get_bytesize() for m in tensors]))
    return result
