"""Streaming, listing and pulling from S3 (MinIO), GCS (fake-gcs-server) and
Azure Blob (Azurite) on 127.0.0.1, through the public API and the CLI."""

from __future__ import annotations

import multiprocessing
import os
import re

import pytest

import runai_model_streamer
from runai_model_streamer import (
    ObjectStorageModel,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerPermissionError,
    S3Credentials,
    SafetensorsStreamer,
    list_safetensors,
    pull_files,
)

from conftest import assert_matches, call_with_timeout, describe, reference_all

from . import servers
from .conftest import SCHEMES, Store, largest_tensor_bytes, make_store, snapshot, tree

TIMEOUT = 60


def stream_all(uris, *, tensor_names=None, owned=True, s3_credentials=None):
    """Streams uris; returns ({name: (dtype, shape, bytes)}, total_size, stats)."""

    def run():
        got = {}
        with SafetensorsStreamer() as s:
            s.stream_files(list(uris), s3_credentials=s3_credentials,
                           tensor_names=tensor_names, owned=owned)
            total = s.total_size
            for name, tensor in s.get_tensors():
                assert name not in got, f"{name} delivered twice"
                got[name] = describe(tensor)  # a copy, taken before the iterator moves on
            stats = s.stats()
        return got, total, stats

    return call_with_timeout(run, TIMEOUT)


def assert_same_tensors(got, expected):
    assert sorted(got) == sorted(expected), (
        f"missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}")
    for name, value in expected.items():
        assert_matches(name, got[name], value)


# ---------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize("limit, chunk", [("-1", None), ("0", "64KiB"), ("N", "256KiB")],
                         ids=["limit=-1", "limit=0", "limit=N"])
def test_stream_files_matches_safetensors(store, checkpoint, checkpoint_reference, monkeypatch,
                                          limit, chunk):
    uris = store.upload(checkpoint)
    largest = largest_tensor_bytes(checkpoint_reference)
    if limit == "N":
        limit = str(2 * largest + (64 << 10))
    monkeypatch.setenv("RUNAI_STREAMER_MEMORY_LIMIT", limit)
    if chunk:
        monkeypatch.setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", chunk)
    owned = limit == "-1"  # with a limit, owned=False keeps the buffer exactly bounded
    got, total, stats = stream_all(uris, owned=owned)
    assert_same_tensors(got, checkpoint_reference)
    assert total == sum(len(v[2]) for v in checkpoint_reference.values())
    assert stats["bytes_read"] >= total
    if limit == "0":
        assert stats["arena_bytes"] <= largest + (64 << 10)
    elif limit != "-1":
        assert stats["arena_bytes"] <= int(limit)
        assert stats["reads"] > len(uris)  # the big tensor took many chunked reads


def test_stream_file_and_tensor_names(store, checkpoint, checkpoint_reference):
    uris = store.upload(checkpoint)
    names = sorted(checkpoint_reference)[::3] + ["big.weight"]
    names = sorted(set(names))
    got, total, _ = stream_all(uris, tensor_names=names)
    assert_same_tensors(got, {n: checkpoint_reference[n] for n in names})
    assert total == sum(len(checkpoint_reference[n][2]) for n in names)

    # stream_file: one object.
    one = reference_all([checkpoint[0]])
    got, _, _ = stream_all([uris[0]])
    assert_same_tensors(got, one)

    with SafetensorsStreamer() as s:
        with pytest.raises(ValueError, match="no.such.tensor"):
            s.stream_files(uris, tensor_names=["big.weight", "no.such.tensor"])


