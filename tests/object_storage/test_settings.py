"""How settings reach the library (environment, S3Credentials, a boto3
session), scheme mixing, the destination checks of pull_files, and the
routing of gs:// to the S3 backend for GCS HMAC keys. Mostly without servers."""

from __future__ import annotations

import http.server
import sys
import threading
import types

import pytest

from runai_model_streamer import (
    RunaiStreamerError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerPermissionError,
    S3Credentials,
    SafetensorsStreamer,
    pull_files,
)
from runai_model_streamer import config

from conftest import call_with_timeout


def settings_dict(items):
    return dict(s.split("=", 1) for s in items)


# ---------------------------------------------------------------------------
# backend_settings with a stand-in boto3


class FakeBoto3:
    """Installs modules named boto3 and botocore.session whose session
    resolves the given credentials, region and CA bundle."""

    def __init__(self, monkeypatch, access_key="BOTO-KEY", secret_key="BOTO-SECRET", token=None,
                 region=None, ca_bundle=None, error=None):
        self.calls = 0
        fake = self

        class Frozen:
            pass

        class Credentials:
            def get_frozen_credentials(self):
                f = Frozen()
                f.access_key, f.secret_key, f.token = access_key, secret_key, token
                return f

        class CoreSession:
            def get_config_variable(self, name):
                return {"ca_bundle": ca_bundle}.get(name)

        class Session:
            def __init__(self, botocore_session=None, **kw):
                fake.calls += 1
                if error is not None:
                    raise error
                self.region_name = region

            def get_credentials(self):
                return Credentials() if access_key else None

        boto3 = types.ModuleType("boto3")
        boto3.Session = Session
        botocore = types.ModuleType("botocore")
        session_mod = types.ModuleType("botocore.session")
        session_mod.Session = CoreSession
        botocore.session = session_mod
        monkeypatch.setitem(sys.modules, "boto3", boto3)
        monkeypatch.setitem(sys.modules, "botocore", botocore)
        monkeypatch.setitem(sys.modules, "botocore.session", session_mod)


ENV = {"AWS_ACCESS_KEY_ID": "ENV-KEY", "AWS_SECRET_ACCESS_KEY": "ENV-SECRET",
       "AWS_SESSION_TOKEN": "ENV-TOKEN", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
       "AWS_EC2_METADATA_DISABLED": "true", "AZURE_STORAGE_ACCOUNT_NAME": "acct",
       "MODEL_STREAMER_STALL_TIMEOUT_MS": "5000", "GOOGLE_APPLICATION_CREDENTIALS": "/x.json",
       "STORAGE_EMULATOR_HOST": "127.0.0.1:4443", "GCS_X": "1", "RUNAI_STREAMER_CONCURRENCY": "4",
       "HOME": "/root", "PATH": "/bin", "XAWS_NOT": "1"}


def test_environment_settings_by_prefix():
    got = settings_dict(config.backend_settings(ENV))
    assert got == {k: v for k, v in ENV.items() if k not in ("HOME", "PATH", "XAWS_NOT")}
    assert config.SETTING_PREFIXES == ("AWS_", "RUNAI_STREAMER_", "AZURE_", "GOOGLE_", "GCS_",
                                       "STORAGE_EMULATOR_HOST", "MODEL_STREAMER_",
                                       "CLOUD_STORAGE_", "API_ENDPOINT_OVERRIDE", "HF_TOKEN",
                                       "HF_ENDPOINT", "SSL_CERT_FILE", "SSL_CERT_DIR")


def test_settings_prefixes_match_the_go_library():
    import re
    from conftest import REPO

    text = (REPO / "go" / "storage" / "storage.go").read_text()
    m = re.search(r"SettingPrefixes = \[\]string\{([^}]*)\}", text)
    assert m, "SettingPrefixes not found in go/storage/storage.go"
    assert tuple(re.findall(r'"([^"]+)"', m.group(1))) == config.SETTING_PREFIXES


