"""Checksum sidecars under distributed streaming (gloo, 2 ranks): each rank
checks the tensors of its share against the sidecar before the exchange
hands them on, so a corrupt tensor fails the group, naming it, where
MODEL_STREAMER_VERIFY=auto could not verify a rank's share against a
whole-object checksum; require accepts distributed reads that a sidecar
covers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runai_model_streamer import cli

from .conftest import (
    BUFFERED,
    assert_every_tensor,
    assert_read_once,
    expected_digests,
    launch,
    tensor_bytes_total,
)

ON = dict(BUFFERED, RUNAI_STREAMER_DIST="1", RUNAI_STREAMER_DIST_TIMEOUT="30")
SUFFIX = ".checksums.json"


@pytest.fixture(scope="module")
def sidecars(checkpoints, tmp_path_factory):
    """The mixed checkpoint with sidecars (clean), and a copy with one byte
    of a tensor of its last file changed after `checksum` (corrupt)."""
    clean_dir = tmp_path_factory.mktemp("sidecar-clean")
    clean = []
    for p in checkpoints["mixed"]:
        dst = clean_dir / p.name
        shutil.copyfile(p, dst)
        clean.append(dst)
    assert cli.main(["checksum", "--no-progress", *map(str, clean)]) == 0
    bad_dir = tmp_path_factory.mktemp("sidecar-corrupt")
    bad = []
    for p in clean:
        for src in (p, Path(str(p) + SUFFIX)):
            shutil.copyfile(src, bad_dir / src.name)
        bad.append(bad_dir / p.name)
    doc = json.loads(Path(str(bad[-1]) + SUFFIX).read_text())
    victim = max(doc["tensors"], key=lambda t: t["offsets"][1] - t["offsets"][0])
    with open(bad[-1], "r+b") as f:
        at = (victim["offsets"][0] + victim["offsets"][1]) // 2
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ 0x40]))
    scenarios = [
        {"name": "clean", "paths": list(map(str, clean)), "env": ON},
        {"name": "clean_require", "paths": list(map(str, clean)),
         "env": dict(ON, MODEL_STREAMER_VERIFY="require")},
        {"name": "corrupt", "paths": list(map(str, bad)), "env": ON},
        {"name": "corrupt_names", "paths": list(map(str, bad)), "env": ON,
         "tensor_names": [t["name"] for t in doc["tensors"] if t is not victim][:4]},
        {"name": "no_sidecar_require", "paths": [str(p) for p in checkpoints["mixed"]],
         "env": dict(ON, MODEL_STREAMER_VERIFY="require")},
    ]
    run = launch(tmp_path_factory.mktemp("sidecar-two"), 2, scenarios)
    return run, clean, victim


@pytest.mark.parametrize("scenario", ["clean", "clean_require"])
def test_clean_shares_are_checked_and_exact(sidecars, scenario):
    run, clean, _ = sidecars
    results = run.of(scenario)
    assert_every_tensor(results, expected_digests(clean))
    assert all(r["distributed"] for r in results.values())
    assert_read_once(results, tensor_bytes_total(clean), [[0, 1]])


def test_corrupt_tensor_fails_every_rank_naming_it(sidecars):
    run, _, victim = sidecars
    results = run.of("corrupt")
    for rank, r in results.items():
        assert r["error"] is not None, f"rank {rank} did not fail"
        assert victim["name"] not in r["digests"], f"rank {rank} got the corrupt tensor"
    # The rank that read it raises the checksum error; the other learns of it.
    assert any("RunaiStreamerChecksumError" in r["error_mro"] for r in results.values()), \
        [r["error"] for r in results.values()]
    assert all(f'tensor "{victim["name"]}"' in r["error"] for r in results.values()), \
        [r["error"] for r in results.values()]


def test_tensor_names_leaving_the_corrupt_tensor_out(sidecars):
    run, _, victim = sidecars
    results = run.of("corrupt_names")
    for rank, r in results.items():
        assert r["error"] is None, f"rank {rank}: {r['error']}"
        assert len(r["digests"]) == 4 and victim["name"] not in r["digests"]


def test_require_without_sidecar_fails(sidecars):
    run, _, _ = sidecars
    for rank, r in run.of("no_sidecar_require").items():
        assert r["error"] is not None and "RunaiStreamerChecksumError" in r["error_mro"], r["error"]