def test_settings_are_read_at_each_call(store, checkpoint, monkeypatch):
    """The library reads no environment: a variable changed after it was
    loaded applies to the next call."""
    uris = store.upload(checkpoint[:1])
    for name in store.env():
        monkeypatch.delenv(name, raising=False)
    if store.scheme == "s3":
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.server["endpoint"])
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.server["access_key"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(RunaiStreamerPermissionError, match="403"):
            stream_all(uris)
    elif store.scheme == "gs":
        # No emulator setting: an unused port on the loopback refuses the connection.
        monkeypatch.setenv("MODEL_STREAMER_GCS_ENDPOINT", f"http://127.0.0.1:{servers.free_port()}/")
        monkeypatch.setenv("MODEL_STREAMER_MAX_RETRIES", "0")
        with pytest.raises(runai_model_streamer.RunaiStreamerError, match=re.escape(uris[0])):
            stream_all(uris)
        monkeypatch.delenv("MODEL_STREAMER_GCS_ENDPOINT")
        monkeypatch.delenv("MODEL_STREAMER_MAX_RETRIES")
    else:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           store.server["connection_string"].replace(store.server["account_key"],
                                                                     "A" * 86 + "=="))
        with pytest.raises(RunaiStreamerPermissionError, match="403"):
            stream_all(uris)
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    store.apply_env(monkeypatch, "connection_string" if store.scheme == "az" else "endpoint")
    got, _, _ = stream_all(uris)
    assert_same_tensors(got, reference_all(checkpoint[:1]))


def test_trace_setting_writes_one_line_per_request(store, checkpoint, monkeypatch, tmp_path):
    """RUNAI_STREAMER_S3_TRACE=1 (spec): a trace file in the working
    directory, a line per ranged GET of every object, and no secret."""
    uris = store.upload(checkpoint[:2])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNAI_STREAMER_S3_TRACE", "1")
    got, _, stats = stream_all(uris)
    assert_same_tensors(got, reference_all(checkpoint[:2]))
    trace = tmp_path / f"model-streamer-trace-{os.getpid()}.log"
    lines = trace.read_text().splitlines()
    backend = {"s3": "s3", "gs": "gcs", "az": "azure"}[store.scheme]
    gets = [ln for ln in lines if f" {backend} GET " in ln and 'range="bytes=' in ln]
    for uri in uris:
        name = uri.rsplit("/", 1)[1]
        assert any(name in ln and " status=206 " in ln for ln in gets), (name, lines[:5])
    assert len(gets) >= stats["reads"]
    text = trace.read_text()
    for secret in ("secret_key", "account_key"):
        if secret in store.server:
            assert store.server[secret] not in text

    monkeypatch.setenv("RUNAI_STREAMER_S3_TRACE", "sometimes")
    with pytest.raises(RunaiStreamerInvalidInputException, match="RUNAI_STREAMER_S3_TRACE"):
        stream_all(uris)


def test_keys_with_special_characters(store, checkpoint, tmp_path):
    """Keys are taken literally: no percent-decoding, no query or fragment."""
    names = ["a+b.safetensors", "100%.safetensors", "q?x=1.safetensors", "h#1.safetensors",
             "sp ace.safetensors", "\u00fc.safetensors", "x%2Fy.safetensors"]
    data = checkpoint[0].read_bytes()
    expected = reference_all([checkpoint[0]])
    uris = [store.put(n, data) for n in names]
    assert list_safetensors(store.uri()) == sorted(uris)
    for uri in uris:
        got, _, _ = stream_all([uri])
        assert_same_tensors(got, expected)
    pull_files(store.uri(), str(tmp_path / "dst"))
    assert tree(tmp_path / "dst") == {n: data for n in names}


# ---------------------------------------------------------------------------
# Permanent failures


def test_permanent_failures_name_the_uri_and_status(store, checkpoint, monkeypatch):
    store.upload(checkpoint[:1])
    missing = store.uri("missing.safetensors")
    with pytest.raises(RunaiStreamerFileNotFoundError) as info:
        stream_all([missing])
    assert missing in str(info.value) and "404" in str(info.value)

    no_bucket = f"{store.scheme}://no-such-bucket-{store.prefix}/model.safetensors"
    with pytest.raises(RunaiStreamerFileNotFoundError) as info:
        stream_all([no_bucket])
    assert no_bucket in str(info.value) and "404" in str(info.value)
    with pytest.raises(RunaiStreamerFileNotFoundError, match="404"):
        list_safetensors(f"{store.scheme}://no-such-bucket-{store.prefix}/model/")

    if store.scheme == "gs":
        return  # fake-gcs-server accepts any credentials (none, even): nothing to refuse
    if store.scheme == "s3":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    else:
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "A" * 86 + "==")
    uri = store.uri(checkpoint[0].name)
    with pytest.raises(RunaiStreamerPermissionError) as info:
        stream_all([uri])
    assert uri in str(info.value) and "403" in str(info.value)
    with pytest.raises(RunaiStreamerPermissionError, match="403"):
        list_safetensors(store.uri())


