"""The download side works without torch (issue 12): `model-streamer ls`,
`pull`, `version`, list_safetensors, pull_files, ObjectStorageModel and
s3_utils import no torch and no numpy. Local sources here; object storage in
tests/object_storage/test_no_torch.py."""

import hashlib

from _no_torch import check, run


def _tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.safetensors": b"A" * 1000, "b.safetensors": b"B" * 10, "config.json": b"{}",
             "sub/c.bin": bytes(range(256))}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    return src, files


def test_blocker_blocks_the_streaming_api():
    """The blocker works: without it this test could pass by having torch."""
    p = run("""
        import runai_model_streamer
        try:
            runai_model_streamer.SafetensorsStreamer
        except ImportError as e:
            print("refused:", e)
            sys.modules.pop("torch", None)
        else:
            raise SystemExit("SafetensorsStreamer imported although torch is blocked")
    """)
    assert p.returncode == 0, p.stderr
    assert "refused: torch is blocked" in p.stdout


def test_cli_ls_pull_version_without_torch(tmp_path):
    src, files = _tree(tmp_path)
    dst = tmp_path / "dst"
    out = check(f"""
        from runai_model_streamer.cli import main
        assert main(["version"]) == 0
        assert main(["ls", "--recursive", {str(src)!r}]) == 0
        assert main(["pull", "--no-progress", {str(src)!r}, {str(dst)!r}]) == 0
    """)
    assert "model-streamer " in out
    assert "sub/c.bin" in out
    for rel, data in files.items():
        assert hashlib.sha256((dst / rel).read_bytes()).digest() == hashlib.sha256(data).digest(), rel


def test_python_helpers_without_torch(tmp_path):
    src, files = _tree(tmp_path)
    out = check(f"""
        import runai_model_streamer as rms
        from runai_model_streamer import ObjectStorageModel, list_safetensors, pull_files
        from runai_model_streamer.s3_utils import s3_utils  # noqa: F401 - importable
        from runai_model_streamer.safetensors_streamer import safetensors_streamer as ss  # noqa: F401
        print(sorted(p.rsplit("/", 1)[-1] for p in list_safetensors({str(src)!r})))
        pull_files({str(src)!r}, {str(tmp_path / "dst")!r}, allow_pattern=["*.safetensors"])
        with ObjectStorageModel(model_path={str(src)!r}, dst={str(tmp_path / "unused")!r}) as m:
            m.pull_files()
            print("dir", m.dir)
        print("version", rms.__version__)
    """)
    assert "['a.safetensors', 'b.safetensors']" in out
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a.safetensors", "b.safetensors"]
    assert f"dir {src}" in out


def test_cli_checksum_verify_and_cache_without_torch(tmp_path):
    """The integrity and cache commands only move bytes: no torch, no numpy."""
    import struct

    header = b'{"w":{"dtype":"U8","shape":[64],"data_offsets":[0,64]}}'
    header += b" " * (-len(header) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(range(64)))
    out = check(f"""
        from runai_model_streamer.cli import main
        assert main(["checksum", "--no-progress", {str(path)!r}]) == 0
        assert main(["verify", "--no-progress", {str(path)!r}]) == 0
        assert main(["cache", "du", "--cache-dir", {str(tmp_path / "cache")!r}]) == 0
    """)
    assert (tmp_path / "m.safetensors.checksums.json").is_file()
    assert "1 of 1 file(s) verified" in out, out
