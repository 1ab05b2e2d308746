"""Distributed streaming benchmark: N CPU processes (gloo) load one checkpoint,
distributed (each byte read from storage once per group, shares exchanged over
the process group) against every process reading everything itself.

    .venv/bin/python bench/distributed.py                       # local files, 2 and 4 processes
    .venv/bin/python bench/distributed.py --procs 2,4,8 --size-mib 1024 --minio
    .venv/bin/python bench/distributed.py --help

Reports, per source, process count and mode: wall time (slowest process, from a
common barrier to its last tensor), the bytes all processes read from storage
together (each stream's stats()["bytes_read"]), and the effective load rate
(checkpoint bytes delivered to every process / wall time). Writes the table and
every measurement as JSON (--json).

Local files are read with MODEL_STREAMER_READ_MODE=buffered (--read-mode) from
the page cache after a warm-up, so "storage" is memory here: the figure that
distribution changes is bytes read; on a machine whose storage or network is
the bottleneck, wall time follows. --minio puts the checkpoint in a local
MinIO server (tests/object_storage/servers.py; needs `make servers`), which
makes every read an HTTP request.

The GPU variant (device="cuda:N" over NCCL) cannot run on a machine without
CUDA devices; the script says so and measures the CPU variant only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

import torch  # noqa: E402  (imported once, before the workers fork)
import torch.distributed as dist  # noqa: E402

MODES = ("everyone", "distributed")


def make_checkpoint(directory: Path, size_mib: int, files: int, seed: int = 0):
    """`files` files of about size_mib in total: per file a mix of large
    (8 MiB), medium (1 MiB) and small (16-64 KiB) tensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    per_file = size_mib * (1 << 20) // files
    paths = []
    for fi in range(files):
        tensors = {}
        left = per_file
        i = 0
        while left > 0:
            nb = (8 << 20, 1 << 20, 64 << 10, 16 << 10)[i % 4]
            nb = min(nb, left)
            n = max(1, nb // 2)
            tensors[f"f{fi}.t{i}"] = torch.randint(-30000, 30000, (n,), dtype=torch.int16,
                                                   generator=g).view(torch.bfloat16)
            left -= 2 * n
            i += 1
        path = directory / f"model-{fi:05d}-of-{files:05d}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def _worker(rank: int, spec: dict) -> None:
    out = Path(spec["out"]) / f"rank{rank}.jsonl"
    try:
        os.environ.update(spec["env"])
        dist.init_process_group("gloo", init_method=spec["init"], rank=rank,
                                world_size=spec["world"])
        from runai_model_streamer import SafetensorsStreamer

        for mode in MODES:
            for rep in range(spec["repeat"] + 1):  # the first one warms up
                os.environ["RUNAI_STREAMER_DIST"] = "1" if mode == "distributed" else "0"
                dist.barrier()
                t0 = time.perf_counter()
                count = 0
                with SafetensorsStreamer() as s:
                    s.stream_files(spec["paths"], is_distributed=True)
                    used = s._dist is not None
                    for _, t in s.get_tensors():
                        count += t.numel() * t.element_size()
                    elapsed = time.perf_counter() - t0
                    stats = s.stats()
                with open(out, "a") as f:
                    f.write(json.dumps({"mode": mode, "rep": rep, "elapsed": elapsed,
                                        "bytes_read": stats.get("bytes_read", 0),
                                        "bytes_delivered": count, "distributed": used}) + "\n")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001
        with open(out, "a") as f:
            f.write(json.dumps({"error": traceback.format_exc()}) + "\n")
        os._exit(1)
    os._exit(0)


def run_group(paths, world: int, repeat: int, env: dict, work: Path) -> list:
    out = work / f"out-{world}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    spec = {"paths": [str(p) for p in paths], "world": world, "repeat": repeat, "env": env,
            "init": f"file://{out / 'rendezvous'}", "out": str(out)}
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(r, spec)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
    rows = {}
    for r in range(world):
        f = out / f"rank{r}.jsonl"
        for line in f.read_text().splitlines() if f.exists() else []:
            rec = json.loads(line)
            if "error" in rec:
                raise RuntimeError(f"rank {r} failed:\n{rec['error']}")
            rows.setdefault((rec["mode"], rec["rep"]), {})[r] = rec
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"workers exited with {[p.exitcode for p in procs]}")
    results = []
    for mode in MODES:
        trials = []
        for rep in range(1, repeat + 1):
            per_rank = rows[(mode, rep)]
            trials.append({
                "wall_s": max(x["elapsed"] for x in per_rank.values()),
                "bytes_read_total": sum(x["bytes_read"] for x in per_rank.values()),
                "bytes_read_per_rank": [per_rank[r]["bytes_read"] for r in range(world)],
                "distributed": all(x["distributed"] for x in per_rank.values()),
            })
        results.append({"mode": mode, "procs": world, "trials": trials})
    return results


