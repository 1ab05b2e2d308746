"""SafeTensors dtype names -> torch dtypes, widths and shapes.

The table of names is safetensors 0.8's: every dtype a file can hold, with
its element width in bits. Whether this torch can represent one is a second
question (torch_dtype() is None when it cannot), so that a file holding a
dtype torch lacks still parses and its other tensors can be streamed.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

# Every dtype safetensors 0.8 defines, with the width of one element in bits.
# The native parser (go/safetensors) holds the same table.
SAFETENSORS_BITS: Dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# The torch dtype of each, by attribute name: present in every torch >= 2.0,
# or only in newer ones (with the first release that has it, where known).
_ALWAYS = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "F32": "float32", "C64": "complex64",
    "F64": "float64", "I64": "int64",
}
_NEWER: Dict[str, Tuple[str, Optional[str]]] = {
    "U16": ("uint16", "2.3"),
    "U32": ("uint32", "2.3"),
    "U64": ("uint64", "2.3"),
    "F8_E4M3": ("float8_e4m3fn", "2.1"),
    "F8_E5M2": ("float8_e5m2", "2.1"),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", None),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", None),
    "F8_E8M0": ("float8_e8m0fnu", None),
    # Two 4-bit values per byte: a torch element is a pair of F4 values.
    "F4": ("float4_e2m1fn_x2", None),
}
# F6_E2M3 and F6_E3M2 (four values packed into three bytes) have no torch
# dtype at all: torch has no 6-bit type.

# SafeTensors values per torch element, for the packed dtypes. safetensors
# counts the shape of an F4 tensor in 4-bit values; torch's
# float4_e2m1fn_x2 holds two of them, so the torch tensor's last dimension
# is half the header's (safetensors.safe_open does the same).
PACKED: Dict[str, int] = {"F4": 2}


def _build_map() -> Dict[str, torch.dtype]:
    m = {st: getattr(torch, name) for st, name in _ALWAYS.items()}
    for st, (name, _) in _NEWER.items():
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            m[st] = dtype
    return m


SAFETENSORS_TO_TORCH: Dict[str, torch.dtype] = _build_map()
TORCH_TO_SAFETENSORS: Dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_TO_TORCH.items()}

_ELEMENT_SIZES: Dict[torch.dtype, int] = {}


def torch_dtype(st_dtype: str) -> Optional[torch.dtype]:
    """The torch dtype of a SafeTensors dtype name, None when torch lacks it."""
    return SAFETENSORS_TO_TORCH.get(st_dtype)


def bits(st_dtype: str) -> Optional[int]:
    """The width of one element in bits, None for a name safetensors does not define."""
    return SAFETENSORS_BITS.get(st_dtype)


def byte_size(st_dtype: str, count: int) -> Optional[int]:
    """The bytes count elements occupy, None for an unknown dtype or for a
    count of sub-byte elements that does not end on a byte boundary."""
    width = SAFETENSORS_BITS.get(st_dtype)
    if width is None:
        return None
    total = count * width
    if total % 8:
        return None
    return total // 8


def why_no_torch_dtype(st_dtype: str) -> str:
    """Why torch_dtype(st_dtype) is None, for an error message."""
    if st_dtype not in SAFETENSORS_BITS:
        return "it is not a safetensors dtype"
    if st_dtype in ("F6_E2M3", "F6_E3M2"):
        return (f"torch {torch.__version__} has no 6-bit float dtype to hold it; "
                "stream the file's other tensors with tensor_names")
    name, since = _NEWER.get(st_dtype, (None, None))
    if name is None:  # in the map unless hidden (as a test does)
        return f"this torch {torch.__version__} has no dtype for it"
    need = f"torch >= {since}" if since else "a newer torch"
    return f"torch {torch.__version__} has no torch.{name}; it needs {need}"


def torch_shape(st_dtype: str, shape: Sequence[int]) -> Optional[List[int]]:
    """The shape of the torch tensor for a header shape: the same, except for
    packed dtypes, whose last dimension counts torch elements (F4 [2, 6] is a
    [2, 3] float4_e2m1fn_x2 tensor). None when torch cannot hold that shape:
    a packed tensor whose last dimension does not split into whole torch
    elements, or a 0-d one."""
    per = PACKED.get(st_dtype)
    out = [int(d) for d in shape]
    if per is None:
        return out
    if not out or out[-1] % per:
        return None
    out[-1] //= per
    return out


def element_size(dtype: torch.dtype) -> int:
    size = _ELEMENT_SIZES.get(dtype)
    if size is None:
        size = getattr(dtype, "itemsize", None)
        if size is None:  # torch < 2.1
            size = torch.empty((), dtype=dtype).element_size()
        _ELEMENT_SIZES[dtype] = size
    return size
