"""Object storage downloads without torch (issue 12): `model-streamer ls` and
`pull`, list_safetensors, pull_files, ObjectStorageModel and s3_utils from
every store, in a process where torch and numpy cannot be imported."""

import pytest

from runai_model_streamer import ObjectStorageModel
from _no_torch import check  # tests/_no_torch.py

from .conftest import SCHEMES, make_store


@pytest.mark.parametrize("scheme", SCHEMES)
def test_downloads_without_torch(request, scheme, tmp_path):
    store = make_store(request, scheme)
    files = {"a.safetensors": b"\x01" * 3000, "b.safetensors": b"\x02" * 10, "sub/config.json": b"{}"}
    for rel, data in files.items():
        store.put(rel, data)
    uri = store.uri() + "/"
    glob = {"s3": "s3_glob", "gs": "gcs_glob", "az": "azure_glob"}[scheme]
    out = check(f"""
        from runai_model_streamer import ObjectStorageModel, list_safetensors, pull_files
        from runai_model_streamer.cli import main
        from runai_model_streamer.s3_utils import s3_utils
        assert main(["ls", "--recursive", {uri!r}]) == 0
        assert main(["pull", "--no-progress", {uri!r}, {str(tmp_path / "cli")!r}]) == 0
        print("listed", sorted(u.rsplit("/", 1)[-1] for u in list_safetensors({uri!r})))
        print("globbed", len(s3_utils.{glob}({uri!r}, ["*.json", "*.safetensors"])))
        pull_files({uri!r}, {str(tmp_path / "api")!r}, ignore_pattern=["sub/*"])
        with ObjectStorageModel(model_path={uri!r}, dst={str(tmp_path / "model")!r}) as m:
            m.pull_files(allow_pattern=["*.json"])
    """, env=store.env())
    assert "listed ['a.safetensors', 'b.safetensors']" in out
    assert "globbed 2" in out  # not recursive: sub/config.json is not directly under the prefix
    for rel, data in files.items():
        assert (tmp_path / "cli" / rel).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == ["a.safetensors", "b.safetensors"]
    assert (tmp_path / "model" / "sub" / "config.json").read_bytes() == b"{}"
    assert (tmp_path / "model" / ObjectStorageModel.SENTINEL_NAME).exists()
