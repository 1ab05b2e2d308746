"""One measured "page cache -> device" load, run as a fresh subprocess by bench/gpu.py.

Usage: <python> bench/gpu_worker.py '<json spec>'

The spec names the loader, the files and the device. Imports, the CUDA
context and the buffers a loader may have ready beforehand are set up before
the clock; the worker then times the load (device work included: the clock
stops after torch.cuda.synchronize()) and prints one JSON object on the last
line of stdout.

Loaders:
  pinned-copy  host -> device copies from one pre-faulted pinned buffer
               (buffer_bytes) into consecutive slices of one preallocated
               device buffer, non_blocking, until `copy_bytes` have been
               copied. On the CPU: the same loop as plain memcpy (no pinning).
  read-pinned  `concurrency` threads os.preadv chunk_bytes pieces of the files
               into slots of the same kind of pinned buffer (no device work):
               the page-cache read rate.
  streamer     runai_model_streamer.SafetensorsStreamer: stream_files(files,
               device=...), then get_tensors() to the end. This project or the
               PyPI peer, depending on the interpreter and PYTHONPATH.
  safetensors  safetensors.safe_open(path, framework="pt", device=...) and
               get_tensor() of every tensor.

Device tensors are kept until the clock stops: that is what loading a model
does, and it stops the caching allocator from handing the same memory back.
CPU tensors are not kept, so a memory-limited streamer can reuse its ring.
"""

import ctypes
import json
import os
import sys
import time

import worker  # bench/worker.py: the plain reader loop and the RSS helpers


def device_of(spec):
    import torch
    dev = torch.device(spec["device"])
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {spec['device']!r}: CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        # The CUDA context (hundreds of ms) is set-up, not loading: made before the clock.
        torch.cuda.set_device(dev)
        torch.empty(1, device=dev)
        torch.cuda.synchronize(dev)
    return dev


def sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def host_buffer(nbytes, dev):
    """A pre-faulted host buffer: pinned when the device is CUDA (never asked for otherwise)."""
    import torch
    pin = dev.type == "cuda"
    buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    buf.fill_(1)  # fault every page in now, not inside the clock
    return buf


def device_info(dev):
    import torch
    info = {"torch": torch.__version__, "device": str(dev)}
    if dev.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def run_pinned_copy(spec, res):
    import torch
    dev = device_of(spec)
    total = int(spec["copy_bytes"])
    chunk = min(int(spec["buffer_bytes"]), total)
    src = host_buffer(chunk, dev)
    dst = torch.empty(total, dtype=torch.uint8, device=dev)
    dst.fill_(0)  # backed (and, on the CPU, faulted) before the clock
    dst[:chunk].copy_(src, non_blocking=True)  # one untimed copy: first-use costs out of the way
    sync(dev)
    res.update(device_info(dev), pinned=src.is_pinned() if dev.type == "cuda" else False,
               buffer_bytes=chunk)
    res["baseline"] = worker.baseline(res)
    t0 = time.perf_counter()
    for off in range(0, total, chunk):
        n = min(chunk, total - off)
        dst[off:off + n].copy_(src[:n], non_blocking=True)
    sync(dev)
    t1 = time.perf_counter()
    res["status_end"] = worker.proc_status()
    res["seconds"] = t1 - t0
    res["bytes"] = total
    res["tensors"] = None
    res["first_tensor_s"] = None


