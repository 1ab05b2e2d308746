"""The reference's per-scheme helpers (s3_utils.s3_glob, gcs_pull_files, ...)
against the real servers: they go through this package's own backends, so
no companion package and no cloud SDK is needed."""

from __future__ import annotations

import pytest

from runai_model_streamer.s3_utils import s3_utils

from .conftest import Store, tree

GLOB = {"s3": s3_utils.s3_glob, "gs": s3_utils.gcs_glob, "az": s3_utils.azure_glob}
PULL = {"s3": s3_utils.s3_pull_files, "gs": s3_utils.gcs_pull_files,
        "az": s3_utils.azure_pull_files}

FILES = {
    "model-00001.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "model-00002.safetensors": b"second shard",
    "config.json": b'{"model_type": "test"}',
    "tokenizer.model": b"\x00\x01\x02",
    "original/consolidated.pth": b"pth" * 100,
    "original/params.json": b"{}",
}


def _upload(store: Store):
    for rel, data in FILES.items():
        store.put(rel, data)


def test_glob_lists_direct_children_matching_the_patterns(store):
    _upload(store)
    glob = GLOB[store.scheme]
    expected = sorted(store.uri(n) for n in FILES if "/" not in n and n.endswith(".safetensors"))
    assert glob(store.uri(), ["*.safetensors"]) == expected
    assert glob(store.uri() + "/", ["*.safetensors"]) == expected
    assert glob(store.uri(), ["*.json", "*.model"]) == sorted(
        [store.uri("config.json"), store.uri("tokenizer.model")])
    # No pattern: every direct child (never the nested ones).
    assert glob(store.uri()) == sorted(store.uri(n) for n in FILES if "/" not in n)
    assert glob(store.uri("original"), ["*.json"]) == [store.uri("original/params.json")]
    assert glob(store.uri("nothing-here"), ["*"]) == []


def test_pull_files_copies_the_tree_with_filters(store, tmp_path):
    _upload(store)
    pull = PULL[store.scheme]

    everything = tmp_path / "all"
    pull(store.uri(), str(everything))
    assert tree(everything) == FILES

    filtered = tmp_path / "filtered"
    pull(store.uri() + "/", str(filtered), ["*.json", "*.safetensors"], ["original/*"])
    assert tree(filtered) == {k: v for k, v in FILES.items()
                              if k.endswith((".json", ".safetensors")) and "/" not in k}


def test_s3_helpers_take_explicit_credentials(request, monkeypatch, tmp_path):
    """s3_glob / s3_pull_files with S3Credentials and no keys in the environment."""
    from .conftest import make_store

    store = make_store(request, "s3")
    env = store.env()
    for k, v in env.items():
        if not k.startswith("AWS_ACCESS_KEY_ID") and not k.startswith("AWS_SECRET"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("RUNAI_STREAMER_NO_BOTO3_SESSION", "1")
    store.put("model.safetensors", b"abc")
    creds = s3_utils.S3Credentials(access_key_id=env["AWS_ACCESS_KEY_ID"],
                                   secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    assert s3_utils.s3_glob(store.uri(), ["*.safetensors"], creds) == [
        store.uri("model.safetensors")]
    s3_utils.s3_pull_files(store.uri(), str(tmp_path / "d"), None, None, creds)
    assert tree(tmp_path / "d") == {"model.safetensors": b"abc"}
    # Wrong keys: a permission error naming the bucket, nothing written.
    bad = s3_utils.S3Credentials(access_key_id="nobody", secret_access_key="wrong")
    with pytest.raises(PermissionError, match=store.bucket):
        s3_utils.s3_glob(store.uri(), ["*.safetensors"], bad)