def start_minio(work: Path, paths):
    sys.path.insert(0, str(REPO / "tests"))
    from object_storage import servers  # noqa: E402

    server = servers.start_minio(work / "minio")
    servers.minio_create_bucket(server, "bench")
    uris = [servers.minio_put_object(server, "bench", f"ckpt/{p.name}", p.read_bytes())
            for p in paths]
    env = {
        "AWS_ENDPOINT_URL": server["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "AWS_ACCESS_KEY_ID": server["access_key"],
        "AWS_SECRET_ACCESS_KEY": server["secret_key"],
        "AWS_REGION": server["region"],
    }
    return server, uris, env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="2,4", help="process counts, comma-separated")
    ap.add_argument("--size-mib", type=int, default=256, help="checkpoint size")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="measured runs (after one warm-up)")
    ap.add_argument("--read-mode", default="buffered", help="MODEL_STREAMER_READ_MODE")
    ap.add_argument("--concurrency", type=int, default=4, help="RUNAI_STREAMER_CONCURRENCY")
    ap.add_argument("--minio", action="store_true", help="also from a local MinIO server")
    ap.add_argument("--json", default=None, help="where to write the results "
                    "(default: a file in the system temp directory)")
    args = ap.parse_args()

    if torch.cuda.is_available():
        gpu_note = ("CUDA is available, but this script measures the CPU (gloo) variant only; "
                    "the NCCL variant is covered by tests/distributed/test_gpu.py")
    else:
        gpu_note = ("GPU variant (device='cuda:N' over NCCL) not run: no CUDA device on this "
                    "machine")
    print(gpu_note)

    work = Path(tempfile.mkdtemp(prefix="ms-dist-bench-"))
    paths = make_checkpoint(work / "ckpt", args.size_mib, args.files)
    total = sum(p.stat().st_size for p in paths)
    base_env = {"RUNAI_STREAMER_CONCURRENCY": str(args.concurrency),
                "RUNAI_STREAMER_DIST_TIMEOUT": "600"}
    sources = [("local", paths, dict(base_env, MODEL_STREAMER_READ_MODE=args.read_mode))]
    server = None
    if args.minio:
        try:
            server, uris, s3_env = start_minio(work, paths)
            sources.append(("minio", uris, dict(base_env, **s3_env)))
        except Exception as e:  # noqa: BLE001
            print(f"MinIO not measured: {e}")

    # Not loaded here: the workers fork from this process and each loads it.
    from runai_model_streamer import _native

    results = []
    try:
        for source, src_paths, env in sources:
            for world in [int(x) for x in args.procs.split(",") if x.strip()]:
                for r in run_group(src_paths, world, args.repeat, env, work):
                    r["source"] = source
                    results.append(r)
    finally:
        if server is not None:
            server["stop"]()

    print()
    print(f"checkpoint: {len(paths)} files, {total / 2**20:.0f} MiB; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}; gloo over loopback; median of {args.repeat}")
    header = (f"{'source':7} {'procs':>5} {'mode':12} {'wall s':>8} {'read (sum) MiB':>15} "
              f"{'read/ckpt':>9} {'MiB/s per proc':>15}")
    print(header)
    print("-" * len(header))
    for r in results:
        wall = statistics.median(t["wall_s"] for t in r["trials"])
        read = statistics.median(t["bytes_read_total"] for t in r["trials"])
        note = "" if r["mode"] == "everyone" or all(t["distributed"] for t in r["trials"]) \
            else "  (fell back: not distributed)"
        r["median_wall_s"] = wall
        r["median_bytes_read_total"] = read
        print(f"{r['source']:7} {r['procs']:>5} {r['mode']:12} {wall:8.2f} {read / 2**20:15.0f} "
              f"{read / total:9.2f} {total / 2**20 / wall:15.0f}{note}")
    doc = {"host": socket.gethostname(), "platform": platform.platform(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "checkpoint_bytes": total,
           "files": len(paths), "args": vars(args), "gpu": gpu_note,
           "library": _native.library_path(), "results": results}
    out = Path(args.json) if args.json else work / "distributed-bench.json"
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
