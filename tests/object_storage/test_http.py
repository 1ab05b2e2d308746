"""Streaming and pulling http:// and https:// URLs from nginx on 127.0.0.1:
presigned-style redirects, TLS with the test's CA, bearer headers, errors
that never quote a query string, a server ignoring Range, a file replaced
between opening and reading, and the CLI's URL lists."""

from __future__ import annotations

import json
import os
import re

import pytest

from runai_model_streamer import (
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerPermissionError,
    SafetensorsStreamer,
    list_safetensors,
    pull_files,
)

from conftest import reference_all

from . import servers
from .conftest import tree
from .test_object_storage import assert_same_tensors, stream_all


@pytest.fixture(scope="session")
def web(tmp_path_factory):
    try:
        srv = servers.start_nginx(tmp_path_factory.mktemp("nginx"))
    except servers.ServerNotInstalled as e:
        if os.environ.get(servers.ENV_REQUIRE) == "1":
            raise
        pytest.skip(str(e))
    yield srv
    srv["stop"]()


@pytest.fixture(scope="session")
def published(web, checkpoint):
    """The checkpoint's files under /files/ckpt/ on the server."""
    for p in checkpoint:
        servers.nginx_put(web, f"ckpt/{p.name}", p.read_bytes())
    return [p.name for p in checkpoint]