# ---------------------------------------------------------------------------
# list_safetensors


def test_list_safetensors(store, checkpoint):
    uris = store.upload(checkpoint)
    store.put("config.json", b"{}")
    store.put("model.safetensors.index.json", b"{}")
    store.put("sub/nested.safetensors", b"not listed: not a direct child")
    store.put("dir.safetensors/inner.bin", b"a folder named like a file")
    expected = sorted(uris)
    assert list_safetensors(store.uri()) == expected
    assert list_safetensors(store.uri() + "/") == expected
    assert list_safetensors(store.uri("sub")) == [store.uri("sub/nested.safetensors")]
    assert list_safetensors(store.uri("nothing-here")) == []


# ---------------------------------------------------------------------------
# pull_files


def _upload_model_tree(store: Store, checkpoint):
    files = {p.name: p.read_bytes() for p in checkpoint}
    files.update({
        "config.json": b'{"model_type": "test"}',
        "tokenizer.json": b'{"version": "1.0"}',
        "README.md": b"# model\n",
        "sub/extra.safetensors": checkpoint[0].read_bytes(),
        "sub/deeper/notes.txt": b"notes",
        "with space/a b.json": b"[]",
    })
    for rel, data in files.items():
        store.put(rel, data)
    return files


def test_pull_files_with_patterns(store, checkpoint, tmp_path):
    files = _upload_model_tree(store, checkpoint)
    outside = snapshot(tmp_path)

    dst = tmp_path / "all"
    pull_files(store.uri(), str(dst))
    assert tree(dst) == files

    dst = tmp_path / "filtered"
    pull_files(store.uri() + "/", str(dst), allow_pattern=["*.safetensors", "*.json"],
               ignore_pattern=["sub/*"])
    assert tree(dst) == {k: v for k, v in files.items()
                         if (k.endswith(".safetensors") or k.endswith(".json"))
                         and not k.startswith("sub/")}

    dst = tmp_path / "ignored"
    pull_files(store.uri(), str(dst), ignore_pattern=["*.safetensors"])
    assert tree(dst) == {k: v for k, v in files.items() if not k.endswith(".safetensors")}

    # The pulled checkpoint streams like the original.
    got, _, _ = stream_all(sorted(str(p) for p in (tmp_path / "all").glob("*.safetensors")))
    assert_same_tensors(got, reference_all(checkpoint))

    # Nothing but the three destinations appeared, and no temporary files stayed.
    after = snapshot(tmp_path)
    new = sorted(set(after) - set(outside))
    assert all(p.split(os.sep)[0] in ("all", "filtered", "ignored") for p in new), new
    assert not [p for p in after if os.path.basename(p).startswith(".")], after


# Object names each server stores verbatim that must never become a path
# outside dst (MinIO refuses ".." segments and fake-gcs-server normalises them,
# so their hostile names are backslashes).
HOSTILE = {
    "s3": ["a\\b.json"],
    "gs": ["a\\b.json", "..\\..\\escape.json"],
    "az": ["../escape.safetensors", "a/../../b.json", "a//b.json"],
}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pull_files_refuses_hostile_object_names(request, monkeypatch, tmp_path, scheme):
    store = make_store(request, scheme)
    store.apply_env(monkeypatch)
    store.put("model.safetensors", b"fine")
    store.put("config.json", b"{}")
    hostile = HOSTILE[scheme]
    for rel in hostile:
        store.put(rel, b"hostile")
    work = tmp_path / "work"
    dst = work / "dst"
    work.mkdir()
    for rel in hostile:
        with pytest.raises(RunaiStreamerInvalidInputException) as info:
            pull_files(store.uri(), str(dst), allow_pattern=[rel.replace("[", "[[]")])
        assert repr(rel) in str(info.value) or rel in str(info.value)
    with pytest.raises(RunaiStreamerInvalidInputException, match="refusing"):
        pull_files(store.uri(), str(dst))
    # Refused before anything was written, and nothing anywhere outside dst.
    assert snapshot(tmp_path) == ["work"] + (["work/dst"] if dst.exists() else [])
    assert not list(tmp_path.rglob("*escape*")) and not list(tmp_path.parent.glob("*escape*"))
    # Filtered out, a hostile name is harmless.
    pull_files(store.uri(), str(dst), ignore_pattern=hostile + ["a/*", "..*"])
    assert tree(dst) == {"model.safetensors": b"fine", "config.json": b"{}"}


