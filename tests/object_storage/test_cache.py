"""The local cache (MODEL_STREAMER_CACHE_DIR) through the Python API and the
CLI, against the real servers. The cache's own cases (bytes over the wire,
overwritten objects, kill -9, ENOSPC, concurrent processes, eviction) are
tested in Go (go/cache) behind a byte-counting proxy; these check the
setting reaches the library and the CLI manages what it wrote."""

from __future__ import annotations

import json
import os

import pytest

from runai_model_streamer import RunaiStreamerError, SafetensorsStreamer, _native, config
from runai_model_streamer.cli import main as cli

from conftest import assert_matches, call_with_timeout, describe

TIMEOUT = 120


def _load(uris):
    got = {}
    with SafetensorsStreamer() as s:
        s.stream_files(uris)
        for name, t in s.get_tensors():
            got[name] = describe(t)
    return got


def _strategies(uris, scheme):
    s = _native.Stream(list(uris), settings=config.backend_settings(scheme=scheme))
    try:
        return [f.get("strategy", "") for f in s.metadata()["files"]]
    finally:
        s.close()


def _cli_json(capsys, *argv):
    capsys.readouterr()
    assert cli(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_second_load_reads_the_cache(store, checkpoint, checkpoint_reference, tmp_path, monkeypatch, capsys):
    uris = store.upload(checkpoint)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MODEL_STREAMER_CACHE_DIR", str(cache_dir))

    first = call_with_timeout(lambda: _load(uris), TIMEOUT)
    assert _native.cache_wait(TIMEOUT * 1000)
    listing = _cli_json(capsys, "cache", "ls")
    assert sorted(e["uri"] for e in listing["entries"]) == sorted(uris)
    assert all(e["size"] == p.stat().st_size for e, p in
               zip(sorted(listing["entries"], key=lambda e: e["uri"]), sorted(checkpoint, key=lambda p: p.name)))

    # The entries are local files: the fs backend picks a read strategy.
    assert all(_strategies(uris, store.scheme))
    second = call_with_timeout(lambda: _load(uris), TIMEOUT)
    assert set(first) == set(second) == set(checkpoint_reference)
    for name, expected in checkpoint_reference.items():
        assert_matches(name, first[name], expected)
        assert_matches(name, second[name], expected)

    du = _cli_json(capsys, "cache", "du")
    assert du["entries"] == len(uris) and du["bytes"] == sum(p.stat().st_size for p in checkpoint)
    cleared = _cli_json(capsys, "cache", "clear", "--cache-dir", str(cache_dir))
    assert cleared["entries"] == len(uris) and cleared["bytes_freed"] == du["bytes"]
    assert _cli_json(capsys, "cache", "ls")["entries"] == []
    assert not any(_strategies(uris, store.scheme)), "cleared entries still served"


def test_without_the_setting_nothing_is_cached(store, checkpoint, tmp_path, monkeypatch):
    uris = store.upload(checkpoint[:1])
    call_with_timeout(lambda: _load(uris), TIMEOUT)
    assert _native.cache_wait(TIMEOUT * 1000)
    assert not any(_strategies(uris, store.scheme))


def test_prune_keeps_under_the_limit(store, checkpoint, tmp_path, monkeypatch, capsys):
    uris = store.upload(checkpoint)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MODEL_STREAMER_CACHE_DIR", str(cache_dir))
    call_with_timeout(lambda: _load(uris), TIMEOUT)
    assert _native.cache_wait(TIMEOUT * 1000)
    before = _cli_json(capsys, "cache", "du")
    largest = max(p.stat().st_size for p in checkpoint)
    pruned = _cli_json(capsys, "cache", "prune", "--max-bytes", str(largest))
    after = _cli_json(capsys, "cache", "du", "--max-bytes", str(largest))
    assert after["bytes"] <= largest < before["bytes"]
    assert pruned["entries"] == before["entries"] - after["entries"] > 0


def test_bad_limit_is_refused(store, checkpoint, tmp_path, monkeypatch):
    uris = store.upload(checkpoint[:1])
    monkeypatch.setenv("MODEL_STREAMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MODEL_STREAMER_CACHE_MAX_BYTES", "lots")
    with pytest.raises(RunaiStreamerError, match="MODEL_STREAMER_CACHE_MAX_BYTES"):
        call_with_timeout(lambda: _load(uris), TIMEOUT)


def test_cache_command_needs_a_directory(monkeypatch, capsys):
    monkeypatch.delenv("MODEL_STREAMER_CACHE_DIR", raising=False)
    assert cli(["cache", "ls"]) == 1
    assert "MODEL_STREAMER_CACHE_DIR" in capsys.readouterr().err


def test_stream_command_cache_dir(store, checkpoint, tmp_path, monkeypatch, capsys):
    """`model-streamer stream --cache-dir DIR` writes entries there; a second
    run reads them (the metadata's read strategy is a local file's)."""
    uris = store.upload(checkpoint[:2])
    cache_dir = tmp_path / "cli-cache"
    monkeypatch.setenv("MODEL_STREAMER_CACHE_DIR", "")  # restored after the CLI sets it
    assert cli(["stream", *uris, "--cache-dir", str(cache_dir), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 2
    assert _native.cache_wait(TIMEOUT * 1000)
    listing = _cli_json(capsys, "cache", "ls", "--cache-dir", str(cache_dir))
    assert sorted(e["uri"] for e in listing["entries"]) == sorted(uris)
    assert all(_strategies(uris, store.scheme))


def test_require_accepts_an_entry_verified_when_written(store, checkpoint, checkpoint_reference, tmp_path,
                                                       monkeypatch):
    """MODEL_STREAMER_VERIFY=require: a hit is the entry the store's checksum
    verified when it was written, which satisfies require (a local file with
    no sidecar would not)."""
    uris = store.upload(checkpoint[:1])
    monkeypatch.setenv("MODEL_STREAMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MODEL_STREAMER_VERIFY", "require")
    first = call_with_timeout(lambda: _load(uris), TIMEOUT)
    assert _native.cache_wait(TIMEOUT * 1000)
    assert all(_strategies(uris, store.scheme)), "no entry written"
    second = call_with_timeout(lambda: _load(uris), TIMEOUT)
    assert set(first) == set(second)
    for name in first:
        assert_matches(name, second[name], checkpoint_reference[name])


def test_pull_goes_through_the_cache(store, checkpoint, tmp_path, monkeypatch):
    """`model-streamer pull --cache-dir DIR` writes entries as it downloads;
    a second pull copies them (its trace has no ranged GET) and both copies
    are the checkpoint's bytes."""
    uris = store.upload(checkpoint[:2])
    prefix = uris[0].rsplit("/", 1)[0] + "/"
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MODEL_STREAMER_CACHE_DIR", "")  # restored after the CLI sets it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNAI_STREAMER_S3_TRACE", "1")
    trace = tmp_path / f"model-streamer-trace-{os.getpid()}.log"

    def ranged_gets():
        text = trace.read_text() if trace.exists() else ""
        return sum(1 for ln in text.splitlines() if " GET " in ln and 'range="bytes=' in ln)

    for n, d in enumerate(("first", "second")):
        before = ranged_gets()
        assert cli(["pull", prefix, str(tmp_path / d), "--cache-dir", str(cache_dir), "--no-progress"]) == 0
        assert _native.cache_wait(TIMEOUT * 1000)
        if n == 0:
            assert ranged_gets() > before
            listing = _native.cache_manage("ls", str(cache_dir))
            assert sorted(e["uri"] for e in listing["entries"]) == sorted(uris)
        else:
            assert ranged_gets() == before, "the second pull read the store"
        for p in checkpoint[:2]:
            assert (tmp_path / d / p.name).read_bytes() == p.read_bytes()
