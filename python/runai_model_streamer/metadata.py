"""Per-tensor metadata, as SafetensorsStreamer.files_to_tensors_metadata holds it."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import torch

from runai_model_streamer import _dtypes
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException


class Offsets:
    """Byte range [start, end) of a tensor, relative to the data section."""

    __slots__ = ("start", "end")

    def __init__(self, offsets: Sequence[int]) -> None:
        self.start = int(offsets[0])
        self.end = int(offsets[1])

    def get_diff(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"Offsets(start={self.start}, end={self.end})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Offsets) and (self.start, self.end) == (other.start, other.end)


class SafetensorMetadata:
    """One tensor of a SafeTensors file.

    ``name``, ``shape`` (list of ints, as the header spells it), ``dtype``
    (the SafeTensors dtype string, e.g. "BF16") and ``offsets``
    (``.start``/``.end`` relative to the data section). Accepts the header
    entry of the file (``{"dtype", "shape", "data_offsets"}``) and checks
    that shape and dtype account for exactly the bytes the offsets reserve,
    raising RunaiStreamerInvalidInputException (a ValueError) otherwise.

    A dtype that this torch cannot represent (F6_E2M3, F6_E3M2; F4 or the
    F8 kinds on an older torch) is accepted here and refused by
    get_torch_dtype(), so that a file's other tensors stay usable.

    Packed dtypes: the header counts an F4 shape in 4-bit values, two per
    byte, so for F4 ``get_item_count()`` is the number of 4-bit values,
    ``get_element_size()`` is 1 (one torch.float4_e2m1fn_x2 element, a pair
    of values) and ``get_torch_shape()`` halves the last dimension.
    """

    def __init__(self, name: str, safetensor_metadata: Mapping[str, Any],
                 path: Optional[str] = None) -> None:
        self.name = name
        self.path = path
        try:
            self.shape: List[int] = [int(d) for d in safetensor_metadata["shape"]]
            self.dtype: str = safetensor_metadata["dtype"]
        except KeyError as e:
            raise RunaiStreamerInvalidInputException(
                f"{self._where()}Corrupted Header: tensor {name!r} has no {e.args[0]}"
            ) from None
        offsets = safetensor_metadata.get("data_offsets", safetensor_metadata.get("offsets"))
        if offsets is None:
            raise RunaiStreamerInvalidInputException(
                f"{self._where()}Corrupted Header: tensor {name!r} has no data_offsets"
            )
        self.offsets = Offsets(offsets)
        self._torch_dtype: Optional[torch.dtype] = _dtypes.torch_dtype(self.dtype)
        self._torch_shape: Optional[List[int]] = _dtypes.torch_shape(self.dtype, self.shape)
        count = 1
        for d in self.shape:
            count *= d
        self._item_count = count
        self._validate_shape_consistency()

    def _where(self) -> str:
        return f"{self.path}: " if self.path else ""

    def _validate_shape_consistency(self) -> None:
        """The checks the native parser makes, for metadata built by hand."""
        where = self._where()
        if any(d < 0 for d in self.shape):
            raise RunaiStreamerInvalidInputException(
                f"{where}Corrupted Tensor {self.name!r}: negative dimension in shape {self.shape}")
        if self.offsets.start < 0 or self.offsets.start > self.offsets.end:
            raise RunaiStreamerInvalidInputException(
                f"{where}Corrupted Offset: Tensor {self.name!r} data_offsets "
                f"[{self.offsets.start}, {self.offsets.end}]: start must be >= 0 and <= end")
        bits = _dtypes.bits(self.dtype)
        if bits is None:
            raise RunaiStreamerInvalidInputException(
                f"{where}Unsupported dtype {self.dtype!r} in tensor {self.name!r}: "
                "it is not a safetensors dtype")
        expected = _dtypes.byte_size(self.dtype, self._item_count)
        if expected is None:
            raise RunaiStreamerInvalidInputException(
                f"{where}Corrupted Tensor {self.name!r}: shape {self.shape} x {self.dtype} is "
                f"{self._item_count} elements of {bits} bits, which does not end on a byte boundary")
        actual = self.offsets.get_diff()
        if expected != actual:
            raise RunaiStreamerInvalidInputException(
                f"{where}Corrupted Tensor {self.name!r}: Shape claims {expected} bytes "
                f"({self.shape} x {self.dtype}), but offsets reserve {actual} bytes.")

    def get_bytesize(self) -> int:
        return self.offsets.get_diff()

    def get_item_count(self) -> int:
        """The product of the header's shape (for F4: 4-bit values)."""
        return self._item_count

    def get_element_size(self) -> int:
        """Bytes per torch element of get_torch_dtype()."""
        return _dtypes.element_size(self.get_torch_dtype())

    def get_torch_dtype(self) -> torch.dtype:
        if self._torch_dtype is None:
            where = f" of {self.path}" if self.path else ""
            raise RunaiStreamerInvalidInputException(
                f"Unsupported dtype {self.dtype!r} in tensor {self.name!r}{where}: "
                f"{_dtypes.why_no_torch_dtype(self.dtype)}"
            )
        return self._torch_dtype

    def get_torch_shape(self) -> List[int]:
        """The shape of the torch tensor: the header's, except that a packed
        dtype's last dimension counts torch elements (F4 [2, 6] -> [2, 3])."""
        if self._torch_shape is None:
            per = _dtypes.PACKED.get(self.dtype, 1)
            torch_name = str(self._torch_dtype or self.dtype).replace("torch.", "")
            raise RunaiStreamerInvalidInputException(
                f"{self._where()}tensor {self.name!r}: {self.dtype} shape {self.shape} has no "
                f"torch form: torch.{torch_name} holds {per} values per element, so the last "
                f"dimension must be a multiple of {per}"
            )
        return self._torch_shape

    def __repr__(self) -> str:
        return (f"SafetensorMetadata(name={self.name!r}, dtype={self.dtype!r}, "
                f"shape={self.shape}, offsets=[{self.offsets.start}, {self.offsets.end}])")
