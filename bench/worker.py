"""One measured load, run as a fresh subprocess by bench/run.py.

Usage: <python> bench/worker.py '<json spec>'   (or the spec on stdin when argv has none)

The spec names the loader and the files. The worker imports what that loader
needs (imports are not timed), prepares what the loader is allowed to have
prepared (the plain readers' pre-faulted buffer), resets the peak-RSS counter,
then times the load and prints one JSON object on the last line of stdout.

Loaders:
  single       one thread, os.readv of each file, in chunk_bytes pieces, into one
               pre-faulted anonymous buffer.
  pread        `concurrency` threads take chunk_bytes pieces of all the files off
               one shared counter and os.preadv each into its own place in one
               pre-faulted anonymous buffer (buffered I/O, i.e. from/through the
               page cache).
  direct       the same with the files opened O_DIRECT (page-aligned buffer,
               4 KiB-aligned offsets and lengths): bypasses the page cache.
  safetensors  safetensors.torch.load_file() of every file, the dicts kept; st_mode
               "mmap" (its default), "populate" (then MADV_POPULATE_READ over every
               tensor) or "pread" (backend="pread"). See run_safetensors().
  streamer     runai_model_streamer.SafetensorsStreamer: stream_files(all files)
               then iterate get_tensors() to the end. Which package that is (this
               project or the PyPI peer) depends on the interpreter running us.

The plain readers run in Python threads (os.preadv releases the GIL) unless the
spec says impl="c": then the same loop runs in C threads from bench/plainread.c,
compiled by run.py, called through ctypes (which releases the GIL too).

spec["consume"] says what is done with the bytes (issue 8: a load is measured as
a user uses it, not as tensors are handed out):
  none  nothing: the loops only count tensors and add up numel * element_size
        (and for safetensors "populate", one madvise per tensor). Hand-out only.
  sum   every tensor goes through python/runai_model_streamer/_consume.py's
        Consumer("sum") (a uint8 sum over every byte), the same file for every
        loader, loaded by path. The plain readers sum each piece they read, in
        the thread that read it (Python threads only).
  copy  Consumer("copy"): every tensor is copied into one destination written
        before the clock. The plain readers already pread into a pre-faulted
        destination, which is that copy: they add nothing.
"""

import json
import mmap
import os
import sys
import threading
import time

PAGE = mmap.PAGESIZE
CONSUME_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "python", "runai_model_streamer", "_consume.py")


def make_consumer(spec):
    """The spec's consumer (None for "none"), from _consume.py loaded by path: the
    peer's venv has its own runai_model_streamer, and every loader must run this code."""
    kind = spec.get("consume", "none")
    if kind == "none":
        return None
    import importlib.util
    ms = importlib.util.spec_from_file_location("ms_bench_consume", CONSUME_PY)
    mod = importlib.util.module_from_spec(ms)
    ms.loader.exec_module(mod)
    c = mod.Consumer(kind)
    c.prepare(int(spec.get("largest_tensor_bytes", 0)))
    return c
DIRECT_ALIGN = 4096


