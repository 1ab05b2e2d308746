"""Launcher and worker processes of the distributed tests (a script, not a test).

    python _worker.py SPEC.json

SPEC: {"world": N, "init": "file:///..." or null, "out": DIR, "scenarios": [...],
"backend": "gloo" (default) or "nccl" (rank r uses cuda:r)}.

The launcher imports torch once and forks the N workers (the native library is
not loaded before the fork, so each worker loads its own), which is much
cheaper than N interpreters each importing torch. Each worker joins a gloo
group (unless "init" is null), runs the scenarios in order and appends one JSON
line per scenario to DIR/rank<r>.jsonl as soon as it has finished, so a worker
that dies or hangs leaves what it did. The launcher writes DIR/exit.json with
the workers' exit codes.

A scenario: {"name", "paths", "env": {...}, "rank_env": {rank: {...}},
"device": "cpu" ("{rank}" is replaced by the rank), "is_distributed": true, "owned": true, "tensor_names": null, "rank_tensor_names":
{rank: [...]}, "inject": {"rank": r, "kind": "read_error"|"exit"|"sleep"|
"close_early"|"no_memory", "after": k, "seconds": s},
"truncate_after_open": {"path": p, "size": n} (rank 0 truncates a file once
every rank has opened its share), "record_ptrs": false (the result gets each
tensor's data_ptr, "ptrs", its owner's index in the group, "owners", and the
slot alignment, "align"), "init_world1": false, "caller_collectives":
false (the caller runs all_reduces of its own, on the default group and on a
group it created, before, during (every 5 tensors) and after the streaming;
their sums go to the result's "collectives")}.

"kind": "ranges" streams byte ranges with a DistributedStreamer instead:
"requests": [{"id", "path", "offsets", "sizes"}], "rank_cwd": {rank: dir}
(the worker runs the request from that directory, so a relative path can
name a file one rank lacks); "digests" then maps "id:index" to each chunk's
[dtype, shape, sha256], and the result has "ring_info" and "storages" ([the
distinct storages of the non-empty chunks kept (owned=True), their number]).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import runai_model_streamer  # noqa: F401  (does not load the native library)


def digest(t: torch.Tensor):
    t = t.detach().contiguous()
    data = b"" if t.numel() == 0 else t.reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    return [str(t.dtype), list(t.shape), hashlib.sha256(data).hexdigest()]


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _inject(inject, rank):
    """Installs a failure on this rank; returns (after_tensor_hook, undo)."""
    if not inject or int(inject.get("rank", -1)) != rank:
        return None, lambda: None
    kind = inject["kind"]
    after = int(inject.get("after", 0))
    if kind == "read_error":
        from runai_model_streamer import _native, distributed

        original = distributed.DistributedStream._poll
        calls = {"n": 0}

        def failing_poll(self, timeout_ms):
            calls["n"] += 1
            if calls["n"] > after:
                # What the library reports when a read fails.
                raise _native.error_for(_native.MS_ERR_IO,
                                        "injected: pread model.safetensors [0, 4096): EIO")
            return original(self, timeout_ms)

        distributed.DistributedStream._poll = failing_poll

        def undo():
            distributed.DistributedStream._poll = original

        return None, undo

    if kind == "no_memory":
        from runai_model_streamer.distributed import exchange

        original_fallback = exchange._local_fallback
        exchange._local_fallback = lambda plan, device: "injected: not enough memory"

        def undo_fallback():
            exchange._local_fallback = original_fallback

        return None, undo_fallback

    def hook(count):
        if count != after:
            return
        if kind == "exit":
            os._exit(3)
        if kind == "sleep":
            time.sleep(float(inject["seconds"]))
        if kind == "close_early":
            raise StopIteration
    return hook, lambda: None


def _streams_tensors(sc, rank, result, hook):
    """A SafetensorsStreamer scenario."""
    from runai_model_streamer import SafetensorsStreamer

    names = (sc.get("rank_tensor_names") or {}).get(str(rank), sc.get("tensor_names"))
    owned = bool(sc.get("owned", True))
    kept = {}
    device = sc.get("device", "cpu").replace("{rank}", str(rank))
    collective = None
    if sc.get("caller_collectives"):
        result["collectives"] = []
        own_group = dist.new_group(list(range(dist.get_world_size())))

        def collective():
            for group in (None, own_group):
                t = torch.tensor([rank + 1], dtype=torch.int64)
                dist.all_reduce(t, group=group)
                result["collectives"].append(int(t.item()))

        collective()
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(sc["paths"], device=device,
                              is_distributed=sc.get("is_distributed", True),
                              tensor_names=names, owned=owned)
        cut = sc.get("truncate_after_open")
        if cut:  # every rank has opened its share: now the file loses its tail
            dist.barrier()
            if rank == 0:
                os.truncate(cut["path"], int(cut["size"]))
            dist.barrier()
        result["total_size"] = streamer.total_size
        result["n_meta"] = sum(len(v) for v in streamer.files_to_tensors_metadata.values())
        dstream = streamer._dist
        result["distributed"] = dstream is not None
        count = 0
        try:
            for name, tensor in streamer.get_tensors():
                if name in result["digests"]:
                    result.setdefault("duplicates", []).append(name)
                result["digests"][name] = digest(tensor)
                result.setdefault("devices", {})[str(tensor.device)] = 1
                if sc.get("record_ptrs"):
                    result.setdefault("ptrs", {})[name] = tensor.data_ptr()
                if owned:
                    kept[name] = tensor
                count += 1
                if hook is not None:
                    hook(count)
                if collective is not None and count % 5 == 0:
                    collective()
        except StopIteration:
            pass  # close_early: the consumer stops
        if collective is not None:
            collective()
        result["stats"] = streamer.stats()
        _exchange_facts(result, dstream, sc)
    # owned=True: the tensors are the caller's, after the loop and close().
    result["kept_ok"] = all(digest(t) == result["digests"][n] for n, t in kept.items())


def _exchange_facts(result, dstream, sc):
    if dstream is None:
        return
    result["rounds"] = dstream.rounds
    result["bytes_sent"] = dstream.bytes_sent
    result["bytes_received"] = dstream.bytes_received
    result["group"] = list(dstream.entry.ranks)
    if sc.get("record_ptrs"):
        plan = dstream.plan
        result["owners"] = {_key_text(dstream.ranges.key(g)): plan.owners[g]
                            for g in range(plan.count)}
        result["align"] = plan.align


def _key_text(key):
    return key if isinstance(key, str) else f"{key[0]}:{key[1]}"


def _streams_ranges(sc, rank, result, hook):
    """A DistributedStreamer scenario: "requests" [{"id", "path", "offsets",
    "sizes"}]; result "digests" maps "id:index" to [dtype, shape, sha256]."""
    from runai_model_streamer.distributed_streamer import DistributedStreamer
    from runai_model_streamer.file_streamer import FileChunks

    owned = bool(sc.get("owned", True))
    requests = [FileChunks(r["id"], r["path"], r["offsets"], r["sizes"])
                for r in sc["requests"]]
    device = sc.get("device", "cpu").replace("{rank}", str(rank))
    kept = {}
    cwd = (sc.get("rank_cwd") or {}).get(str(rank))
    old_cwd = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        with DistributedStreamer() as streamer:
            streamer.stream_files(requests, None, device, sc.get("is_distributed", True),
                                  owned=owned)
            dstream = streamer._dstream
            result["distributed"] = streamer.is_distributed
            result["ring_info"] = streamer.ring_info()
            count = 0
            for file_id, index, chunk in streamer.get_chunks():
                key = f"{file_id}:{index}"
                if key in result["digests"]:
                    result.setdefault("duplicates", []).append(key)
                result["digests"][key] = digest(chunk)
                if sc.get("record_ptrs"):
                    result.setdefault("ptrs", {})[key] = chunk.data_ptr()
                if owned:
                    kept[key] = chunk
                count += 1
                if hook is not None:
                    hook(count)
            result["stats"] = streamer.stats()
            _exchange_facts(result, dstream, sc)
    finally:
        os.chdir(old_cwd)
    result["kept_ok"] = all(digest(t) == result["digests"][k] for k, t in kept.items())
    nonempty = [t for t in kept.values() if t.numel()]
    result["storages"] = [len({t.untyped_storage().data_ptr() for t in nonempty}), len(nonempty)]


def run_scenario(sc, rank):
    saved = dict(os.environ)
    env = dict(sc.get("env") or {})
    env.update((sc.get("rank_env") or {}).get(str(rank), {}))
    os.environ.update({k: str(v) for k, v in env.items()})
    for k in sc.get("unset", []):
        os.environ.pop(k, None)
    capture = _Capture()
    logger = logging.getLogger("runai_model_streamer")
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    hook, undo = _inject(sc.get("inject"), rank)
    result = {"name": sc["name"], "rank": rank, "error": None, "digests": {}, "stats": {}}
    start = time.monotonic()
    try:
        if sc.get("init_world1"):
            dist.init_process_group("gloo", init_method=sc["init_world1"], rank=0, world_size=1)
        if sc.get("kind") == "ranges":
            _streams_ranges(sc, rank, result, hook)
        else:
            _streams_tensors(sc, rank, result, hook)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(e).__name__}: {e}"
        result["error_mro"] = [c.__name__ for c in type(e).__mro__]
        result["traceback"] = traceback.format_exc()[-3000:]
    finally:
        result["elapsed"] = time.monotonic() - start
        undo()
        logger.removeHandler(capture)
        logger.setLevel(old_level)
        os.environ.clear()
        os.environ.update(saved)
    result["logs"] = capture.lines
    return result


def worker(rank, spec):
    out = os.path.join(spec["out"], f"rank{rank}.jsonl")
    try:
        backend = spec.get("backend", "gloo")
        if backend == "nccl":
            torch.cuda.set_device(rank)
        if spec.get("init"):
            dist.init_process_group(backend, init_method=spec["init"], rank=rank,
                                    world_size=spec["world"], timeout=timedelta(seconds=60))
        for sc in spec["scenarios"]:
            res = run_scenario(sc, rank)
            with open(out, "a") as f:
                f.write(json.dumps(res) + "\n")
        if dist.is_initialized():
            dist.destroy_process_group()
        # os._exit skips the atexit hook that lets local cache entries
        # complete (MODEL_STREAMER_CACHE_DIR): wait for them here.
        from runai_model_streamer import _native
        if _native._state.lib is not None:
            _native.cache_wait(60_000)
    except BaseException:  # noqa: BLE001
        with open(out, "a") as f:
            f.write(json.dumps({"name": "__worker__", "rank": rank,
                                "error": traceback.format_exc()}) + "\n")
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=worker, args=(r, spec), daemon=True) for r in range(spec["world"])]
    for p in procs:
        p.start()
    deadline = time.monotonic() + float(spec.get("deadline", 120))
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
            codes.append("hung")
        else:
            codes.append(p.exitcode)
    with open(os.path.join(spec["out"], "exit.json"), "w") as f:
        json.dump(codes, f)


if __name__ == "__main__":
    main(sys.argv[1])
