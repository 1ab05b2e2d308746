"""Integrity (MODEL_STREAMER_VERIFY) against the real servers on 127.0.0.1:
MinIO, fake-gcs-server and Azurite, each behind a proxy that flips one bit
of the response bodies it forwards.

Every object is uploaded in each way its server keeps (or does not keep) a
whole-object checksum: MinIO with x-amz-checksum-crc32 / -crc32c /
-crc64nvme, a plain PUT (the MD5 ETag) and a multipart upload with a
COMPOSITE checksum; fake-gcs-server's crc32c; Azurite's Content-MD5 (Put
Blob) and a block-list blob without one. What is streamed clean is compared
byte for byte with safetensors.safe_open on the local copy.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import json
import re
import struct
import urllib.parse
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from runai_model_streamer import (
    FileChunks,
    FileStreamer,
    RunaiStreamerChecksumError,
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
    SafetensorsStreamer,
    pull_files,
)

from conftest import call_with_timeout, describe, reference, assert_matches

from . import servers
from .proxy import ForwardingProxy
from .conftest import BUCKET, make_store

TIMEOUT = 120
CHUNK = 128 << 10  # many ranges per object


# ---------------------------------------------------------------------------
# Checksums, computed here independently of the library


def _reflected_table(poly: int, width: int) -> List[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _reflected_table(0x82F63B78, 32)
_CRC64NVME = _reflected_table(0x9A6C9329AC4BC9B5, 64)


def _crc(table: List[int], mask: int, data: bytes) -> int:
    c = mask
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ mask


def crc_value(alg: str, data: bytes) -> bytes:
    """The store's encoding: big-endian bytes."""
    if alg == "crc32":
        return struct.pack(">I", zlib.crc32(data))
    if alg == "crc32c":
        return struct.pack(">I", _crc(_CRC32C, 0xFFFFFFFF, data))
    if alg == "crc64nvme":
        return struct.pack(">Q", _crc(_CRC64NVME, 0xFFFFFFFFFFFFFFFF, data))
    raise ValueError(alg)


def test_reference_crcs():
    # The catalogue's check values: the helpers above are right.
    assert crc_value("crc32", b"123456789").hex() == "cbf43926"
    assert crc_value("crc32c", b"123456789").hex() == "e3069283"
    assert crc_value("crc64nvme", b"123456789").hex() == "ae8b14860a799888"


# ---------------------------------------------------------------------------
# Uploads with checksums (signed requests straight to the servers)