def proc_status():
    """The kB fields of /proc/self/status we report, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def anon_buffer(size):
    """A page-aligned anonymous mapping, touched once per page (pre-faulted)."""
    size = max(PAGE, (size + PAGE - 1) // PAGE * PAGE)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE)
    # Write every page so the kernel has backed it before the clock starts:
    # this is what "pre-faulted" means here. A zero-length write per page
    # would not fault; a one-byte write does.
    mv = memoryview(buf)
    one = b"\1"
    for off in range(0, size, PAGE):
        mv[off:off + 1] = one
    del mv
    return buf


def plain_chunks(files, chunk, direct):
    """[(file index, offset, length)] covering every byte of every file."""
    out = []
    for i, (path, size) in enumerate(files):
        off = 0
        while off < size:
            n = min(chunk, size - off)
            if direct:  # O_DIRECT lengths must be block multiples; EOF gives a short read
                n = (n + DIRECT_ALIGN - 1) // DIRECT_ALIGN * DIRECT_ALIGN
            out.append((i, off, n))
            off += chunk
    return out


def run_plain_python(spec, files, buf, nslots, chunk, direct):
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fds = [os.open(p, flags) for p, _ in files]
    chunks = plain_chunks(files, chunk, direct)
    threads = 1 if spec["loader"] == "single" else max(1, int(spec["concurrency"]))
    mv = memoryview(buf)
    counter = iter(range(len(chunks)))  # next() on a range iterator is atomic under the GIL
    lock = threading.Lock()
    totals = [0] * threads
    errors = []
    # One consumer per thread (their checksums are added at the end): "sum" sums
    # each piece where it landed, in the thread that read it.
    cons = [make_consumer(spec) if spec.get("consume") == "sum" else None for _ in range(threads)]
    if cons[0] is not None:
        import torch

    def work(t):
        got = 0
        c = cons[t]
        try:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    break
                fi, off, n = chunks[k]
                dst = (k % nslots) * chunk
                r = os.preadv(fds[fi], [mv[dst:dst + n]], off)
                got += r
                if r < min(n, files[fi][1] - off):
                    raise IOError(f"short read {r} at {files[fi][0]}:{off}")
                if c is not None:
                    c(torch.frombuffer(mv[dst:dst + r], dtype=torch.uint8))
        except BaseException as e:  # reported, never swallowed
            errors.append(repr(e))
        totals[t] = got

    t0 = time.perf_counter()
    if threads == 1:
        work(0)
    else:
        ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    t1 = time.perf_counter()
    for fd in fds:
        os.close(fd)
    del mv
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    if cons[0] is not None:
        spec["_checksum"] = sum(c.checksum for c in cons) & 0xFFFFFFFFFFFFFFFF
    return t0, t1, sum(totals)


def run_plain_c(spec, files, buf, nslots, chunk, direct):
    if spec.get("consume") == "sum":
        raise ValueError("consume=sum: the C plain readers do not sum; use impl python")
    import ctypes
    lib = ctypes.CDLL(spec["c_library"])
    fn = lib.plain_read
    fn.restype = ctypes.c_longlong
    fn.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_longlong),
                   ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_void_p,
                   ctypes.c_longlong, ctypes.c_int]
    n = len(files)
    paths = (ctypes.c_char_p * n)(*[os.fsencode(p) for p, _ in files])
    sizes = (ctypes.c_longlong * n)(*[s for _, s in files])
    threads = 1 if spec["loader"] == "single" else max(1, int(spec["concurrency"]))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    t0 = time.perf_counter()
    got = fn(paths, sizes, n, threads, chunk, addr, nslots, 1 if direct else 0)
    t1 = time.perf_counter()
    if got < 0:
        raise OSError(-got, os.strerror(-got))
    return t0, t1, got


def run_plain(spec, res):
    files = [(p, os.path.getsize(p)) for p in spec["files"]]
    total = sum(s for _, s in files)
    chunk = int(spec.get("chunk_bytes", 8 << 20))
    direct = spec["loader"] == "direct"
    nchunks_total = sum((s + chunk - 1) // chunk for _, s in files)
    # The destination: one buffer, either one slot per chunk (every byte kept)
    # or a smaller ring of slots the chunks wrap around (buffer_bytes).
    want = int(spec.get("buffer_bytes", 0))
    nslots = nchunks_total if want <= 0 else max(1, min(nchunks_total, want // chunk))
    t = time.perf_counter()
    buf = anon_buffer(nslots * chunk)
    res["prefault_s"] = time.perf_counter() - t
    res["buffer_bytes"] = len(buf)
    impl = spec.get("impl", "python")
    res["impl"] = impl
    run = run_plain_c if impl == "c" else run_plain_python
    res["baseline"] = baseline(res)
    t0, t1, got = run(spec, files, buf, nslots, chunk, direct)
    res["status_end"] = proc_status()
    res["seconds"] = t1 - t0
    res["bytes"] = min(got, total)
    res["consume"] = spec.get("consume", "none")
    if "_checksum" in spec:
        res["checksum"] = spec["_checksum"]  # of whole files: headers included
    res["tensors"] = None
    res["first_tensor_s"] = None
    buf.close()


MADV_POPULATE_READ = 22  # Linux >= 5.14


def populate(tensors):
    """Map every page of every tensor into the process: one madvise(MADV_POPULATE_READ)
    per tensor, done by the kernel (the data is never read by user code). For a
    page-cache-backed (mmap) tensor this is what its first access would cost:
    minor faults when the page cache is hot, reads from disk when it is cold."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for t in tensors:
        n = t.numel() * t.element_size()
        if n == 0:
            continue
        addr = t.data_ptr()
        lo = addr - addr % PAGE
        if libc.madvise(lo, addr + n - lo, MADV_POPULATE_READ) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"madvise(MADV_POPULATE_READ): {os.strerror(e)}")


def run_safetensors(spec, res):
    """safetensors.torch.load_file() on each file, the dicts kept (what a caller holds).

    mode "mmap":     load_file(path), the default (backend="mmap" in safetensors >= 0.8:
                     tensors are views of a shared file mapping, nothing is read yet).
    mode "populate": the same, then madvise(MADV_POPULATE_READ) over each tensor.
    mode "pread":    load_file(path, backend="pread") (safetensors >= 0.8): read with pread(2).
    """
    import safetensors
    from safetensors.torch import load_file
    import torch  # noqa: F401  (imported before the clock, as the streamers import it)
    mode = spec.get("st_mode", "mmap")
    res["module"] = {"name": "safetensors", "version": safetensors.__version__,
                     "file": safetensors.__file__, "mode": mode}
    kwargs = {"backend": "pread"} if mode == "pread" else {}
    consumer = make_consumer(spec)
    res["baseline"] = baseline(res)
    out = {}
    nbytes = 0
    first = None
    t0 = time.perf_counter()
    for path in spec["files"]:
        d = load_file(path, **kwargs)
        if mode == "populate":
            populate(d.values())
        if first is None:
            first = time.perf_counter()
        for k, t in d.items():
            nbytes += t.numel() * t.element_size()
            if consumer is not None:
                consumer(t)
        out.update(d)
    t1 = time.perf_counter()
    res["status_end"] = proc_status()
    res["seconds"] = t1 - t0
    res["first_tensor_s"] = (first - t0) if first is not None else None  # first FILE, load_file is per file
    res["bytes"] = nbytes
    res["tensors"] = len(out)
    res["page_cache_backed_hint"] = _backing_hint(out)
    _consumer_result(res, consumer)
    del out


