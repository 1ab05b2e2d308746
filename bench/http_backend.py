#!/usr/bin/env python3
"""HTTP benchmark: a multi-file checkpoint served by nginx on 127.0.0.1,
fetched three ways in one run, interleaved:

  ours   this project (.venv), http:// URLs through SafetensorsStreamer,
         RUNAI_STREAMER_CONCURRENCY unset (the http backend's default,
         16 ranged GETs of 8 MiB in flight) or set to --concurrency;
  ours-capped  the same with owned=False (the upstream contract: a tensor
         may be overwritten once the loop moves on) and RUNAI_STREAMER_MEMORY_LIMIT
         set to plain's buffer size: the streamer reuses one bounded buffer, as
         plain does, instead of touching fresh memory for every byte (first
         touch of fresh memory costs well under 1 GB/s on these VMs; see
         bench/README.md), so this compares the HTTP path itself;
  engine this project's Go engine and http backend without Python
         (go/cmd/msbench, built into bench/.build/), the backend's defaults
         (16 x 8 MiB) and a memory limit of plain's buffer size;
  plain  the limit for ranged GETs: N Python threads, each with its own
         keep-alive http.client connection, take --chunk pieces of every
         file off one shared counter and GET each with a Range header,
         reading the body straight into its place in one pre-faulted buffer;
  curl   `curl --parallel` fetching the files whole, one connection per
         file, to /dev/null (it keeps nothing, so it copies nothing into a
         process buffer: a generous baseline).

    .venv/bin/python bench/http_backend.py                      # 2 GiB in 4 shards, 3 reps
    .venv/bin/python bench/http_backend.py --reps 1 --gen-bytes 1GiB
    .venv/bin/python bench/http_backend.py --help

nginx (tests/object_storage/servers.py, ci/install-servers.sh installs it)
serves the files from its root under /tmp with sendfile; they sit in the page
cache after the first, unmeasured, warm-up download, so the runs measure HTTP
on loopback, not the disk. Each run is a fresh subprocess: the streamer through
bench/worker.py (loader "streamer"), plain through this file's --worker mode,
curl as itself. Medians are reported with the ratio of ours to the faster of
plain and curl (target >= 0.9). nginx shares the machine's cores with the
client: every run reports the CPU cores nginx used.
Standard library only here (the measured subprocesses import what they need).
Network: 127.0.0.1 only.

(Not bench/http.py: bench/ is sys.path[0] for every script and worker here,
and a module named http there would shadow the standard library's http
package, http.client included, for all of them.)
"""

import argparse
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
WORKER = os.path.join(BENCH, "worker.py")
MiB = 1 << 20

# Shared with the other benchmarks.
from run import fmt_bytes, log, parse_bytes, run_argv  # noqa: E402
from object_storage import (  # noqa: E402
    children_cpu_s,
    cpu_busy_s,
    generate_checkpoint,
    load_servers,
    median,
    proc_cpu_s,
    read_safetensors_header,
)

LOADERS = ("ours", "ours-capped", "engine", "plain", "curl")
QUIET_CORES = 0.3