def _send(method: str, url: str, body: bytes, headers: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _s3(srv: dict, method: str, key: str, query: str, body: bytes, headers: Dict[str, str],
        want: int = 200) -> Tuple[Dict[str, str], bytes]:
    url = srv["endpoint"] + servers._key_path(BUCKET, key) + (f"?{query}" if query else "")
    h = servers._sigv4_headers(method, url, body, headers, srv["access_key"], srv["secret_key"], srv["region"])
    status, rh, data = _send(method, url, body, h)
    assert status == want, f"{method} {key}?{query}: HTTP {status}: {data[:500]!r}"
    return rh, data


def minio_put_checksum(srv: dict, key: str, data: bytes, alg: str) -> None:
    value = base64.b64encode(crc_value(alg, data)).decode()
    _s3(srv, "PUT", key, "", data, {"Content-Type": "application/octet-stream",
                                     f"x-amz-checksum-{alg}": value})


def minio_multipart_composite(srv: dict, key: str, data: bytes, part: int = 5 << 20) -> None:
    """A multipart upload with CRC32 part checksums: the object's checksum is
    COMPOSITE ("<base64>-<parts>"), a checksum of the parts' checksums."""
    _, body = _s3(srv, "POST", key, "uploads=", b"", {"x-amz-checksum-algorithm": "CRC32"})
    upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", body).group(1).decode()
    q = urllib.parse.quote(upload_id, safe="")
    xml = ["<CompleteMultipartUpload>"]
    for i, off in enumerate(range(0, len(data), part), 1):
        chunk = data[off:off + part]
        crc = base64.b64encode(crc_value("crc32", chunk)).decode()
        rh, _ = _s3(srv, "PUT", key, f"partNumber={i}&uploadId={q}", chunk, {"x-amz-checksum-crc32": crc})
        xml.append(f"<Part><PartNumber>{i}</PartNumber><ETag>{rh['etag']}</ETag>"
                   f"<ChecksumCRC32>{crc}</ChecksumCRC32></Part>")
    xml.append("</CompleteMultipartUpload>")
    _, body = _s3(srv, "POST", key, f"uploadId={q}", "".join(xml).encode(), {})
    assert b"<Error>" not in body, body


def azurite_put_blocks(srv: dict, name: str, data: bytes) -> None:
    """A block blob from Put Block + Put Block List, with no Content-MD5."""
    base = srv["blob_endpoint"] + servers._key_path(BUCKET, name)
    ids = []
    for i, off in enumerate(range(0, len(data), 1 << 20)):
        block_id = base64.b64encode(f"block-{i:06d}".encode()).decode()
        url = base + "?comp=block&blockid=" + urllib.parse.quote(block_id, safe="")
        chunk = data[off:off + (1 << 20)]
        h = servers._shared_key_headers("PUT", url, chunk, {"Content-Type": "application/octet-stream"},
                                        srv["account_name"], srv["account_key"])
        servers._request("PUT", url, chunk, h, (201,))
        ids.append(block_id)
    xml = ("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>"
           + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>").encode()
    url = base + "?comp=blocklist"
    h = servers._shared_key_headers("PUT", url, xml, {"Content-Type": "application/xml"},
                                    srv["account_name"], srv["account_key"])
    servers._request("PUT", url, xml, h, (201,))


# ---------------------------------------------------------------------------
# The bit-flipping proxy

class FlipProxy(ForwardingProxy):
    """While a flip is set, every ranged GET whose response carries object
    byte `offset` (by its Content-Range) has bit `bit` of that byte
    inverted."""

    def __init__(self, target: str) -> None:
        self.offset: Optional[int] = None
        self.bit = 0
        self.flipped = 0
        super().__init__(target)

    def on_response(self, command, request_headers, resp, data: bytes) -> bytes:
        ranged = command == "GET" and (request_headers.get("Range") or request_headers.get("x-ms-range"))
        # Object bytes only: not an error body (a sidecar lookup's 404).
        if ranged and data and resp.status in (200, 206):
            return self._maybe_flip(resp.getheader("Content-Range"), data)
        return data

    def set(self, offset: int, bit: int = 0) -> None:
        with self._lock:
            self.offset, self.bit = offset, bit

    def clear(self) -> None:
        with self._lock:
            self.offset = None

    def _maybe_flip(self, content_range: Optional[str], data: bytes) -> bytes:
        with self._lock:
            offset, bit = self.offset, self.bit
        if offset is None:
            return data
        start = 0
        if content_range:
            m = re.match(r"bytes (\d+)-", content_range)
            start = int(m.group(1)) if m else 0
        at = offset - start
        if not 0 <= at < len(data):
            return data
        with self._lock:
            self.flipped += 1
        b = bytearray(data)
        b[at] ^= 1 << bit
        return bytes(b)

# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def integrity_checkpoint(tmp_path_factory) -> Path:
    """About 1.5 MB: a dozen 128 KiB ranges, tensors of several dtypes."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(9)
    tensors = {f"layer.{i}.weight": torch.randn(64, 100 + 37 * i, generator=g) for i in range(12)}
    tensors["layer.bias"] = torch.randn(333, generator=g).to(torch.bfloat16)
    tensors["tail.u8"] = torch.arange(77, dtype=torch.uint8)
    path = tmp_path_factory.mktemp("integrity") / "model.safetensors"
    save_file(tensors, str(path))
    return path


class Obj:
    """One uploaded copy of the checkpoint and how its server keeps it."""

    def __init__(self, kind: str, scheme: str, uri: str, alg: Optional[str], data: bytes, local: Path):
        self.kind, self.scheme, self.uri, self.alg, self.data, self.local = kind, scheme, uri, alg, data, local

    def __repr__(self) -> str:
        return f"Obj({self.kind})"


# kind -> (scheme, the algorithm the library verifies against; None: nothing usable)
KINDS = {
    "s3-etag-md5": ("s3", "md5"),
    "s3-crc32": ("s3", "crc32"),
    "s3-crc32c": ("s3", "crc32c"),
    "s3-crc64nvme": ("s3", "crc64nvme"),
    "gs-crc32c": ("gs", "crc32c"),
    "az-content-md5": ("az", "md5"),
    "az-blocks": ("az", None),
}
VERIFIED = [k for k, (_, alg) in KINDS.items() if alg]


_uploaded: Dict[str, Obj] = {}


def upload(request, kind: str, local: Path) -> Obj:
    if kind in _uploaded:
        return _uploaded[kind]
    scheme, alg = KINDS[kind]
    store = make_store(request, scheme)
    data = local.read_bytes()
    key = store.key(f"{kind}/model.safetensors")
    srv = store.server
    if kind == "s3-etag-md5" or scheme == "gs" or kind == "az-content-md5":
        store.put_key(key, data)
    elif scheme == "s3":
        minio_put_checksum(srv, key, data, alg)
    elif kind == "az-blocks":
        azurite_put_blocks(srv, key, data)
    obj = Obj(kind, scheme, f"{scheme}://{BUCKET}/{key}", alg, data, local)
    _uploaded[kind] = obj
    return obj


_proxies: Dict[str, FlipProxy] = {}


def proxy_env(request, monkeypatch, scheme: str) -> FlipProxy:
    """Points the backend of scheme at its server's flip proxy."""
    store = make_store(request, scheme)
    srv = store.server
    if scheme not in _proxies:
        target = {"s3": lambda: urllib.parse.urlsplit(srv["endpoint"]).netloc,
                  "gs": lambda: srv["host"],
                  "az": lambda: urllib.parse.urlsplit(srv["blob_endpoint"]).netloc}[scheme]()
        _proxies[scheme] = FlipProxy(target)
    p = _proxies[scheme]
    p.clear()
    store.apply_env(monkeypatch)
    if scheme == "s3":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{p.hostport}")
    elif scheme == "gs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.hostport)
    else:
        monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", f"http://{p.hostport}/{srv['account_name']}")
    monkeypatch.setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", str(CHUNK))
    monkeypatch.setenv("RUNAI_STREAMER_CONCURRENCY", "4")
    return p


@pytest.fixture(scope="module", autouse=True)
def _close_proxies():
    yield
    for p in _proxies.values():
        p.close()
    _proxies.clear()
    _uploaded.clear()


def set_verify(monkeypatch, mode: Optional[str]) -> None:
    if mode is None:
        monkeypatch.delenv("MODEL_STREAMER_VERIFY", raising=False)
    else:
        monkeypatch.setenv("MODEL_STREAMER_VERIFY", mode)


def stream_all(uri: str, tensor_names=None) -> Dict[str, tuple]:
    """Streams uri to the end; name -> (dtype, shape, bytes)."""
    def run():
        got = {}
        with SafetensorsStreamer() as s:
            s.stream_file(uri, tensor_names=tensor_names)
            for name, t in s.get_tensors():
                assert name not in got, f"{name} delivered twice"
                got[name] = describe(t)
        return got
    return call_with_timeout(run, TIMEOUT)


def data_offset(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


# ---------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("mode", [None, "auto", "off", "require"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_clean_objects_are_byte_exact(request, monkeypatch, integrity_checkpoint, kind, mode):
    """No fault: every tensor as safe_open reads it, verified or not; require
    refuses an object whose store keeps no usable checksum, at open."""
    obj = upload(request, kind, integrity_checkpoint)
    proxy_env(request, monkeypatch, obj.scheme)
    set_verify(monkeypatch, mode)
    if mode == "require" and obj.alg is None:
        with pytest.raises(RunaiStreamerChecksumError) as e:
            with SafetensorsStreamer() as s:
                s.stream_file(obj.uri)
        assert e.value.uri == obj.uri and "no Content-MD5" in str(e.value)
        return
    got = stream_all(obj.uri)
    want = reference(obj.local)
    assert set(got) == set(want)
    for name in want:
        assert_matches(name, got[name], want[name])


def flip_offsets(data: bytes) -> Dict[str, int]:
    return {"first": data_offset(data) + 5, "middle": len(data) // 2, "last": len(data) - 1}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", VERIFIED)
def test_flipped_bit_raises_checksum_error(request, monkeypatch, integrity_checkpoint, kind, where):
    """A bit flipped on the wire (in every response that carries the byte)
    ends the iteration with RunaiStreamerChecksumError naming the object, the
    algorithm and both values; the loop never completes normally."""
    obj = upload(request, kind, integrity_checkpoint)
    p = proxy_env(request, monkeypatch, obj.scheme)
    p.set(flip_offsets(obj.data)[where], bit=3)
    seen = []

    def run():
        with SafetensorsStreamer() as s:
            s.stream_file(obj.uri)
            for name, _ in s.get_tensors():
                seen.append(name)
        return "completed"

    with pytest.raises(RunaiStreamerChecksumError) as e:
        call_with_timeout(run, TIMEOUT)
    err = e.value
    assert p.flipped > 0
    assert isinstance(err, RunaiStreamerError)
    assert err.uri == obj.uri and err.algorithm == obj.alg
    assert err.expected and err.computed and err.expected != err.computed
    assert obj.uri in str(err) and f"{obj.alg} expected {err.expected}, computed {err.computed}" in str(err)
    if obj.alg != "md5":
        assert err.expected == crc_value(obj.alg, obj.data).hex()
    else:
        assert err.expected == hashlib.md5(obj.data).hexdigest()
    assert len(seen) < len(reference(obj.local)), "every tensor was delivered before the error"


@pytest.mark.parametrize("kind", ["s3-crc32c", "s3-etag-md5", "gs-crc32c", "az-content-md5", "az-blocks"])
def test_off_delivers_the_flipped_bit(request, monkeypatch, integrity_checkpoint, kind):
    """MODEL_STREAMER_VERIFY=off (and an object whose store keeps no
    checksum, under auto): the corrupt byte reaches the caller. This is
    what off means."""
    obj = upload(request, kind, integrity_checkpoint)
    p = proxy_env(request, monkeypatch, obj.scheme)
    set_verify(monkeypatch, "off" if obj.alg else "auto")
    p.set(flip_offsets(obj.data)["middle"], bit=1)
    got = stream_all(obj.uri)
    want = reference(obj.local)
    assert p.flipped > 0 and set(got) == set(want)
    differ = [n for n in want if got[n][2] != want[n][2]]
    assert len(differ) == 1, differ


@pytest.mark.parametrize("kind", ["s3-etag-md5", "az-content-md5"])
def test_auto_verifies_md5_unless_a_sidecar_covers_the_read(request, monkeypatch, integrity_checkpoint,
                                                            kind):
    """An object whose store keeps only an MD5 is verified against it under
    auto (test_flipped_bit_raises_checksum_error shows a flip fails); once a
    checksum sidecar covers every byte the stream reads, auto leaves the
    sequential MD5 out and checks the sidecar, and require checks both."""
    from runai_model_streamer import _native, cli
    from runai_model_streamer.config import backend_settings

    scheme = KINDS[kind][0]
    store = make_store(request, scheme)
    # An object of its own: the sidecar written here must not sit beside
    # the shared one that other tests pull.
    uri = store.put(f"{kind}-with-sidecar/model.safetensors", integrity_checkpoint.read_bytes())
    proxy_env(request, monkeypatch, scheme)

    def verify_note(mode):
        set_verify(monkeypatch, mode)
        st = _native.Stream([uri], settings=backend_settings(scheme=scheme))
        try:
            return st.metadata()["files"][0]["verify"]
        finally:
            st.close()

    v = verify_note(None)
    assert v.get("algorithm") == "md5" and not v.get("sidecar"), v
    assert cli.main(["checksum", "--no-progress", uri]) == 0
    v = verify_note(None)
    assert "algorithm" not in v and "sidecar covers every byte" in v["skipped"], v
    assert v["sidecar"] == uri + ".checksums.json"
    v = verify_note("require")
    assert v.get("algorithm") == "md5" and v["sidecar"] == uri + ".checksums.json", v


def test_tensor_names_skip_under_auto_refused_under_require(request, monkeypatch, integrity_checkpoint):
    """Part of an object cannot be checked against a whole-object checksum:
    auto streams it unverified (a flip then goes through), require refuses
    it at open."""
    obj = upload(request, "s3-crc32c", integrity_checkpoint)
    p = proxy_env(request, monkeypatch, "s3")
    want = reference(obj.local)
    names = ["layer.3.weight", "layer.bias"]
    got = stream_all(obj.uri, tensor_names=names)
    for n in names:
        assert_matches(n, got[n], want[n])
    set_verify(monkeypatch, "require")
    with pytest.raises(RunaiStreamerChecksumError) as e:
        with SafetensorsStreamer() as s:
            s.stream_file(obj.uri, tensor_names=names)
    assert e.value.uri == obj.uri and "tensor_names" in str(e.value)
    # Every tensor named is the whole object: verified, and a flip is caught.
    p.set(flip_offsets(obj.data)["last"])
    with pytest.raises(RunaiStreamerChecksumError):
        stream_all(obj.uri, tensor_names=list(want))


def test_multipart_composite_checksum(request, monkeypatch, tmp_path):
    """A multipart upload's COMPOSITE checksum (and its "-N" ETag) is not a
    checksum of the object's bytes: auto streams it unverified, require
    refuses it naming the reason."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    local = tmp_path / "big.safetensors"
    save_file({"a": torch.randn(1024, 1400, generator=g), "b": torch.randn(333, generator=g)}, str(local))
    data = local.read_bytes()
    assert len(data) > 5 << 20
    store = make_store(request, "s3")
    key = store.key("multipart/model.safetensors")
    minio_multipart_composite(store.server, key, data)
    uri = f"s3://{BUCKET}/{key}"
    proxy_env(request, monkeypatch, "s3")
    got = stream_all(uri)
    want = reference(local)
    for n in want:
        assert_matches(n, got[n], want[n])
    set_verify(monkeypatch, "require")
    with pytest.raises(RunaiStreamerChecksumError) as e:
        with SafetensorsStreamer() as s:
            s.stream_file(uri)
    assert "composite" in str(e.value) and e.value.uri == uri


@pytest.mark.parametrize("kind", ["s3-crc64nvme", "s3-etag-md5", "gs-crc32c", "az-content-md5"])
def test_pull_files_never_leaves_a_corrupt_file(request, monkeypatch, integrity_checkpoint, tmp_path, kind):
    """pull_files verifies each object before its rename: a corrupt one
    raises RunaiStreamerChecksumError and leaves nothing at its final name
    (nor a temporary file); clean, the file is the object's bytes."""
    obj = upload(request, kind, integrity_checkpoint)
    p = proxy_env(request, monkeypatch, obj.scheme)
    prefix = obj.uri.rsplit("/", 1)[0]
    dst = tmp_path / "dst"
    p.set(flip_offsets(obj.data)["middle"], bit=7)
    with pytest.raises(RunaiStreamerChecksumError) as e:
        call_with_timeout(lambda: pull_files(prefix, str(dst)), TIMEOUT)
    assert e.value.uri == obj.uri
    assert not (dst / "model.safetensors").exists()
    assert not dst.exists() or not any(dst.rglob("*")), list(dst.rglob("*"))
    p.clear()
    call_with_timeout(lambda: pull_files(prefix, str(dst)), TIMEOUT)
    assert (dst / "model.safetensors").read_bytes() == obj.data


def test_file_streamer_ranges(request, monkeypatch, integrity_checkpoint):
    """FileStreamer: ranges that cover the whole object are verified (a flip
    raises), ranges that leave bytes out are read unverified."""
    obj = upload(request, "gs-crc32c", integrity_checkpoint)
    p = proxy_env(request, monkeypatch, "gs")
    size = len(obj.data)
    p.set(1000)

    def run(req):
        with FileStreamer() as fs:
            fs.stream_files([req])
            return {i: c.numpy().tobytes() for _, i, c in fs.get_chunks()}

    whole = FileChunks.contiguous(0, obj.uri, offset=0, sizes=[size // 3, size // 3, size - 2 * (size // 3)])
    with pytest.raises(RunaiStreamerChecksumError):
        call_with_timeout(lambda: run(whole), TIMEOUT)
    part = FileChunks(0, obj.uri, offsets=[0, 5000], sizes=[2000, 100])
    got = call_with_timeout(lambda: run(part), TIMEOUT)
    assert got[1] == obj.data[5000:5100] and got[0] != obj.data[:2000]  # unverified: the flip shows


def test_invalid_setting(request, monkeypatch, integrity_checkpoint):
    obj = upload(request, "s3-crc32", integrity_checkpoint)
    proxy_env(request, monkeypatch, "s3")
    set_verify(monkeypatch, "strict")
    with pytest.raises(RunaiStreamerInvalidInputException) as e:
        with SafetensorsStreamer() as s:
            s.stream_file(obj.uri)
    assert "MODEL_STREAMER_VERIFY" in str(e.value) and "strict" in str(e.value)


def test_local_files_under_require(monkeypatch, integrity_checkpoint):
    """Local files keep no checksum: streamed under auto, refused by require."""
    set_verify(monkeypatch, "require")
    with pytest.raises(RunaiStreamerChecksumError) as e:
        with SafetensorsStreamer() as s:
            s.stream_file(str(integrity_checkpoint))
    assert str(integrity_checkpoint) in str(e.value)
    set_verify(monkeypatch, None)
    got = stream_all(str(integrity_checkpoint))
    assert got.keys() == reference(integrity_checkpoint).keys()


# ---------------------------------------------------------------------------
# Checksum sidecars on object storage


@pytest.mark.parametrize("kind", ["s3-etag-md5", "s3-crc32c", "gs-crc32c", "az-blocks"])
def test_sidecar_on_object_storage(request, monkeypatch, integrity_checkpoint, kind, capsys):
    """`model-streamer checksum URI` writes the sidecar as an object beside
    the checkpoint (through the proxy); `verify` then reports it; a bit
    flipped on the wire in a tensor raises RunaiStreamerChecksumError naming
    it before it is yielded, also where the store keeps no usable checksum
    (az-blocks) or only an MD5, which auto then leaves out; and tensor_names are
    checked."""
    from runai_model_streamer import cli

    obj = upload(request, kind, integrity_checkpoint)
    p = proxy_env(request, monkeypatch, obj.scheme)
    assert cli.main(["checksum", "--no-progress", obj.uri]) == 0
    out = capsys.readouterr().out
    assert f"wrote {obj.uri}.checksums.json" in out
    if obj.alg and obj.alg != "md5":
        assert f"read verified against the store {obj.alg}" in out
    assert cli.main(["verify", "--no-progress", obj.uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK           {obj.uri}: header + ") and f"{obj.uri}.checksums.json (crc32)" in out
    if obj.alg:  # require also checks the store's value, MD5 included
        assert f"store {obj.alg} " in out

    want = reference(obj.local)
    got = stream_all(obj.uri)
    assert set(got) == set(want)
    for n in want:
        assert_matches(n, got[n], want[n])

    offset = flip_offsets(obj.data)["middle"]
    doc = json.loads(cli_sidecar(obj.uri))
    bad = next(t for t in doc["tensors"] if t["offsets"][0] <= offset < t["offsets"][1])
    p.set(offset, bit=5)
    seen = []

    def run(names=None):
        with SafetensorsStreamer() as s:
            s.stream_file(obj.uri, tensor_names=names)
            for name, t in s.get_tensors():
                seen.append(name)
                assert_matches(name, describe(t), want[name])

    with pytest.raises(RunaiStreamerChecksumError) as e:
        call_with_timeout(run, TIMEOUT)
    assert p.flipped > 0
    err = e.value
    assert err.uri == obj.uri and err.tensor == bad["name"] and err.algorithm == "crc32"
    assert err.expected == bad["checksum"] and bad["name"] not in seen
    assert err.sidecar == obj.uri + ".checksums.json"
    # A partial read that leaves the tensor out is exact; one that names it fails.
    others = [t["name"] for t in doc["tensors"] if t["name"] != bad["name"]][:3]
    seen.clear()
    call_with_timeout(lambda: run(others), TIMEOUT)
    assert sorted(seen) == sorted(others)
    with pytest.raises(RunaiStreamerChecksumError) as e:
        call_with_timeout(lambda: run([bad["name"]]), TIMEOUT)
    assert e.value.tensor == bad["name"]
    p.clear()
    assert cli.main(["verify", "--no-progress", obj.uri]) == 0
    capsys.readouterr()


def cli_sidecar(uri: str) -> str:
    """The sidecar object of uri, read back through the library."""
    from runai_model_streamer import FileChunks, FileStreamer
    from runai_model_streamer.files import list_remote

    side = uri + ".checksums.json"
    size = dict(list_remote(uri.rsplit("/", 1)[0] + "/", False, None))[side]
    with FileStreamer() as fs:
        fs.stream_files([FileChunks(0, side, offsets=[0], sizes=[size])])
        return b"".join(c.numpy().tobytes() for _, _, c in fs.get_chunks()).decode()
