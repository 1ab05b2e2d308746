"""Loads measured as a user uses them (issue 8): hot page cache, fresh processes,
loaders interleaved, every loader timed with the same consumer.

    .venv/bin/python bench/use.py [--data-dir D] [--reps 5] [--concurrency 8]

Checkpoints are written by safetensors itself (safetensors.torch.save_file,
header padded to 8) into --data-dir: six 0.64 GB shards, a Llama-like mix of
bf16 matrices and f32 norms. "1.3g" is the first two shards, "4g" all six (so
the data on disk is 3.85 GB in all).

Loaders (each run is bench/worker.py in a fresh interpreter, see its docstring):
  pread        --concurrency Python threads pread 8 MiB pieces into a pre-faulted
               256 MiB buffer (the limit for a copy into own memory)
  safetensors  safetensors.torch.load_file per file (lazy mmap, its default); the
               consumer's first touch of each page is where the bytes are read
  ours         this project (read mode auto; the file's read path is printed). The
               library and Go runtime start when SafetensorsStreamer() is made,
               inside the clock (their fixed cost: bench/first_tensor.py)
  ours-MODE    with MODEL_STREAMER_READ_MODE=MODE (buffered, direct, mmap, auto-read)
  ours-preload the same with MODEL_STREAMER_PRELOAD=1: they start at import, on a
               thread, before the clock (reported as setup ms, with the imports)
  peer         runai-model-streamer 0.17.0, when bench/.peer-venv exists (bench/run.py makes it)

Consumers (python/runai_model_streamer/_consume.py, one file for every loader):
  sum   every byte of every tensor summed (int64 words through the uint8 view);
        the plain reader sums each piece it read. The checksums of the tensor
        loaders must agree, and a run whose checksum differs is marked BAD.
  copy  every tensor copied into one destination pre-faulted before the clock;
        pread's read into its pre-faulted buffer is that copy.

The limit of a column is the best of pread and safetensors in that column.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run as harness  # noqa: E402  (drop_cache, warm_cache, resident_fraction, run_worker)

SHARDS = 6
SHARD_LAYERS = 3  # x (4096x4096 + 4096x11008 + 11008x4096 bf16, 2 f32 norms) = 0.64 GB


def ensure_shards(d):
    import torch
    from safetensors.torch import save_file
    paths = []
    g = torch.Generator().manual_seed(1)
    for s in range(SHARDS):
        p = os.path.join(d, f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors")
        paths.append(p)
        if os.path.exists(p):
            continue
        os.makedirs(d, exist_ok=True)
        t = {}
        for i in range(SHARD_LAYERS):
            L = s * SHARD_LAYERS + i
            t[f"layers.{L}.attn.qkvo"] = torch.randn(4096, 4096, generator=g).to(torch.bfloat16)
            t[f"layers.{L}.mlp.up"] = torch.randn(4096, 11008, generator=g).to(torch.bfloat16)
            t[f"layers.{L}.mlp.down"] = torch.randn(11008, 4096, generator=g).to(torch.bfloat16)
            t[f"layers.{L}.norm1"] = torch.randn(4096, generator=g)
            t[f"layers.{L}.norm2"] = torch.randn(4096, generator=g)
        save_file(t, p + ".tmp")
        os.rename(p + ".tmp", p)
    return paths


def tensor_info(paths):
    from safetensors import safe_open
    n, total, largest = 0, 0, 0
    for p in paths:
        with safe_open(p, "pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                nb = 1
                for x in sl.get_shape():
                    nb *= x
                nb *= {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}[sl.get_dtype()]
                n += 1
                total += nb
                largest = max(largest, nb)
    return n, total, largest


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="/tmp/model-streamer-bench/use")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=8, help="pread threads and RUNAI_STREAMER_CONCURRENCY")
    p.add_argument("--sizes", default="1.3g,3.9g")
    p.add_argument("--loaders", default="pread,safetensors,ours,ours-preload,peer")
    p.add_argument("--consumers", default="sum,copy")
    p.add_argument("--out", default=None, help="results JSON")
    a = p.parse_args()
    shards = ensure_shards(a.data_dir)
    sets = {"1.3g": shards[:2], "3.9g": shards}
    sizes = [s for s in a.sizes.split(",") if s]
    consumers = [c for c in a.consumers.split(",") if c]
    ours_py = os.path.join(REPO, ".venv", "bin", "python")
    peer_py = os.path.join(HERE, ".peer-venv", "bin", "python")
    loaders = [ld for ld in a.loaders.split(",") if ld and (ld != "peer" or os.path.exists(peer_py))]
    env = dict(os.environ)
    for k in ("RUNAI_STREAMER_MEMORY_LIMIT", "MODEL_STREAMER_READ_MODE"):
        env.pop(k, None)
    env["RUNAI_STREAMER_CONCURRENCY"] = str(a.concurrency)
    env.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    runs = []
    order = [(s, c, ld) for s in sizes for c in consumers for ld in loaders]
    for rep in range(a.reps):
        k = rep % len(order)
        for size, cons, ld in order[k:] + order[:k]:  # rotated: no loader always goes first
            files = sets[size]
            n, total, largest = tensor_info(files)
            # Every page: this VM drops a few percent of a hot file's pages
            # within seconds, and a page missing where the engine's residency
            # sample looks makes it check every slice and read the missing
            # ones from the disk (bench/first_tensor.py warms likewise).
            if harness.resident_fraction(files) < 1:
                others = [f for f in shards if f not in files]
                harness.drop_cache(others)
                harness.warm_cache(files)
            spec = {"files": files, "consume": cons, "largest_tensor_bytes": largest}
            if ld == "pread":
                spec.update(loader="pread", concurrency=a.concurrency, chunk_bytes=8 << 20,
                            buffer_bytes=256 << 20, impl="python")
                py = ours_py
            elif ld == "safetensors":
                spec.update(loader="safetensors", st_mode="mmap")
                py = ours_py
            else:
                spec.update(loader="streamer")
                py = peer_py if ld == "peer" else ours_py
            wenv = dict(env)
            if ld == "ours-preload":
                wenv["MODEL_STREAMER_PRELOAD"] = "1"
            elif ld.startswith("ours-"):  # ours-buffered, ours-mmap, ...: that read mode
                wenv["MODEL_STREAMER_READ_MODE"] = ld.split("-", 1)[1]
            res = harness.run_worker(py, harness.WORKER, spec, wenv, 600)
            want = sum(os.path.getsize(f) for f in files) if ld == "pread" else total
            if res.get("ok") and res.get("bytes") != want:
                res["ok"], res["error"] = False, f"incomplete: {res.get('bytes')} of {want} bytes"
            runs.append({"size": size, "consume": cons, "loader": ld, "rep": rep, "result": res})
            print(f"rep {rep} {size:>5} {cons:<4} {ld:<12} setup {1e3 * (res.get('setup_s') or 0):6.0f} ms "
                  + (f"{res['gbps']:6.2f} GB/s  {res['seconds'] * 1e3:7.1f} ms  "
                     f"first {1e3 * (res.get('first_tensor_s') or 0):6.1f} ms  "
                     f"{res.get('read_strategies') or res.get('page_cache_backed_hint') or ''}"
                     if res.get("ok") else "FAILED " + str(res.get("error"))[:200]), flush=True)
    # the sum consumers' checksums over tensors must agree across loaders
    bad = set()
    for size in sizes:
        sums = {r["result"].get("checksum") for r in runs if r["size"] == size and r["consume"] == "sum"
                and r["loader"] != "pread" and r["result"].get("ok")}
        if len(sums) > 1:
            bad.add(size)
    print()
    print(f"hot page cache; GB/s = 1e9 tensor bytes/s (pread: file bytes); median of {a.reps} fresh processes, "
          f"loaders interleaved; concurrency {a.concurrency}")
    hdr = f"{'size':>6} {'loader':<12}" + "".join(f"{c + ' GB/s':>11} {'x limit':>8} {'1st ms':>7}" for c in consumers) \
        + "  read path"
    print(hdr)
    table = {}
    for size in sizes:
        med = {}
        for cons in consumers:
            for ld in loaders:
                ok = [r["result"] for r in runs if (r["size"], r["consume"], r["loader"]) == (size, cons, ld)
                      and r["result"].get("ok")]
                med[(cons, ld)] = (statistics.median([x["gbps"] for x in ok]) if ok else None,
                                   statistics.median([x.get("first_tensor_s") or 0 for x in ok]) if ok else None,
                                   ok[0].get("read_strategies") or ok[0].get("page_cache_backed_hint") if ok else None)
        for ld in loaders:
            line = f"{size:>6} {ld:<12}"
            for cons in consumers:
                lim = max([med[(cons, x)][0] or 0 for x in ("pread", "safetensors") if (cons, x) in med] or [0])
                g, f, _ = med[(cons, ld)]
                line += f"{g or 0:11.2f} {(g / lim if g and lim else 0):7.2f}x {1e3 * (f or 0):7.1f}"
                table[f"{size} {cons} {ld}"] = {"gbps": g, "x_limit": g / lim if g and lim else None,
                                                "first_tensor_s": f}
            path = med[(consumers[0], ld)][2]
            line += f"  {path}" if ld not in ("pread",) else "  copy (pread into own buffer)"
            print(line)
    if bad:
        print(f"BAD: the sum checksums of the tensor loaders differ at {sorted(bad)}")
    else:
        print("sum checksums of the tensor loaders agree")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "table": table, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
