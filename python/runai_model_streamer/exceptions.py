"""Exceptions raised by model-streamer.

Every failure reported by the native library becomes one of these, carrying the
library's message (which names the file, the byte range and the cause).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "RunaiStreamerError",
    "RunaiStreamerInvalidInputException",
    "RunaiStreamerMemoryLimitException",
    "RunaiStreamerFileNotFoundError",
    "RunaiStreamerPermissionError",
    "RunaiStreamerIOError",
    "RunaiStreamerForkError",
]


class RunaiStreamerError(RuntimeError):
    """Base class of every error model-streamer raises.

    ``code`` is the native status code (an ``MS_ERR_*`` value) when the error
    came from the library, else ``None``.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.code))


class RunaiStreamerInvalidInputException(RunaiStreamerError, ValueError):
    """A bad request or an invalid file (header, offsets, dtype, ...)."""


class RunaiStreamerMemoryLimitException(RunaiStreamerError):
    """RUNAI_STREAMER_MEMORY_LIMIT is below the size of the largest tensor."""


class RunaiStreamerFileNotFoundError(RunaiStreamerError, FileNotFoundError):
    """A file or object does not exist."""


class RunaiStreamerPermissionError(RunaiStreamerError, PermissionError):
    """Access to a file or object was denied."""


class RunaiStreamerIOError(RunaiStreamerError):
    """Storage failed while reading (errno, HTTP status, ...)."""


class RunaiStreamerForkError(RunaiStreamerError):
    """The library was used in a child forked after it had been loaded."""