def plain_worker(spec):
    """Ranged GETs of every file in --chunk pieces by N threads (see above)."""
    sys.path.insert(0, BENCH)
    import worker as w  # pre-faulted buffer, /proc/self/status, VmHWM reset

    res = {"loader": "plain", "pid": os.getpid()}
    try:
        chunk, threads = int(spec["chunk_bytes"]), max(1, int(spec["concurrency"]))
        pieces = [(u, off, min(chunk, size - off)) for u, size in spec["objects"] for off in range(0, size, chunk)]
        want = int(spec.get("buffer_bytes", 0))
        nslots = len(pieces) if want <= 0 else max(1, min(len(pieces), want // chunk))
        buf = w.anon_buffer(nslots * chunk)
        mv = memoryview(buf)
        counter = iter(range(len(pieces)))
        lock = threading.Lock()
        totals, errors = [0] * threads, []

        def work(i):
            got = 0
            try:
                conns = {}
                while not errors:
                    with lock:
                        k = next(counter, None)
                    if k is None:
                        break
                    url, off, n = pieces[k]
                    u = urllib.parse.urlsplit(url)
                    conn = conns.get(u.netloc) or conns.setdefault(
                        u.netloc, http.client.HTTPConnection(u.netloc, timeout=120))
                    conn.request("GET", u.path, headers={"Range": f"bytes={off}-{off + n - 1}"})
                    resp = conn.getresponse()
                    if resp.status != 206:
                        raise RuntimeError(f"GET {url} {off}+{n}: HTTP {resp.status}")
                    view = mv[(k % nslots) * chunk:(k % nslots) * chunk + n]
                    have = 0
                    while have < n:
                        r = resp.readinto(view[have:])
                        if not r:
                            raise IOError(f"GET {url} {off}+{n}: body ended after {have} bytes")
                        have += r
                    resp.read()
                    del view
                    got += have
                for c in conns.values():
                    c.close()
            except BaseException as e:  # noqa: BLE001 - reported
                errors.append(f"{type(e).__name__}: {e}")
            totals[i] = got

        w.baseline(res)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        res["seconds"] = time.perf_counter() - t0
        del mv
        buf.close()
        if errors:
            raise RuntimeError("; ".join(errors[:3]))
        res["bytes"] = sum(totals)
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 - reported
        res["ok"], res["error"] = False, f"{type(e).__name__}: {e}"
    print(json.dumps(res), flush=True)


def run_curl(urls, timeout):
    """curl --parallel, one transfer per file, bodies to /dev/null; the
    bytes come from curl's own size_download per transfer."""
    argv = ["curl", "--silent", "--show-error", "--fail", "--parallel", "--parallel-max", str(len(urls)),
            "--parallel-immediate", "--noproxy", "*"]
    for u in urls:
        argv += ["--output", "/dev/null", "--write-out", "%{size_download}\\n", u]
    t = time.perf_counter()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout}s", "wall_s": time.perf_counter() - t}
    secs = time.perf_counter() - t
    if r.returncode != 0:
        return {"ok": False, "error": f"curl exit {r.returncode}: {r.stderr[-500:]}", "wall_s": secs}
    nbytes = sum(int(x) for x in r.stdout.split())
    # curl's own start-up is inside the clock: a few milliseconds.
    return {"ok": True, "seconds": secs, "bytes": nbytes, "wall_s": secs}


def run_one(a, ld, ctx):
    env = dict(ctx["env"])
    busy0, kids0, ng0 = cpu_busy_s(), children_cpu_s(), ctx["nginx_cpu"]()
    if ld == "curl":
        res = run_curl(ctx["urls"], a.timeout)
    elif ld == "engine":
        argv = [ctx["msbench"], "-json", "-concurrency", "16", "-chunk", str(8 * MiB),
                "-memory-limit", str(a.plain_buffer or -1)] + ctx["urls"]
        res = run_argv(argv, env, a.timeout)
    elif ld == "plain":
        spec = {"objects": ctx["objects"], "concurrency": a.concurrency, "chunk_bytes": a.chunk,
                "buffer_bytes": a.plain_buffer}
        res = run_argv([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)], env, a.timeout)
    else:
        if a.ours_concurrency:
            env["RUNAI_STREAMER_CONCURRENCY"] = str(a.ours_concurrency)
        spec = {"loader": "streamer", "files": ctx["urls"]}
        if ld == "ours-capped":
            spec["owned"] = False
            env["RUNAI_STREAMER_MEMORY_LIMIT"] = str(a.plain_buffer or ctx["file_bytes"])
        res = run_argv([ctx["ours_python"], WORKER, json.dumps(spec)], env, a.timeout)
    ng1 = ctx["nginx_cpu"]()
    res["loader"] = ld
    if res.get("ok"):
        want = ctx["tensor_bytes"] if ld in ("ours", "ours-capped", "engine") else ctx["file_bytes"]
        if res.get("bytes") != want:
            res["ok"], res["error"] = False, f"incomplete: {res.get('bytes')} bytes, want {want}"
        else:
            res["gbps"] = res["bytes"] / res["seconds"] / 1e9
            res["nginx_cores"] = (ng1 - ng0) / res["seconds"]
            other = (cpu_busy_s() - busy0) - (ng1 - ng0) - (children_cpu_s() - kids0)
            res["other_cores"] = max(0.0, other) / res["wall_s"]
    return res


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=3, help="repetitions of every loader, interleaved (default 3)")
    p.add_argument("--gen-bytes", default="2GiB", help="checkpoint size (default 2GiB)")
    p.add_argument("--shards", type=int, default=4, help="files (default 4)")
    p.add_argument("--data-dir", default="/tmp/model-streamer-bench/http-gen",
                   help="where the checkpoint is generated (reused while it matches)")
    p.add_argument("--concurrency", type=int, default=16, help="plain's threads (default 16, ours' default)")
    p.add_argument("--ours-concurrency", type=int, default=0,
                   help="RUNAI_STREAMER_CONCURRENCY for ours (default: unset, the backend's 16)")
    p.add_argument("--chunk", default="8MiB", help="plain's range size (default 8MiB, ours' default)")
    p.add_argument("--plain-buffer", default="256MiB",
                   help="plain's pre-faulted buffer, wrapped around (0: one byte per byte read)")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--json", help="also write the runs and summary to this file")
    a = p.parse_args(argv)
    a.chunk = parse_bytes(a.chunk)
    a.plain_buffer = 0 if a.plain_buffer.strip() in ("0", "-1") else parse_bytes(a.plain_buffer)
    return a


