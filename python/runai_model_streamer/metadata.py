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

    ``name``, ``shape`` (list of ints), ``dtype`` (the SafeTensors dtype
    string, e.g. "BF16") and ``offsets`` (``.start``/``.end`` relative to the
    data section). Accepts the header entry of the file
    (``{"dtype", "shape", "data_offsets"}``).
    """

    def __init__(self, name: str, safetensor_metadata: Mapping[str, Any],
                 path: Optional[str] = None) -> None:
        self.name = name
        self.shape: List[int] = [int(d) for d in safetensor_metadata["shape"]]
        self.dtype: str = safetensor_metadata["dtype"]
        offsets = safetensor_metadata.get("data_offsets", safetensor_metadata.get("offsets"))
        if offsets is None:
            raise RunaiStreamerInvalidInputException(
                f"{path or '<header>'}: tensor {name!r} has no data_offsets"
            )
        self.offsets = Offsets(offsets)
        self.path = path
        self._torch_dtype: Optional[torch.dtype] = _dtypes.torch_dtype(self.dtype)
        count = 1
        for d in self.shape:
            count *= d
        self._item_count = count

    def get_bytesize(self) -> int:
        return self.offsets.get_diff()

    def get_item_count(self) -> int:
        return self._item_count

    def get_element_size(self) -> int:
        return _dtypes.element_size(self.get_torch_dtype())

    def get_torch_dtype(self) -> torch.dtype:
        if self._torch_dtype is None:
            where = f" in {self.path}" if self.path else ""
            raise RunaiStreamerInvalidInputException(
                f"Unsupported dtype {self.dtype!r} in tensor {self.name!r}{where}: "
                f"torch {torch.__version__} has no matching dtype"
            )
        return self._torch_dtype

    def __repr__(self) -> str:
        return (f"SafetensorMetadata(name={self.name!r}, dtype={self.dtype!r}, "
                f"shape={self.shape}, offsets=[{self.offsets.start}, {self.offsets.end}])")
