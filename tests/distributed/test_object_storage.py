"""Distributed streaming from object storage (MinIO, S3 API), over gloo:
SafetensorsStreamer's tensors and DistributedStreamer's byte ranges.

Reading the headers of object storage files without their data needs the
library's ms_read_headers; with a library that lacks it, distributed streaming
falls back (one log line) and the first test checks exactly that."""

from __future__ import annotations

import os
import random
import struct

import pytest

from runai_model_streamer import _native

from .conftest import (
    assert_every_chunk,
    assert_every_tensor,
    assert_read_once,
    chunk_digests,
    expected_digests,
    launch,
    tensor_bytes_total,
    union_bytes,
)


def _has_read_headers() -> bool:
    return _native._function(_native.load()[1], "ms_read_headers") is not None


def _start(tmp_path_factory, name: str):
    """Starts tests/object_storage's server `name` (skips where it is not
    installed, unless the servers are required)."""
    from object_storage import servers  # tests/object_storage

    try:
        return getattr(servers, f"start_{name}")(tmp_path_factory.mktemp(name))
    except servers.ServerNotInstalled as e:
        if os.environ.get("MODEL_STREAMER_REQUIRE_SERVERS") == "1":
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def minio(tmp_path_factory):
    from object_storage import servers

    server = _start(tmp_path_factory, "minio")
    servers.minio_create_bucket(server, "dist")
    yield server
    server["stop"]()