@pytest.mark.parametrize("route", ["files", "redirect", "private", "norange"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_stream_urls_match_safetensors(web, checkpoint, checkpoint_reference, published,
                                       monkeypatch, route, tls):
    base = web["tls_url"] if tls else web["url"]
    if tls:
        monkeypatch.setenv("SSL_CERT_FILE", web["ca_file"])
    if route == "private":
        monkeypatch.setenv("MODEL_STREAMER_HTTP_HEADERS", f"Authorization: Bearer {web['token']}")
    monkeypatch.setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", "256KiB")
    uris = [f"{base}/{route}/ckpt/{name}" for name in published]
    got, total, _ = stream_all(uris)
    assert_same_tensors(got, checkpoint_reference)
    assert total == sum(len(v[2]) for v in checkpoint_reference.values())


def test_http_and_https_in_one_call(web, checkpoint, checkpoint_reference, published, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", web["ca_file"])
    uris = [f"{web['tls_url'] if i % 2 else web['url']}/files/ckpt/{n}" for i, n in enumerate(published)]
    got, _, _ = stream_all(uris)
    assert_same_tensors(got, checkpoint_reference)


def test_errors_name_the_url_without_its_query(web, published, monkeypatch):
    missing = f"{web['url']}/files/ckpt/missing.safetensors"
    with pytest.raises(RunaiStreamerFileNotFoundError) as info:
        stream_all([missing + "?X-Amz-Signature=topsecret"])
    msg = str(info.value)
    assert missing in msg and "404" in msg and "topsecret" not in msg, msg

    private = f"{web['url']}/private/ckpt/{published[0]}"
    with pytest.raises(RunaiStreamerPermissionError) as info:
        stream_all([private + "?token=topsecret"])
    msg = str(info.value)
    assert private in msg and "403" in msg and "topsecret" not in msg, msg

    # The engine's own messages (a file that is not SafeTensors) name the
    # URL without its query too.
    bad = servers.nginx_put(web, "bad/short.safetensors", b"\x08")
    with pytest.raises(RunaiStreamerInvalidInputException) as info:
        stream_all([bad + "?Signature=topsecret"])
    msg = str(info.value)
    assert bad in msg and "topsecret" not in msg, msg

    # An untrusted certificate: a clear error naming the host, no fallback.
    url = f"{web['tls_url']}/files/ckpt/{published[0]}"
    with pytest.raises(RunaiStreamerInvalidInputException) as info:
        stream_all([url])
    host = web["tls_url"].split("//", 1)[1]
    assert f"certificate of {host} is not trusted" in str(info.value), str(info.value)


def test_file_replaced_while_streaming(web, tmp_path, monkeypatch):
    """A new version published after the first tensor was delivered fails the
    next read (If-Match on the ETag the header was read with), never mixes
    the two versions' bytes."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(256 << 10, dtype=torch.uint8),
               "b": torch.ones(256 << 10, dtype=torch.uint8)}, str(path))
    data = path.read_bytes()
    url = servers.nginx_put(web, "replaced/model.safetensors", data)
    # The buffer holds one tensor: the second is read after the first is taken.
    monkeypatch.setenv("RUNAI_STREAMER_MEMORY_LIMIT", "0")
    with SafetensorsStreamer() as s:
        s.stream_files([url], owned=False)
        it = s.get_tensors()
        name, tensor = next(it)
        assert name == "a" and int(tensor.sum()) == 0
        servers.nginx_put(web, "replaced/model.safetensors", data.replace(b"\x01" * 64, b"\x02" * 64))
        with pytest.raises(RunaiStreamerFileNotFoundError, match="changed since it was opened"):
            for _ in it:
                pass


def test_sidecar_beside_a_presigned_style_url(web, checkpoint, checkpoint_reference, tmp_path):
    """A URL's sidecar is the path's plus the suffix, with the same query (a
    token for the directory serves both): found and checked, and a flipped
    byte fails the stream naming the URL without its query."""
    from runai_model_streamer import RunaiStreamerChecksumError, cli

    src = checkpoint[0]
    local = tmp_path / src.name
    local.write_bytes(src.read_bytes())
    assert cli.main(["checksum", "--no-progress", str(local)]) == 0
    sidecar = (tmp_path / (src.name + ".checksums.json")).read_bytes()
    url = servers.nginx_put(web, f"signed/{src.name}", local.read_bytes())
    servers.nginx_put(web, f"signed/{src.name}.checksums.json", sidecar)
    query = "?X-Amz-Signature=topsecret&X-Amz-Expires=600"
    want = {k: v for k, v in checkpoint_reference.items() if k in _tensor_names(local)}
    got, _, _ = stream_all([url + query])
    assert_same_tensors(got, want)

    data = bytearray(local.read_bytes())
    data[-1] ^= 0x10  # the last tensor's last byte
    servers.nginx_put(web, f"signed/{src.name}", bytes(data))
    with pytest.raises(RunaiStreamerChecksumError) as info:
        stream_all([url + query])
    msg = str(info.value)
    assert url in msg and "topsecret" not in msg, msg


def _tensor_names(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_listing_is_refused_with_the_reason(web):
    with pytest.raises(RunaiStreamerInvalidInputException, match="listing is not possible over HTTP"):
        list_safetensors(f"{web['url']}/files/ckpt/")


def test_pull_files_urls(web, checkpoint, published, tmp_path):
    urls = [f"{web['url']}/redirect/ckpt/{n}" for n in published]
    pull_files(urls[0], str(tmp_path / "one"))
    assert tree(tmp_path / "one") == {published[0]: checkpoint[0].read_bytes()}

    servers.nginx_put(web, "tree/sub/config.json", b"{}")
    servers.nginx_put(web, "tree/model.safetensors", checkpoint[0].read_bytes())
    pull_files([f"{web['url']}/files/tree/sub/config.json?sig=1",
                f"{web['url']}/files/tree/model.safetensors"], str(tmp_path / "many"),
               ignore_pattern=["*.txt"])
    assert tree(tmp_path / "many") == {"sub/config.json": b"{}",
                                      "model.safetensors": checkpoint[0].read_bytes()}

    with pytest.raises(RunaiStreamerInvalidInputException, match="listing is not possible"):
        pull_files(f"{web['url']}/files/tree/", str(tmp_path / "dir"))


def test_cli_stream_and_pull_with_a_url_list(web, checkpoint, checkpoint_reference, published,
                                             tmp_path, capsys):
    from runai_model_streamer.cli import main

    url_list = tmp_path / "urls.txt"
    url_list.write_text("# the checkpoint\n\n" + "".join(
        f"{web['url']}/redirect/ckpt/{n}\n" for n in published))
    assert main(["stream", "--json", "--url-list", str(url_list)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == len(published)
    assert summary["bytes"] == sum(len(v[2]) for v in reference_all(checkpoint).values())

    dst = tmp_path / "pulled"
    assert main(["pull", "--url-list", str(url_list), str(dst), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert tree(dst) == {p.name: p.read_bytes() for p in checkpoint}
    assert re.search(rf"pulled {len(published)} file\(s\)", out), out
    assert "Signature" not in out

    assert main(["stream", f"{web['url']}/files/ckpt/"]) == 1
    assert "listing is not possible over HTTP" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("s3://bucket/key\n")
    assert main(["stream", "--url-list", str(bad)]) == 1
    assert f"{bad}:1" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# hf:// (huggingface_hub resolves; the http backend streams)


@pytest.mark.parametrize("path, endpoint, want", [
    ("hf://org/model/model.safetensors", None,
     "https://huggingface.co/org/model/resolve/main/model.safetensors"),
    ("hf://org/model@v1.0/sub/model-00001-of-00002.safetensors", None,
     "https://huggingface.co/org/model/resolve/v1.0/sub/model-00001-of-00002.safetensors"),
    ("hf://org/model@0123abcd/m.safetensors", "http://127.0.0.1:9",
     "http://127.0.0.1:9/org/model/resolve/0123abcd/m.safetensors"),
])
def test_hf_url_construction(monkeypatch, path, endpoint, want):
    from runai_model_streamer import hf

    if endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert hf.resolve(path) == want


@pytest.mark.parametrize("path, why", [
    ("hf://org", "want hf://ORG/MODEL"),
    ("hf://org/@v1/x", "want hf://ORG/MODEL"),
    ("hf://org/model@/x", "empty revision"),
    ("hf://org/model", "not a file"),
    ("hf://org/model/sub/", "not a file"),
])
def test_hf_bad_paths(path, why):
    from runai_model_streamer import hf

    with pytest.raises(RunaiStreamerInvalidInputException, match=why):
        hf.resolve(path)


@pytest.fixture
def hub(web, checkpoint, monkeypatch):
    """The nginx hub emulation as HF_ENDPOINT, with the checkpoint published
    as org/model at main and at v1, and the token in HF_TOKEN."""
    for rev in ("main", "v1"):
        for p in checkpoint:
            servers.nginx_put_hub(web, "org/model", rev, p.name, p.read_bytes())
        servers.nginx_put_hub(web, "org/model", rev, "config.json", b"{}")
    monkeypatch.setenv("HF_ENDPOINT", web["url"])
    monkeypatch.setenv("HF_TOKEN", web["hub_token"])
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return web


def test_hf_stream_list_and_pull(hub, checkpoint, checkpoint_reference, tmp_path, monkeypatch):
    names = sorted(p.name for p in checkpoint)
    assert list_safetensors("hf://org/model") == [
        f"{hub['url']}/org/model/resolve/main/{n}" for n in names]
    # Resolve URLs redirect to a CDN host that refuses the token: it is sent
    # to the hub's host only.
    got, _, _ = stream_all([f"hf://org/model@v1/{n}" for n in names])
    assert_same_tensors(got, checkpoint_reference)

    pull_files("hf://org/model", str(tmp_path / "all"), ignore_pattern=["big.*"])
    want = {p.name: p.read_bytes() for p in checkpoint if not p.name.startswith("big.")}
    assert tree(tmp_path / "all") == dict(want, **{"config.json": b"{}"})

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RunaiStreamerPermissionError, match="401"):
        stream_all([f"hf://org/model/{names[0]}"])


def test_hf_cli(hub, checkpoint, checkpoint_reference, tmp_path, capsys):
    from runai_model_streamer.cli import main

    assert main(["stream", "--json", "hf://org/model@v1/"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == len(checkpoint)
    assert summary["bytes"] == sum(len(v[2]) for v in checkpoint_reference.values())
    assert main(["pull", "hf://org/model", str(tmp_path / "pulled"), "--allow", "*.json",
                 "--no-progress"]) == 0
    assert tree(tmp_path / "pulled") == {"config.json": b"{}"}
