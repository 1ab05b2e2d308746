"""Exceptions raised by model-streamer.

Every failure reported by the native library becomes one of these, carrying the
library's message (which names the file, the byte range and the cause).
"""

from __future__ import annotations

import json
import re
from typing import Optional

__all__ = [
    "RunaiStreamerError",
    "RunaiStreamerInvalidInputException",
    "RunaiStreamerMemoryLimitException",
    "RunaiStreamerFileNotFoundError",
    "RunaiStreamerPermissionError",
    "RunaiStreamerIOError",
    "RunaiStreamerForkError",
    "RunaiStreamerChecksumError",
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


# Patterns, compiled by the re module's cache on first use: compiling them
# here was 0.4 ms of every import of the package, for an error that is rare.
_MISMATCH = (
    r"^(?P<uri>.*?): checksum mismatch: (?P<algorithm>[a-z0-9]+) expected (?P<expected>[0-9a-f]+), "
    r"computed (?P<computed>[0-9a-f]+)"
)
_UNVERIFIABLE = r"^(?P<uri>.*?): MODEL_STREAMER_VERIFY=require: "
_TENSOR = r'computed [0-9a-f]+ \(tensor (?P<tensor>"(?:[^"\\]|\\.)*"), bytes \[(?P<begin>\d+), (?P<end>\d+)\)'
_SIDECAR = r"^(?P<sidecar>.*?): unusable checksum sidecar: "


class RunaiStreamerChecksumError(RunaiStreamerError):
    """The bytes read from storage do not match the checksum the store keeps
    for the object (a bit flipped between the store and this process, or a
    wrong stored checksum), or MODEL_STREAMER_VERIFY=require and an object
    cannot be verified.

    Attributes (``None`` where the message does not say): ``uri``, the
    object; ``algorithm`` (``"crc32c"``, ``"crc32"``, ``"crc64nvme"``,
    ``"md5"``); ``expected``, the store's value, and ``computed``, the value
    of the bytes read, both in lower-case hex.

    Against a checksum sidecar (``model-streamer checksum``) the error is
    raised before the corrupt tensor is handed out, and also names it:
    ``tensor`` (the tensor's name; ``""`` for the file's header) and
    ``sidecar`` (the sidecar's URI). A sidecar that cannot be used (stale:
    written before the file changed, or malformed) raises this error too,
    with ``uri`` and ``sidecar`` set and ``algorithm`` None.
    """

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message, code)
        self.uri: Optional[str] = None
        self.algorithm: Optional[str] = None
        self.expected: Optional[str] = None
        self.computed: Optional[str] = None
        self.tensor: Optional[str] = None
        self.sidecar: Optional[str] = None
        m = re.match(_MISMATCH, message)
        if m:
            self.uri, self.algorithm = m.group("uri"), m.group("algorithm")
            self.expected, self.computed = m.group("expected"), m.group("computed")
            t = re.search(_TENSOR, message)
            if t:
                try:
                    self.tensor = json.loads(t.group("tensor"))
                except ValueError:  # a Go escape JSON does not know
                    self.tensor = t.group("tensor")[1:-1]
                s = re.search(r"against the sidecar (?P<sidecar>.*?)\); ", message)
                if s:
                    self.sidecar = s.group("sidecar")
            elif "(the header, bytes [" in message:
                self.tensor = ""
                s = re.search(r"against the sidecar (?P<sidecar>.*?)\); ", message)
                if s:
                    self.sidecar = s.group("sidecar")
        elif re.match(_SIDECAR, message):
            self.sidecar = re.match(_SIDECAR, message).group("sidecar")
            if self.sidecar.endswith(".checksums.json"):
                self.uri = self.sidecar[:-len(".checksums.json")]
        else:
            m = re.match(_UNVERIFIABLE, message)
            if m:
                self.uri = m.group("uri")