def main():
    a = get_args()
    if a.worker:
        plain_worker(json.loads(a.worker))
        return 0
    if not shutil.which("curl"):
        log("curl is not installed")
        return 2
    servers = load_servers()  # runs ci/install-servers.sh (nginx included) first
    files = generate_checkpoint(a.data_dir, parse_bytes(a.gen_bytes), a.shards)
    tmp = tempfile.mkdtemp(prefix="model-streamer-bench-http-")
    srv = servers.start_nginx(tmp)
    try:
        urls = []
        for f in files:
            dst = srv["root"] / os.path.basename(f)
            shutil.copyfile(f, dst)
            urls.append(f"{srv['url']}/files/{os.path.basename(f)}")
        sizes = [os.path.getsize(f) for f in files]
        pid = int(open(os.path.join(os.path.dirname(srv["log"]), "nginx.pid")).read())

        def nginx_cpu():
            # master + workers (its children)
            total = proc_cpu_s(pid) or 0.0
            try:
                kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            except OSError:
                kids = []
            return total + sum(proc_cpu_s(int(k)) or 0.0 for k in kids)

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RUNAI_STREAMER_", "MODEL_STREAMER_", "HF_", "SSL_CERT_"))
               and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        msbench = os.path.join(BENCH, ".build", "msbench")
        subprocess.run(["go", "build", "-o", msbench, "./cmd/msbench"], cwd=os.path.join(REPO, "go"), check=True)
        ctx = {
            "msbench": msbench,
            "urls": urls, "objects": list(zip(urls, sizes)), "env": env, "nginx_cpu": nginx_cpu,
            "ours_python": os.path.join(REPO, ".venv", "bin", "python"),
            "file_bytes": sum(sizes),
            "tensor_bytes": sum(read_safetensors_header(f)[1] for f in files),
        }
        log(f"nginx {srv['url']}: {len(files)} files, {fmt_bytes(sum(sizes))}; warm-up")
        warm = run_curl(urls, a.timeout)
        if not warm.get("ok"):
            raise RuntimeError(f"warm-up download failed: {warm.get('error')}")
        runs = []
        for rep in range(a.reps):
            order = LOADERS[rep % len(LOADERS):] + LOADERS[:rep % len(LOADERS)]
            for ld in order:
                r = run_one(a, ld, ctx)
                r["rep"] = rep
                runs.append(r)
                if r.get("ok"):
                    log(f"rep {rep} {ld:12s} {r['gbps']:.2f} GB/s ({r['seconds']:.2f} s, "
                        f"nginx {r['nginx_cores']:.2f} cores, other {r['other_cores']:.2f})")
                else:
                    log(f"rep {rep} {ld:12s} FAILED: {r.get('error')} {r.get('stderr', '')[-500:]}")
        summary = {}
        for ld in LOADERS:
            ok = [r for r in runs if r["loader"] == ld and r.get("ok")]
            summary[ld] = {"gbps": median([r["gbps"] for r in ok]), "n": len(ok),
                           "nginx_cores": median([r["nginx_cores"] for r in ok])}
        best = max((summary[ld]["gbps"] or 0.0, ld) for ld in ("plain", "curl"))
        ours = summary["ours"]["gbps"] or 0.0
        ratio = ours / best[0] if best[0] else None
        print()
        print(f"# bench/http_backend.py: {len(files)} files, {fmt_bytes(sum(sizes))}, nginx on loopback, "
              f"{a.reps} reps interleaved, medians; {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
        print("| loader | GB/s | nginx cores | runs |")
        print("|---|---|---|---|")
        names = {"ours": "ours (http backend, default 16 x 8 MiB)" if not a.ours_concurrency
                 else f"ours (RUNAI_STREAMER_CONCURRENCY={a.ours_concurrency})",
                 "ours-capped": f"ours, owned=False, memory limit {fmt_bytes(a.plain_buffer)}" if a.plain_buffer
                 else "ours, owned=False",
                 "engine": f"Go engine + http backend, no Python (msbench, memory limit {fmt_bytes(a.plain_buffer)})",
                 "plain": f"plain ranged GETs ({a.concurrency} threads x {fmt_bytes(a.chunk)})",
                 "curl": f"curl --parallel ({len(files)} files)"}
        for ld in LOADERS:
            s = summary[ld]
            g = f"{s['gbps']:.2f}" if s["gbps"] else "-"
            c = f"{s['nginx_cores']:.2f}" if s["nginx_cores"] else "-"
            print(f"| {names[ld]} | {g} | {c} | {s['n']} |")
        print()
        print(f"ours / faster of plain and curl ({best[1]}): "
              f"{ratio:.2f}x (target >= 0.9)" if ratio else "ours / best: -")
        if summary["ours-capped"]["gbps"] and best[0]:
            print(f"ours capped / {best[1]}: {summary['ours-capped']['gbps'] / best[0]:.2f}x")
        # Per repetition: the loaders ran back to back, so their ratio is
        # less exposed to the load of other jobs on a shared machine than the
        # medians taken across repetitions. "quiet": other jobs used under
        # QUIET_CORES during every run of the repetition.
        per_rep, quiet = [], []
        for rep in range(a.reps):
            by = {r["loader"]: r for r in runs if r["rep"] == rep and r.get("ok")}
            if not all(ld in by for ld in LOADERS):
                continue
            base = max(by["plain"]["gbps"], by["curl"]["gbps"])
            row = {ld: by[ld]["gbps"] / base for ld in ("ours", "ours-capped", "engine")}
            row["other_cores"] = max(by[ld]["other_cores"] for ld in LOADERS)
            per_rep.append(row)
            if row["other_cores"] < QUIET_CORES:
                quiet.append(row)
        print()
        print("| rep | ours / faster | ours capped / faster | engine / faster | other jobs (cores, max) |")
        print("|---|---|---|---|---|")
        for i, row in enumerate(per_rep):
            print(f"| {i} | {row['ours']:.2f} | {row['ours-capped']:.2f} | {row['engine']:.2f} | {row['other_cores']:.2f} |")
        for label, rows in (("all reps", per_rep), (f"quiet reps (other < {QUIET_CORES})", quiet)):
            if rows:
                print(f"median per-rep ratio, {label}: ours {median([r['ours'] for r in rows]):.2f}x, "
                      f"capped {median([r['ours-capped'] for r in rows]):.2f}x, "
                      f"engine {median([r['engine'] for r in rows]):.2f}x ({len(rows)} reps)")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"runs": runs, "summary": summary, "ratio": ratio, "best": best[1],
                           "per_rep": per_rep}, f, indent=1)
        return 0 if all(summary[ld]["n"] == a.reps for ld in LOADERS) else 1
    finally:
        srv["stop"]()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
