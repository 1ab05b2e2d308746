#!/usr/bin/env python3
"""model-streamer benchmark: checkpoint files in the page cache -> GPU memory.

Side by side in one run, on the same (warm) files, loaders interleaved over
--reps repetitions, each measured run a fresh subprocess (bench/gpu_worker.py):

  pinned-copy  host -> device copies from a pinned buffer: the limit
  read-pinned  parallel os.preadv of the files into a pinned buffer (no GPU):
               the page-cache read rate
  ours         this project: stream_files(paths, device=DEV) + get_tensors()
  ours-limit   the same with RUNAI_STREAMER_MEMORY_LIMIT (--limit): a small pinned ring
  peer         runai-model-streamer 0.17.0 (PyPI), the same loop
  safetensors  safe_open(path, framework="pt", device=DEV), every tensor

    .venv/bin/python bench/gpu.py --device cpu --size 1g --reps 1     # smoke test without a GPU
    python3 bench/gpu.py --device cuda:0 --peer-python python3 --peer-pythonpath /tmp/peer-site

See bench/README.md ("GPU: page cache to device"). Standard library only;
the workers need torch (and the loader's package).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import run as R  # noqa: E402  (bench/run.py: data sets, page cache, the peer's venv)

WORKER = os.path.join(BENCH, "gpu_worker.py")
OURS_DIR = os.path.join(R.REPO, "python")

LOADERS = {
    "pinned-copy": "host->device copy from pinned memory (limit)",
    "read-pinned": "page cache -> pinned host, preadv threads",
    "ours": "model-streamer (this project)",
    "ours-limit": "model-streamer, RUNAI_STREAMER_MEMORY_LIMIT",
    "peer": f"runai-model-streamer {R.PEER_VERSION} (PyPI)",
    "safetensors": "safetensors safe_open(device=...)",
}
STREAMERS = ("ours", "ours-limit", "peer")
TARGET_VS_COPY = 0.8
log = R.log


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0", help="torch device (default cuda:0; 'cpu' is a smoke test)")
    p.add_argument("--size", default="8g", help="checkpoint, as run.py's --sizes: 8g = 8 GiB in 4 shards (default)")
    p.add_argument("--data-dir", default="/tmp/model-streamer-bench", help="where the checkpoint is generated")
    p.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default 3)")
    p.add_argument("--loaders", default=",".join(LOADERS), help=f"comma list (default {','.join(LOADERS)})")
    p.add_argument("--limit", default="1GiB", help="RUNAI_STREAMER_MEMORY_LIMIT of ours-limit (default 1GiB)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="RUNAI_STREAMER_CONCURRENCY for the streamers (default: unset, each one's default)")
    p.add_argument("--buffer", default="256MiB", help="pinned buffer of pinned-copy and read-pinned (default 256MiB)")
    p.add_argument("--chunk", default="8MiB", help="read-pinned's read size (default 8MiB)")
    p.add_argument("--read-threads", type=int, default=16, help="read-pinned's threads (default 16)")
    p.add_argument("--ours-python", default=None,
                   help="interpreter of every loader but the peer (default .venv/bin/python if present, else this one)")
    p.add_argument("--peer-python", default=None, help="the peer's interpreter (default bench/.peer-venv, created if missing)")
    p.add_argument("--peer-pythonpath", default=None, help="PYTHONPATH of the peer's runs (e.g. /tmp/peer-site)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--timeout", type=int, default=600, help="seconds before one measured run is killed")
    a = p.parse_args(argv)
    a.size = R.parse_size(a.size)
    a.loaders = [x.strip() for x in a.loaders.split(",") if x.strip()]
    for x in a.loaders:
        if x not in LOADERS:
            p.error(f"loader {x!r}: one of {', '.join(LOADERS)}")
    a.limit = R.parse_bytes(a.limit)
    a.buffer = R.parse_bytes(a.buffer)
    a.chunk = R.parse_bytes(a.chunk)
    if a.ours_python is None:
        venv = os.path.join(R.REPO, ".venv", "bin", "python")
        a.ours_python = venv if os.path.exists(venv) else sys.executable
    if a.reps < 1:
        p.error("--reps must be >= 1")
    return a


# --------------------------------------------------------------------------
# interpreters and their environments
# --------------------------------------------------------------------------

def base_env():
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("RUNAI_STREAMER_") or k.startswith("MODEL_STREAMER_"):
            del env[k]
    env["RUNAI_STREAMER_LOG_LEVEL"] = "WARNING"
    # Workers run in bench/: relative entries (PYTHONPATH=python:/tmp/site) must not change meaning.
    inherited = [os.path.abspath(x) for x in env.pop("PYTHONPATH", "").split(os.pathsep) if x]
    if inherited:
        env["PYTHONPATH"] = os.pathsep.join(inherited)
    return env


def ours_env():
    env = base_env()
    rest = [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x and x != OURS_DIR]
    env["PYTHONPATH"] = os.pathsep.join([OURS_DIR] + rest)
    return env


def peer_env(a):
    env = base_env()
    # Same import name as ours: nothing of this checkout may be on the peer's path.
    if a.peer_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(x) for x in a.peer_pythonpath.split(os.pathsep) if x)
    else:
        env.pop("PYTHONPATH", None)
    return env


def probe(python, env, code):
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=BENCH)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(r.stdout.strip().splitlines()[-1]), None


# One interpreter start for every question about ours' interpreter (importing
# torch takes seconds on some machines).
OURS_PROBE = """
import json, torch
d = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
if d["cuda_available"]:
    d["device_count"] = torch.cuda.device_count()
    d["device_name"] = torch.cuda.get_device_name(0)
