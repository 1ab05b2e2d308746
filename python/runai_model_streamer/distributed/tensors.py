"""SafetensorsStreamer's distributed streaming: the tensors of SafeTensors
files as the byte ranges the exchange hands around.

Every process reads the headers (no tensor data), validates them as
SafetensorsStreamer does, and describes each tensor as one range of its file
(its data offset plus the header's offsets). The exchange (exchange.py) does
the rest; each yielded tensor has the header's dtype and torch shape.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from runai_model_streamer.distributed.exchange import DistributedStream, Ranges, open_exchange
from runai_model_streamer.distributed.headers import read_headers, select_tensors
from runai_model_streamer.distributed.settings import LOG_PREFIX, DistSettings, fallback_reason

logger = logging.getLogger("runai_model_streamer")


class TensorRanges(Ranges):
    """The request's tensors, file by file in header (offset) order."""

    def __init__(self, paths: List[str], names: Optional[List[str]],
                 metas: Dict[int, List[Any]], data_offsets: List[int],
                 wrap: Callable[..., Tuple[torch.Tensor, bool]],
                 settings: Optional[Sequence[str]]) -> None:
        self.paths = list(paths)
        self.settings = settings
        self.names = names
        self.tensors = [m for fi in sorted(metas) for m in metas[fi]]
        self.spans = [(fi, data_offsets[fi] + m.offsets.start, data_offsets[fi] + m.offsets.end)
                      for fi in sorted(metas) for m in metas[fi]]
        self._wrap = wrap

    def key(self, gid: int) -> str:
        return self.tensors[gid].name

    def view(self, gid: int, flat: torch.Tensor) -> torch.Tensor:
        m = self.tensors[gid]
        # get_torch_shape, not the header's shape: F4 packs two values a byte.
        return flat.view(m.get_torch_dtype()).view(m.get_torch_shape())

    def empty(self, gid: int, device: torch.device) -> torch.Tensor:
        m = self.tensors[gid]
        return torch.empty(m.get_torch_shape(), dtype=m.get_torch_dtype(), device=device)

    def wrap(self, gid: int, addr: int, nbytes: int, token: int) -> Tuple[torch.Tensor, bool]:
        return self._wrap(self.tensors[gid], addr, nbytes, token)

    def describe(self) -> Dict[str, Any]:
        return {
            "paths": self.paths,
            "names": None if self.names is None else sorted(self.names),
            "tensors": [[m.name, s[1], s[2]] for m, s in zip(self.tensors, self.spans)],
        }


def open_stream(paths: List[str], names: Optional[List[str]], device: torch.device,
                scheme: str, config: Any, settings: Optional[Sequence[str]], *,
                validate: Callable[[Dict[str, Any]], Dict[int, List[Any]]],
                wrap: Callable[..., Tuple[torch.Tensor, bool]],
                owned: bool) -> Optional[DistributedStream]:
    """A DistributedStream of the request's tensors, or None (after one log
    line saying why) when it is to be streamed without distribution.

    validate(meta) checks the full request's metadata and returns
    files_to_tensors_metadata; wrap is SafetensorsStreamer._wrap."""
    ds = DistSettings.from_env()
    reason = fallback_reason(scheme, device, ds)
    if reason is not None:
        logger.info(f"{LOG_PREFIX} off: {reason}; each process reads every tensor itself")
        return None

    def build() -> TensorRanges:
        meta = select_tensors(read_headers(paths, config, settings), names)
        metas = validate(meta)  # one entry per path, or it raises
        offsets = [int(f["data_offset"]) for f in meta["files"]]
        return TensorRanges(paths, names, metas, offsets, wrap, settings)

    return open_exchange(build, device, config, ds, owned=owned, what="tensor",
                         fields="paths, tensor_names")
