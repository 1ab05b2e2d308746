"""The model-streamer command.

  model-streamer stream PATH... [--concurrency N] [--memory-limit N]
                                [--read-mode M] [--chunk-bytes N] [--json]
  model-streamer demo [--dir D] [--size-gb G] [--keep] [--cold] [--json]
  model-streamer ls URI [--recursive] [--json]
  model-streamer pull URI DIR [--allow PATTERN ...] [--ignore PATTERN ...] [--cache-dir DIR]
  model-streamer checksum PATH|URI... [--json]
  model-streamer verify PATH|URI... [--json]
  model-streamer cache ls|du|prune|clear [--cache-dir DIR] [--max-bytes N] [--json]
  model-streamer version
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from runai_model_streamer.config import (
    CHUNK_BYTESIZE_ENV,
    CONCURRENCY_ENV,
    MEMORY_LIMIT_ENV,
    READ_MODE_ENV,
    READ_MODES,
)
from runai_model_streamer.exceptions import RunaiStreamerError

CACHE_DIR_ENV = "MODEL_STREAMER_CACHE_DIR"
CACHE_MAX_BYTES_ENV = "MODEL_STREAMER_CACHE_MAX_BYTES"


class Progress:
    """A one-line progress bar, redrawn at most every `interval` seconds."""

    def __init__(self, total: int, out: Optional[TextIO] = None, enabled: bool = True,
                 interval: float = 0.1, width: int = 30, label: str = "") -> None:
        self.total = max(0, int(total))
        self.out = sys.stderr if out is None else out  # the current one, not the one at import
        self.enabled = enabled
        self.interval = interval
        self.width = width
        self.label = label
        self.done = 0
        self.count = 0
        self.start = time.perf_counter()
        self._last = float("-inf")
        self._drawn = False
        self.unit = "tensors"

    def update(self, nbytes: int, count: int = 1) -> None:
        self.done += nbytes
        self.count += count
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        frac = min(max(frac, 0.0), 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self.start
        rate = self.done / elapsed / 1e9 if elapsed > 0 else 0.0
        line = (f"\r{self.label}[{bar}] {frac * 100:5.1f}%  {self.done / 1e9:.2f}/"
                f"{self.total / 1e9:.2f} GB  {rate:.2f} GB/s  {self.count} {self.unit}")
        self.out.write(line)
        self.out.flush()
        self._drawn = True

    def finish(self) -> None:
        if not self.enabled:
            return
        self._draw(time.perf_counter())
        self.out.write("\n")
        self.out.flush()


def expand_paths(paths: Sequence[str]) -> List[str]:
    """Files as given; directories, and object-storage prefixes written with a
    trailing "/", -> their *.safetensors (sorted). http(s) URLs are files:
    there is no listing over HTTP."""
    from runai_model_streamer.files import (
        NO_HTTP_LISTING,
        is_http_path,
        is_object_storage_path,
        list_safetensors,
        redact_url,
    )

    files: List[str] = []
    for p in paths:
        remote = is_object_storage_path(p)
        if p.startswith("hf://"):
            from runai_model_streamer import hf
            _, _, inner = hf.parse(p)
            if inner and not inner.endswith("/"):
                files.append(p)
                continue
            found = list_safetensors(p)
            if not found:
                raise RunaiStreamerError(f"{p}: no *.safetensors files in this repository folder")
            files.extend(found)
        elif is_http_path(p):
            if p.split("?", 1)[0].endswith("/"):
                raise RunaiStreamerError(f"{redact_url(p)}: {NO_HTTP_LISTING}")
            files.append(p)
        elif remote and p.endswith("/"):
            found = list_safetensors(p)
            if not found:
                raise RunaiStreamerError(f"{p}: no *.safetensors objects under this prefix")
            files.extend(found)
        elif not remote and os.path.isdir(p):
            found = list_safetensors(p)
            if not found:
                raise RunaiStreamerError(f"{p}: no *.safetensors files in this directory")
            files.extend(found)
        else:
            files.append(p)
    return files


def stream_paths(paths: Sequence[str], progress: bool = False,
                 out: Optional[TextIO] = None, consume: Optional[str] = None) -> Dict[str, Any]:
    """Streams the files (settings from the environment) and returns the
    summary: files, tensors, bytes, seconds, gb_per_s, first_tensor_s, stats,
    read_strategies. consume="sum" (see _consume.py) reads every byte of every
    tensor inside the clock, as a caller would."""
    from runai_model_streamer.streamer import SafetensorsStreamer

    files = expand_paths(paths)
    tensors = 0
    nbytes = 0
    start = time.perf_counter()
    first: Optional[float] = None
    consumer = None
    if consume:
        from runai_model_streamer._consume import Consumer

        if consume != "sum":  # a copy needs a destination sized before the clock: bench/ has it
            raise RunaiStreamerError(f"consume={consume!r}: only 'sum' here")
        consumer = Consumer(consume)
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files, owned=False)
        bar = Progress(streamer.total_size, out=out, enabled=progress)
        for _name, tensor in streamer.get_tensors():
            if first is None:
                first = time.perf_counter() - start
            if consumer is not None:
                consumer(tensor)
            n = tensor.numel() * tensor.element_size()
            tensors += 1
            nbytes += n
            bar.update(n)
        seconds = time.perf_counter() - start
        bar.finish()
        stats = streamer.stats()
        unaligned = streamer.unaligned_copies
        strategies = list(streamer.read_strategies)
    from runai_model_streamer.config import StreamerConfig

    config = StreamerConfig.from_env()
    return {
        "read_mode": config.read_mode,
        "concurrency": config.concurrency,
        "memory_limit": config.memory_limit,
        "files": len(files),
        "tensors": tensors,
        "bytes": nbytes,
        "seconds": seconds,
        "gb_per_s": nbytes / seconds / 1e9 if seconds > 0 else 0.0,
        "first_tensor_s": first if first is not None else 0.0,
        "unaligned_copies": unaligned,
        "read_strategies": {f: st for f, st in zip(files, strategies)},
        "consume": consume or "none",
        "checksum": consumer.checksum if consumer is not None and consumer.kind == "sum" else None,
        "stats": stats,
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def _strategy_text(s: Dict[str, Any]) -> str:
    """Which read path the files took: a mapping (page-cache pages handed out)
    and a copy are different things, so the demo always says which."""
    counts = Counter(v or "unknown" for v in s.get("read_strategies", {}).values())
    what = {"mmap": "mapped (page cache, no copy)"}
    return ", ".join(f"{n} file(s) {what.get(k, k + ' (copied into own memory)')}"
                     for k, n in sorted(counts.items())) or "n/a"


def format_summary(s: Dict[str, Any]) -> str:
    return "\n".join([
        f"read path:            {_strategy_text(s)}",
        f"consumer:             {s.get('consume', 'none')}",
        f"files:                {s['files']}",
        f"tensors:              {s['tensors']}",
        f"bytes:                {s['bytes']} ({_human(s['bytes'])})",
        f"seconds:              {s['seconds']:.3f}",
        f"throughput:           {s['gb_per_s']:.2f} GB/s",
        f"time to first tensor: {s['first_tensor_s'] * 1000:.1f} ms",
        f"settings:             read mode {s['read_mode']}, concurrency "
        f"{s['concurrency'] or 'backend default'}, "
        f"memory limit {s['memory_limit']}",
    ])


def _apply_settings(args: argparse.Namespace) -> None:
    if getattr(args, "concurrency", None) is not None:
        os.environ[CONCURRENCY_ENV] = str(args.concurrency)
    if getattr(args, "memory_limit", None) is not None:
        os.environ[MEMORY_LIMIT_ENV] = str(args.memory_limit)
    if getattr(args, "chunk_bytes", None) is not None:
        os.environ[CHUNK_BYTESIZE_ENV] = str(args.chunk_bytes)
    if getattr(args, "read_mode", None) is not None:
        os.environ[READ_MODE_ENV] = args.read_mode
    if getattr(args, "cache_dir", None) is not None:
        os.environ[CACHE_DIR_ENV] = args.cache_dir
    if getattr(args, "cache_max_bytes", None) is not None:
        os.environ[CACHE_MAX_BYTES_ENV] = str(args.cache_max_bytes)


def _show_progress(args: argparse.Namespace) -> bool:
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty()


def _with_url_list(paths: Sequence[str], url_list: Optional[str]) -> List[str]:
    from runai_model_streamer.files import read_url_list

    out = list(paths)
    if url_list:
        out.extend(read_url_list(url_list))
    return out


def cmd_stream(args: argparse.Namespace) -> int:
    _apply_settings(args)
    paths = _with_url_list(args.paths, args.url_list)
    if not paths:
        raise RunaiStreamerError("stream: give a PATH or --url-list FILE")
    summary = stream_paths(paths, progress=_show_progress(args))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def _drop_cache(paths: Sequence[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(paths: Sequence[str], consume: Optional[str] = None) -> Dict[str, Any]:
    """Reads the files whole, single-threaded, with os.readv into one
    preallocated, pre-faulted buffer. consume="sum" sums every byte read (the
    same Consumer as the streamer's); a "copy" consumer is the read itself."""
    import numpy as np

    sizes = [os.path.getsize(p) for p in paths]
    total = sum(sizes)
    buf = np.empty(max(total, 1), dtype=np.uint8)
    buf[::4096] = 0  # fault every page in before the clock starts
    buf[-1] = 0
    view = memoryview(buf.data).cast("B")
    step = 1 << 30
    consumer = None
    if consume == "sum":
        import torch
        from runai_model_streamer._consume import Consumer

        consumer = Consumer("sum")
        whole = torch.from_numpy(buf)
    start = time.perf_counter()
    offset = 0
    for p, size in zip(paths, sizes):
        fd = os.open(p, os.O_RDONLY)
        try:
            end = offset + size
            while offset < end:
                n = os.readv(fd, [view[offset:min(end, offset + step)]])
                if n <= 0:
                    raise RunaiStreamerError(f"{p}: unexpected end of file at byte {size - (end - offset)}")
                if consumer is not None:
                    consumer(whole[offset:offset + n])
                offset += n
        finally:
            os.close(fd)
    seconds = time.perf_counter() - start
    del view, buf
    return {"files": len(paths), "bytes": total, "seconds": seconds, "consume": consume or "none",
            "gb_per_s": total / seconds / 1e9 if seconds > 0 else 0.0}


def cmd_demo(args: argparse.Namespace) -> int:
    from runai_model_streamer._writer import write_demo_checkpoint

    _apply_settings(args)
    total_bytes = int(args.size_gb * 1e9)
    if total_bytes <= 0:
        raise RunaiStreamerError("--size-gb must be positive")
    created_dir = False
    if args.dir:
        directory = os.path.abspath(args.dir)
        created_dir = not os.path.exists(directory)
        os.makedirs(directory, exist_ok=True)
    else:
        directory = tempfile.mkdtemp(prefix="model-streamer-demo-")
        created_dir = True
    log = sys.stderr
    paths: List[str] = []
    try:
        t0 = time.perf_counter()
        print(f"writing a {args.size_gb:g} GB sample checkpoint ({args.shards} shards) "
              f"to {directory} ...", file=log, flush=True)
        paths = write_demo_checkpoint(directory, total_bytes, shards=args.shards, seed=args.seed)
        written = sum(os.path.getsize(p) for p in paths)
        print(f"wrote {len(paths)} files, {written / 1e9:.2f} GB in "
              f"{time.perf_counter() - t0:.1f} s", file=log, flush=True)

        cache = "cold (page cache dropped)" if args.cold else "warm page cache"
        if args.cold:
            _drop_cache(paths)
        print(f"streaming with model-streamer ({cache}) ...", file=log, flush=True)
        streamed = stream_paths(paths, progress=_show_progress(args), out=log, consume="sum")

        if args.cold:
            _drop_cache(paths)
        print(f"plain single-threaded read ({cache}) ...", file=log, flush=True)
        plain = plain_read(paths, consume="sum")
        ratio = streamed["gb_per_s"] / plain["gb_per_s"] if plain["gb_per_s"] > 0 else 0.0
        result = {"directory": directory, "cache": "cold" if args.cold else "warm",
                  "streamer": streamed, "plain_read": plain, "ratio": ratio}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print("both sum every byte of every tensor (or file) inside the clock: the figures "
                  "are of bytes used, not handed out")
            print("model-streamer:")
            print("  " + format_summary(streamed).replace("\n", "\n  "))
            print("plain read (os.readv, one thread, whole files, copied into a pre-faulted buffer), "
                  "then the same sum over every byte:")
            print(f"  files:      {plain['files']}")
            print(f"  bytes:      {plain['bytes']} ({_human(plain['bytes'])})")
            print(f"  seconds:    {plain['seconds']:.3f}")
            print(f"  throughput: {plain['gb_per_s']:.2f} GB/s")
            print(f"streamer / plain read: {ratio:.2f}x ({cache}; streamer read path: "
                  f"{_strategy_text(streamed)})")
    finally:
        if args.keep:
            print(f"kept {directory}", file=log)
        else:
            for p in paths:
                try:
                    os.remove(p)
                except OSError:
                    pass
            if created_dir:
                shutil.rmtree(directory, ignore_errors=True)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from runai_model_streamer.files import list_remote, is_object_storage_path, local_path

    uri = args.uri
    if not is_object_storage_path(uri) and not os.path.isdir(local_path(uri)):
        raise RunaiStreamerError(f"{uri}: not a directory or an object storage prefix")
    objects = list_remote(uri, args.recursive, None)
    if args.json:
        print(json.dumps({"objects": [{"uri": u, "size": n} for u, n in objects]}, indent=2))
        return 0
    width = max((len(str(n)) for _, n in objects), default=1)
    for u, n in objects:
        print(f"{n:>{width}}  {u}")
    total = sum(n for _, n in objects)
    print(f"{len(objects)} object(s), {total} bytes ({_human(total)})", file=sys.stderr)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from runai_model_streamer.files import (
        _settings,
        download_items,
        is_http_path,
        is_object_storage_path,
        plan_pull,
        pull_files,
        uri_scheme,
    )

    _apply_settings(args)
    show = _show_progress(args)
    start = time.perf_counter()
    if len(args.targets) > 2:
        raise RunaiStreamerError("pull: give URI DIR, or DIR with --url-list FILE")
    if len(args.targets) == 1:
        if not args.url_list:
            raise RunaiStreamerError("pull: give URI DIR, or DIR with --url-list FILE")
        args.uri, args.dir = None, args.targets[0]
    else:
        args.uri, args.dir = args.targets
    if args.url_list or is_http_path(args.uri) or (args.uri or "").startswith("hf://"):
        return _pull_urls(args, show, start)
    if not is_object_storage_path(args.uri):
        pull_files(args.uri, args.dir, args.allow, args.ignore)
        print(f"copied {args.uri} to {args.dir} in {time.perf_counter() - start:.2f} s")
        return 0
    settings = _settings(None, uri_scheme(args.uri))
    items = plan_pull(args.uri, args.dir, args.allow, args.ignore, settings=settings)
    if not items:
        raise RunaiStreamerError(
            f"{args.uri}: no objects to download (nothing under this prefix matches the filters)")
    total = sum(i.size for i in items)
    bar = Progress(total, out=sys.stderr, enabled=show)
    bar.unit = f"of {len(items)} files"

    def done(item) -> None:
        bar.update(item.size)

    download_items(items, args.dir, settings=settings, progress=done)
    bar.finish()
    seconds = time.perf_counter() - start
    rate = total / seconds / 1e9 if seconds > 0 else 0.0
    print(f"pulled {len(items)} file(s), {total} bytes ({_human(total)}) from {args.uri} "
          f"to {args.dir} in {seconds:.2f} s ({rate:.2f} GB/s)")
    return 0


def _pull_urls(args: argparse.Namespace, show: bool, start: float) -> int:
    from runai_model_streamer.files import pull_hf, pull_urls, redact_url

    if args.uri and args.uri.startswith("hf://"):
        if args.url_list:
            raise RunaiStreamerError("pull: an hf:// URI and --url-list cannot be combined")
        bar = Progress(0, out=sys.stderr, enabled=False)
        items = pull_hf(args.uri, args.dir, args.allow, args.ignore)
        urls = None
    else:
        urls = _with_url_list([args.uri] if args.uri else [], args.url_list)
        bar = Progress(len(urls), out=sys.stderr, enabled=show)
        bar.unit = "files"
        items = pull_urls(urls, args.dir, args.allow, args.ignore, progress=lambda item: bar.update(1))
    bar.finish()
    if not items:
        raise RunaiStreamerError("no URLs to download (none matches the filters)")
    total = sum(i.size for i in items)
    seconds = time.perf_counter() - start
    rate = total / seconds / 1e9 if seconds > 0 else 0.0
    source = redact_url(args.uri) if args.uri and not args.url_list else (args.url_list or "")
    print(f"pulled {len(items)} file(s), {total} bytes ({_human(total)}) from {source} "
          f"to {args.dir} in {seconds:.2f} s ({rate:.2f} GB/s)")
    return 0


def _native_stream(files: Sequence[str], settings: List[str], checksum: bool = False):
    """A native stream over every tensor of files, with the settings of the
    environment (concurrency, memory limit, chunk size, read mode)."""
    from runai_model_streamer import _native
    from runai_model_streamer.config import StreamerConfig

    config = StreamerConfig.from_env()
    return _native.Stream(list(files), None, concurrency=config.concurrency,
                          memory_limit=config.memory_limit, chunk_bytes=config.chunk_bytes,
                          read_mode=READ_MODES[config.read_mode], settings=settings,
                          checksum=checksum)


def _drain(stream, bar: Progress, header_bytes: int = 0) -> None:
    """Takes every tensor of stream and gives it straight back: the engine
    hashes the bytes as it reads them, nothing here needs to look at them.
    The bar counts the header (read and checked at open) and tensor bytes."""
    from runai_model_streamer import _native

    bar.update(header_bytes, count=0)

    while True:
        batch = stream.next_batch()
        if batch is None:
            return
        for _fi, _ti, _addr, nbytes, token in batch:
            if token:
                _native.release(token)
            bar.update(nbytes)


def _file_settings(path: str) -> List[str]:
    from runai_model_streamer.files import _settings, uri_scheme

    return _settings(None, uri_scheme(path))


def _store_note(v: Dict[str, Any]) -> str:
    if v.get("algorithm"):
        return f"store {v['algorithm']} {v.get('expected', '')} ({v.get('source', '')})"
    return ""


def format_sidecar(doc: Dict[str, Any]) -> str:
    """The sidecar as written: JSON, one tensor a line (diffable, greppable)."""
    head = {k: v for k, v in doc.items() if k != "tensors"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    tensors = [f"  {json.dumps(t)}" for t in doc.get("tensors") or []]
    body = ",\n".join(tensors)
    return "{\n" + "\n".join(lines) + '\n "tensors": [\n' + body + "\n ]\n}\n"


def cmd_checksum(args: argparse.Namespace) -> int:
    """Writes <file>.checksums.json beside each file: CRC32 of the header,
    of each tensor and of the whole file, computed while streaming it (and
    checked against the store's own checksum where it keeps one)."""
    from runai_model_streamer import _native

    _apply_settings(args)
    files = expand_paths(args.paths)
    results = []
    show = _show_progress(args)
    for path in files:
        settings = _file_settings(path)
        stream = _native_stream([path], settings, checksum=True)
        try:
            meta = stream.metadata()["files"][0]
            bar = Progress(meta["size"], out=sys.stderr, enabled=show, label=os.path.basename(path) + " ")
            _drain(stream, bar, meta.get("data_offset", 0))
            bar.finish()
            doc = stream.checksums()["files"][0]
        finally:
            stream.close()
        sidecar, body = doc["sidecar"], doc["checksums"]
        _native.put(sidecar, format_sidecar(body).encode("utf-8"), settings=settings)
        results.append({"uri": path, "sidecar": sidecar, "algorithm": body["algorithm"],
                        "size": body["size"], "total": body["total"], "tensors": len(body["tensors"]),
                        "store": _store_note(meta.get("verify") or {})})
    if args.json:
        print(json.dumps({"files": results}, indent=2))
        return 0
    for r in results:
        line = (f"wrote {r['sidecar']}: header + {r['tensors']} tensors, {r['algorithm']}, "
                f"file total {r['total']} ({r['size']} bytes)")
        if r["store"]:
            line += f"; read verified against the {r['store']}"
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Reads each file whole, checking it against its sidecar and the
    store's whole-object checksum (MODEL_STREAMER_VERIFY=require: a file
    neither covers is reported as not verifiable)."""
    from runai_model_streamer.exceptions import RunaiStreamerChecksumError

    _apply_settings(args)
    files = expand_paths(args.paths)
    show = _show_progress(args)
    results = []
    for path in files:
        settings = _file_settings(path) + ["MODEL_STREAMER_VERIFY=require"]
        r: Dict[str, Any] = {"uri": path}
        try:
            stream = _native_stream([path], settings)
            try:
                meta = stream.metadata()["files"][0]
                bar = Progress(meta["size"], out=sys.stderr, enabled=show,
                               label=os.path.basename(path) + " ")
                try:
                    _drain(stream, bar, meta.get("data_offset", 0))
                finally:
                    bar.finish()
            finally:
                stream.close()
            v = meta.get("verify") or {}
            checks = []
            if v.get("sidecar"):
                checks.append(f"header + {v.get('sidecar_entries', 0)} tensors match "
                              f"{v['sidecar']} ({v.get('sidecar_algorithm', '')})")
            if v.get("algorithm"):
                checks.append(_store_note(v))
            r.update(status="ok", checks=checks, size=meta["size"])
        except RunaiStreamerChecksumError as e:
            r.update(status="unverifiable" if "MODEL_STREAMER_VERIFY=require" in str(e) else "mismatch",
                     error=str(e), tensor=e.tensor, sidecar=e.sidecar)
        results.append(r)
    bad = [r for r in results if r["status"] != "ok"]
    if args.json:
        print(json.dumps({"files": results, "ok": not bad}, indent=2))
    else:
        for r in results:
            if r["status"] == "ok":
                print(f"OK           {r['uri']}: " + "; ".join(r["checks"]))
            else:
                print(f"{r['status'].upper():<12} {r['uri']}: {r['error']}")
        print(f"{len(results) - len(bad)} of {len(results)} file(s) verified"
              + (f", {len(bad)} failed" if bad else ""))
    return 1 if bad else 0


def cmd_version(args: argparse.Namespace) -> int:
    import runai_model_streamer
    from runai_model_streamer import _native

    print(f"model-streamer {runai_model_streamer.__version__} "
          f"(library {_native.version()}, {_native.library_path()})")
    return 0


def _size_text(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _parse_bytes(text: str) -> int:
    """A byte count with an optional K, M, G or T suffix (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if t and t[-1] in "KMGT":
        scale = 1 << (10 * ("KMGT".index(t[-1]) + 1))
        t = t[:-1]
    try:
        value = int(t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes, e.g. 500G") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes >= 0")
    return value * scale


def cmd_cache(args: argparse.Namespace) -> int:
    """Shows and manages the local cache (MODEL_STREAMER_CACHE_DIR)."""
    from runai_model_streamer import _native

    directory = args.cache_dir or os.environ.get(CACHE_DIR_ENV)
    if not directory:
        raise RunaiStreamerError(f"no cache directory: give --cache-dir or set {CACHE_DIR_ENV}")
    max_bytes = args.max_bytes
    if max_bytes is None:
        max_bytes = _parse_bytes(os.environ.get(CACHE_MAX_BYTES_ENV) or "0")
    result = _native.cache_manage(args.action, directory, max_bytes)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if args.action == "ls":
        for e in result.get("entries") or []:
            used = " (in use)" if e.get("in_use") else ""
            print(f"{_size_text(int(e['size'])):>10}  {e.get('last_used', '')[:19]}  {e.get('uri', e['name'])}{used}")
    elif args.action == "du":
        print(f"{_size_text(result['bytes'])} in {result['entries']} entries "
              f"(limit {_size_text(result['max_bytes'])}) in {result['dir']}")
    else:
        kept = f", {result['entries_in_use']} in use kept" if result.get("entries_in_use") else ""
        print(f"removed {result['entries']} entries and {result['partial']} partial writes, "
              f"freed {_size_text(result['bytes_freed'])}{kept}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-streamer",
        description="Stream SafeTensors checkpoints and measure how fast.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cache_settings(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache-dir", metavar="DIR",
                       help=f"keep a local copy of object-store files in DIR and read it on "
                            f"later loads (sets {CACHE_DIR_ENV})")
        p.add_argument("--cache-max-bytes", type=_parse_bytes, metavar="N",
                       help=f"the cache's size limit, e.g. 500G (sets {CACHE_MAX_BYTES_ENV}; "
                            "default: half of what the cache holds plus the free space)")

    def settings(p: argparse.ArgumentParser) -> None:
        p.add_argument("--concurrency", type=_positive_int, metavar="N",
                       help=f"reads in flight (sets {CONCURRENCY_ENV}; default: the "
                            "storage backend's, 16 local, 32 object storage)")
        p.add_argument("--memory-limit", metavar="N",
                       help=f"CPU buffer bytes: -1 whole request, 0 largest tensor "
                            f"(sets {MEMORY_LIMIT_ENV})")
        p.add_argument("--chunk-bytes", metavar="N",
                       help=f"bytes per read (sets {CHUNK_BYTESIZE_ENV})")
        p.add_argument("--read-mode", choices=sorted(READ_MODES),
                       help=f"how local files are read (sets {READ_MODE_ENV}; default auto)")
        cache_settings(p)
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar on stderr even when it is not a terminal")
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="never show the progress bar")

    p = sub.add_parser("stream", help="stream files or directories and print a summary")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="a .safetensors file or URL, or a directory or prefix of them")
    p.add_argument("--url-list", metavar="FILE",
                   help="also stream the http(s) URLs in FILE, one per line (there is no "
                        "listing over HTTP)")
    settings(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("demo", help="write a sample checkpoint, stream it, compare with a plain read")
    p.add_argument("--dir", help="where to write the checkpoint (default: a temporary directory)")
    p.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size (default 2)")
    p.add_argument("--shards", type=_positive_int, default=4, help="number of files (default 4)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the checkpoint")
    p.add_argument("--cold", action="store_true",
                   help="drop the files from the page cache before each read")
    settings(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ls", help="list the objects under a prefix (s3://, gs://, az://) or a directory")
    p.add_argument("uri", metavar="URI")
    p.add_argument("-r", "--recursive", action="store_true", help="list the whole tree under URI")
    p.add_argument("--json", action="store_true", help="print JSON: {objects: [{uri, size}]}")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("pull", help="download the files under a prefix, or URLs, into a directory")
    p.add_argument("targets", nargs="+", metavar="[URI] DIR",
                   help="URI: s3://, gs:// or az:// prefix, a local directory, or an http(s) "
                        "file URL; DIR: the destination directory")
    p.add_argument("--url-list", metavar="FILE",
                   help="download the http(s) URLs in FILE, one per line, each under its path "
                        "relative to the directory the URLs share")
    p.add_argument("--allow", action="append", metavar="PATTERN",
                   help="fnmatch pattern of the keys to fetch, relative to URI (repeatable)")
    p.add_argument("--ignore", action="append", metavar="PATTERN",
                   help="fnmatch pattern of the keys to skip, relative to URI (repeatable)")
    p.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help=f"ranged reads in flight per file (sets {CONCURRENCY_ENV})")
    p.add_argument("--chunk-bytes", metavar="N",
                   help=f"bytes per read (sets {CHUNK_BYTESIZE_ENV})")
    cache_settings(p)
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar on stderr even when it is not a terminal")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show the progress bar")
    p.set_defaults(func=cmd_pull)

    def quiet_settings(p: argparse.ArgumentParser) -> None:
        p.add_argument("paths", nargs="+", metavar="PATH",
                       help="a .safetensors file or URI, a directory, or a prefix ending in /")
        p.add_argument("--concurrency", type=_positive_int, metavar="N",
                       help=f"reads in flight (sets {CONCURRENCY_ENV})")
        p.add_argument("--read-mode", choices=sorted(READ_MODES),
                       help=f"how local files are read (sets {READ_MODE_ENV})")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar on stderr even when it is not a terminal")
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="never show the progress bar")

    p = sub.add_parser("checksum", help="write <file>.checksums.json beside each file: "
                                        "CRC32 of its header, each tensor and the whole file")
    quiet_settings(p)
    p.set_defaults(func=cmd_checksum)

    p = sub.add_parser("verify", help="check files against their checksum sidecars and the "
                                      "store's checksums; exit status 1 if any fails")
    quiet_settings(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("cache", help="show or manage the local cache of object-store files")
    p.add_argument("action", choices=["ls", "du", "prune", "clear"],
                   help="ls: entries, least recently used first; du: bytes held and the limit; "
                        "prune: evict down to the limit and remove interrupted writes; "
                        "clear: remove every entry (entries being read are kept)")
    p.add_argument("--cache-dir", metavar="DIR", help=f"the cache (default: ${CACHE_DIR_ENV})")
    p.add_argument("--max-bytes", type=_parse_bytes, metavar="N",
                   help=f"the limit prune keeps under (default: ${CACHE_MAX_BYTES_ENV}, else half of "
                        "what the cache holds plus the free space)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("version", help="print the package and library versions")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("model-streamer: interrupted", file=sys.stderr)
        return 130
    except (RunaiStreamerError, OSError, ValueError) as e:
        print(f"model-streamer: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
