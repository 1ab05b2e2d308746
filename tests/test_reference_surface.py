"""The reference's public helpers at their module paths, and the names
callers patch there: s3_utils, streamer_mock.StreamerPatcher, and the
lookups of list_safetensors / pull_files / ObjectStorageModel."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import runai_model_streamer
from runai_model_streamer.safetensors_streamer import safetensors_streamer as ss_module
from runai_model_streamer.s3_utils import s3_utils

from conftest import assert_matches, describe, reference_all


# ---------------------------------------------------------------------------
# Module paths


@pytest.mark.parametrize("module, names", [
    ("runai_model_streamer", ["SafetensorsStreamer", "ObjectStorageModel", "list_safetensors",
                              "pull_files", "FileStreamer", "FileChunks", "DistributedStreamer"]),
    ("runai_model_streamer.distributed_streamer", ["DistributedStreamer"]),
    ("runai_model_streamer.distributed_streamer.distributed_streamer",
     ["DistributedStreamer", "get_dist_buffer_alignment", "aligned_offset"]),
    ("runai_model_streamer.file_streamer", ["FileStreamer", "FileChunks"]),
    ("runai_model_streamer.file_streamer.file_streamer", ["FileStreamer", "FileChunks",
                                                           "RunaiStreamerInvalidInputException"]),
    ("runai_model_streamer.file_streamer.requests_iterator",
     ["FileChunks", "RunaiStreamerMemoryLimitException"]),
    ("runai_model_streamer.safetensors_streamer.safetensors_streamer",
     ["SafetensorsStreamer", "ObjectStorageModel", "list_safetensors", "pull_files",
      "S3Credentials", "SAFETENSORS_PATTERN", "s3_glob", "s3_pull_files", "gcs_glob",
      "gcs_pull_files", "azure_glob", "azure_pull_files"]),
    ("runai_model_streamer.s3_utils.s3_utils",
     ["S3Credentials", "is_s3_path", "is_gs_path", "is_azure_path", "s3_glob", "s3_pull_files",
      "gcs_glob", "gcs_pull_files", "azure_glob", "azure_pull_files", "filter_allow",
      "filter_ignore", "removeprefix", "get_module", "get_s3_credentials_module",
      "get_s3_files_module", "get_gcs_files_module", "get_azure_files_module",
      "GCS_PROTOCOL_PREFIX", "S3_PROTOCOL_PREFIX", "AZURE_PROTOCOL_PREFIX",
      "DEFAULT_GCS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ENV", "AWS_EC2_METADATA_DISABLED_ENV",
      "DEFAULT_AWS_EC2_METADATA_DISABLED"]),
    ("runai_model_streamer.safetensors_streamer.streamer_mock", ["StreamerPatcher"]),
])
def test_names_exist_at_reference_paths(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lacks {missing}"


def test_top_level_entry_points_are_the_patchable_ones():
    # One object under both paths: patching the module attribute is what
    # ObjectStorageModel and the dispatchers see.
    assert runai_model_streamer.pull_files is ss_module.pull_files
    assert runai_model_streamer.list_safetensors is ss_module.list_safetensors
    assert runai_model_streamer.ObjectStorageModel is ss_module.ObjectStorageModel


def test_constants():
    assert s3_utils.S3_PROTOCOL_PREFIX == "s3://"
    assert s3_utils.GCS_PROTOCOL_PREFIX == "gs://"
    assert s3_utils.AZURE_PROTOCOL_PREFIX == "az://"
    assert s3_utils.DEFAULT_GCS_ENDPOINT_URL == "https://storage.googleapis.com"
    assert s3_utils.AWS_ENDPOINT_URL_ENV == "AWS_ENDPOINT_URL"
    assert s3_utils.AWS_EC2_METADATA_DISABLED_ENV == "AWS_EC2_METADATA_DISABLED"
    assert s3_utils.DEFAULT_AWS_EC2_METADATA_DISABLED == "true"


# ---------------------------------------------------------------------------
# s3_utils: filters and predicates


@pytest.mark.parametrize("paths, patterns, allowed, ignored", [
    (["a.safetensors", "b.json", "sub/c.safetensors"], ["*.safetensors"],
     ["a.safetensors", "sub/c.safetensors"], ["b.json"]),
    (["a.safetensors", "b.json", "dir/"], ["*/"], ["dir/"], ["a.safetensors", "b.json"]),
    (["x", "y"], [], [], ["x", "y"]),
    (["model-1.bin", "model-2.bin", "tok.json"], ["model-?.bin", "*.json"],
     ["model-1.bin", "model-2.bin", "tok.json"], []),
    ([], ["*"], [], []),
])
def test_filter_allow_and_ignore(paths, patterns, allowed, ignored):
    assert s3_utils.filter_allow(paths, patterns) == allowed
    assert s3_utils.filter_ignore(paths, patterns) == ignored


@pytest.mark.parametrize("s, prefix, expected", [
    ("s3://bucket/key", "s3://", "bucket/key"),
    ("bucket/key", "s3://", "bucket/key"),
    ("abc", "", "abc"),
    ("abc", "abc", ""),
    ("ab", "abc", "ab"),
])
def test_removeprefix(s, prefix, expected):
    assert s3_utils.removeprefix(s, prefix) == expected


@pytest.mark.parametrize("path, s3, gs, az", [
    ("s3://b/k", True, False, False),
    ("gs://b/k", False, True, False),
    ("az://c/k", False, False, True),
    ("/local/s3://x", False, False, False),
    ("relative/path", False, False, False),
])
def test_path_predicates(path, s3, gs, az):
    assert (s3_utils.is_s3_path(path), s3_utils.is_gs_path(path), s3_utils.is_azure_path(path)) \
        == (s3, gs, az)


def test_get_module_of_a_package_not_installed():
    assert s3_utils.get_module("no_such_package_xyz", "no_such_package_xyz.files") is None
    assert s3_utils.get_module("json", "json.no_such_module") is None
    assert s3_utils.get_module("json", "json.decoder") is importlib.import_module("json.decoder")


@pytest.mark.parametrize("helper, args", [
    ("s3_glob", ("gs://bucket/prefix",)),
    ("gcs_glob", ("s3://bucket/prefix",)),
    ("azure_glob", ("/local/dir",)),
    ("s3_pull_files", ("az://c/prefix", "/tmp/never")),
    ("gcs_pull_files", ("/local/dir", "/tmp/never")),
    ("azure_pull_files", ("gs://bucket/prefix", "/tmp/never")),
])
def test_scheme_helpers_refuse_other_schemes(helper, args):
    with pytest.raises(runai_model_streamer.RunaiStreamerInvalidInputException,
                       match=helper):
        getattr(s3_utils, helper)(*args)
    assert not os.path.exists("/tmp/never")


# ---------------------------------------------------------------------------
# Patch points: every lookup goes through the reference's module attributes


def test_object_storage_model_calls_the_patched_pull_files(monkeypatch, tmp_path):
    calls = []

    def fake_pull(model_path, dst, allow_pattern=None, ignore_pattern=None, s3_credentials=None):
        calls.append((model_path, dst, allow_pattern, ignore_pattern))
        Path(dst, "model.safetensors").write_bytes(b"fake")

    monkeypatch.setattr(
        "runai_model_streamer.safetensors_streamer.safetensors_streamer.pull_files", fake_pull)
    dst = tmp_path / "model"
    with runai_model_streamer.ObjectStorageModel("s3://bucket/model", str(dst)) as m:
        m.pull_files(allow_pattern=["*.safetensors"])
    assert calls == [("s3://bucket/model/", str(dst), ["*.safetensors"], None)]
    assert (dst / ss_module.ObjectStorageModel.SENTINEL_NAME).exists()
    # A second user of the same destination reuses it without downloading.
    with ss_module.ObjectStorageModel("s3://bucket/model", str(dst)) as m:
        assert m._skip
        m.pull_files()
    assert len(calls) == 1


def test_object_storage_model_leaves_no_sentinel_after_an_error(monkeypatch, tmp_path):
    def failing_pull(*args, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(ss_module, "pull_files", failing_pull)
    dst = tmp_path / "model"
    with pytest.raises(OSError, match="connection reset"):
        with ss_module.ObjectStorageModel("gs://bucket/model", str(dst)) as m:
            m.pull_files()
    assert not (dst / ss_module.ObjectStorageModel.SENTINEL_NAME).exists()
    # Nothing downloaded: the clean exit is refused too (RuntimeError, as the reference).
    monkeypatch.setattr(ss_module, "pull_files", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="No files were downloaded"):
        with ss_module.ObjectStorageModel("gs://bucket/model", str(dst)) as m:
            m.pull_files()


@pytest.mark.parametrize("uri, helper", [
    ("s3://bucket/model", "s3_pull_files"),
    ("gs://bucket/model", "gcs_pull_files"),
    ("az://container/model", "azure_pull_files"),
])
def test_pull_files_dispatches_through_the_patched_scheme_helper(monkeypatch, tmp_path, uri,
                                                                 helper):
    calls = []
    monkeypatch.setattr(ss_module, helper, lambda *args: calls.append(args))
    runai_model_streamer.pull_files(uri, str(tmp_path), ["*.json"], ["*.bin"])
    assert len(calls) == 1
    assert calls[0][:4] == (uri, str(tmp_path), ["*.json"], ["*.bin"])


@pytest.mark.parametrize("uri, helper", [
    ("s3://bucket/model", "s3_glob"),
    ("gs://bucket/model", "gcs_glob"),
    ("az://container/model", "azure_glob"),
])
def test_list_safetensors_dispatches_through_the_patched_glob(monkeypatch, uri, helper):
    calls = []

    def fake_glob(path, allow_pattern=None, *rest):
        calls.append((path, allow_pattern))
        return [path + "/a.safetensors"]

    monkeypatch.setattr(ss_module, helper, fake_glob)
    assert runai_model_streamer.list_safetensors(uri) == [uri + "/a.safetensors"]
    assert calls == [(uri, ["*.safetensors"])]


# ---------------------------------------------------------------------------
# StreamerPatcher


@pytest.fixture
def mock_bucket(tmp_path, small_checkpoint):
    """A local "bucket": models/tiny/ holds the checkpoint plus side files."""
    model = tmp_path / "bucket" / "models" / "tiny"
    model.mkdir(parents=True)
    for p in small_checkpoint:
        (model / p.name).write_bytes(p.read_bytes())
    (model / "config.json").write_text('{"model_type": "tiny"}')
    (model / "original").mkdir()
    (model / "original" / "consolidated.pth").write_bytes(b"\0" * 100)
    return tmp_path / "bucket", model, sorted(model.glob("*.safetensors"))


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_patcher_converts_uris_both_ways(mock_bucket, scheme):
    from runai_model_streamer.safetensors_streamer.streamer_mock import StreamerPatcher

    root, model, _ = mock_bucket
    patcher = StreamerPatcher(str(root))
    uri = f"{scheme}://any-bucket/models/tiny/config.json"
    assert patcher.is_remote_path(uri)
    local = patcher.convert_remote_path_to_local_path(uri)
    assert local == os.path.join(str(root), "models/tiny/config.json")
    assert patcher.convert_local_path_to_mocked_remote_path(local, uri) == uri
    assert patcher.convert_remote_path_to_local_path("/some/local/path") == "/some/local/path"
    assert not patcher.is_remote_path("/some/local/path")
    # A path outside the local bucket is not turned into a URI.
    assert patcher.convert_local_path_to_mocked_remote_path("/elsewhere/x", uri) == "/elsewhere/x"


def test_patcher_lists_as_uris_of_the_same_bucket(mock_bucket):
    from runai_model_streamer.safetensors_streamer.streamer_mock import StreamerPatcher

    root, _, st_files = mock_bucket
    patcher = StreamerPatcher(str(root))
    got = patcher.shim_list_safetensors("s3://my-mock-bucket/models/tiny/")
    assert got == [f"s3://my-mock-bucket/models/tiny/{p.name}" for p in st_files]


def test_patcher_pulls_with_filters(mock_bucket, tmp_path):
    from runai_model_streamer.safetensors_streamer.streamer_mock import StreamerPatcher

    root, model, st_files = mock_bucket
    patcher = StreamerPatcher(str(root))
    dst = tmp_path / "dst"
    patcher.shim_pull_files("gs://b/models/tiny", str(dst), allow_pattern=["*.json", "*.pth"],
                            ignore_pattern=["original/*"])
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == ["config.json"]
    dst2 = tmp_path / "dst2"
    patcher.shim_pull_files("gs://b/models/tiny/", str(dst2))
    for p in list(st_files) + [model / "config.json", model / "original" / "consolidated.pth"]:
        assert (dst2 / p.relative_to(model)).read_bytes() == p.read_bytes()


def test_patcher_streams_uris_from_local_files(mock_bucket, monkeypatch):
    """What vLLM's test does: patch a loader's SafetensorsStreamer with the
    mock and stream "s3://" URIs; every tensor is the real bytes."""
    from runai_model_streamer.safetensors_streamer.streamer_mock import StreamerPatcher

    root, _, st_files = mock_bucket
    patcher = StreamerPatcher(str(root))
    expected = reference_all(st_files)
    uris = patcher.shim_list_safetensors("s3://my-mock-bucket/models/tiny")
    seen = {}
    with patcher.create_mock_streamer() as streamer:
        streamer.stream_files(uris)
        assert streamer.total_size == sum(len(v[2]) for v in expected.values())
        assert sum(len(v) for v in streamer.files_to_tensors_metadata.values()) == len(expected)
        for name, tensor in streamer.get_tensors():
            seen[name] = describe(tensor)
    assert set(seen) == set(expected)
    for name, got in seen.items():
        assert_matches(name, got, expected[name])

    # stream_file with a subset of tensors and owned=False passes through.
    first = st_files[0]
    names = sorted(reference_all([first]))[:2]
    with patcher.create_mock_streamer("ignored", key="ignored") as streamer:
        streamer.stream_file(f"gs://b/models/tiny/{first.name}", tensor_names=names, owned=False)
        got = {name: describe(t) for name, t in streamer.get_tensors()}
    assert sorted(got) == names
    for name in names:
        assert_matches(name, got[name], expected[name])


def test_patcher_missing_object_names_the_local_file(mock_bucket):
    from runai_model_streamer.safetensors_streamer.streamer_mock import StreamerPatcher

    root, _, _ = mock_bucket
    patcher = StreamerPatcher(str(root))
    with patcher.create_mock_streamer() as streamer:
        with pytest.raises(FileNotFoundError, match="nope.safetensors"):
            streamer.stream_file("s3://b/models/tiny/nope.safetensors")
            list(streamer.get_tensors())


@pytest.mark.parametrize("paths, expected", [
    ([], True),
    (["/a", "relative/b", "file:///c"], True),
    (["s3://b/k1", "s3://b/k2"], True),
    (["s3://b/k", "gs://b/k"], False),
    (["/local", "az://c/k"], False),
])
def test_homogeneous_paths(paths, expected):
    from runai_model_streamer.file_streamer.file_streamer import homogeneous_paths

    assert homogeneous_paths(paths) is expected


def test_safetensors_streamer_attributes(small_checkpoint):
    """The attributes the reference sets in stream_files, which callers read
    (vLLM counts files_to_tensors_metadata for its progress bar)."""
    expected = reference_all(small_checkpoint)
    with runai_model_streamer.SafetensorsStreamer() as streamer:
        assert streamer.files_to_tensors_metadata == {} and streamer.total_size == 0
        streamer.stream_files([str(p) for p in small_checkpoint])
        assert streamer.device_str == "cpu"
        assert isinstance(streamer.start_time, float)
        assert sorted(streamer.files_to_tensors_metadata) == [0, 1]
        names = [m.name for ms in streamer.files_to_tensors_metadata.values() for m in ms]
        assert sorted(names) == sorted(expected)
        assert streamer.total_size == sum(len(v[2]) for v in expected.values())
        got = {name: describe(t) for name, t in streamer.get_tensors()}
        assert streamer.unaligned_copies == 0
    for name, value in got.items():
        assert_matches(name, value, expected[name])


def test_patcher_pull_of_a_local_path_is_not_implemented(mock_bucket, tmp_path):
    from runai_model_streamer.safetensors_streamer.streamer_mock import StreamerPatcher

    root, model, _ = mock_bucket
    with pytest.raises(NotImplementedError, match="not implemented for file system paths"):
        StreamerPatcher(str(root)).shim_pull_files(str(model), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


def test_object_storage_model_of_local_paths(tmp_path):
    missing = tmp_path / "no-such-model"
    dst = tmp_path / "dst"
    # Neither a URI nor a directory: a ValueError before any lock or directory is made.
    with pytest.raises(ValueError, match="no-such-model"):
        ss_module.ObjectStorageModel(str(missing), str(dst))
    assert not dst.exists() and not Path(str(dst) + ".lock").exists()
    # An existing directory is used in place: nothing to download.
    (tmp_path / "model").mkdir()
    with ss_module.ObjectStorageModel(str(tmp_path / "model"), str(dst)) as m:
        m.pull_files()
        assert m.dir == str(tmp_path / "model")
    assert not dst.exists()


def test_ring_setting_names_still_import():
    from runai_model_streamer.file_streamer import requests_iterator as ri

    assert ri.RUNAI_STREAMER_MEMORY_LIMIT_ENV_VAR_NAME == "RUNAI_STREAMER_MEMORY_LIMIT"
    assert ri.RUNAI_STREAMER_RING_BUFFERS_ENV_VAR_NAME == "RUNAI_STREAMER_RING_BUFFERS"
    assert ri.RUNAI_STREAMER_MAX_PADS_PER_BUFFER_ENV_VAR_NAME == "RUNAI_STREAMER_MAX_PADS_PER_BUFFER"
    assert ri.DIRECT_IO_BLOCK == os.sysconf("SC_PAGESIZE")


@pytest.mark.parametrize("module", [
    "runai_model_streamer.libstreamer",
    "runai_model_streamer.distributed_streamer.partition",
    "runai_model_streamer.file_streamer.slot_pool",
    "runai_model_streamer_s3",
])
def test_names_deliberately_not_provided(module):
    """docs/compatibility.md lists these as not provided (and why); this
    keeps the table honest if one is ever added."""
    with pytest.raises(ImportError):
        importlib.import_module(module)


def test_session_and_pytorch_internals_deliberately_not_provided():
    from runai_model_streamer.safetensors_streamer import safetensors_pytorch

    assert not hasattr(runai_model_streamer.SafetensorsStreamer(), "file_streamer")
    assert not hasattr(safetensors_pytorch, "SafetensorsMetadata")


def test_range_streamers_load_on_first_use():
    """A plain SafetensorsStreamer load does not pay for importing the range
    streamers and the distributed exchange; naming them imports them."""
    from conftest import run_python

    proc = run_python(
        "import sys, runai_model_streamer as m\n"
        "print('runai_model_streamer.distributed_streamer' in sys.modules,"
        " 'runai_model_streamer.distributed' in sys.modules)\n"
        "from runai_model_streamer import DistributedStreamer, FileStreamer\n"
        "print(DistributedStreamer.__module__, FileStreamer.__module__)\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == "False False"
    assert lines[-1] == ("runai_model_streamer.distributed_streamer.distributed_streamer "
                         "runai_model_streamer.file_streamer.file_streamer")
