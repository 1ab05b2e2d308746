#!/usr/bin/env python3
"""model-streamer benchmark: this project vs the PyPI runai-model-streamer vs
safetensors vs plain reads of the same bytes, side by side in one run.

    make bench                                  # the full run (~35 min here)
    make bench BENCH_ARGS=--quick               # 8 GiB / 4 shards, hot+cold, c=16, 1 rep
    .venv/bin/python bench/run.py --loaders pread,ours --sizes 8g --concurrency 8,16

See bench/README.md for what each loader does and what is timed.
Standard library only: it must run under any interpreter; every measured run
is a fresh subprocess (bench/worker.py) of the interpreter the loader needs.
"""

import argparse
import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
WORKER = os.path.join(BENCH, "worker.py")
PLAIN_C = os.path.join(BENCH, "plainread.c")
BUILD = os.path.join(BENCH, ".build")
PEER_VENV = os.path.join(BENCH, ".peer-venv")
PEER_VERSION = "0.17.0"
DEFAULT_TORCH = "2.9.1"
DATA_VERSION = 1

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# loader key -> label
LOADERS = {
    "single": "read, 1 thread",
    "pread": "pread, N threads",
    "direct": "O_DIRECT pread, N threads",
}
for _p in ("single", "pread", "direct"):
    for _i, _n in (("py", "Python threads"), ("c", "C threads")):
        LOADERS[f"{_p}-{_i}"] = LOADERS[_p] + f" ({_n})"
LOADERS.update({
    "safetensors": "safetensors load_file (mmap, lazy)",
    "safetensors-populate": "safetensors load_file + MADV_POPULATE_READ",
    "safetensors-pread": "safetensors load_file(backend=pread)",
    "peer": f"runai-model-streamer {PEER_VERSION} (PyPI)",
    "ours": "model-streamer (this project)",
})
OURS_MODES = ("auto", "buffered", "direct", "mmap")
for _m in OURS_MODES:
    LOADERS[f"ours-{_m}"] = f"model-streamer, READ_MODE={_m}"
# owned=False: the upstream contract (a tensor may be overwritten once the
# loop moves on), under which a memory limit bounds the process exactly.
LOADERS["ours-unowned"] = "model-streamer, owned=False"
PLAIN = {k for k in LOADERS if k.split("-")[0] in ("single", "pread", "direct")}
DEFAULT_LOADERS = ["single", "pread", "direct", "safetensors", "safetensors-populate", "peer", "ours", "ours-unowned"]
SWEPT = {k for k in PLAIN if not k.startswith("single")} | {"peer", "ours"} | {f"ours-{m}" for m in OURS_MODES}
STREAMERS = {"peer", "ours", "ours-unowned"} | {f"ours-{m}" for m in OURS_MODES}
SINGLE_SHOT = {k for k in LOADERS if k not in SWEPT}  # measured once per size and cache


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------

def parse_bytes(s):
    s = s.strip().lower()
    if s in ("-1", "0"):
        return int(s)
    mult = 1
    for suf, m in (("gib", GiB), ("mib", MiB), ("kib", KiB), ("g", GiB), ("m", MiB), ("k", KiB)):
        if s.endswith(suf):
            s, mult = s[: -len(suf)], m
            break
    return int(float(s) * mult)


def fmt_bytes(n):
    if n is None:
        return "-"
    n = int(n)
    if n < 0:
        return "-" + fmt_bytes(-n)
    for unit, m in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= m:
            return f"{n / m:.2f} {unit}"
    return f"{n} B"


def mem_label(m):
    if m is None:
        return "default"
    if m == -1:
        return "-1"
    if m == 0:
        return "0"
    return fmt_bytes(m).replace(".00 ", "").replace(" ", "")