# ---------------------------------------------------------------------------
# ObjectStorageModel


def test_object_storage_model_two_processes_race(request, monkeypatch, tmp_path, checkpoint):
    """Two spawned processes open ObjectStorageModel on the same dst for each
    backend at the same moment: exactly one downloads, the other waits on the
    lock and reuses the result."""
    from ._race import race

    jobs, expected = [], {}
    for scheme in SCHEMES:
        store = make_store(request, scheme)
        files = {"model.safetensors": checkpoint[0].read_bytes(), "config.json": b"{}",
                 "sub/tokenizer.json": b'{"t": 1}'}
        for rel, data in files.items():
            store.put(rel, data)
        dst = tmp_path / f"cache-{scheme}"
        jobs.append((scheme, store.env(), store.uri(), str(dst)))
        expected[scheme] = files

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    delay = 0.3
    procs = [ctx.Process(target=race, args=(f"p{i}", jobs, barrier, delay, results), daemon=True)
             for i in range(2)]
    for p in procs:
        p.start()
    reports = {}
    try:
        for _ in procs:
            name, value = results.get(timeout=180)
            assert not isinstance(value, str), f"racer {name} failed:\n{value}"
            reports[name] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for i, scheme in enumerate(SCHEMES):
        a, b = reports["p0"][i], reports["p1"][i]
        assert a["label"] == b["label"] == scheme
        assert sorted([a["downloaded"], b["downloaded"]]) == [False, True], (a, b)
        loser = a if not a["downloaded"] else b
        assert loser["entered_s"] >= delay, f"{scheme}: the second process did not wait: {loser}"
        dst = tmp_path / f"cache-{scheme}"
        assert a["files"] == b["files"] == sorted(list(expected[scheme]) + [ObjectStorageModel.SENTINEL_NAME])
        got = tree(dst)
        got.pop(ObjectStorageModel.SENTINEL_NAME)
        assert got == expected[scheme]

        # A later user reuses the download without listing anything.
        with ObjectStorageModel(model_path=jobs[i][2], dst=str(dst)) as model:
            assert model._skip and model.dir == str(dst)
            model.pull_files()


def test_object_storage_model_retries_after_a_failure(store, tmp_path):
    store.put("config.json", b"{}")
    dst = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="boom"):
        with ObjectStorageModel(model_path=store.uri(), dst=str(dst)) as model:
            model.pull_files()
            raise RuntimeError("boom")
    assert not (dst / ObjectStorageModel.SENTINEL_NAME).exists()
    with ObjectStorageModel(model_path=store.uri(), dst=str(dst)) as model:
        assert not model._skip
        model.pull_files()
    assert tree(dst) == {"config.json": b"{}", ObjectStorageModel.SENTINEL_NAME: b""}
    # An empty prefix downloads nothing: an error, and no sentinel.
    empty = tmp_path / "empty"
    with pytest.raises(runai_model_streamer.RunaiStreamerError, match="No files were downloaded"):
        with ObjectStorageModel(model_path=store.uri("nothing-here"), dst=str(empty)) as model:
            model.pull_files()
    assert not (empty / ObjectStorageModel.SENTINEL_NAME).exists()


# ---------------------------------------------------------------------------
# CLI