def run_read_pinned(spec, res):
    dev = device_of(spec)
    files = [(p, os.path.getsize(p)) for p in spec["files"]]
    chunk = int(spec["chunk_bytes"])
    nchunks = sum((s + chunk - 1) // chunk for _, s in files)
    nslots = max(1, min(nchunks, int(spec["buffer_bytes"]) // chunk))
    buf = host_buffer(nslots * chunk, dev)
    # A writable view of the tensor's memory for os.preadv (no numpy needed).
    view = (ctypes.c_ubyte * (nslots * chunk)).from_address(buf.data_ptr())
    res.update(device_info(dev), buffer_bytes=nslots * chunk, concurrency=spec["concurrency"],
               pinned=buf.is_pinned() if dev.type == "cuda" else False)
    res["baseline"] = worker.baseline(res)
    t0, t1, got = worker.run_plain_python({"loader": "pread", "concurrency": spec["concurrency"]},
                                          files, view, nslots, chunk, False)
    res["status_end"] = worker.proc_status()
    del view
    res["seconds"] = t1 - t0
    res["bytes"] = got
    res["tensors"] = None
    res["first_tensor_s"] = None


def run_streamer(spec, res):
    import torch  # noqa: F401
    import runai_model_streamer
    from runai_model_streamer import SafetensorsStreamer
    try:
        from importlib.metadata import version
        ver = version("runai-model-streamer")
    except Exception:
        ver = getattr(runai_model_streamer, "__version__", None)
    res["module"] = {"name": "runai_model_streamer", "version": ver, "file": runai_model_streamer.__file__}
    dev = device_of(spec)
    res.update(device_info(dev))
    keep = [] if dev.type == "cuda" else None
    n = nbytes = 0
    first = None
    copier = None
    on_device = True
    res["baseline"] = worker.baseline(res)
    t0 = time.perf_counter()
    with SafetensorsStreamer() as s:
        s.stream_files(list(spec["files"]), device=spec["device"])
        for _name, t in s.get_tensors():
            if first is None:
                first = time.perf_counter()
                on_device = t.device == dev
            if copier is None:
                # This project's host->device copier lives in the iterator's state,
                # which is dropped when the iteration ends: hold on to it here.
                for state in list(getattr(s, "_iterators", ())):
                    copier = getattr(state, "copier", None) or copier
            n += 1
            nbytes += t.numel() * t.element_size()
            if keep is not None:
                keep.append(t)
        sync(dev)
        t1 = time.perf_counter()
        res["status_end"] = worker.proc_status()
    t2 = time.perf_counter()
    res["seconds"] = t1 - t0
    res["close_s"] = t2 - t1
    res["first_tensor_s"] = (first - t0) if first is not None else None
    res["bytes"] = nbytes
    res["tensors"] = n
    res["on_device"] = on_device
    if copier is not None:
        res["copier"] = {"copies": copier.copies, "pinned_copies": copier.pinned_copies,
                         "ring_pinned": getattr(copier, "pinned", None) is not None}
    del keep


def run_safetensors(spec, res):
    import safetensors
    from safetensors import safe_open
    res["module"] = {"name": "safetensors", "version": safetensors.__version__, "file": safetensors.__file__}
    dev = device_of(spec)
    res.update(device_info(dev))
    keep = [] if dev.type == "cuda" else None
    n = nbytes = 0
    first = None
    res["baseline"] = worker.baseline(res)
    t0 = time.perf_counter()
    for path in spec["files"]:
        with safe_open(path, framework="pt", device=spec["device"]) as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if first is None:
                    first = time.perf_counter()
                n += 1
                nbytes += t.numel() * t.element_size()
                if keep is not None:
                    keep.append(t)
    sync(dev)
    t1 = time.perf_counter()
    res["status_end"] = worker.proc_status()
    res["seconds"] = t1 - t0
    res["first_tensor_s"] = (first - t0) if first is not None else None
    res["bytes"] = nbytes
    res["tensors"] = n
    del keep


LOADERS = {
    "pinned-copy": run_pinned_copy,
    "read-pinned": run_read_pinned,
    "streamer": run_streamer,
    "safetensors": run_safetensors,
}


def main():
    spec = json.loads(sys.argv[1])
    res = {"loader": spec["loader"], "pid": os.getpid(), "python": sys.executable}
    t = time.perf_counter()
    try:
        LOADERS[spec["loader"]](spec, res)
        end = res.pop("status_end")
        base = res.pop("baseline")
        res["peak_rss"] = end["VmHWM"]
        res["peak_rss_delta"] = end["VmHWM"] - base["VmRSS"] if res.get("hwm_reset") else None
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