try:
    import runai_model_streamer as m
    d["ours"] = m.__file__
except Exception as e:
    d["ours_error"] = repr(e)
try:
    import safetensors
    d["safetensors"] = safetensors.__version__
except Exception as e:
    d["safetensors_error"] = repr(e)
print(json.dumps(d))
"""

PEER_PROBE = """
import json, runai_model_streamer as m
try:
    from importlib.metadata import version
    v = version("runai-model-streamer")
except Exception:
    v = getattr(m, "__version__", None)
print(json.dumps({"file": m.__file__, "version": v}))
"""


def is_ours(path):
    return os.path.realpath(path or "").startswith(os.path.realpath(OURS_DIR) + os.sep)


# --------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------

def run_one(a, ld, man, ctx):
    spec = {"files": man["files"], "device": a.device}
    env = ours_env()
    py = a.ours_python
    if ld == "pinned-copy":
        spec.update(loader="pinned-copy", copy_bytes=man["tensor_bytes"], buffer_bytes=a.buffer)
    elif ld == "read-pinned":
        spec.update(loader="read-pinned", buffer_bytes=a.buffer, chunk_bytes=a.chunk, concurrency=a.read_threads)
    elif ld == "safetensors":
        spec.update(loader="safetensors")
    else:
        spec.update(loader="streamer")
        if ld == "peer":
            py, env = ctx["peer_python"], peer_env(a)
        if ld == "ours-limit":
            env["RUNAI_STREAMER_MEMORY_LIMIT"] = str(a.limit)
        if a.concurrency:
            env["RUNAI_STREAMER_CONCURRENCY"] = str(a.concurrency)
    res = R.run_worker(py, WORKER, spec, env, a.timeout)
    if res.get("ok"):
        check(ld, res, man)
    return res


def check(ld, res, man):
    """Every byte delivered, to the device asked for, by the package meant."""
    err = None
    if ld in STREAMERS or ld == "safetensors":
        if res.get("tensors") != man["tensors"] or res.get("bytes") != man["tensor_bytes"]:
            err = (f"incomplete: {res.get('tensors')} tensors / {res.get('bytes')} bytes, "
                   f"want {man['tensors']} / {man['tensor_bytes']}")
        elif res.get("on_device") is False:
            err = "the tensors were not on the device asked for"
    elif ld == "read-pinned" and res.get("bytes") != man["total_file_bytes"]:
        err = f"incomplete: {res.get('bytes')} bytes, want {man['total_file_bytes']}"
    mod = res.get("module") or {}
    if ld == "peer" and mod.get("version") != R.PEER_VERSION:
        err = f"the peer's interpreter imported runai_model_streamer {mod.get('version')} from {mod.get('file')}"
    if ld.startswith("ours") and not is_ours(mod.get("file")):
        err = f"'ours' imported runai_model_streamer from {mod.get('file')}"
    if err:
        res["ok"] = False
        res["error"] = err


def warm(files):
    """The files fully in the page cache; returns (resident fraction or None, re-read?)."""
    try:
        frac = R.resident_fraction(files)
    except OSError:  # no mincore (some sandboxes): read the files every time
        frac = None
    if frac is not None and frac >= 0.995:
        return frac, False
    R.warm_cache(files)
    try:
        return R.resident_fraction(files), True
    except OSError:
        return None, True


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def summarize(runs):
    out = {}
    for ld in LOADERS:
        rs = [r["result"] for r in runs if r["loader"] == ld]
        if not rs:
            continue
        ok = [r for r in rs if r.get("ok")]
        med = lambda k: statistics.median([r[k] for r in ok if r.get(k) is not None]) \
            if any(r.get(k) is not None for r in ok) else None
        v = {"n": len(ok), "failed": len(rs) - len(ok), "gbps": med("gbps"),
             "gbps_all": [round(r["gbps"], 3) for r in ok], "seconds": med("seconds"),
             "first_tensor_s": med("first_tensor_s"), "peak_rss_delta": med("peak_rss_delta"),
             "errors": sorted({r.get("error", "") for r in rs if not r.get("ok")})}
        copiers = [r["copier"] for r in ok if r.get("copier")]
        if copiers:
            v["copier"] = copiers[-1]
        out[ld] = v
    return out


def report(a, man, summary, info, ctx):
    lines = []
    P = lines.append
    dev = a.device + (f" ({info['device_name']})" if info.get("device_name") else "")
    P("")
    P(f"== {man['name']}: {len(man['files'])} file(s), {R.fmt_bytes(man['total_file_bytes'])}, {man['tensors']} tensors, "
      f"largest {R.fmt_bytes(man['largest_tensor_bytes'])}; page cache HOT; device {dev} ==")
    P(f"torch {info.get('torch')} (CUDA {info.get('cuda')}); median of {a.reps} repetition(s), loaders interleaved; "
      f"GB/s = 1e9 bytes/s of tensor data (read-pinned: file bytes)")
    if not a.device.startswith("cuda"):
        P("device is not CUDA: a smoke test of the script, not a GPU figure. pinned-copy is a plain memcpy into "
          "a preallocated tensor, read-pinned reads into unpinned memory, safetensors returns views of its file "
          "mapping (nothing read), and the targets do not apply")
    P("")
    P(f"  {'loader':<13}{'GB/s':>8}  {'per rep':<22}{'sec':>7}{'1st s':>7}{'peak-base':>12}  what")
    for ld in a.loaders:
        v = summary.get(ld)
        if v is None:
            P(f"  {ld:<13}{'-':>8}  not measured: {ctx.get('missing', {}).get(ld, '?')}")
            continue
        g = f"{v['gbps']:.2f}" if v["gbps"] else "ERR"
        reps = " ".join(f"{x:.2f}" for x in v["gbps_all"]) or "-"
        sec = f"{v['seconds']:.2f}" if v["seconds"] is not None else "-"
        ft = f"{v['first_tensor_s']:.2f}" if v["first_tensor_s"] is not None else "-"
        what = LOADERS[ld] + (f" = {R.mem_label(a.limit)}" if ld == "ours-limit" else "")
        c = v.get("copier")
        if c:
            what += (f"; copier: {c['pinned_copies']}/{c['copies']} copies from the pinned ring"
                     + ("" if c["ring_pinned"] else " (ring not pinned)"))
        P(f"  {ld:<13}{g:>8}  {reps:<22}{sec:>7}{ft:>7}{R.fmt_bytes(v['peak_rss_delta']):>12}  {what}")
        if v["errors"]:
            P(f"  {'':<13}ERRORS: {'; '.join(v['errors'])[:400]}")

    def g(ld):
        v = summary.get(ld)
        return v["gbps"] if v else None

    targets = []
    cuda = a.device.startswith("cuda")
    P("")
    for o in [x for x in ("ours", "ours-limit") if x in a.loaders]:
        r = R.ratio(g(o), g("pinned-copy"))
        P(f"  {o + ' / pinned-copy':<28}{R.fmt_r(r):>8}" + (f"   target >= {TARGET_VS_COPY}" if cuda else ""))
        targets.append((f"{man['name']} {a.device}: {o} >= {TARGET_VS_COPY}x pinned-copy", r, TARGET_VS_COPY))
        for ref in ("peer", "safetensors", "read-pinned"):
            if ref in a.loaders:
                P(f"  {o + ' / ' + ref:<28}{R.fmt_r(R.ratio(g(o), g(ref))):>8}")
    if "read-pinned" in a.loaders:
        P(f"  read-pinned (page cache read rate, no GPU): {R.fmt_g(g('read-pinned'))} GB/s; "
          f"pinned-copy: {R.fmt_g(g('pinned-copy'))} GB/s")
    P("")
    if not cuda:
        targets = []
    P("targets:" if targets else "targets: none (CUDA device only)")
    for name, r, need in targets:
        if r is None:
            P(f"  [ n/a ] {name}: not measured")
        else:
            P(f"  [{' MET ' if r >= need else ' MISS'}] {name}: {r:.2f}")
    return "\n".join(lines), targets


# --------------------------------------------------------------------------

def main(argv=None):
    a = get_args(argv)
    t_start = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = a.out or os.path.join(BENCH, "results")
    out = os.path.join(out_dir, f"gpu-{stamp}.json")
    ctx = {"missing": {}}

    info, err = probe(a.ours_python, ours_env(), OURS_PROBE)
    if info is None:
        raise SystemExit(f"{a.ours_python} cannot import torch: {err}")
    if a.device.startswith("cuda") and not info["cuda_available"]:
        raise SystemExit(f"--device {a.device}: CUDA is not available to {a.ours_python} (torch {info['torch']}); "
                         f"use --device cpu for a smoke test")
    log(f"torch {info['torch']} (CUDA {info['cuda']}) in {a.ours_python}; device {a.device}"
        + (f": {info['device_name']}" if info.get("device_name") else ""))

    def drop(ld, why):
        if ld in a.loaders:
            ctx["missing"][ld] = why
            a.loaders = [x for x in a.loaders if x != ld]
            log(f"WARNING: skipping {ld}: {why}")

    if not is_ours(info.get("ours")):
        for ld in ("ours", "ours-limit"):
            drop(ld, info.get("ours_error") or f"{a.ours_python} imports runai_model_streamer from {info.get('ours')}")
    elif any(x.startswith("ours") for x in a.loaders):
        log(f"ours: {info['ours']}")
    if "safetensors_error" in info:
        drop("safetensors", info["safetensors_error"])
    if "peer" in a.loaders:
        try:
            ctx["peer_python"] = a.peer_python or R.ensure_peer_venv(info["torch"].split("+")[0])
            m, err = probe(ctx["peer_python"], peer_env(a), PEER_PROBE)
            if m is None or m["version"] != R.PEER_VERSION:
                drop("peer", err or f"{ctx['peer_python']} imports runai_model_streamer {m['version']} from {m['file']}")
            else:
                log(f"peer: {ctx['peer_python']}: {m['file']}")
        except (OSError, subprocess.CalledProcessError) as e:
            drop("peer", f"could not create {R.PEER_VENV}: {e}")
    if not a.loaders:
        raise SystemExit("no loader left to measure")

    os.makedirs(a.data_dir, exist_ok=True)
    man = R.ensure_dataset(a.data_dir, a.size)
    files = man["files"]
    total = a.reps * len(a.loaders)
    log(f"{total} runs: {len(a.loaders)} loaders x {a.reps} repetition(s) on {man['name']} "
        f"({R.fmt_bytes(man['total_file_bytes'])}, {len(files)} file(s))")
    meta = {
        "started": stamp, "argv": sys.argv[1:], "host": platform.node(), "kernel": platform.release(),
        "cpus": os.cpu_count(), "mem_total": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "device": a.device, "torch": info, "ours_python": a.ours_python, "peer_python": ctx.get("peer_python"),
        "peer_pythonpath": a.peer_pythonpath, "loaders": a.loaders, "missing": ctx["missing"], "reps": a.reps,
        "memory_limit": a.limit, "concurrency": a.concurrency, "buffer_bytes": a.buffer, "chunk_bytes": a.chunk,
        "read_threads": a.read_threads, "dataset": man,
    }
    runs = []

    def save():
        os.makedirs(out_dir, exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump({"meta": meta, "runs": runs}, f, indent=1)
        os.replace(out + ".tmp", out)

    n = 0
    for rep in range(a.reps):
        order = a.loaders[rep % len(a.loaders):] + a.loaders[:rep % len(a.loaders)]  # no loader always first
        for ld in order:
            n += 1
            frac, rewarmed = warm(files)
            res = run_one(a, ld, man, ctx)
            runs.append({"rep": rep, "loader": ld, "resident_before": frac, "rewarmed": rewarmed, "result": res})
            head = f"[{n:2d}/{total}] rep {rep + 1} {ld:<12}"
            if res.get("ok"):
                ft = res.get("first_tensor_s")
                c = res.get("copier")
                log(f"{head} {res['gbps']:7.2f} GB/s {res['seconds']:6.2f}s 1st={'-' if ft is None else f'{ft:.2f}s':<6}"
                    f" res={'?' if frac is None else f'{frac:.3f}'}{' (re-read)' if rewarmed else ''} wall={res['wall_s']:.0f}s"
                    + (f" pinned {c['pinned_copies']}/{c['copies']}" if c else ""))
            else:
                log(f"{head} FAILED: {res.get('error')}")
                if res.get("stderr"):
                    log("    " + res["stderr"].strip().replace("\n", "\n    ")[-1500:])
            save()

    summary = summarize(runs)
    text, targets = report(a, man, summary, info, ctx)
    meta["elapsed_s"] = time.perf_counter() - t_start
    meta["summary"] = summary
    meta["targets"] = [{"target": t, "value": r, "need": need, "met": r is not None and r >= need}
                       for t, r, need in targets]
    meta["report"] = text
    save()
    log(text)
    log(f"\nresults: {out}  ({meta['elapsed_s'] / 60:.1f} min)")
    return 0 if all(v["failed"] == 0 for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