def _consumer_result(res, consumer):
    res["consume"] = consumer.kind if consumer is not None else "none"
    if consumer is not None:
        res["checksum"] = consumer.checksum if consumer.kind == "sum" else None
        res["consumed_bytes"] = consumer.bytes


def _backing_hint(tensors):
    """Whether the tensors' memory looks like a file mapping (page cache) or not."""
    try:
        t = max(tensors.values(), key=lambda x: x.numel() * x.element_size())
        addr = t.data_ptr()
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi:
                    return parts[5] if len(parts) > 5 else "anonymous"
    except Exception as e:  # a hint only
        return f"unknown ({e!r})"
    return "unknown"


def run_streamer(spec, res):
    import torch  # noqa: F401
    import runai_model_streamer
    from runai_model_streamer import SafetensorsStreamer
    try:
        from importlib.metadata import version
        ver = version("runai-model-streamer")
    except Exception:
        ver = getattr(runai_model_streamer, "__version__", None)
    res["module"] = {"name": "runai_model_streamer", "version": ver,
                     "file": runai_model_streamer.__file__}
    consumer = make_consumer(spec)
    res["baseline"] = baseline(res)
    n = 0
    nbytes = 0
    first = None
    backing = None
    t0 = time.perf_counter()
    with SafetensorsStreamer() as s:
        if spec.get("owned", True):
            s.stream_files(list(spec["files"]))
        else:
            s.stream_files(list(spec["files"]), owned=False)
        for _name, t in s.get_tensors():
            if first is None:
                first = time.perf_counter()
            n += 1
            if consumer is not None:
                consumer(t)
            b = t.numel() * t.element_size()
            nbytes += b
            if backing is None and b >= 16 << 20:
                # Once per run (well under a millisecond): what memory the streamer hands out.
                backing = _addr_backing(t.data_ptr())
        t1 = time.perf_counter()
        res["status_end"] = proc_status()
        res["page_cache_backed_hint"] = backing
        # This project says which read path each file took (a mapping or a copy).
        strategies = getattr(s, "read_strategies", None)
        if strategies is not None:
            res["read_strategies"] = sorted(set(strategies))
    t2 = time.perf_counter()
    res["seconds"] = t1 - t0
    res["close_s"] = t2 - t1
    res["first_tensor_s"] = (first - t0) if first is not None else None
    res["bytes"] = nbytes
    res["tensors"] = n
    _consumer_result(res, consumer)


def _addr_backing(addr):
    if addr is None:
        return "unknown"
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi:
                    return parts[5] if len(parts) > 5 else "anonymous"
    except Exception as e:
        return f"unknown ({e!r})"
    return "unmapped now"


_T_START = time.perf_counter()


def process_cpu_s():
    """User + system CPU seconds of this process, all threads (the Go
    engine's included)."""
    t = os.times()
    return t.user + t.system


def baseline(res):
    """Reset the peak counter and record where RSS stands before the clock starts."""
    res["setup_s"] = time.perf_counter() - _T_START  # imports (+ the plain readers' pre-fault)
    res["hwm_reset"] = reset_peak_rss()
    res["cpu_at_start"] = process_cpu_s()
    return proc_status()


def main():
    raw = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    spec = json.loads(raw)
    res = {"loader": spec["loader"], "pid": os.getpid(), "python": sys.executable}
    t = time.perf_counter()
    loader = spec["loader"]
    try:
        if loader in ("single", "pread", "direct"):
            run_plain(spec, res)
        elif loader == "safetensors":
            run_safetensors(spec, res)
        elif loader == "streamer":
            run_streamer(spec, res)
        else:
            raise ValueError(f"unknown loader {loader!r}")
        # The load's own CPU (its close included), imports and start-up left
        # out: steadier than wall time when the machine is shared.
        res["load_cpu_s"] = process_cpu_s() - res.pop("cpu_at_start")
        end = res.pop("status_end")
        base = res.pop("baseline")
        res["rss_baseline"] = base["VmRSS"]
        res["peak_rss"] = end["VmHWM"]
        res["peak_rss_delta"] = end["VmHWM"] - base["VmRSS"]
        res["rss_end"] = end["VmRSS"]
        res["rss_anon_end"] = end.get("RssAnon")
        res["rss_file_end"] = end.get("RssFile")
        res["rss_file_delta"] = end.get("RssFile", 0) - base.get("RssFile", 0)
        res["gbps"] = res["bytes"] / res["seconds"] / 1e9 if res["seconds"] > 0 else None
        res["ok"] = True
    except BaseException as e:
        import traceback
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-4000:]
    res["worker_s"] = time.perf_counter() - t
    sys.stdout.flush()
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
