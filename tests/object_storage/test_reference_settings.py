"""Settings code written for runai-model-streamer 0.17 relies on (see
docs/settings.md), against real servers on 127.0.0.1: unsigned S3 requests
to a public MinIO bucket, the GCS emulator and endpoint variables of
google-cloud-cpp and the Python SDK against fake-gcs-server, anonymous GCS
credentials, and the once-per-load CPU buffer log line."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from runai_model_streamer import (
    RunaiStreamerPermissionError,
    SafetensorsStreamer,
    list_safetensors,
)
from runai_model_streamer import config

from conftest import assert_matches, call_with_timeout, describe, reference_all

from . import servers
from .conftest import BUCKET

PUBLIC_BUCKET = "model-streamer-public"
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _no_gcs_endpoint_variables(monkeypatch):
    """The developer's own GCS endpoint variables (the suite's scrub list
    predates them) must not redirect these tests."""
    for name in ("CLOUD_STORAGE_EMULATOR_ENDPOINT", "CLOUD_STORAGE_TESTBENCH_ENDPOINT",
                 "API_ENDPOINT_OVERRIDE", "RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS",
                 "RUNAI_STREAMER_S3_UNSIGNED"):
        monkeypatch.delenv(name, raising=False)


def stream_all(uris):
    """{name: (dtype, shape, bytes)} of every tensor streamed from uris."""

    def run():
        got = {}
        with SafetensorsStreamer() as s:
            s.stream_files(list(uris))
            for name, tensor in s.get_tensors():
                assert name not in got, f"{name} delivered twice"
                got[name] = describe(tensor)
        return got

    return call_with_timeout(run, TIMEOUT)


def assert_same_tensors(got, expected):
    assert sorted(got) == sorted(expected), (
        f"missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}")
    for name, value in expected.items():
        assert_matches(name, got[name], value)


def prefix() -> str:
    return f"ref-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------
# RUNAI_STREAMER_S3_UNSIGNED


@pytest.fixture(scope="module")
def public_bucket(s3_server):
    """A MinIO bucket anyone may read and list (`mc anonymous set download`)."""
    try:
        servers.minio_create_bucket(s3_server, PUBLIC_BUCKET)
    except RuntimeError as e:
        if "HTTP 409" not in str(e):
            raise
    servers.minio_allow_anonymous_read(s3_server, PUBLIC_BUCKET)
    return PUBLIC_BUCKET


def unsigned_env(monkeypatch, srv):
    """An S3-compatible endpoint and no credentials at all, unsigned."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", srv["endpoint"])
    monkeypatch.setenv("AWS_REGION", srv["region"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
    monkeypatch.setenv("RUNAI_STREAMER_S3_UNSIGNED", "1")
    # The unsigned route must not even create a boto3 session.
    monkeypatch.setattr(config, "boto3_settings", _no_boto3)


def _no_boto3(env=None):
    raise AssertionError("a boto3 session was created for unsigned requests")


def test_s3_unsigned_streams_and_lists_a_public_bucket(s3_server, public_bucket, checkpoint,
                                                       checkpoint_reference, monkeypatch):
    p = prefix()
    uris = sorted(servers.minio_put_object(s3_server, public_bucket, f"{p}/{f.name}", f.read_bytes())
                  for f in checkpoint)
    servers.minio_put_object(s3_server, public_bucket, f"{p}/config.json", b"{}")
    servers.minio_put_object(s3_server, public_bucket, f"{p}/sub/nested.safetensors", b"x")
    unsigned_env(monkeypatch, s3_server)

    assert call_with_timeout(lambda: list_safetensors(f"s3://{public_bucket}/{p}"), TIMEOUT) == uris
    assert_same_tensors(stream_all(uris), checkpoint_reference)


def test_s3_unsigned_on_a_private_bucket_names_the_object(s3_server, checkpoint, monkeypatch):
    uri = servers.minio_put_object(s3_server, BUCKET, f"{prefix()}/model.safetensors",
                                   Path(checkpoint[0]).read_bytes())
    unsigned_env(monkeypatch, s3_server)
    with pytest.raises(RunaiStreamerPermissionError, match="403") as info:
        stream_all([uri])
    assert uri in str(info.value)
    with pytest.raises(RunaiStreamerPermissionError):
        call_with_timeout(lambda: list_safetensors(uri.rsplit("/", 1)[0]), TIMEOUT)


def test_s3_unsigned_skips_the_boto3_session(monkeypatch):
    calls = []
    monkeypatch.setattr(config, "boto3_settings",
                        lambda env=None: calls.append(1) or {"AWS_ACCESS_KEY_ID": "BOTO"})
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert "AWS_ACCESS_KEY_ID=BOTO" in config.backend_settings(env, scheme="s3")
    assert len(calls) == 1
    for value in ("1", "true", "TRUE"):
        got = config.backend_settings(dict(env, RUNAI_STREAMER_S3_UNSIGNED=value), scheme="s3")
        assert f"RUNAI_STREAMER_S3_UNSIGNED={value}" in got
        assert not [s for s in got if s.startswith("AWS_ACCESS_KEY_ID")]
    assert len(calls) == 1
    config.backend_settings(dict(env, RUNAI_STREAMER_S3_UNSIGNED="0"), scheme="s3")
    assert len(calls) == 2


# ---------------------------------------------------------------------------
# GCS endpoints and anonymous credentials


def test_gcs_endpoint_variables_are_passed_to_the_library():
    env = {"CLOUD_STORAGE_EMULATOR_ENDPOINT": "http://127.0.0.1:1",
           "CLOUD_STORAGE_TESTBENCH_ENDPOINT": "http://127.0.0.1:2",
           "API_ENDPOINT_OVERRIDE": "http://127.0.0.1:3",
           "RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS": "true",
           "CLOUD_SDK_CONFIG": "not passed"}
    got = dict(s.split("=", 1) for s in config.backend_settings(env, scheme="gs"))
    assert got == {k: v for k, v in env.items() if k != "CLOUD_SDK_CONFIG"}


# A dead port: the setting it is in must lose to the other one.
DEAD = "127.0.0.1:1"


@pytest.mark.parametrize("variant", [
    "emulator_endpoint", "emulator_endpoint_over_emulator_host", "testbench_endpoint",
    "api_endpoint_override_anonymous", "emulator_host_over_api_endpoint_override",
])
def test_gcs_endpoint_settings_stream_and_list(gs_server, checkpoint, checkpoint_reference,
                                                monkeypatch, variant):
    url = f"http://{gs_server['host']}"
    env = {
        "emulator_endpoint": {"CLOUD_STORAGE_EMULATOR_ENDPOINT": url},
        "emulator_endpoint_over_emulator_host": {"CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
                                                 "STORAGE_EMULATOR_HOST": DEAD},
        "testbench_endpoint": {"CLOUD_STORAGE_TESTBENCH_ENDPOINT": url},
        # API_ENDPOINT_OVERRIDE authenticates like Google's own endpoint;
        # fake-gcs-server has no credentials to give, so anonymous.
        "api_endpoint_override_anonymous": {"API_ENDPOINT_OVERRIDE": url,
                                            "RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS": "true"},
        "emulator_host_over_api_endpoint_override": {"STORAGE_EMULATOR_HOST": gs_server["host"],
                                                     "API_ENDPOINT_OVERRIDE": f"http://{DEAD}"},
    }[variant]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = prefix()
    uris = sorted(servers.gcs_put_object(gs_server, BUCKET, f"{p}/{f.name}", f.read_bytes())
                  for f in checkpoint)
    servers.gcs_put_object(gs_server, BUCKET, f"{p}/README.md", b"readme")
    assert call_with_timeout(lambda: list_safetensors(f"gs://{BUCKET}/{p}/"), TIMEOUT) == uris
    assert_same_tensors(stream_all(uris), checkpoint_reference)


def test_gcs_emulator_endpoint_must_be_a_url(gs_server, checkpoint, monkeypatch):
    uri = servers.gcs_put_object(gs_server, BUCKET, f"{prefix()}/m.safetensors",
                                 Path(checkpoint[0]).read_bytes())
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", gs_server["host"])  # no scheme
    with pytest.raises(ValueError, match="CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        stream_all([uri])


# ---------------------------------------------------------------------------
# The CPU buffer log line


def test_cpu_buffer_log_line_names_the_rank(small_checkpoint, caplog, monkeypatch):
    """Once per load, at INFO, naming the rank (0 without torch.distributed),
    the buffer's size and the load's. (The line names the real rank of a
    gloo group in tests/distributed/test_reference_settings.py.)"""
    # caplog listens at the root logger (RUNAI_STREAMER_LOG_TO_STDERR=1
    # would have turned propagation off).
    monkeypatch.setattr(logging.getLogger("runai_model_streamer"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="runai_model_streamer"):
        with SafetensorsStreamer() as s:
            s.stream_files([str(p) for p in small_checkpoint])
            n = sum(1 for _ in s.get_tensors())
            arena = s.stats()["arena_bytes"]
    assert n == len(reference_all(small_checkpoint))
    lines = [r for r in caplog.records if "CPU buffer" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    msg = lines[0].getMessage()
    assert lines[0].levelno == logging.INFO
    assert msg.startswith("[model-streamer] Rank 0: CPU buffer "), msg
    assert f"in {len(small_checkpoint)} file(s)" in msg
    from runai_model_streamer.streamer import format_bytes
    assert format_bytes(arena) in msg


def test_log_level_and_stderr_settings(small_checkpoint):
    """RUNAI_STREAMER_LOG_LEVEL and RUNAI_STREAMER_LOG_TO_STDERR=1, read at
    import as the reference does: DEBUG lines of a load reach stderr."""
    from conftest import run_python

    code = f"""
        import logging, runai_model_streamer
        from runai_model_streamer import SafetensorsStreamer
        print(logging.getLogger("runai_model_streamer").level)
        with SafetensorsStreamer() as s:
            s.stream_files({[str(p) for p in small_checkpoint]!r})
            for _ in s.get_tensors():
                pass
    """
    r = run_python(code, env={"RUNAI_STREAMER_LOG_LEVEL": "debug",
                              "RUNAI_STREAMER_LOG_TO_STDERR": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(logging.DEBUG)]
    assert "[DEBUG] [model-streamer] streaming" in r.stderr, r.stderr
    assert "[INFO] [model-streamer] Rank 0: CPU buffer" in r.stderr, r.stderr
    quiet = run_python(code, env={"RUNAI_STREAMER_LOG_LEVEL": "WARNING",
                                  "RUNAI_STREAMER_LOG_TO_STDERR": "1"})
    assert quiet.returncode == 0, quiet.stderr
    assert "model-streamer" not in quiet.stderr, quiet.stderr
