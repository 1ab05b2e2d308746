"""Distributed streaming from object storage (MinIO, S3 API), over gloo.

Reading the headers of object storage files without their data needs the
library's ms_read_headers; with a library that lacks it, distributed streaming
falls back (one log line) and the first test checks exactly that."""

from __future__ import annotations

import os

import pytest

from runai_model_streamer import _native

from .conftest import (
    assert_every_tensor,
    assert_read_once,
    expected_digests,
    launch,
    tensor_bytes_total,
)


def _has_read_headers() -> bool:
    return _native._function(_native.load()[1], "ms_read_headers") is not None


@pytest.fixture(scope="module")
def minio(tmp_path_factory):
    from object_storage import servers  # tests/object_storage

    try:
        server = servers.start_minio(tmp_path_factory.mktemp("minio"))
    except servers.ServerNotInstalled as e:
        if os.environ.get("MODEL_STREAMER_REQUIRE_SERVERS") == "1":
            raise
        pytest.skip(str(e))
    servers.minio_create_bucket(server, "dist")
    yield server
    server["stop"]()


def test_minio_two_processes(minio, checkpoints, tmp_path):
    from object_storage import servers

    uris = [servers.minio_put_object(minio, "dist", f"ckpt/{p.name}", p.read_bytes())
            for p in checkpoints["mixed"]]
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
    results = run.of("auto_cpu")
    assert_every_tensor(results, expected)
    for r in results.values():
        assert not r["distributed"]
        assert any("not for cpu tensors" in line for line in r["logs"]), r["logs"]
