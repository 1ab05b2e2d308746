"""The process groups of distributed streaming: node discovery, creation
(collective, once) and caching, dropping a group after a failure, and the
collectives every exchange runs over its group (gathering records, sending a
failure's message).

Local mode (default) forms one group per node (hostnames gathered with
all_gather_object over the world; RUNAI_STREAMER_DIST_NODE overrides the
hostname); RUNAI_STREAMER_DIST_GLOBAL=1 forms one group of every process.
Groups are created once (new_group is collective: every process creates every
group in the same order) with the timeout RUNAI_STREAMER_DIST_TIMEOUT and
reused by later requests; the default group is used only to learn the
hostnames, never for the exchange itself.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, List, Optional, Tuple

import torch

from runai_model_streamer.distributed.errors import (
    RunaiStreamerDistributedError,
    collective_error,
    remote_error,
)
from runai_model_streamer.distributed.settings import (
    LOG_PREFIX,
    DistSettings,
    backend_for,
    can_broadcast,
    dist,
)

MSG_LEN = 4096  # bytes of an error message sent to the other ranks


@dataclass
class Group:
    group: Any
    ranks: List[int]  # global ranks, in group-rank order
    node: str
    world: Any  # the default group the group belongs to
    key: Tuple[Any, ...]


_groups: Dict[Tuple[Any, ...], Group] = {}
_groups_lock = threading.Lock()


def _gather_nodes(node: str, timeout: timedelta) -> List[str]:
    """Every process's node name, over the default group (setup only)."""
    world = dist.get_world_size()
    out: List[Any] = [None] * world
    helper = None
    if not can_broadcast(backend_for("cpu"), "cpu") and dist.is_gloo_available():
        # all_gather_object over NCCL would allocate on whichever GPU is
        # current; a short-lived gloo group keeps this on the host.
        helper = dist.new_group(list(range(world)), timeout=timeout, backend="gloo")
    try:
        dist.all_gather_object(out, node, group=helper)
    finally:
        if helper is not None:
            try:
                dist.destroy_process_group(helper)
            except Exception:  # pragma: no cover - best effort
                pass
    return [str(x) for x in out]


def my_group(settings: DistSettings) -> Group:
    """This process's group, created (collectively) on first use."""
    world = dist.group.WORLD
    key = (id(world), dist.get_world_size(), settings.global_mode, settings.timeout_s,
           None if settings.global_mode else settings.node)
    with _groups_lock:
        for k in [k for k, g in _groups.items() if g.world is not world]:
            del _groups[k]  # a previous world (destroyed and re-initialised)
        entry = _groups.get(key)
        if entry is not None:
            return entry
        timeout = timedelta(seconds=settings.timeout_s)
        me = dist.get_rank()
        size = dist.get_world_size()
        if settings.global_mode:
            ranks = list(range(size))
            group = dist.new_group(ranks, timeout=timeout)
            entry = Group(group, ranks, "*", world, key)
        else:
            node = settings.node or socket.gethostname()
            nodes = _gather_nodes(node, timeout)
            by_node: Dict[str, List[int]] = {}
            for rank, name in enumerate(nodes):
                by_node.setdefault(name, []).append(rank)
            mine = None
            # Every process creates every node's group, in the order of the
            # nodes' first ranks.
            for name, ranks in sorted(by_node.items(), key=lambda kv: kv[1][0]):
                group = dist.new_group(ranks, timeout=timeout)
                if me in ranks:
                    mine = Group(group, ranks, name, world, key)
            assert mine is not None
            entry = mine
        _groups[key] = entry
        return entry


def forget_group(entry: Group) -> None:
    """Drops a group after a failed or abandoned exchange: its peers may be
    mid-collective. Destroying it closes its connections, so peers blocked on
    it fail at once rather than at the timeout. Every process of the group
    drops it (each sees a failure), so the next request creates new groups on
    all of them alike."""
    with _groups_lock:
        if _groups.get(entry.key) is entry:
            del _groups[entry.key]
        group, entry.group = entry.group, None
    if group is None:
        return
    # destroy_process_group alone leaves gloo's connections open while any
    # reference remains; abort() closes them, so a peer blocked on this group
    # fails at once.
    try:
        group.abort()
    except Exception:
        pass
    try:
        if dist.is_initialized():
            dist.destroy_process_group(group)
    except Exception:  # pragma: no cover - best effort
        pass


def group_of(entry: Group) -> Any:
    """The group to use; never None (which would mean the default group)."""
    group = entry.group
    if group is None:
        raise RunaiStreamerDistributedError(
            f"{LOG_PREFIX}: the group of ranks {entry.ranks} was dropped after a failure or an "
            "abandoned request; start a new request")
    return group


def broadcast(entry: Group, buf: torch.Tensor, src: int) -> None:
    """Broadcasts buf from the group's process src (a group rank)."""
    group = group_of(entry)
    try:
        dist.broadcast(buf, src=entry.ranks[src], group=group)
    except Exception as e:
        raise collective_error(entry.ranks, f"broadcast from rank {entry.ranks[src]}", e) from e


def all_gather_rows(entry: Group, record: torch.Tensor, device: torch.device,
                    what: str) -> List[List[int]]:
    """Every process's int64 record, in group-rank order."""
    n = len(entry.ranks)
    record = record.to(device)
    outs = [torch.empty_like(record) for _ in range(n)]
    group = group_of(entry)
    try:
        dist.all_gather(outs, record, group=group)
    except Exception as e:
        forget_group(entry)
        raise collective_error(entry.ranks, what, e) from e
    return torch.stack(outs).cpu().tolist()


def raise_failure(entry: Group, me: int, device: torch.device,
                  failure: Optional[BaseException], rows: List[List[int]], failed: List[int],
                  doing: str) -> None:
    """Exchanges the failed processes' messages and raises on every process:
    the process's own exception where it failed, else the first failed
    process's, same class (rows[r][1]), naming that process."""
    text = ""
    if failure is not None:
        text = f"{type(failure).__name__}: {failure}"
    data = text.encode("utf-8", "replace")[:MSG_LEN]
    buf = torch.zeros(MSG_LEN, dtype=torch.uint8)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    n = len(entry.ranks)
    buf = buf.to(device)
    outs = [torch.empty_like(buf) for _ in range(n)]
    try:
        dist.all_gather(outs, buf, group=group_of(entry))
        messages = [bytes(o.cpu().numpy().tobytes()).rstrip(b"\0").decode("utf-8", "replace")
                    for o in outs]
    except Exception as e:
        forget_group(entry)
        messages = [f"(message lost: {e})"] * n
    if failure is not None:
        raise failure
    r = failed[0]
    raise remote_error(int(rows[r][1]),
                       f"{LOG_PREFIX}: rank {entry.ranks[r]} of the group {entry.ranks} failed "
                       f"{doing}: {messages[r]}")
