"""Fixtures for the object storage tests.

Each server (MinIO, fake-gcs-server, Azurite) starts once per session, on
127.0.0.1, the first time a test needs it, with its test bucket created.
Tests get a `store` (parametrized over s3, gs, az) that knows the backend's
settings and uploads objects under a key prefix unique to the test.

Every test runs with an environment scrubbed of the developer's own storage
settings: no AWS/Azure/GCS variables but the ones a test sets, shared AWS
files pointing nowhere, and AWS_EC2_METADATA_DISABLED=true, so nothing
probes an instance metadata service or leaves the loopback interface.
"""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from conftest import make_random_checkpoint, reference_all  # tests/conftest.py

from . import servers

BUCKET = "model-streamer-tests"

SCHEMES = ("s3", "gs", "az")

# Variables a developer's shell may hold that would change what the tests
# reach: removed for every test here.
_SCRUB_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCS_", "STORAGE_EMULATOR_HOST",
                   "MODEL_STREAMER_GCS_ENDPOINT", "RUNAI_STREAMER_NO_BOTO3_SESSION",
                   "RUNAI_STREAMER_S3_", "RUNAI_STREAMER_GCS_", "CLOUDSDK_", "GCE_METADATA",
                   "CLOUD_STORAGE_", "API_ENDPOINT_OVERRIDE", "HF_TOKEN", "HF_ENDPOINT",
                   "SSL_CERT_", "MODEL_STREAMER_HTTP_")

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _isolated_storage_env(monkeypatch, tmp_path_factory):
    for name in list(os.environ):
        if name.startswith(_SCRUB_PREFIXES):
            monkeypatch.delenv(name)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield


# ---------------------------------------------------------------------------
# Servers (once per session)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    srv = servers.start_minio(tmp_path_factory.mktemp("minio"))
    try:
        servers.minio_create_bucket(srv, BUCKET)
        yield srv
    finally:
        srv["stop"]()


@pytest.fixture(scope="session")
def gs_server(tmp_path_factory):
    srv = servers.start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        servers.gcs_create_bucket(srv, BUCKET)
        yield srv
    finally:
        srv["stop"]()


@pytest.fixture(scope="session")
def az_server(tmp_path_factory):
    srv = servers.start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        servers.azurite_create_container(srv, BUCKET)
        yield srv
    finally:
        srv["stop"]()


# ---------------------------------------------------------------------------
# Stores


class Store:
    """One backend on its test server: settings, uploads, URIs."""

    def __init__(self, scheme: str, server: dict, bucket: str = BUCKET) -> None:
        self.scheme = scheme
        self.server = server
        self.bucket = bucket
        self.prefix = f"t{next(_counter):03d}-{uuid.uuid4().hex[:8]}"

    def __repr__(self) -> str:
        return f"Store({self.scheme}://{self.bucket}/{self.prefix})"

    # The environment a user of this backend sets (spec/usage.md).
    def env(self, variant: str = "default") -> Dict[str, str]:
        srv = self.server
        if self.scheme == "s3":
            return {
                "AWS_ENDPOINT_URL": srv["endpoint"],
                "AWS_EC2_METADATA_DISABLED": "true",
                "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
                "AWS_ACCESS_KEY_ID": srv["access_key"],
                "AWS_SECRET_ACCESS_KEY": srv["secret_key"],
                "AWS_REGION": srv["region"],
            }
        if self.scheme == "gs":
            if variant == "endpoint":
                return {"MODEL_STREAMER_GCS_ENDPOINT": srv["endpoint"]}
            return {"STORAGE_EMULATOR_HOST": srv["host"]}
        if variant == "connection_string":
            return {"AZURE_STORAGE_CONNECTION_STRING": srv["connection_string"]}
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": srv["account_name"],
            "AZURE_STORAGE_ENDPOINT": srv["blob_endpoint"],
            "AZURE_STORAGE_ACCOUNT_KEY": srv["account_key"],
        }

    def apply_env(self, monkeypatch, variant: str = "default") -> None:
        for k, v in self.env(variant).items():
            monkeypatch.setenv(k, v)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def uri(self, rel: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{self.key(rel)}"

    def create_bucket(self, bucket: str) -> None:
        """Creates another bucket (container) on this server; one that
        exists already is fine."""
        try:
            if self.scheme == "s3":
                servers.minio_create_bucket(self.server, bucket)
            elif self.scheme == "gs":
                servers.gcs_create_bucket(self.server, bucket)
            else:
                servers.azurite_create_container(self.server, bucket)
        except RuntimeError as e:
            if "HTTP 409" not in str(e):
                raise

    def put_key(self, key: str, data: bytes) -> str:
        """Stores data under the exact key (no test prefix); returns its URI."""
        if self.scheme == "s3":
            return servers.minio_put_object(self.server, self.bucket, key, data)
        if self.scheme == "gs":
            return servers.gcs_put_object(self.server, self.bucket, key, data)
        return servers.azurite_put_blob(self.server, self.bucket, key, data)

    def put(self, rel: str, data: bytes) -> str:
        return self.put_key(self.key(rel), data)

    def upload(self, paths: List[Path], under: str = "") -> List[str]:
        """Uploads local files by name (under the prefix, or a folder of it)."""
        uris = []
        for p in paths:
            rel = f"{under}/{p.name}" if under else p.name
            uris.append(self.put(rel, Path(p).read_bytes()))
        return uris


def make_store(request, scheme: str, bucket: str = BUCKET) -> Store:
    server = request.getfixturevalue(f"{scheme}_server")
    return Store(scheme, server, bucket)


@pytest.fixture(params=SCHEMES)
def store(request, monkeypatch) -> Store:
    """A backend with its settings in the environment and a fresh prefix."""
    s = make_store(request, request.param)
    s.apply_env(monkeypatch)
    return s


# ---------------------------------------------------------------------------
# Test data


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> List[Path]:
    """A multi-file checkpoint: files written by safetensors.torch.save_file,
    files packed by the suite's own writer with unaligned offsets and
    shuffled JSON keys, and one file with a 1.6 MB tensor (many chunks at the
    small chunk sizes the tests set). Tensor names are unique across files."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("checkpoint")
    paths = make_random_checkpoint(d, 21, "safetensors", max_files=2, max_tensors=25, prefix="st.")
    paths += make_random_checkpoint(d, 22, "raw", max_files=2, max_tensors=25, prefix="raw.")
    g = torch.Generator().manual_seed(5)
    big = d / "big.safetensors"
    save_file({"big.weight": torch.randn(640, 640, generator=g),
               "big.bias": torch.randn(640, generator=g).to(torch.bfloat16),
               "big.odd": torch.arange(13, dtype=torch.uint8)}, str(big))
    paths.append(big)
    assert len(paths) >= 3
    return sorted(paths)


@pytest.fixture(scope="session")
def checkpoint_reference(checkpoint):
    """name -> (dtype, shape, bytes) as safetensors.safe_open reads the local copies."""
    return reference_all(checkpoint)


def largest_tensor_bytes(reference) -> int:
    return max(len(v[2]) for v in reference.values())


def tree(root: Path) -> Dict[str, bytes]:
    """relative path -> contents of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(root: Path) -> List[str]:
    """Every path under root (files and directories)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