def parse_size(tok):
    """'4g' -> 4 GiB in 1 file, '8g' -> 8 GiB in 4 shards, '2gx2' -> 2 GiB in 2."""
    tok = tok.strip().lower()
    base, _, shards = tok.partition("x")
    if not base.endswith("g"):
        raise argparse.ArgumentTypeError(f"size {tok!r}: want e.g. 4g, 8g or 2gx2")
    gib = float(base[:-1])
    if shards:
        n = int(shards)
    else:
        n = 4 if gib >= 8 else 1
    name = f"{base}x{n}" if shards or n != (4 if gib >= 8 else 1) else base
    return {"name": name, "bytes": int(gib * GiB), "shards": n}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="8g (4 shards) only, hot+cold, concurrency 16, 1 repetition, memory limit 0 only")
    p.add_argument("--loaders", default=None,
                   help="comma list of " + ",".join(LOADERS) + f" (default {','.join(DEFAULT_LOADERS)})")
    p.add_argument("--sizes", default=None, help="comma list: 4g (one file), 8g (4 shards), NgxS (default 4g,8g)")
    p.add_argument("--concurrency", default=None, help="comma list of thread counts (default 1,4,8,16,32)")
    p.add_argument("--caches", default="hot,cold", help="hot, cold or both (default hot,cold)")
    p.add_argument("--mem-limits", default=None,
                   help="RUNAI_STREAMER_MEMORY_LIMIT values for the peak-RSS runs of the streamers "
                        "(-1, 0, bytes such as 1GiB; default -1,0,1GiB; 'none' to skip)")
    p.add_argument("--base-concurrency", type=int, default=16,
                   help="concurrency of the memory-limit runs and of the sizes not swept (default 16)")
    p.add_argument("--sweep-sizes", default=None,
                   help="sizes that get the concurrency sweep and the memory-limit runs; the others "
                        "run at --base-concurrency only (default: 8g if measured, else the first size; 'all')")
    p.add_argument("--reps", type=int, default=None, help="repetitions, median reported (default 3)")
    p.add_argument("--mem-reps", type=int, default=1,
                   help="repetitions of the memory-limit runs (default 1: peak RSS hardly varies)")
    p.add_argument("--data-dir", default="/tmp/model-streamer-bench", help="where the checkpoints are generated")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/<timestamp>.json)")
    p.add_argument("--plain-impl", choices=("python", "c"), default="python",
                   help="plain readers in Python threads (os.preadv, GIL released) or C pthreads "
                        "(bench/plainread.c built with gcc); default python, see README")
    p.add_argument("--chunk", default="8MiB", help="plain readers' read size (default 8MiB)")
    p.add_argument("--plain-buffer", default="256MiB",
                   help="plain readers' destination buffer; reads wrap around it when smaller than "
                        "the data (default 256MiB, far larger than any CPU cache; 0 = one byte of buffer per byte of data)")
    p.add_argument("--ours-python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--peer-python", default=None, help="use this interpreter for the peer instead of bench/.peer-venv")
    p.add_argument("--safetensors-python", default=None,
                   help="interpreter for safetensors (default: ours if it has safetensors, else this one, else the peer's)")
    p.add_argument("--torch-version", default=None, help=f"torch for the peer venv (default: ours, else {DEFAULT_TORCH})")
    p.add_argument("--timeout", type=int, default=900, help="seconds before one measured run is killed")
    a = p.parse_args(argv)

    if a.quick:
        a.sizes = a.sizes or "8g"
        a.concurrency = a.concurrency or "16"
        a.reps = a.reps or 1
        a.mem_limits = a.mem_limits or "0"
    a.sizes = [parse_size(s) for s in (a.sizes or "4g,8g").split(",") if s.strip()]
    names = [s["name"] for s in a.sizes]
    if a.sweep_sizes == "all":
        a.sweep_sizes = names
    elif a.sweep_sizes:
        a.sweep_sizes = [parse_size(s)["name"] for s in a.sweep_sizes.split(",") if s.strip()]
    else:
        a.sweep_sizes = ["8g"] if "8g" in names else names[:1]
    a.concurrency = [int(c) for c in (a.concurrency or "1,4,8,16,32").split(",") if c.strip()]
    a.reps = a.reps or 3
    a.caches = [c.strip() for c in a.caches.split(",") if c.strip()]
    for c in a.caches:
        if c not in ("hot", "cold"):
            p.error(f"cache {c!r}: hot or cold")
    ml = a.mem_limits or "-1,0,1GiB"
    a.mem_limits = [] if ml.strip().lower() == "none" else [parse_bytes(x) for x in ml.split(",") if x.strip()]
    a.loaders = [x.strip() for x in (a.loaders or ",".join(DEFAULT_LOADERS)).split(",") if x.strip()]
    for x in a.loaders:
        if x not in LOADERS:
            p.error(f"loader {x!r}: one of {', '.join(LOADERS)}")
    a.chunk = parse_bytes(a.chunk)
    a.plain_buffer = parse_bytes(a.plain_buffer)
    return a


# --------------------------------------------------------------------------
# page cache control
# --------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_fraction(paths):
    """Fraction of the files' pages in the page cache (mincore on a mapping we never touch)."""
    total = res = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mmap")
            try:
                npages = (size + PAGE - 1) // PAGE
                vec = (ctypes.c_ubyte * npages)()
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), "mincore")
                res += sum(1 for b in bytes(vec) if b & 1)
                total += npages
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
    return res / total if total else 1.0


