"""Settings, read from the environment when a stream starts (never at import).

  RUNAI_STREAMER_CONCURRENCY     reader threads (default 16)
  RUNAI_STREAMER_MEMORY_LIMIT    -1: whole request (default), 0: the largest
                                 tensor, N: N bytes
  RUNAI_STREAMER_CHUNK_BYTESIZE  bytes per read (default: the library's)
  MODEL_STREAMER_READ_MODE       auto (default) | buffered | direct | mmap
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

CONCURRENCY_ENV = "RUNAI_STREAMER_CONCURRENCY"
MEMORY_LIMIT_ENV = "RUNAI_STREAMER_MEMORY_LIMIT"
CHUNK_BYTESIZE_ENV = "RUNAI_STREAMER_CHUNK_BYTESIZE"
READ_MODE_ENV = "MODEL_STREAMER_READ_MODE"

DEFAULT_CONCURRENCY = 16
DEFAULT_MEMORY_LIMIT = -1
READ_MODES = {"auto": 0, "buffered": 1, "direct": 2, "mmap": 3}

_SUFFIXES = {
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(text: str, name: str) -> int:
    """An integer byte count: "4000000000", "4e9", "4G", "512MiB", "-1"."""
    s = str(text).strip().replace("_", "")
    if not s:
        raise RunaiStreamerInvalidInputException(f"{name} is empty; expected an integer")
    lowered = s.lower()
    multiplier = 1
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix) and lowered[: -len(suffix)].strip():
            multiplier = _SUFFIXES[suffix]
            lowered = lowered[: -len(suffix)].strip()
            break
    try:
        value = int(lowered)
    except ValueError:
        try:
            f = float(lowered)
        except ValueError:
            raise RunaiStreamerInvalidInputException(
                f"{name}={text!r} is not a number of bytes"
            ) from None
        if f != f or f in (float("inf"), float("-inf")) or f * multiplier != int(f * multiplier):
            raise RunaiStreamerInvalidInputException(
                f"{name}={text!r} is not a whole number of bytes"
            )
        return int(f * multiplier)
    return value * multiplier


def parse_int(text: str, name: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise RunaiStreamerInvalidInputException(f"{name}={text!r} is not an integer") from None


@dataclass(frozen=True)
class StreamerConfig:
    concurrency: int = DEFAULT_CONCURRENCY
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    chunk_bytes: int = 0  # 0: the library's default
    read_mode: str = "auto"

    @property
    def read_mode_code(self) -> int:
        return READ_MODES[self.read_mode]

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "StreamerConfig":
        env = os.environ if env is None else env

        concurrency = DEFAULT_CONCURRENCY
        raw = env.get(CONCURRENCY_ENV, "").strip()
        if raw:
            concurrency = parse_int(raw, CONCURRENCY_ENV)
            if concurrency < 1:
                raise RunaiStreamerInvalidInputException(
                    f"{CONCURRENCY_ENV}={raw!r}: must be at least 1"
                )

        memory_limit = DEFAULT_MEMORY_LIMIT
        raw = env.get(MEMORY_LIMIT_ENV, "").strip()
        if raw:
            memory_limit = parse_size(raw, MEMORY_LIMIT_ENV)
            if memory_limit < -1:
                raise RunaiStreamerInvalidInputException(
                    f"{MEMORY_LIMIT_ENV}={raw!r}: must be -1 (unlimited), 0 (the largest "
                    "tensor) or a positive number of bytes"
                )

        chunk_bytes = 0
        raw = env.get(CHUNK_BYTESIZE_ENV, "").strip()
        if raw:
            chunk_bytes = parse_size(raw, CHUNK_BYTESIZE_ENV)
            if chunk_bytes < 1:
                raise RunaiStreamerInvalidInputException(
                    f"{CHUNK_BYTESIZE_ENV}={raw!r}: must be a positive number of bytes"
                )

        read_mode = "auto"
        raw = env.get(READ_MODE_ENV, "").strip().lower()
        if raw:
            if raw not in READ_MODES:
                raise RunaiStreamerInvalidInputException(
                    f"{READ_MODE_ENV}={raw!r}: expected one of {', '.join(READ_MODES)}"
                )
            read_mode = raw

        return cls(concurrency, memory_limit, chunk_bytes, read_mode)


# Environment variables handed to the storage backends (the native library
# never reads the environment itself), as go/storage.SettingPrefixes.
SETTING_PREFIXES = ("AWS_", "RUNAI_STREAMER_", "AZURE_", "GOOGLE_", "GCS_",
                    "STORAGE_EMULATOR_HOST", "MODEL_STREAMER_")


def backend_settings(env: Optional[Mapping[str, str]] = None,
                     credentials: Any = None) -> List[str]:
    """"NAME=VALUE" settings for the native library: the backend variables
    of the environment, then explicit S3Credentials (which win)."""
    env = os.environ if env is None else env
    values = {k: v for k, v in env.items() if k.startswith(SETTING_PREFIXES)}
    if credentials is not None:
        for attr, name in (("access_key_id", "AWS_ACCESS_KEY_ID"),
                           ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                           ("session_token", "AWS_SESSION_TOKEN"),
                           ("region_name", "AWS_REGION"),
                           ("endpoint", "AWS_ENDPOINT_URL")):
            value = getattr(credentials, attr, None)
            if value:
                values[name] = str(value)
    return [f"{k}={v}" for k, v in sorted(values.items())]
