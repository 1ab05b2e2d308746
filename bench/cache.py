"""Local cache benchmark: MODEL_STREAMER_CACHE_DIR's first and second loads.

Starts the pinned MinIO on loopback, uploads one SafeTensors checkpoint with a
single PUT carrying a full-object x-amz-checksum-crc32 (boto3's default, so
the cache verifies the entry by combining the readers' CRCs, with no second
pass), and writes the same bytes to a local file. Then, each in a fresh
process whose consumer reads every byte of every tensor (bench/integrity.py's
consumer), in one run:

  uncached      the object from MinIO, no cache
  first         the object from MinIO with an empty cache: written through
  second hot    the object again: read from the cache entry, in the page cache
  second cold   the same with the entry dropped from the page cache
  local hot     the local copy, in the page cache
  local cold    the local copy, dropped from the page cache

and prints GB/s and the ratios the cache is held to: first / uncached >= 0.9,
second / local >= 0.9 (hot and cold). The first load's entry is completed
(checked, fsynced, renamed) after its stream closed, in the background; the
time the process then waits at exit for it is printed as "commit" and is not
part of the load.

    .venv/bin/python bench/cache.py --size 1GiB

MinIO shares the machine's cores with the client: figures are CPU-bound
client+server rates of this machine, not a network rate. --store-cores N caps
MinIO at N cores (a cgroup, root only), so that the store is the slower side
and the client's cores are its own, as with a remote store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from cpucap import CpuCapError, cap_cpu  # noqa: E402
from integrity import CONSUMER, load_servers, make_checkpoint, put  # noqa: E402
from run import drop_cache, fmt_bytes, log, parse_bytes, warm_cache  # noqa: E402

# The integrity benchmark's consumer, then the wait for the cache entries
# (what the interpreter's exit would do anyway), timed on its own.
TIMED_CONSUMER = CONSUMER.replace(
    "t0 = time.perf_counter()\n",
    "import resource\n"
    "def cpu():\n"
    "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    return r.ru_utime + r.ru_stime\n"
    "c0 = cpu()\n"
    "t0 = time.perf_counter()\n",
).replace(
    "    for name, t in s.get_tensors():\n",
    "    first = None\n    for name, t in s.get_tensors():\n"
    "        first = first if first is not None else time.perf_counter() - t0\n",
).replace(
    'print(json.dumps({"s": time.perf_counter() - t0, "bytes": total, "check": check}))',
    'load_s = time.perf_counter() - t0\n'
    'cpu_s = cpu() - c0\n'
    'from runai_model_streamer import _native\n'
    't1 = time.perf_counter()\n'
    '_native.cache_wait(-1)\n'
    'print(json.dumps({"s": load_s, "cpu_s": cpu_s, "first_s": first, "commit_s": time.perf_counter() - t1,'
    ' "bytes": total, "check": check}))',
)
assert "commit_s" in TIMED_CONSUMER and "first_s" in TIMED_CONSUMER and "cpu_s" in TIMED_CONSUMER


def rewarm(paths):
    drop_cache(paths)
    warm_cache(paths)


def entries(cache_dir):
    d = os.path.join(cache_dir, "v1")
    return [os.path.join(d, n) for n in os.listdir(d) if n.endswith(".data")] if os.path.isdir(d) else []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GiB", help="checkpoint size (default 1GiB)")
    p.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--work-dir", default="/tmp", help="where MinIO's data, the cache and the local copy go")
    p.add_argument("--reps", type=int, default=1,
                   help="rounds of the six loads, in one run (medians are reported; default 1)")
    p.add_argument("--compare-lib", metavar="SO",
                   help="also run the first load with this libmodelstreamer.so (MODEL_STREAMER_LIB) in each "
                        "round, as 'first (SO)': a before/after of a change, side by side")
    p.add_argument("--store-cores", type=float, metavar="N",
                   help="cap MinIO at N cores' worth of CPU (a cgroup; needs root): a store slower than the "
                        "client and not sharing its cores, as a remote one is (bench/cpucap.py)")
    a = p.parse_args()

    servers = load_servers()
    work = tempfile.mkdtemp(prefix="model-streamer-cachebench-", dir=a.work_dir)
    srv = servers.start_minio(os.path.join(work, "minio"))
    uncap = lambda: None  # noqa: E731
    cache_dir = os.path.join(work, "cache")
    local = os.path.join(work, "local", "model.safetensors")
    try:
        if a.store_cores:
            try:
                uncap = cap_cpu(srv["pid"], a.store_cores)
            except CpuCapError as e:
                raise SystemExit(f"--store-cores: {e}")
        data = make_checkpoint(parse_bytes(a.size))
        log(f"checkpoint: {fmt_bytes(len(data))}")
        servers.minio_create_bucket(srv, "bench")
        uri = put(servers, srv, "bench", "model.safetensors", data, True)
        os.makedirs(os.path.dirname(local))
        with open(local, "wb") as f:
            f.write(data)
        del data
        env = dict(os.environ, AWS_ENDPOINT_URL=srv["endpoint"], AWS_ACCESS_KEY_ID=srv["access_key"],
                   AWS_SECRET_ACCESS_KEY=srv["secret_key"], AWS_REGION=srv["region"],
                   AWS_EC2_METADATA_DISABLED="true", RUNAI_STREAMER_NO_BOTO3_SESSION="1",
                   RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0")
        env.pop("MODEL_STREAMER_CACHE_DIR", None)
        cached = dict(env, MODEL_STREAMER_CACHE_DIR=cache_dir)

        def run(label, target, run_env, before=None):
            if before:
                before()
            r = subprocess.run([a.python, "-c", TIMED_CONSUMER, target], capture_output=True, text=True,
                               env=run_env, cwd=BENCH, timeout=900)
            if r.returncode != 0:
                raise SystemExit(f"{label}: FAILED: {r.stderr.strip()[-800:]}")
            out = json.loads(r.stdout.strip().splitlines()[-1])
            out["gbps"] = out["bytes"] / out["s"] / 1e9
            out["cpu_per_gb"] = out["cpu_s"] / (out["bytes"] / 1e9)
            log(f"{label:12s} {out['gbps']:.2f} GB/s ({out['s']:.2f} s, first tensor {out['first_s']:.3f} s; "
                f"client CPU {out['cpu_per_gb']:.2f} s/GB; commit after the load {out['commit_s']:.2f} s)")
            return out

        rounds = []
        for rep in range(a.reps):
            if a.reps > 1:
                log(f"round {rep + 1} of {a.reps}")
            r = {
                "uncached": run("uncached", uri, env),
                "first": run("first", uri, cached, lambda: shutil.rmtree(cache_dir, ignore_errors=True)),
            }
            if len(entries(cache_dir)) != 1:
                raise SystemExit(f"the first load left {len(entries(cache_dir))} cache entries, not 1")
            if a.compare_lib:
                r["first (other lib)"] = run("first (other lib)", uri, dict(cached, MODEL_STREAMER_LIB=a.compare_lib),
                                             lambda: shutil.rmtree(cache_dir, ignore_errors=True))
            # Both hot loads find their file's page cache filled the same way
            # (dropped, then read): pages the benchmark or a buffered write
            # left there are laid out in larger folios, which a mapping
            # faults in several times faster (docs/benchmarks.md).
            r["second hot"] = run("second hot", uri, cached, lambda: rewarm(entries(cache_dir)))
            r["second cold"] = run("second cold", uri, cached, lambda: drop_cache(entries(cache_dir)))
            r["local hot"] = run("local hot", local, env, lambda: rewarm([local]))
            r["local cold"] = run("local cold", local, env, lambda: drop_cache([local]))
            rounds.append(r)
        checks = {r["check"] for rnd in rounds for r in rnd.values()}
        if len(checks) != 1:
            raise SystemExit(f"the loads delivered different bytes: {checks}")
        results = {k: {f: statistics.median(rnd[k][f] for rnd in rounds)
                       for f in ("gbps", "s", "first_s", "commit_s", "cpu_per_gb")}
                   for k in rounds[0]}
        per_rep = {k: ", ".join(f"{rnd[k]['gbps']:.2f}" for rnd in rounds) for k in rounds[0]}

        store = f" capped at {a.store_cores:g} cores" if a.store_cores else ""
        print(f"\nLocal cache: {fmt_bytes(parse_bytes(a.size))} checkpoint, MinIO on loopback{store}, one run of "
              f"{a.reps} round(s), medians, GB/s of tensor bytes (consumer reads every byte)")
        for k, v in results.items():
            reps = f"; per round {per_rep[k]}" if a.reps > 1 else ""
            print(f"  {k:12s} {v['gbps']:.2f}  ({v['s']:.2f} s, first tensor {v['first_s']:.3f} s; "
                  f"client CPU {v['cpu_per_gb']:.2f} s/GB; commit after the load {v['commit_s']:.2f} s{reps})")
        # Both statistics: a ratio within a round pairs loads made close
        # together (drift cancels), but inherits each load's own noise; the
        # ratio of the medians does not, over enough rounds.
        print("ratios within each round (median; per round) | ratio of the medians, target >= 0.9:")
        pairs = [("first", "uncached"), ("second hot", "local hot"), ("second cold", "local cold")]
        if a.compare_lib:
            pairs.insert(1, ("first (other lib)", "uncached"))
        for num, den in pairs:
            rs = [rnd[num]["gbps"] / rnd[den]["gbps"] for rnd in rounds]
            of_medians = results[num]["gbps"] / results[den]["gbps"]
            print(f"  {num + ' / ' + den:33s} {statistics.median(rs):.2f}  ({', '.join(f'{r:.2f}' for r in rs)})"
                  f" | {of_medians:.2f}")
        return 0
    finally:
        srv["stop"]()
        uncap()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
