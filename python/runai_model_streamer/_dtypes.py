"""SafeTensors dtype names -> torch dtypes."""

from __future__ import annotations

from typing import Dict, Optional

import torch


def _build_map() -> Dict[str, torch.dtype]:
    m = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "C64": torch.complex64,
    }
    optional = {
        "U16": ("uint16",),
        "U32": ("uint32",),
        "U64": ("uint64",),
        "F8_E4M3": ("float8_e4m3fn",),
        "F8_E5M2": ("float8_e5m2",),
        "F8_E8M0": ("float8_e8m0fnu",),
    }
    for st_name, torch_names in optional.items():
        for torch_name in torch_names:
            dtype = getattr(torch, torch_name, None)
            if isinstance(dtype, torch.dtype):
                m[st_name] = dtype
                break
    return m


SAFETENSORS_TO_TORCH: Dict[str, torch.dtype] = _build_map()
TORCH_TO_SAFETENSORS: Dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_TO_TORCH.items()}

_ELEMENT_SIZES: Dict[torch.dtype, int] = {}


def torch_dtype(st_dtype: str) -> Optional[torch.dtype]:
    """The torch dtype of a SafeTensors dtype name, None when torch lacks it."""
    return SAFETENSORS_TO_TORCH.get(st_dtype)


def element_size(dtype: torch.dtype) -> int:
    size = _ELEMENT_SIZES.get(dtype)
    if size is None:
        size = getattr(dtype, "itemsize", None)
        if size is None:  # torch < 2.1
            size = torch.empty((), dtype=dtype).element_size()
        _ELEMENT_SIZES[dtype] = size
    return size
