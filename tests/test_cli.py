"""The model-streamer command."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import subprocess

import pytest

from conftest import REPO, make_random_checkpoint, reference, reference_all, subprocess_env


def run_cli(*args, timeout=180):
    try:
        return subprocess.run([sys.executable, "-m", "runai_model_streamer.cli", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env=subprocess_env(), cwd=str(REPO))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"model-streamer {' '.join(args)} did not finish: {e.stderr}")


def test_stream_a_directory(tmp_path):
    paths = make_random_checkpoint(tmp_path, 8, "safetensors", max_files=4, max_tensors=30)
    (tmp_path / "config.json").write_text("{}")
    ref = reference_all(paths)
    total = sum(len(v[2]) for v in ref.values())

    r = run_cli("stream", str(tmp_path), "--json", "--concurrency", "4", "--memory-limit", "0",
                "--read-mode", "buffered")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["files"] == len(paths)
    assert summary["tensors"] == len(ref)
    assert summary["bytes"] == total
    assert summary["seconds"] > 0 and summary["gb_per_s"] > 0
    assert 0 < summary["first_tensor_s"] <= summary["seconds"]
    assert summary["stats"]["bytes_requested"] == total
    assert "[" not in r.stderr  # no progress bar when stderr is not a terminal


def test_stream_prints_the_summary(tmp_path, capsys):
    from runai_model_streamer import cli

    paths = make_random_checkpoint(tmp_path, 9, "raw", max_files=3, max_tensors=20)
    ref = reference_all(paths)
    assert cli.main(["stream", str(paths[0]), *[str(p) for p in paths[1:]], "--progress"]) == 0
    out, err = capsys.readouterr()
    for label in ("files:", "tensors:", "bytes:", "seconds:", "GB/s", "time to first tensor:"):
        assert label in out, out
    assert re.search(rf"tensors:\s+{len(ref)}\b", out), out
    assert re.search(rf"files:\s+{len(paths)}\b", out), out
    assert "100.0%" in err and "#" in err  # the progress bar, forced on


def test_stream_errors_name_the_path(tmp_path, capsys):
    from runai_model_streamer import cli

    missing = tmp_path / "missing.safetensors"
    assert cli.main(["stream", str(missing)]) == 1
    _, err = capsys.readouterr()
    assert str(missing) in err and "error" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["stream", str(empty)]) == 1
    _, err = capsys.readouterr()
    assert str(empty) in err


def test_progress_bar_is_throttled():
    from runai_model_streamer.cli import Progress

    out = io.StringIO()
    bar = Progress(1000, out=out, enabled=True, interval=3600)
    for _ in range(1000):
        bar.update(1)
    bar.finish()
    text = out.getvalue()
    assert text.count("\r") == 2  # the first update and the final state only
    assert "100.0%" in text and text.endswith("\n")
    quiet = io.StringIO()
    bar = Progress(10, out=quiet, enabled=False)
    bar.update(10)
    bar.finish()
    assert quiet.getvalue() == ""


def test_demo_small(tmp_path, capsys):
    from runai_model_streamer import cli

    d = tmp_path / "demo"
    assert cli.main(["demo", "--size-gb", "0.2", "--dir", str(d), "--keep", "--json"]) == 0
    out, _ = capsys.readouterr()
    result = json.loads(out)
    files = sorted(d.glob("*.safetensors"))
    assert len(files) == 4
    size = sum(f.stat().st_size for f in files)
    assert 0.15e9 < size < 0.25e9
    assert result["plain_read"]["bytes"] == size
    assert result["streamer"]["files"] == 4
    assert result["streamer"]["tensors"] == sum(len(reference(f)) for f in files)
    assert result["ratio"] > 0
    # The demo's own writer produces files safetensors reads, with a realistic mix.
    dtypes = {str(v[0]) for f in files for v in reference(f).values()}
    assert {"torch.bfloat16", "torch.float32", "torch.int64"} <= dtypes
    shapes = [v[1] for f in files for v in reference(f).values()]
    assert () in shapes and any(0 in s for s in shapes)


def test_demo_cleans_up(tmp_path, capsys, monkeypatch):
    from runai_model_streamer import cli

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert cli.main(["demo", "--size-gb", "0.05", "--shards", "2"]) == 0
    out, _ = capsys.readouterr()
    assert "streamer / plain read" in out and "GB/s" in out
    assert not list(tmp_path.iterdir()), "the demo left files behind"


def test_console_script_is_declared():
    from importlib import metadata

    try:
        eps = metadata.entry_points(group="console_scripts")
    except TypeError:  # Python 3.9
        eps = metadata.entry_points().get("console_scripts", [])
    ours = [e for e in eps if e.name == "model-streamer"]
    if not ours:
        pytest.skip("the package is not installed (pip install -e .)")
    assert ours[0].value == "runai_model_streamer.cli:main"