def test_minio_two_processes(minio, checkpoints, tmp_path):
    from object_storage import servers

    uris = [servers.minio_put_object(minio, "dist", f"ckpt/{p.name}", p.read_bytes())
            for p in checkpoints["mixed"]]
    rng = random.Random(5)
    ranges = []  # (request over the object, its local copy)
    for i, (uri, p) in enumerate(zip(uris, checkpoints["mixed"])):
        size = p.stat().st_size
        spans = [(rng.randrange(size), 0) for _ in range(2)]
        spans = [(o, rng.randrange(min(size - o, 70_000) + 1)) for o, _ in spans]
        spans += [(0, size), (size // 3, size // 3), (size, 0)]
        rng.shuffle(spans)
        ranges.append(({"id": i, "path": uri, "offsets": [o for o, _ in spans],
                        "sizes": [n for _, n in spans]}, p))
    env = {
        "AWS_ENDPOINT_URL": minio["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "AWS_ACCESS_KEY_ID": minio["access_key"],
        "AWS_SECRET_ACCESS_KEY": minio["secret_key"],
        "AWS_REGION": minio["region"],
        "RUNAI_STREAMER_DIST_TIMEOUT": "60",
    }
    scenarios = [
        {"name": "forced", "paths": uris, "env": dict(env, RUNAI_STREAMER_DIST="1")},
        {"name": "rounds", "paths": uris, "owned": False,
         "env": dict(env, RUNAI_STREAMER_DIST="1", RUNAI_STREAMER_MEMORY_LIMIT="0",
                     RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="64KiB")},
        # auto: on by default only for CUDA devices.
        {"name": "auto_cpu", "paths": uris, "env": env, "unset": ["RUNAI_STREAMER_DIST"]},
        # DistributedStreamer: byte ranges of the objects (no header read).
        {"name": "ranges", "kind": "ranges", "requests": [r for r, _ in ranges],
         "env": dict(env, RUNAI_STREAMER_DIST="1")},
        {"name": "ranges_rounds", "kind": "ranges", "requests": [r for r, _ in ranges],
         "owned": False, "env": dict(env, RUNAI_STREAMER_DIST="1",
                                     RUNAI_STREAMER_MEMORY_LIMIT="0",
                                     RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="64KiB")},
    ]
    run = launch(tmp_path, 2, scenarios)
    expected = expected_digests(checkpoints["mixed"])
    total = tensor_bytes_total(checkpoints["mixed"])
    for name in ("forced", "rounds"):
        results = run.of(name)
        assert_every_tensor(results, expected)
        if _has_read_headers():
            assert all(r["distributed"] for r in results.values())
            assert_read_once(results, total, [[0, 1]])
        else:
            for r in results.values():
                assert not r["distributed"] and r["stats"]["bytes_read"] == total
                assert any("no ms_read_headers" in line for line in r["logs"]), r["logs"]
    # The same ranges read from the local copies.
    local = [dict(r, path=str(p)) for r, p in ranges]
    expected_chunks = chunk_digests(local)
    for name in ("ranges", "ranges_rounds"):
        results = run.of(name)
        assert_every_chunk(results, expected_chunks)
        assert all(r["distributed"] for r in results.values())
        read = sum(r["stats"]["bytes_read"] for r in results.values())
        if name == "ranges":  # (with the memory limit, overlaps may be read twice)
            assert read == union_bytes(local), (read, union_bytes(local))
        assert all(r["stats"]["bytes_read"] > 0 for r in results.values())
    results = run.of("auto_cpu")
    assert_every_tensor(results, expected)
    for r in results.values():
        assert not r["distributed"]
        assert any("not for cpu tensors" in line for line in r["logs"]), r["logs"]


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    server = _start(tmp_path_factory, "nginx")
    yield server
    server["stop"]()


def test_http_two_processes(nginx, checkpoints, tmp_path):
    """The same over https:// URLs behind a presigned-style redirect."""
    from object_storage import servers

    for p in checkpoints["mixed"]:
        servers.nginx_put(nginx, f"dist/{p.name}", p.read_bytes())
    uris = [f"{nginx['tls_url']}/redirect/dist/{p.name}" for p in checkpoints["mixed"]]
    size = checkpoints["mixed"][0].stat().st_size
    request = {"id": 0, "path": uris[0], "offsets": [0, size // 3, size], "sizes": [size, size // 3, 0]}
    env = {"SSL_CERT_FILE": nginx["ca_file"], "RUNAI_STREAMER_DIST_TIMEOUT": "60",
           "RUNAI_STREAMER_DIST": "1"}
    run = launch(tmp_path, 2, [
        {"name": "forced", "paths": uris, "env": env},
        {"name": "ranges", "kind": "ranges", "requests": [request], "env": env},
    ])
    results = run.of("forced")
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    if _has_read_headers():
        assert all(r["distributed"] for r in results.values())
        assert_read_once(results, tensor_bytes_total(checkpoints["mixed"]), [[0, 1]])
    local = [dict(request, path=str(checkpoints["mixed"][0]))]
    assert_every_chunk(run.of("ranges"), chunk_digests(local))


def test_minio_cache_fills_in_one_distributed_load(minio, checkpoints, tmp_path):
    """Each process reads its share; the one writing a file's cache entry
    (MODEL_STREAMER_CACHE_DIR) also writes what its peer sends it, and the
    header is fetched when its stream closes: after one distributed load
    every file has a complete entry, which the next load reads."""
    from object_storage import servers

    # A 32 MiB file of eight tensors: each process reads about half of it,
    # far more than the cache fetches itself at close (the header, small
    # gaps), so only the peer's bytes complete its entry.
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(11)
    halves = tmp_path / "halves.safetensors"
    save_file({f"h.{i}": torch.randint(0, 255, (4 << 20,), dtype=torch.uint8, generator=g)
               for i in range(8)}, str(halves))
    files = checkpoints["mixed"] + [halves]
    uris = [servers.minio_put_object(minio, "dist", f"cached/{p.name}", p.read_bytes())
            for p in files]
    cache_dir = tmp_path / "cache"
    env = {
        "AWS_ENDPOINT_URL": minio["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "AWS_ACCESS_KEY_ID": minio["access_key"],
        "AWS_SECRET_ACCESS_KEY": minio["secret_key"],
        "AWS_REGION": minio["region"],
        "RUNAI_STREAMER_DIST_TIMEOUT": "60",
        "RUNAI_STREAMER_DIST": "1",
        "MODEL_STREAMER_CACHE_DIR": str(cache_dir),
    }
    expected = expected_digests(files)
    first = launch(tmp_path / "first", 2, [{"name": "first", "paths": uris, "env": env}])
    results = first.of("first")
    assert_every_tensor(results, expected)
    if not _has_read_headers():
        pytest.skip("this library falls back to non-distributed loads")
    assert all(r["distributed"] for r in results.values())
    assert_read_once(results, tensor_bytes_total(files), [[0, 1]])
    listing = _native.cache_manage("ls", str(cache_dir))
    assert sorted(e["uri"] for e in listing["entries"]) == sorted(uris)
    sizes = {u: p.stat().st_size for u, p in zip(uris, files)}
    assert all(e["size"] == sizes[e["uri"]] for e in listing["entries"])

    again = launch(tmp_path / "again", 2, [{"name": "again", "paths": uris, "env": env}])
    assert_every_tensor(again.of("again"), expected)


# ---------------------------------------------------------------------------
# Bytes fetched from storage, counted on the wire (object_storage.proxy)


def _header_bytes(p) -> int:
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


@pytest.mark.skipif(not _has_read_headers(), reason="the library lacks ms_read_headers")
def test_minio_three_ranks_fetch_each_byte_once(minio, checkpoints, tmp_path, request):
    """Three gloo ranks stream a checkpoint from MinIO: all of them together
    fetch each tensor byte once plus each header once per rank (every rank
    reads every header, exactly; no speculative prefix of tensor data),
    counted by a proxy on the wire."""
    import urllib.parse

    from object_storage import servers
    from object_storage.proxy import CountingProxy

    paths = checkpoints["solo"] + checkpoints["many"] + checkpoints["one_file"]
    uris = [servers.minio_put_object(minio, "dist", f"once/{p.name}", p.read_bytes())
            for p in paths]
    proxy = CountingProxy(urllib.parse.urlsplit(minio["endpoint"]).netloc)
    request.addfinalizer(proxy.close)
    world = 3
    env = {
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
        "AWS_ACCESS_KEY_ID": minio["access_key"],
        "AWS_SECRET_ACCESS_KEY": minio["secret_key"],
        "AWS_REGION": minio["region"],
        "RUNAI_STREAMER_DIST_TIMEOUT": "60",
        "RUNAI_STREAMER_DIST": "1",
    }
    run = launch(tmp_path, world, [{"name": "once", "paths": uris, "env": env}])
    results = run.of("once")
    assert_every_tensor(results, expected_digests(paths))
    assert all(r["distributed"] for r in results.values())
    tensors = tensor_bytes_total(paths)
    headers = sum(_header_bytes(p) for p in paths)
    files = sum(p.stat().st_size for p in paths)
    assert files == tensors + headers  # safetensors.torch: no gaps between tensors
    print(f"fetched {proxy.get_bytes} bytes in {proxy.gets} GETs: {proxy.get_bytes / files:.4f} "
          f"copies of {files} bytes ({tensors} tensor bytes, {headers} header bytes, {world} ranks)")
    # Each tensor byte once (1.00 copies) plus every header once per rank.
    assert proxy.get_bytes <= tensors + world * headers, (
        f"{proxy.get_bytes} bytes fetched in {proxy.gets} GETs for {tensors} tensor bytes "
        f"and {headers} header bytes ({proxy.get_bytes / files:.3f} copies of the files)")
    assert proxy.get_bytes >= tensors
