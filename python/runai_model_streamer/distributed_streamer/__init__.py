"""DistributedStreamer: byte ranges of any files, shared by the processes of a
torch.distributed group, at the reference's import path."""

from runai_model_streamer.distributed_streamer.distributed_streamer import (
    DistributedStreamer,
    aligned_offset,
    get_dist_buffer_alignment,
)

__all__ = [
    "DistributedStreamer",
    "aligned_offset",
    "get_dist_buffer_alignment",
]