def drop_cache(paths):
    """Evicts paths from the page cache: written-back first, since the
    kernel keeps dirty pages (the files must be ours for fadvise to work)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(paths, threads=4, chunk=16 * MiB):
    """Read every byte once (into small reused buffers) so it sits in the page cache."""
    jobs = [(p, off) for p in paths for off in range(0, os.path.getsize(p), chunk)]
    it = iter(jobs)
    lock = threading.Lock()

    def work():
        buf = bytearray(chunk)
        fds = {}
        while True:
            with lock:
                j = next(it, None)
            if j is None:
                break
            p, off = j
            fd = fds.get(p)
            if fd is None:
                fd = fds[p] = os.open(p, os.O_RDONLY)
            os.preadv(fd, [buf], off)
        for fd in fds.values():
            os.close(fd)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# --------------------------------------------------------------------------
# checkpoint generation
# --------------------------------------------------------------------------

HIDDEN, KV, INTER, VOCAB = 4096, 1024, 14336, 32768


def layer_tensors(i):
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", "F32", [HIDDEN]),
        (p + "self_attn.q_proj.weight", "BF16", [HIDDEN, HIDDEN]),
        (p + "self_attn.k_proj.weight", "BF16", [KV, HIDDEN]),
        (p + "self_attn.v_proj.weight", "BF16", [KV, HIDDEN]),
        (p + "self_attn.o_proj.weight", "BF16", [HIDDEN, HIDDEN]),
        (p + "post_attention_layernorm.weight", "F32", [HIDDEN]),
        (p + "mlp.gate_proj.weight", "BF16", [INTER, HIDDEN]),
        (p + "mlp.up_proj.weight", "BF16", [INTER, HIDDEN]),
        (p + "mlp.down_proj.weight", "BF16", [HIDDEN, INTER]),
    ]


DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "I32": 4, "U8": 1}


def nbytes_of(dtype, shape):
    n = DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


def model_tensors(target):
    """A Llama-like tensor list (bf16 matrices 8-256 MiB, f32 norms, a few small
    tensors) whose total is as close to `target` as whole tensors allow."""
    head = [
        ("model.rotary_emb.inv_freq", "F32", [64]),
        ("model.position_ids", "I64", [1, 4096]),
        ("model.embed_tokens.weight", "BF16", [VOCAB, HIDDEN]),
    ]
    tail = [
        ("model.norm.weight", "F32", [HIDDEN]),
        ("lm_head.weight", "BF16", [VOCAB, HIDDEN]),
        ("model.num_batches_tracked", "I64", [1]),
    ]
    size = lambda ts: sum(nbytes_of(d, s) for _, d, s in ts)
    out = list(head)
    budget = target - size(head) - size(tail)
    i = 0
    while True:
        layer = layer_tensors(i)
        added = False
        for t in layer:  # the last layer may be partial: fill to the target
            b = nbytes_of(t[1], t[2])
            if b <= budget:
                out.append(t)
                budget -= b
                added = True
            else:
                break
        else:
            i += 1
            continue
        break
    return out + tail


def shard(tensors, n):
    if n <= 1:
        return [tensors]
    total = sum(nbytes_of(d, s) for _, d, s in tensors)
    per = total / n
    shards, cur, acc = [], [], 0
    for t in tensors:
        b = nbytes_of(t[1], t[2])
        if cur and acc + b / 2 > per * (len(shards) + 1) and len(shards) < n - 1:
            shards.append(cur)
            cur = []
        cur.append(t)
        acc += b
    shards.append(cur)
    return shards


def random_block(size=64 * MiB):
    """Random bytes whose bf16/f32 reading is finite: clear bit 6 of every odd byte
    (the top exponent bit of a little-endian bf16, and of the high half of an f32)."""
    b = bytearray(os.urandom(size))
    table = bytes(x & 0xBF for x in range(256))
    b[1::2] = bytes(b[1::2]).translate(table)
    return bytes(b)


def write_safetensors(path, tensors, block, salt, misalign=0):
    """Writes a SafeTensors file; the header is padded so the data starts at
    a multiple of 8, plus `misalign` bytes (a writer that does not pad: every
    tensor of 2 bytes or more is then misaligned for its dtype)."""
    header = {"__metadata__": {"format": "pt", "generator": "model-streamer bench"}}
    off = 0
    for name, dtype, shape in tensors:
        b = nbytes_of(dtype, shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + b]}
        off += b
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-(8 + len(hj)) % 8 + misalign)
    data = off
    tmp = path + ".tmp"
    bmv = memoryview(block)
    blen = len(block)
    with open(tmp, "wb", buffering=0) as f:
        f.write(len(hj).to_bytes(8, "little") + hj)
        done, k = 0, 0
        while done < data:
            n = min(blen, data - done)
            r = (salt * 7919 * 4096 + k * 4099 * 8) % blen  # rotate the block per write
            parts = [bmv[r:], bmv[:r]]
            want = n
            bufs = []
            for pmv in parts:
                if want <= 0:
                    break
                take = min(len(pmv), want)
                bufs.append(pmv[:take])
                want -= take
            w = os.writev(f.fileno(), bufs)
            if w != n:
                raise IOError(f"short write to {tmp}")
            done += n
            k += 1
        os.fsync(f.fileno())
    os.rename(tmp, path)
    return 8 + len(hj) + data


def ensure_dataset(data_dir, size):
    d = os.path.join(data_dir, size["name"])
    man_path = os.path.join(d, "manifest.json")
    try:
        with open(man_path) as f:
            man = json.load(f)
        if man.get("version") == DATA_VERSION and man.get("target_bytes") == size["bytes"] \
                and man.get("shards") == size["shards"] \
                and all(os.path.getsize(os.path.join(d, fn)) == fb for fn, fb in man["file_bytes"].items()):
            man["files"] = [os.path.join(d, fn) for fn in man["file_names"]]
            return man
    except (OSError, ValueError, KeyError):
        pass
    os.makedirs(d, exist_ok=True)
    tensors = model_tensors(size["bytes"])
    shards = shard(tensors, size["shards"])
    n = len(shards)
    need = sum(nbytes_of(dt, s) for _, dt, s in tensors) + n * MiB
    free = shutil.disk_usage(d).free
    if free < need + GiB:
        raise SystemExit(f"not enough disk in {d}: need {fmt_bytes(need)}, free {fmt_bytes(free)}")
    log(f"generating {size['name']}: {len(tensors)} tensors, {fmt_bytes(need - n * MiB)} in {n} file(s) under {d}")
    t = time.perf_counter()
    block = random_block()
    names, fbytes, weight_map = [], {}, {}
    for i, ts in enumerate(shards):
        fn = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        fp = os.path.join(d, fn)
        fbytes[fn] = write_safetensors(fp, ts, block, salt=zlib.crc32(size["name"].encode()) % 1000 + i)
        names.append(fn)
        for name, _, _ in ts:
            weight_map[name] = fn
        drop_cache([fp])
    dt = time.perf_counter() - t
    total = sum(fbytes.values())
    log(f"  wrote {fmt_bytes(total)} in {dt:.1f}s ({total / dt / 1e9:.2f} GB/s)")
    if n > 1:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    sizes = [nbytes_of(dt_, s) for _, dt_, s in tensors]
    man = {
        "version": DATA_VERSION, "name": size["name"], "target_bytes": size["bytes"], "shards": n,
        "file_names": names, "file_bytes": fbytes, "total_file_bytes": total,
        "tensor_bytes": sum(sizes), "tensors": len(tensors), "largest_tensor_bytes": max(sizes),
        "dtypes": sorted({dt_ for _, dt_, _ in tensors}),
    }
    with open(man_path + ".tmp", "w") as f:
        json.dump(man, f, indent=1)
    os.rename(man_path + ".tmp", man_path)
    man["files"] = [os.path.join(d, fn) for fn in names]
    return man


# --------------------------------------------------------------------------
# interpreters
# --------------------------------------------------------------------------

def py_probe(python, code):
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, (r.stdout.strip() if r.returncode == 0 else (r.stderr.strip()[-800:]))


def ours_status(python):
    if not os.path.exists(python):
        return False, f"{python} does not exist (run `make dev`)"
    ok, out = py_probe(python, "import runai_model_streamer as m, torch; print(m.__file__); print(torch.__version__)")
    if not ok:
        return False, out
    lines = out.splitlines()
    f = lines[-2]
    if not os.path.realpath(f).startswith(os.path.realpath(os.path.join(REPO, "python"))):
        return False, f"{python} imports runai_model_streamer from {f}, not from this repository"
    return True, lines[-1]


def ensure_peer_venv(torch_version):
    py = os.path.join(PEER_VENV, "bin", "python")
    marker = os.path.join(PEER_VENV, ".installed")
    want = f"torch=={torch_version} runai-model-streamer=={PEER_VERSION}"
    try:
        with open(marker) as f:
            if f.read().strip() == want and os.path.exists(py):
                return py
    except OSError:
        pass
    base = getattr(sys, "_base_executable", None) or sys.executable
    log(f"creating {PEER_VENV} ({want}) with {base}")
    if not os.path.exists(py):
        subprocess.run([base, "-m", "venv", PEER_VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", f"torch=={torch_version}",
                    f"runai-model-streamer=={PEER_VERSION}"], check=True)
    with open(marker, "w") as f:
        f.write(want + "\n")
    return py


def build_plain_c():
    os.makedirs(BUILD, exist_ok=True)
    so = os.path.join(BUILD, "plainread.so")
    if os.path.exists(so) and os.path.getmtime(so) >= os.path.getmtime(PLAIN_C):
        return so
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-pthread", "-o", so + ".tmp", PLAIN_C], check=True)
    os.rename(so + ".tmp", so)
    return so


# --------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------

def make_configs(a, size):
    """The runs for one size: the concurrency sweep and the memory-limit runs on the
    sweep sizes, one concurrency (--base-concurrency) elsewhere."""
    sweep = size["name"] in a.sweep_sizes
    concs = a.concurrency if sweep else [a.base_concurrency]
    cfgs = []
    for ld in a.loaders:
        if ld.startswith("single"):
            cfgs.append({"loader": ld, "concurrency": 1, "mem": None})
        elif ld.startswith("safetensors"):
            cfgs.append({"loader": ld, "concurrency": None, "mem": None})
        elif ld in SWEPT:
            for c in concs:
                if c == 1 and ld.startswith("pread") and single_twin(ld) in a.loaders:
                    continue  # one pread thread is the single-thread reader: reported from it
                cfgs.append({"loader": ld, "concurrency": c, "mem": None})
    if sweep:
        for ld in a.loaders:
            if ld in STREAMERS:
                for m in a.mem_limits:
                    cfgs.append({"loader": ld, "concurrency": a.base_concurrency, "mem": m, "memrun": True})
    return cfgs


def single_twin(ld):
    """'pread' -> 'single', 'pread-c' -> 'single-c'."""
    return "single" + ld[len("pread"):]


def cfg_key(c):
    return (c["loader"], c["concurrency"], c["mem"])


def run_worker(python, worker, spec, env, timeout):
    """Runs one measured worker, `python worker '<spec json>'`: see run_argv."""
    return run_argv([python, worker, json.dumps(spec)], env, timeout)


def run_argv(argv, env, timeout):
    """Runs one measured worker (a fresh interpreter) and returns the JSON
    object on the last line of its stdout; a crash, a timeout or other output
    becomes {"ok": False, "error": ...}. wall_s is the subprocess's whole
    life, start-up included."""
    t = time.perf_counter()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=BENCH)
        out = r.stdout.strip().splitlines()
        try:
            res = json.loads(out[-1]) if out else {"ok": False, "error": "no output"}
        except ValueError:
            res = {"ok": False, "error": f"unparsable output: {out[-1][:300]!r}"}
        if r.returncode != 0 and res.get("ok"):
            res = {"ok": False, "error": f"exit {r.returncode}"}
        if not res.get("ok"):
            res.setdefault("error", "failed")
            res["stderr"] = r.stderr[-3000:]
    except subprocess.TimeoutExpired:
        res = {"ok": False, "error": f"timed out after {timeout}s"}
    except OSError as e:
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    res["wall_s"] = time.perf_counter() - t
    return res


def run_one(a, cfg, man, ctx):
    ld = cfg["loader"]
    env = dict(os.environ)
    for k in ("RUNAI_STREAMER_CONCURRENCY", "RUNAI_STREAMER_MEMORY_LIMIT", "MODEL_STREAMER_READ_MODE"):
        env.pop(k, None)
    env.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    spec = {"files": man["files"]}
    if ld in PLAIN:
        py = sys.executable
        kind, _, impl = ld.partition("-")
        impl = {"py": "python", "c": "c"}.get(impl, a.plain_impl)
        spec.update(loader=kind, concurrency=cfg["concurrency"], chunk_bytes=a.chunk,
                    buffer_bytes=a.plain_buffer, impl=impl, c_library=ctx.get("c_library"))
    elif ld.startswith("safetensors"):
        py = ctx["safetensors_python"]
        spec.update(loader="safetensors", st_mode=ld.partition("-")[2] or "mmap")
    else:
        py = ctx["peer_python"] if ld == "peer" else ctx["ours_python"]
        spec.update(loader="streamer")
        env["RUNAI_STREAMER_CONCURRENCY"] = str(cfg["concurrency"])
        if cfg["mem"] is not None:
            env["RUNAI_STREAMER_MEMORY_LIMIT"] = str(cfg["mem"])
        if ld == "ours-unowned":
            spec.update(owned=False)
        elif ld.startswith("ours-"):
            env["MODEL_STREAMER_READ_MODE"] = ld.split("-", 1)[1]
    res = run_worker(py, WORKER, spec, env, a.timeout)
    # sanity: every loader delivered every byte
    if res.get("ok"):
        if ld in STREAMERS or ld.startswith("safetensors"):
            if res.get("tensors") != man["tensors"] or res.get("bytes") != man["tensor_bytes"]:
                res["ok"] = False
                res["error"] = (f"incomplete: {res.get('tensors')} tensors / {res.get('bytes')} bytes, "
                                f"want {man['tensors']} / {man['tensor_bytes']}")
        elif res.get("bytes") != man["total_file_bytes"]:
            res["ok"] = False
            res["error"] = f"incomplete: {res.get('bytes')} bytes, want {man['total_file_bytes']}"
        mod = res.get("module") or {}
        if ld == "peer" and mod.get("version") != PEER_VERSION:
            res["ok"] = False
            res["error"] = f"peer interpreter imported runai_model_streamer {mod.get('version')} from {mod.get('file')}"
        if ld.startswith("ours") and not os.path.realpath(mod.get("file", "")).startswith(
                os.path.realpath(os.path.join(REPO, "python"))):
            res["ok"] = False
            res["error"] = f"'ours' imported runai_model_streamer from {mod.get('file')}"
    return res


def prepare_cache(cache, man, others):
    """Put the page cache in the state the run is about; returns the resident fraction."""
    files = man["files"]
    if cache == "cold":
        drop_cache(files)
        return resident_fraction(files), False
    frac = resident_fraction(files)
    rewarmed = False
    if frac < 0.995:
        drop_cache(others)  # room for this size's files
        warm_cache(files)
        frac = resident_fraction(files)
        rewarmed = True
    return frac, rewarmed


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, mans):
    """Medians per (size, cache, loader, concurrency, mem)."""
    groups = {}
    for r in runs:
        k = (r["size"], r["cache"], r["loader"], r["concurrency"], r["mem"])
        groups.setdefault(k, []).append(r)
    out = {}
    for k, rs in groups.items():
        ok = [r["result"] for r in rs if r["result"].get("ok")]
        v = {
            "n": len(ok), "failed": len(rs) - len(ok),
            "gbps": median([r["gbps"] for r in ok]),
            "gbps_all": [round(r["gbps"], 3) for r in ok],
            "seconds": median([r["seconds"] for r in ok]),
            "first_tensor_s": median([r.get("first_tensor_s") for r in ok]),
            "peak_rss": median([r.get("peak_rss") for r in ok]),
            "peak_rss_delta": median([r.get("peak_rss_delta") for r in ok]),
            "max_peak_rss_delta": max([r.get("peak_rss_delta") or 0 for r in ok], default=None),
            "rss_file_delta": median([r.get("rss_file_delta") for r in ok]),
            "backing": sorted({str(r["page_cache_backed_hint"]) for r in ok if r.get("page_cache_backed_hint")}),
            "errors": sorted({r["result"].get("error", "") for r in rs if not r["result"].get("ok")}),
        }
        # A file-backed result whose RSS never grew by half the largest tensor has not
        # mapped the bytes in: the load deferred them to first use (safetensors' default).
        largest = mans[k[0]]["largest_tensor_bytes"]
        v["page_cache_backed"] = any(b.startswith("/") for b in v["backing"])
        v["lazy"] = bool(v["page_cache_backed"] and v["peak_rss_delta"] is not None
                         and v["peak_rss_delta"] < largest / 2)
        out[k] = v
    return out


def best(summary, size, cache, loaders, mem=None, allow_lazy=True):
    """(GB/s, concurrency, loader) of the fastest throughput run (mem=None) among loaders."""
    cands = [(v["gbps"], k[3] or 0, k[2]) for k, v in summary.items()
             if k[0] == size and k[1] == cache and k[2] in loaders and k[4] == mem and v["gbps"]
             and (allow_lazy or not v["lazy"])]
    return max(cands) if cands else (None, None, None)


def ratio(x, y):
    return x / y if x and y else None


def fmt_r(r):
    return f"{r:.2f}x" if r is not None else "n/a"


def fmt_g(x):
    return f"{x:.2f}" if x else "n/a"


def report(a, mans, summary, ctx):
    lines = []
    P = lines.append
    impl = ("Python threads calling os.preadv (GIL released)" if a.plain_impl == "python"
            else "C pthreads calling pread (bench/plainread.c, built with gcc)")
    buf = ("one byte per byte of data" if a.plain_buffer <= 0
           else fmt_bytes(a.plain_buffer) + ", reads wrap around it")
    P("")
    P(f"plain readers (single/pread/direct): {impl}; {fmt_bytes(a.chunk)} reads into one pre-faulted buffer ({buf})")
    P(f"GB/s = 1e9 bytes/s of tensor data (plain readers: of file bytes); median of {a.reps} repetition(s), "
      f"loaders interleaved in each repetition; ratios are between medians of the same run")
    P("pread at c=1 is the single-thread reader's figure (the same loop with one thread)")
    P("lazy = tensors are views of a file mapping whose pages the load did not map in (page cache backed, "
      "read on first use): their GB/s is not a read rate and they are left out of the targets")
    targets = []
    ours_list = [x for x in a.loaders if x.startswith("ours") and x in SWEPT]
    ours_mem = [x for x in a.loaders if x.startswith("ours")]
    pread_l = [x for x in a.loaders if x.startswith("pread")]
    direct_l = [x for x in a.loaders if x.startswith("direct")]
    st_l = [x for x in a.loaders if x.startswith("safetensors")]
    for size in [s["name"] for s in a.sizes]:
        man = mans[size]
        for cache in a.caches:
            here = {k: v for k, v in summary.items() if k[0] == size and k[1] == cache}
            if not here:
                continue
            P("")
            P(f"== {size}: {len(man['files'])} file(s), {fmt_bytes(man['total_file_bytes'])}, {man['tensors']} tensors, "
              f"largest {fmt_bytes(man['largest_tensor_bytes'])}; page cache {cache.upper()} ==")
            conc = sorted({k[3] for k in here if k[2] in SWEPT and k[4] is None})
            P(f"{'GB/s by concurrency':<46}" + "".join(f"{'c=' + str(c):>8}" for c in conc))
            sweep = {}
            for ld in a.loaders:
                if ld not in SWEPT:
                    continue
                vals = []
                for c in conc:
                    v = here.get((size, cache, ld, c, None))
                    vals.append(v["gbps"] if v else None)
                sweep[ld] = vals
                P(f"{LOADERS[ld]:<46}" + "".join(
                    f"{x:8.2f}" if x else f"{'ERR' if (size, cache, ld, c, None) in here else '-':>8}"
                    for x, c in zip(vals, conc)))
            for o in ours_list:
                for ref in ["peer"] + (pread_l if cache == "hot" else direct_l):
                    if o in sweep and ref in sweep:
                        P(f"{'  ' + o + ' / ' + ref + ' (same c)':<46}" +
                          "".join(f"{fmt_r(ratio(x, y)):>8}" for x, y in zip(sweep[o], sweep[ref])))
            for ld in a.loaders:
                if ld in SINGLE_SHOT:
                    v = here.get((size, cache, ld, 1 if ld.startswith("single") else None, None))
                    g = f"{v['gbps']:8.2f}" if v and v["gbps"] else ("     ERR" if v else "       -")
                    flag = "  lazy (page-cache-backed views)" if v and v["lazy"] else (
                        "  page-cache-backed" if v and v["page_cache_backed"] else "")
                    P(f"{LOADERS[ld]:<46}{g}{flag}")

            P("")
            P(f"  {'loader':<22}{'c':>4}{'mem':>8}{'GB/s':>8}{'sec':>8}{'1st s':>8}{'peak RSS':>12}"
              f"{'peak-base':>12}{'file RSS+':>12}  tensors in")
            order = {ld: i for i, ld in enumerate(a.loaders)}
            for k, v in sorted([kv for kv in here.items() if not kv[1].get("alias")],
                               key=lambda kv: (order.get(kv[0][2], 99), kv[0][4] is not None,
                                               kv[0][4] if kv[0][4] is not None else -2, kv[0][3] or 0)):
                g = f"{v['gbps']:.2f}" if v["gbps"] else "ERR"
                ft = f"{v['first_tensor_s']:.2f}" if v["first_tensor_s"] is not None else "-"
                sec = f"{v['seconds']:.2f}" if v["seconds"] is not None else "-"
                c = k[3] if k[3] else "-"
                m = mem_label(k[4]) if k[2] in STREAMERS else "-"
                back = ",".join(sorted({"page cache" if b.startswith("/") else b for b in v["backing"]}))
                if v["lazy"]:
                    back += " (lazy)"
                err = f"  ERRORS: {'; '.join(v['errors'])[:300]}" if v["errors"] else ""
                P(f"  {k[2]:<22}{c:>4}{m:>8}{g:>8}{sec:>8}{ft:>8}"
                  f"{fmt_bytes(v['peak_rss']):>12}{fmt_bytes(v['peak_rss_delta']):>12}"
                  f"{fmt_bytes(v['rss_file_delta']):>12}  {back}{err}")

            P("")
            for o in ours_list:
                ob, oc, _ = best(summary, size, cache, [o])
                olazy = any(v["lazy"] for k, v in here.items() if k[2] == o and k[4] is None)
                note = "  [ours returned lazily mapped tensors: not a read rate]" if olazy else ""
                pb, pc, _ = best(summary, size, cache, ["peer"])
                if cache == "hot":
                    rb, rc, rl = best(summary, size, cache, pread_l)
                    sb, _, sl = best(summary, size, cache, st_l, allow_lazy=False)
                    fast, fl = max(((x, l) for x, l in ((rb, f"{rl} c={rc}"), (sb, sl)) if x), default=(None, None))
                    r1, r2 = ratio(ob, fast), ratio(ob, pb)
                    P(f"  HOT  {o} best {fmt_g(ob)} GB/s (c={oc}) / faster of pread and safetensors "
                      f"({fmt_g(fast)}, {fl}) = {fmt_r(r1)};  / peer ({fmt_g(pb)}, c={pc}) = {fmt_r(r2)}{note}")
                    targets.append((f"{size} hot:  {o} >= 0.9x the faster of multi-threaded pread and safetensors{note}", r1, 0.9))
                    targets.append((f"{size} hot:  {o} >= 2x the peer{note}", r2, 2.0))
                else:
                    db, dc, dl = best(summary, size, cache, direct_l)
                    r1, r2 = ratio(ob, pb), ratio(ob, db)
                    P(f"  COLD {o} best {fmt_g(ob)} GB/s (c={oc}) / peer ({fmt_g(pb)}, c={pc}) = {fmt_r(r1)};  "
                      f"/ O_DIRECT ({fmt_g(db)}, {dl} c={dc}) = {fmt_r(r2)}{note}")
                    targets.append((f"{size} cold: {o} >= the peer{note}", r1, 1.0))
                    targets.append((f"{size} cold: {o} >= 0.9x multi-threaded O_DIRECT{note}", r2, 0.9))
            if not ours_list and "peer" in a.loaders:
                pb, pc, _ = best(summary, size, cache, ["peer"])
                refs = pread_l if cache == "hot" else direct_l
                rb, rc, rl = best(summary, size, cache, refs)
                P(f"  {cache.upper()} peer best {fmt_g(pb)} GB/s (c={pc}) / {rl} ({fmt_g(rb)}, c={rc}) = {fmt_r(ratio(pb, rb))}")
            lim = man["largest_tensor_bytes"] + 64 * MiB
            mem_rows = [(k, v) for k, v in here.items() if k[2] in STREAMERS and k[4] is not None]
            if mem_rows:
                P(f"  peak RSS above the post-import baseline, per memory limit (c={a.base_concurrency}; "
                  f"limit-0 target: < largest tensor + 64 MiB = {fmt_bytes(lim)}):")
                for ld in [x for x in a.loaders if x in STREAMERS]:
                    cells = []
                    for m in a.mem_limits:
                        v = here.get((size, cache, ld, a.base_concurrency, m))
                        if v:
                            cells.append(f"{mem_label(m)}: {fmt_bytes(v['max_peak_rss_delta']) if v['n'] else 'ERR'}"
                                         f" ({fmt_g(v['gbps'])} GB/s)")
                    P(f"    {ld:<12} " + ";  ".join(cells))
            for o in ours_mem:
                v = here.get((size, cache, o, a.base_concurrency, 0))
                if v and v["n"]:
                    worst = v["max_peak_rss_delta"]
                    targets.append((f"{size} {cache}: {o} memory limit 0 peak RSS {fmt_bytes(worst)} "
                                    f"< largest tensor + 64 MiB ({fmt_bytes(lim)})", lim / worst if worst else 99.0, 1.0))
    P("")
    P("targets (value = measured ratio; for memory, allowed / measured):")
    for name, r, need in targets:
        if r is None:
            P(f"  [ n/a ] {name}: not measured")
        else:
            P(f"  [{' MET ' if r >= need else ' MISS'}] {name}: {r:.2f} (need >= {need})")
    if not ours_list:
        P(f"  this project's streamer was not measured: {ctx.get('ours_missing', 'not selected (--loaders)')}")
    if ctx.get("peer_missing"):
        P(f"  the peer was not measured: {ctx['peer_missing']}")
    return "\n".join(lines), targets


# --------------------------------------------------------------------------

def main(argv=None):
    a = get_args(argv)
    t_start = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(BENCH, "results", f"{stamp}.json")
    ctx = {}

    # interpreters
    ours_wanted = [x for x in a.loaders if x.startswith("ours")]
    torch_version = a.torch_version
    if ours_wanted:
        ok, msg = ours_status(a.ours_python)
        if ok:
            ctx["ours_python"] = a.ours_python
            torch_version = torch_version or msg.split("+")[0]
            log(f"ours: {a.ours_python} (torch {msg})")
        else:
            ctx["ours_missing"] = msg.splitlines()[-1] if msg else "unavailable"
            log(f"WARNING: this project's streamer is not usable, skipping it: {msg}")
            a.loaders = [x for x in a.loaders if not x.startswith("ours")]
    torch_version = torch_version or DEFAULT_TORCH
    if "peer" in a.loaders:
        try:
            ctx["peer_python"] = a.peer_python or ensure_peer_venv(torch_version)
            log(f"peer: {ctx['peer_python']}")
        except (OSError, subprocess.CalledProcessError) as e:
            ctx["peer_missing"] = f"could not create {PEER_VENV}: {e}"
            log(f"WARNING: {ctx['peer_missing']}; skipping the peer")
            a.loaders = [x for x in a.loaders if x != "peer"]
    if any(x.startswith("safetensors") for x in a.loaders):
        cands = [a.safetensors_python] if a.safetensors_python else \
            [ctx.get("ours_python"), sys.executable]
        for c in cands:
            if c and py_probe(c, "import safetensors, torch")[0]:
                ctx["safetensors_python"] = c
                break
        else:
            raise SystemExit("no interpreter with safetensors and torch; pass --safetensors-python")
        log(f"safetensors: {ctx['safetensors_python']}")
    if any(x in PLAIN and (x.endswith("-c") or (a.plain_impl == "c" and "-" not in x)) for x in a.loaders):
        ctx["c_library"] = build_plain_c()

    # data
    os.makedirs(a.data_dir, exist_ok=True)
    mans = {s["name"]: ensure_dataset(a.data_dir, s) for s in a.sizes}
    all_files = [f for m in mans.values() for f in m["files"]]

    cfgs = {s["name"]: make_configs(a, s) for s in a.sizes}
    total = len(a.caches) * sum(sum(a.reps if not c.get("memrun") else min(a.reps, a.mem_reps) for c in cs)
                                for cs in cfgs.values())
    log(f"{total} runs: " + ", ".join(f"{k}: {len(v)} configurations" for k, v in cfgs.items())
        + f"; x {len(a.caches)} cache state(s) x {a.reps} repetition(s) (memory-limit runs x {min(a.reps, a.mem_reps)})")
    meta = {
        "started": stamp, "argv": sys.argv[1:], "host": platform.node(), "kernel": platform.release(),
        "cpus": os.cpu_count(), "mem_total": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": sys.version.split()[0], "interpreters": {k: v for k, v in ctx.items() if k.endswith("python")},
        "plain_impl": a.plain_impl, "chunk_bytes": a.chunk, "plain_buffer_bytes": a.plain_buffer,
        "reps": a.reps, "concurrency": a.concurrency, "sweep_sizes": a.sweep_sizes, "mem_limits": a.mem_limits, "mem_concurrency": a.base_concurrency,
        "loaders": a.loaders, "caches": a.caches, "ours_missing": ctx.get("ours_missing"), "peer_missing": ctx.get("peer_missing"),
        "datasets": {k: {kk: vv for kk, vv in m.items()} for k, m in mans.items()},
    }
    runs = []
    n = 0

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump({"meta": meta, "runs": runs}, f, indent=1)
        os.replace(out + ".tmp", out)

    t_runs = time.perf_counter()

    def eta(done):
        left = (time.perf_counter() - t_runs) / done * (total - done)
        return f" eta {left / 60:.0f} min" if done < total else ""

    for rep in range(a.reps):
        for s in a.sizes:
            man = mans[s["name"]]
            cs = [c for c in cfgs[s["name"]] if rep < a.mem_reps or not c.get("memrun")]
            order = cs[rep % len(cs):] + cs[:rep % len(cs)]  # rotated: no loader always goes first
            others = [f for f in all_files if f not in man["files"]]
            for cache in a.caches:
                for cfg in order:
                    n += 1
                    frac, rewarmed = prepare_cache(cache, man, others)
                    res = run_one(a, cfg, man, ctx)
                    runs.append({"rep": rep, "size": s["name"], "cache": cache, "loader": cfg["loader"],
                                 "concurrency": cfg["concurrency"], "mem": cfg["mem"],
                                 "resident_before": frac, "rewarmed": rewarmed, "result": res})
                    if res.get("ok"):
                        ft = res.get("first_tensor_s")
                        log(f"[{n:3d}/{total}] rep {rep + 1} {s['name']} {cache:4} {cfg['loader']:<12} "
                            f"c={cfg['concurrency'] or '-':<3} mem={mem_label(cfg['mem']) if cfg['loader'] in STREAMERS else '-':<8} "
                            f"{res['gbps']:6.2f} GB/s {res['seconds']:6.2f}s 1st={'-' if ft is None else f'{ft:.2f}s':<6} "
                            f"dRSS={fmt_bytes(res['peak_rss_delta']):<10} res={frac:.2f} wall={res['wall_s']:.0f}s{eta(n)}")
                    else:
                        log(f"[{n:3d}/{total}] rep {rep + 1} {s['name']} {cache:4} {cfg['loader']:<12} "
                            f"c={cfg['concurrency']} mem={mem_label(cfg['mem'])} FAILED: {res.get('error')}")
                        if res.get("stderr"):
                            log("    " + res["stderr"].strip().replace("\n", "\n    ")[-1500:])
                    save()
    summary = summarize(runs, mans)
    for k, v in list(summary.items()):  # pread with one thread = the single-thread reader
        if k[2].startswith("single") and ("pread" + k[2][len("single"):]) in a.loaders and \
                1 in a.concurrency and k[0] in a.sweep_sizes:
            summary.setdefault((k[0], k[1], "pread" + k[2][len("single"):], 1, None), dict(v, alias=k[2]))
    text, targets = report(a, mans, summary, ctx)
    meta["elapsed_s"] = time.perf_counter() - t_start
    meta["summary"] = [{"size": k[0], "cache": k[1], "loader": k[2], "concurrency": k[3], "mem": k[4], **v}
                       for k, v in summary.items() if not v.get("alias")]
    meta["targets"] = [{"target": t, "value": r, "need": need, "met": (r is not None and r >= need)}
                       for t, r, need in targets]
    meta["report"] = text
    save()
    log(text)
    log(f"\nresults: {out}  ({meta['elapsed_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
