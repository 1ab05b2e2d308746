"""The errors of distributed streaming, and the classes a failure carries to
the other processes of its group (groups.raise_failure sends them)."""

from __future__ import annotations

from typing import List

from runai_model_streamer.distributed.settings import DIST_TIMEOUT_ENV, LOG_PREFIX, dist
from runai_model_streamer.exceptions import (
    RunaiStreamerError,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerIOError,
    RunaiStreamerMemoryLimitException,
    RunaiStreamerPermissionError,
)

# Exception classes carried to the other ranks by index.
_ERROR_CLASSES = (
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerPermissionError,
    RunaiStreamerIOError,
)


class RunaiStreamerDistributedError(RunaiStreamerError):
    """Distributed streaming failed: a collective failed or timed out, or
    another process of the group failed (its message is included)."""


def error_class_index(e: BaseException) -> int:
    for i in range(len(_ERROR_CLASSES) - 1, 0, -1):
        if isinstance(e, _ERROR_CLASSES[i]):
            return i
    return 0


def remote_error(index: int, message: str) -> RunaiStreamerError:
    cls = _ERROR_CLASSES[index] if 0 <= index < len(_ERROR_CLASSES) else RunaiStreamerError
    if cls is RunaiStreamerError:
        return RunaiStreamerDistributedError(message)
    # The same class as on the failing rank, so callers catching e.g.
    # FileNotFoundError see the same on every rank.
    err = type("RunaiStreamerDistributed" + cls.__name__.replace("RunaiStreamer", ""),
               (cls, RunaiStreamerDistributedError), {})
    return err(message)


def collective_error(ranks: List[int], what: str, e: BaseException) -> RunaiStreamerDistributedError:
    return RunaiStreamerDistributedError(
        f"{LOG_PREFIX}: {what} failed on rank {dist.get_rank()} (group of ranks {ranks}): "
        f"{e}. Another process of the group failed, stopped consuming, exited or stalled longer "
        f"than {DIST_TIMEOUT_ENV}")

