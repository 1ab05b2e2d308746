"""FileChunks: the byte ranges of one file that FileStreamer reads.

At the reference's module path (runai_model_streamer.file_streamer.
requests_iterator). The reference packs ranges into Python-side buffers here;
this package hands the ranges to the native engine as they are, which plans,
reads and delivers them (see FileStreamer), so only the request type and the
memory limit's setting live here.
"""

from __future__ import annotations

import os
from typing import List

from runai_model_streamer.config import DEFAULT_MEMORY_LIMIT, MEMORY_LIMIT_ENV
from runai_model_streamer.exceptions import RunaiStreamerMemoryLimitException  # noqa: F401

# The setting FileStreamer.stream_files reads when memory_limit is None, and
# its default: -1, the whole request (as SafetensorsStreamer's).
RUNAI_STREAMER_MEMORY_LIMIT_ENV_VAR_NAME = MEMORY_LIMIT_ENV
DEFAULT_MEMORY_LIMIT_STRING = str(DEFAULT_MEMORY_LIMIT)

# Names of the reference's ring-of-buffers settings, kept so that code which
# sets or clears them still imports. This engine has no Python-side ring and
# reads neither (docs/settings.md says why).
RUNAI_STREAMER_RING_BUFFERS_ENV_VAR_NAME = "RUNAI_STREAMER_RING_BUFFERS"
RUNAI_STREAMER_MAX_PADS_PER_BUFFER_ENV_VAR_NAME = "RUNAI_STREAMER_MAX_PADS_PER_BUFFER"

# The block the reference lays O_DIRECT buffers out to. The engine here
# aligns its own reads; the value is informational.
DIRECT_IO_BLOCK = os.sysconf("SC_PAGESIZE")


class FileChunks:
    """One file and the byte ranges to read from it.

    Range i is ``[offsets[i], offsets[i] + sizes[i])``: any range inside the
    file, whatever the file holds. Ranges need not be ordered or contiguous
    and may overlap; a size of 0 is an (empty) range of its own. ``id``
    names the file in what get_chunks yields, and must be unique within one
    stream_files call. offsets and sizes are parallel lists.
    """

    def __init__(self, id: int, path: str, offsets: List[int], sizes: List[int]) -> None:
        if len(offsets) != len(sizes):
            raise ValueError(
                f"{path}: offsets ({len(offsets)}) and sizes ({len(sizes)}) must be parallel "
                "lists of the same length"
            )
        self.id = id
        self.path = path
        self.offsets = offsets
        self.sizes = sizes

    @staticmethod
    def contiguous(id: int, path: str, offset: int, sizes: List[int]) -> "FileChunks":
        """Ranges of the given sizes laid back to back in the file, the first
        at ``offset``."""
        offsets = []
        position = offset
        for size in sizes:
            offsets.append(position)
            position += size
        return FileChunks(id, path, offsets, list(sizes))

    def total_size(self) -> int:
        """Bytes of all ranges (overlaps counted once per range)."""
        return sum(self.sizes)

    def max_chunk_size(self) -> int:
        """Size of the largest range (0 when there is none)."""
        return max(self.sizes, default=0)

    def __repr__(self) -> str:
        return (f"FileChunks(id='{self.id}', path='{self.path}', "
                f"num_ranges={len(self.sizes)}, total_size={self.total_size()})")
