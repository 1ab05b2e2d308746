"""SafeTensors headers for distributed streaming: every tensor of every file,
read without tensor data (ms_read_headers, or in Python for local files with
a library that lacks it)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Optional, Sequence

from runai_model_streamer import _native
from runai_model_streamer.exceptions import (
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerIOError,
    RunaiStreamerPermissionError,
)
from runai_model_streamer.files import local_path

_MAX_HEADER = 100 << 20


def _parse_local_header(path: str) -> Dict[str, Any]:
    """One file's entry, as ms_stream_metadata describes files, read in
    Python (local files, with a library without ms_read_headers).
    SafetensorMetadata then checks each tensor, and the native stream of a
    share checks that its ranges lie inside the file."""
    fs_path = local_path(path)
    try:
        with open(fs_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) < 8:
                raise RunaiStreamerInvalidInputException(
                    f"{path}: not a SafeTensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise RunaiStreamerInvalidInputException(
                    f"{path}: header length {n} does not fit the file ({size} bytes)")
            text = f.read(n)
    except FileNotFoundError as e:
        raise RunaiStreamerFileNotFoundError(f"{path}: {e.strerror or e}") from None
    except PermissionError as e:
        raise RunaiStreamerPermissionError(f"{path}: {e.strerror or e}") from None
    except IsADirectoryError:
        raise RunaiStreamerInvalidInputException(f"{path}: is a directory") from None
    except OSError as e:
        raise RunaiStreamerIOError(f"{path}: reading the header: {e}") from None
    try:
        header = json.loads(text)
        tensors = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = (int(x) for x in entry["data_offsets"])
            tensors.append({"name": name, "dtype": str(entry["dtype"]),
                            "shape": [int(d) for d in entry["shape"]],
                            "offsets": [begin, end]})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise RunaiStreamerInvalidInputException(f"{path}: invalid header: {e}") from None
    tensors.sort(key=lambda t: (t["offsets"][0], t["offsets"][1]))
    return {"uri": path, "data_offset": 8 + n, "size": size, "tensors": tensors}


def read_headers(paths: Sequence[str], config: Any,
                 settings: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Every tensor of every file, as {"files": [{"uri", "data_offset",
    "size", "tensors": [...]}]} (tensors in file-offset order), without
    reading tensor data: through ms_read_headers when the library has it,
    else (local files only) in Python."""
    ffi, lib = _native.load()
    fn = _native._function(lib, "ms_read_headers")
    if fn is None:
        return {"files": [_parse_local_header(p) for p in paths]}
    keep: list = []
    c_uris = ffi.new("char *[]", max(1, len(paths)))
    for i, p in enumerate(paths):
        cs = ffi.new("char[]", p.encode("utf-8"))
        keep.append(cs)
        c_uris[i] = cs
    cfg = _native._config(ffi, keep, concurrency=getattr(config, "concurrency", 0),
                          chunk_bytes=getattr(config, "chunk_bytes", 0), settings=settings)
    out = ffi.new("char **")
    err = ffi.new("char[]", _native.ERR_BUF_LEN)
    rc = fn(c_uris, len(paths), cfg, out, err, _native.ERR_BUF_LEN)
    if rc != _native.MS_OK:
        raise _native.error_for(rc, ffi.string(err).decode("utf-8", "replace").strip())
    try:
        text = ffi.string(out[0]).decode("utf-8")
    finally:
        if out[0] != ffi.NULL:
            lib.ms_free(out[0])
    return json.loads(text)


def select_tensors(meta: Dict[str, Any], names: Optional[Sequence[str]]) -> Dict[str, Any]:
    """meta with only the named tensors (all when names is None)."""
    if names is None:
        return meta
    wanted = set(names)
    files = []
    for f in meta.get("files", []):
        g = dict(f)
        g["tensors"] = [t for t in f.get("tensors", []) if t["name"] in wanted]
        files.append(g)
    return {"files": files}