def test_without_boto3_the_environment_is_passed(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    got = settings_dict(config.backend_settings(ENV, scheme="s3"))
    assert got["AWS_ACCESS_KEY_ID"] == "ENV-KEY" and got["AWS_SESSION_TOKEN"] == "ENV-TOKEN"


def test_boto3_session_resolves_s3_credentials(monkeypatch):
    fake = FakeBoto3(monkeypatch, token=None, region="eu-west-3", ca_bundle="/etc/ca.pem")
    got = settings_dict(config.backend_settings(ENV, scheme="s3"))
    assert fake.calls == 1
    assert got["AWS_ACCESS_KEY_ID"] == "BOTO-KEY" and got["AWS_SECRET_ACCESS_KEY"] == "BOTO-SECRET"
    assert "AWS_SESSION_TOKEN" not in got  # never paired with keys from another source
    assert got["AWS_REGION"] == "eu-west-3" and got["AWS_CA_BUNDLE"] == "/etc/ca.pem"
    assert got["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"

    # What the environment names itself wins over the session's region / bundle.
    env = dict(ENV, AWS_REGION="us-west-2", AWS_CA_BUNDLE="/mine.pem")
    got = settings_dict(config.backend_settings(env, scheme="s3"))
    assert got["AWS_REGION"] == "us-west-2" and got["AWS_CA_BUNDLE"] == "/mine.pem"
    got = settings_dict(config.backend_settings(dict(ENV, AWS_DEFAULT_REGION="ap-south-1"),
                                                scheme="s3"))
    assert "AWS_REGION" not in got and got["AWS_DEFAULT_REGION"] == "ap-south-1"

    FakeBoto3(monkeypatch, token="BOTO-TOKEN")
    got = settings_dict(config.backend_settings(ENV, scheme="s3"))
    assert got["AWS_SESSION_TOKEN"] == "BOTO-TOKEN"

    # A session that finds nothing leaves the library's own chain to it.
    FakeBoto3(monkeypatch, access_key=None)
    got = settings_dict(config.backend_settings(ENV, scheme="s3"))
    assert got["AWS_ACCESS_KEY_ID"] == "ENV-KEY"


@pytest.mark.parametrize("scheme, env, creds", [
    ("gs", {}, None),
    ("az", {}, None),
    (None, {}, None),
    ("s3", {"RUNAI_STREAMER_NO_BOTO3_SESSION": "1"}, None),
    ("s3", {"RUNAI_STREAMER_NO_BOTO3_SESSION": "true"}, None),
    ("s3", {}, S3Credentials("EXPLICIT", "SECRET")),
], ids=["gs", "az", "no-scheme", "no-boto3-1", "no-boto3-true", "explicit-keys"])
def test_boto3_session_not_used(monkeypatch, scheme, env, creds):
    fake = FakeBoto3(monkeypatch)
    config.backend_settings(dict(ENV, **env), credentials=creds, scheme=scheme)
    assert fake.calls == 0


def test_boto3_session_used_with_flag_zero_and_endpoint_only_credentials(monkeypatch):
    fake = FakeBoto3(monkeypatch)
    got = settings_dict(config.backend_settings(
        dict(ENV, RUNAI_STREAMER_NO_BOTO3_SESSION="0"),
        credentials=S3Credentials(endpoint="http://127.0.0.1:1234", region_name="r1"), scheme="s3"))
    assert fake.calls == 1
    assert got["AWS_ACCESS_KEY_ID"] == "BOTO-KEY"
    assert got["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234" and got["AWS_REGION"] == "r1"


def test_boto3_failure_is_reported(monkeypatch):
    FakeBoto3(monkeypatch, error=RuntimeError("The config profile (nope) could not be found"))
    with pytest.raises(RunaiStreamerPermissionError, match="nope.*RUNAI_STREAMER_NO_BOTO3_SESSION=1"):
        config.backend_settings(ENV, scheme="s3")


def test_explicit_credentials_override_everything(monkeypatch):
    FakeBoto3(monkeypatch)
    env = dict(ENV, AWS_ENDPOINT_URL_S3="http://127.0.0.1:1", AWS_REGION="env-region")
    creds = S3Credentials("AK", "SK", session_token=None, region_name="eu-central-1",
                          endpoint="http://127.0.0.1:9999")
    got = settings_dict(config.backend_settings(env, credentials=creds, scheme="s3"))
    assert got["AWS_ACCESS_KEY_ID"] == "AK" and got["AWS_SECRET_ACCESS_KEY"] == "SK"
    assert "AWS_SESSION_TOKEN" not in got  # the environment's token belongs to other keys
    assert got["AWS_REGION"] == "eu-central-1"
    assert got["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9999"
    assert "AWS_ENDPOINT_URL_S3" not in got  # it would win over AWS_ENDPOINT_URL in the library
    creds = S3Credentials("AK", "SK", session_token="TOK")
    got = settings_dict(config.backend_settings(env, credentials=creds, scheme="s3"))
    assert got["AWS_SESSION_TOKEN"] == "TOK"


def test_stream_files_reads_the_environment_at_each_call(monkeypatch, tmp_path):
    """What stream_files hands the library: the current environment, the
    scheme's boto3 resolution, and 0 for unset concurrency / chunk size."""
    from runai_model_streamer import _native

    seen = []

    class Stop(Exception):
        pass

    def fake_stream(uris, names, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(_native, "Stream", fake_stream)
    monkeypatch.setitem(sys.modules, "boto3", None)
    with SafetensorsStreamer() as s:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        with pytest.raises(Stop):
            s.stream_files(["s3://bucket/a.safetensors"])
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
        monkeypatch.setenv("RUNAI_STREAMER_CONCURRENCY", "4")
        monkeypatch.setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", "1MiB")
        with pytest.raises(Stop):
            s.stream_files(["s3://bucket/a.safetensors"],
                           s3_credentials=S3Credentials("AK", "SK"))
    first, second = seen
    assert (first["concurrency"], first["chunk_bytes"]) == (0, 0)  # each backend's own default
    assert (second["concurrency"], second["chunk_bytes"]) == (4, 1 << 20)
    assert "AWS_ENDPOINT_URL=http://127.0.0.1:1" in first["settings"]
    assert "AWS_ENDPOINT_URL=http://127.0.0.1:2" in second["settings"]
    assert "AWS_ACCESS_KEY_ID=AK" in second["settings"]


# ---------------------------------------------------------------------------
# Mixing schemes


@pytest.mark.parametrize("paths", [
    ["/models/a.safetensors", "s3://bucket/b.safetensors"],
    ["s3://bucket/a.safetensors", "gs://bucket/b.safetensors"],
    ["gs://bucket/a.safetensors", "az://container/b.safetensors"],
    ["az://container/a.safetensors", "file:///models/b.safetensors"],
    ["s3://bucket/a.safetensors", "s3://bucket/b.safetensors", "relative/c.safetensors"],
])
def test_mixing_schemes_in_one_call_is_rejected(paths, monkeypatch):
    from runai_model_streamer import _native

    def must_not_open(*a, **kw):
        raise AssertionError("the library was called")

    monkeypatch.setattr(_native, "Stream", must_not_open)
    with SafetensorsStreamer() as s:
        with pytest.raises(RunaiStreamerInvalidInputException, match="(?i)cannot stream"):
            s.stream_files(paths)


# ---------------------------------------------------------------------------
# pull_files: nothing outside dst, whatever the listing says


@pytest.mark.parametrize("key, why", [
    ("../escape.safetensors", "'..' segment"),
    ("a/../../b.json", "'..' segment"),
    ("a/..", "'..' segment"),
    ("/etc/passwd", "absolute"),
    ("a//b.json", "empty segment"),
    ("a/./b.json", "'.' segment"),
    ("..\\escape.json", "backslash"),
    ("a\\b.json", "backslash"),
    ("a\0b.json", "NUL"),
])
def test_pull_files_refuses_keys_leaving_dst(monkeypatch, tmp_path, key, why):
    from runai_model_streamer import _native

    listing = [("s3://bucket/model/config.json", 2), (f"s3://bucket/model/{key}", 7)]
    downloads = []
    monkeypatch.setattr(_native, "list_objects", lambda uri, recursive, settings=None: listing)
    monkeypatch.setattr(_native, "download",
                        lambda uri, path, **kw: downloads.append((uri, path)))
    monkeypatch.setenv("RUNAI_STREAMER_NO_BOTO3_SESSION", "1")
    dst = tmp_path / "a" / "dst"
    with pytest.raises(RunaiStreamerInvalidInputException) as info:
        pull_files("s3://bucket/model", str(dst))
    assert repr(key) in str(info.value) and why in str(info.value)
    assert downloads == [] and not dst.exists()
    # Filtered out, it is never a destination.
    pull_files("s3://bucket/model", str(dst), allow_pattern=["config.json"])
    assert downloads == [("s3://bucket/model/config.json", str(dst / "config.json"))]


def test_pull_files_refuses_a_listing_outside_the_prefix(monkeypatch, tmp_path):
    from runai_model_streamer import _native

    monkeypatch.setattr(_native, "list_objects",
                        lambda uri, recursive, settings=None: [("s3://bucket/other/x.json", 1)])
    monkeypatch.setenv("RUNAI_STREAMER_NO_BOTO3_SESSION", "1")
    with pytest.raises(RunaiStreamerError, match="outside that prefix"):
        pull_files("s3://bucket/model/", str(tmp_path / "dst"))


def test_pull_files_skips_directory_markers_and_downloads_in_parallel(monkeypatch, tmp_path):
    from runai_model_streamer import _native

    listing = [("s3://bucket/model/", 0), ("s3://bucket/model/sub/", 0)] + [
        (f"s3://bucket/model/sub/f{i}.bin", i) for i in range(12)]
    barrier = threading.Barrier(4, timeout=10)  # four downloads must be in flight at once
    lock = threading.Lock()
    entered = []
    done = []

    def download(uri, path, **kw):
        with lock:
            entered.append(uri)
            first = len(entered) <= 4
        if first:
            barrier.wait()
        done.append(path)

    monkeypatch.setattr(_native, "list_objects", lambda uri, recursive, settings=None: listing)
    monkeypatch.setattr(_native, "download", download)
    monkeypatch.setenv("RUNAI_STREAMER_NO_BOTO3_SESSION", "1")
    call_with_timeout(lambda: pull_files("s3://bucket/model", str(tmp_path / "dst")))
    assert sorted(done) == sorted(str(tmp_path / "dst" / "sub" / f"f{i}.bin") for i in range(12))


def test_pull_files_stops_at_the_first_failure(monkeypatch, tmp_path):
    from runai_model_streamer import _native
    from runai_model_streamer.exceptions import RunaiStreamerFileNotFoundError

    listing = [(f"s3://bucket/model/f{i:02d}.bin", 1) for i in range(40)]
    started = []

    def download(uri, path, **kw):
        started.append(uri)
        if uri.endswith("f00.bin"):
            raise RunaiStreamerFileNotFoundError(f"{uri}: open: not found: HTTP 404 NoSuchKey")

    monkeypatch.setattr(_native, "list_objects", lambda uri, recursive, settings=None: listing)
    monkeypatch.setattr(_native, "download", download)
    monkeypatch.setenv("RUNAI_STREAMER_NO_BOTO3_SESSION", "1")
    with pytest.raises(RunaiStreamerFileNotFoundError, match="f00.bin.*404"):
        pull_files("s3://bucket/model", str(tmp_path / "dst"))
    assert len(started) < 40  # the rest were cancelled


# ---------------------------------------------------------------------------
# gs:// with HMAC keys goes through the S3 backend


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def _answer(self):
        type(self).requests.append((self.command, self.path, dict(self.headers)))
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
                b"<Message>The specified key does not exist.</Message></Error>")
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args):
        pass


def test_gs_uri_with_a_gcs_s3_endpoint_uses_the_s3_backend(monkeypatch):
    """The real HMAC endpoint (https://storage.googleapis.com) is not on the
    loopback, so a recorder on 127.0.0.1 stands in for it: the library picks
    the S3 backend when AWS_ENDPOINT_URL names storage.googleapis.com (here
    as a path segment of the loopback URL), signing with the HMAC key."""
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"{base}/storage.googleapis.com")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "GOOGHMACKEYFORTEST")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hmac-secret")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("MODEL_STREAMER_MAX_RETRIES", "0")
        # Were gs:// routed to the GCS backend instead, it would come here too
        # (never to Google): its JSON API paths would show it.
        monkeypatch.setenv("MODEL_STREAMER_GCS_ENDPOINT", f"{base}/storage/v1/")
        uri = "gs://hmac-bucket/model/weights.safetensors"

        def run():
            with SafetensorsStreamer() as s:
                s.stream_file(uri)

        with pytest.raises(RunaiStreamerError) as info:
            call_with_timeout(run, 60)
    finally:
        server.shutdown()
        server.server_close()
    assert uri in str(info.value) and "404" in str(info.value)
    assert _Recorder.requests, "no request reached the recorder"
    for method, path, headers in _Recorder.requests:
        assert not path.startswith("/storage/v1/"), f"gs:// went to the GCS backend: {method} {path}"
        auth = headers.get("Authorization", "")
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=GOOGHMACKEYFORTEST/"), auth
        assert "/hmac-bucket/model/weights.safetensors" in path, path