def test_cli_ls_and_pull(store, checkpoint, tmp_path, capsys):
    from runai_model_streamer.cli import main

    files = _upload_model_tree(store, checkpoint)
    assert main(["ls", store.uri()]) == 0
    out = capsys.readouterr().out.splitlines()
    top = sorted(k for k in files if "/" not in k)
    assert [line.split(None, 1)[1] for line in out] == [store.uri(k) for k in top]
    assert [int(line.split(None, 1)[0]) for line in out] == [len(files[k]) for k in top]

    assert main(["ls", "--recursive", "--json", store.uri()]) == 0
    import json
    listed = json.loads(capsys.readouterr().out)["objects"]
    assert {o["uri"]: o["size"] for o in listed} == {store.uri(k): len(v) for k, v in files.items()}

    dst = tmp_path / "pulled"
    assert main(["pull", store.uri(), str(dst), "--allow", "*.safetensors", "--allow", "*.json",
                 "--ignore", "sub/*", "--progress"]) == 0
    captured = capsys.readouterr()
    want = {k: v for k, v in files.items()
            if (k.endswith(".safetensors") or k.endswith(".json")) and not k.startswith("sub/")}
    assert tree(dst) == want
    assert "100.0%" in captured.err and "files" in captured.err
    assert re.search(rf"pulled {len(want)} file\(s\), {sum(map(len, want.values()))} bytes",
                     captured.out), captured.out

    # stream: a prefix written with a trailing "/" stands for its *.safetensors.
    assert main(["stream", "--json", store.uri() + "/"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == len(checkpoint)  # not sub/extra.safetensors
    assert summary["bytes"] == sum(len(v[2]) for v in reference_all(checkpoint).values())

    assert main(["pull", store.uri("nothing-here"), str(tmp_path / "none"), "--no-progress"]) == 1
    assert "no objects" in capsys.readouterr().err
    assert main(["ls", f"{store.scheme}://no-such-bucket-{store.prefix}/x/"]) == 1
    assert "404" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# S3 specifics


def test_s3_credentials_override_the_environment(request, monkeypatch, checkpoint, tmp_path):
    store = make_store(request, "s3")
    srv = store.server
    uris = store.upload(checkpoint[:2])
    # Nothing usable in the environment: the explicit credentials do it all.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")  # must not be paired with explicit keys
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the refused endpoint below fails at once
    creds = S3Credentials(access_key_id=srv["access_key"], secret_access_key=srv["secret_key"],
                          region_name=srv["region"], endpoint=srv["endpoint"])
    got, _, _ = stream_all(uris, s3_credentials=creds)
    assert_same_tensors(got, reference_all(checkpoint[:2]))
    assert list_safetensors(store.uri(), s3_credentials=creds) == sorted(uris)
    pull_files(store.uri(), str(tmp_path / "dst"), s3_credentials=creds)
    assert tree(tmp_path / "dst") == {p.name: p.read_bytes() for p in checkpoint[:2]}
    with pytest.raises(runai_model_streamer.RunaiStreamerError):
        list_safetensors(store.uri())  # the environment alone points nowhere


def test_s3_boto3_session(request, monkeypatch, checkpoint):
    """The default route (RUNAI_STREAMER_NO_BOTO3_SESSION unset): a boto3
    session resolves the credentials, here from the environment."""
    pytest.importorskip("boto3")
    from runai_model_streamer import config

    store = make_store(request, "s3")
    store.apply_env(monkeypatch)
    uris = store.upload(checkpoint[:1])
    resolved = config.boto3_settings()
    assert resolved["AWS_ACCESS_KEY_ID"] == store.server["access_key"]
    assert resolved["AWS_SECRET_ACCESS_KEY"] == store.server["secret_key"]
    calls = []
    original = config.boto3_settings

    def spy(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    monkeypatch.setattr(config, "boto3_settings", spy)
    got, _, _ = stream_all(uris)
    assert_same_tensors(got, reference_all(checkpoint[:1]))
    assert list_safetensors(store.uri()) == uris
    assert len(calls) == 2
    monkeypatch.setenv("RUNAI_STREAMER_NO_BOTO3_SESSION", "1")
    got, _, _ = stream_all(uris)
    assert len(calls) == 2


def test_gs_and_az_environment_variants(request, monkeypatch, checkpoint):
    """MODEL_STREAMER_GCS_ENDPOINT as well as STORAGE_EMULATOR_HOST; an Azure
    connection string as well as endpoint + key."""
    for scheme, variant in (("gs", "endpoint"), ("az", "connection_string")):
        store = make_store(request, scheme)
        store.apply_env(monkeypatch, variant)
        uris = store.upload(checkpoint[:2])
        got, _, _ = stream_all(uris)
        assert_same_tensors(got, reference_all(checkpoint[:2]))
        assert list_safetensors(store.uri()) == sorted(uris)
        for name in store.env(variant):
            monkeypatch.delenv(name)
