"""DistributedStreamer over gloo on this machine: 2 and 3 processes.

Byte ranges of plain files (not SafeTensors): unordered, overlapping,
touching, duplicated and empty ranges of several files. Every successful
scenario checks that every rank got every range once, byte for byte against
plain file reads, and that the group's bytes read from storage cover the
ranges once (each byte of the files the ranges cover, read by one process,
even when two FileChunks name the same file).
The fallbacks (RUNAI_STREAMER_DIST=0, auto over gloo, not asked) delegate to
FileStreamer: every process reads everything itself.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from .conftest import (
    BUFFERED,
    assert_every_chunk,
    assert_failed_everywhere,
    chunk_digests,
    launch,
    union_bytes,
)

ON = dict(BUFFERED, RUNAI_STREAMER_DIST="1", RUNAI_STREAMER_DIST_TIMEOUT="30")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """Three files of random bytes and requests over them: "mixed" (every
    kind of range, three files), "plain" (back-to-back ranges in shuffled
    order and a whole file: no overlap)."""
    rng = random.Random(13)
    root = tmp_path_factory.mktemp("blobs")
    sizes = {"a.bin": 3 << 20, "b.bin": 600_000, "c.bin": 50_001}
    paths = {}
    for name, size in sizes.items():
        paths[name] = root / name
        paths[name].write_bytes(rng.randbytes(size))
    a, b, c = (str(paths[n]) for n in ("a.bin", "b.bin", "c.bin"))
    size_a = sizes["a.bin"]
    # a.bin: random ranges (small and large, in no order), an overlapping
    # pair, a range inside another, an exact duplicate, empty ranges (one at
    # the end of the file), the file's last bytes, two ranges of 1.5 MiB
    # (which travel alone).
    a_ranges = [(rng.randrange(size_a - 70_000), rng.randrange(1, 65_536)) for _ in range(40)]
    a_ranges += [(100_000, 5_000), (102_000, 9_000), (150_000, 20_000), (155_000, 100),
                 (150_000, 20_000), (7, 0), (size_a, 0), (size_a - 10, 10),
                 (0, 1_572_864), (1_572_864, 1_572_864)]
    rng.shuffle(a_ranges)
    b_ranges = [(i * 3000, 3000) for i in range(200)]
    rng.shuffle(b_ranges)

    def req(id_, path, ranges):
        return {"id": id_, "path": path, "offsets": [o for o, _ in ranges],
                "sizes": [n for _, n in ranges]}

    mixed = [req(10, a, a_ranges), req(20, b, b_ranges), req("blob-c", c, [(0, sizes["c.bin"])])]
    plain = [req(0, b, b_ranges), req(1, c, [(0, sizes["c.bin"])])]
    # Equal single ranges of two files: the partition gives file i to rank i.
    pair = [req(0, a, [(0, 100_000)]), req(1, b, [(0, 100_000)])]
    # One file named by two FileChunks, with ranges in common.
    twice = [req(0, b, b_ranges[:50]), req(1, c, [(0, 10)]), req(2, b, [(1000, 500_000)])]
    return {"root": root, "mixed": mixed, "plain": plain, "pair": pair, "twice": twice}


def _missing_on(blobs, tmp_path_factory, world, rank):
    """Requests of `world` equal single ranges, one per file (so rank i reads
    file i), the last file named by a relative path that resolves on every
    rank but `rank`; the per-rank directories to run them from."""
    base = tmp_path_factory.mktemp(f"cwd{world}")
    data = Path(blobs["mixed"][0]["path"]).read_bytes()
    cwds = {}
    for r in range(world):
        d = base / f"rank{r}"
        (d / "local").mkdir(parents=True)
        if r != rank:
            (d / "local" / "last.bin").write_bytes(data[:100_000])
        cwds[str(r)] = str(d)
    requests = [{"id": i, "path": blobs["mixed"][0]["path"], "offsets": [i * 100_000],
                 "sizes": [100_000]} for i in range(world - 1)]
    requests.append({"id": world - 1, "path": "local/last.bin", "offsets": [0],
                     "sizes": [100_000]})
    return requests, cwds


def _ranges(name, requests, env, **kw):
    return dict({"name": name, "kind": "ranges", "requests": requests, "env": env}, **kw)


# ---------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two(blobs, tmp_path_factory):
    missing, cwds = _missing_on(blobs, tmp_path_factory, 2, 1)
    scenarios = [
        _ranges("mixed", blobs["mixed"], ON),
        _ranges("views_rounds", blobs["mixed"], dict(ON, RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="64KiB"),
                owned=False, record_ptrs=True),
        _ranges("memory_limit", blobs["plain"], dict(ON, RUNAI_STREAMER_MEMORY_LIMIT="65536"),
                owned=False),
        _ranges("owned_rounds", blobs["plain"], dict(ON, RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="0")),
        _ranges("same_file_twice", blobs["twice"], ON),
        _ranges("dist_off", blobs["mixed"], dict(ON, RUNAI_STREAMER_DIST="0")),
        _ranges("auto_gloo", blobs["plain"], BUFFERED, unset=["RUNAI_STREAMER_DIST"]),
        _ranges("not_asked", blobs["plain"], ON, is_distributed=False),
        _ranges("missing_on_one_rank", missing, ON, rank_cwd=cwds),
        _ranges("after_failure", blobs["plain"], ON),
        _ranges("empty_request", [], ON),
        _ranges("mismatch", blobs["plain"], ON,
                rank_env={"1": {"RUNAI_STREAMER_CUDA_ALIGNMENT": "1024"}}),
    ]
    return launch(tmp_path_factory.mktemp("two-ranges"), 2, scenarios)


@pytest.mark.parametrize("scenario,key", [("mixed", "mixed"), ("views_rounds", "mixed"),
                                          ("memory_limit", "plain"), ("owned_rounds", "plain"),
                                          ("same_file_twice", "twice"),
                                          ("after_failure", "plain")])
def test_two_processes_every_range_read_once(two, blobs, scenario, key):
    results = two.of(scenario)
    assert_every_chunk(results, chunk_digests(blobs[key]))
    assert all(r["distributed"] for r in results.values())
    assert all(r["stats"]["bytes_read"] > 0 for r in results.values())
    read = sum(r["stats"]["bytes_read"] for r in results.values())
    assert read == union_bytes(blobs[key]), (read, union_bytes(blobs[key]))


def test_each_rank_sends_what_it_read(two):
    results = two.of("mixed")
    assert all(r["group"] == [0, 1] for r in results.values())
    # Each rank yields the others' ranges: it received as much as they sent.
    assert results[0]["bytes_received"] == results[1]["bytes_sent"] > 0
    assert results[1]["bytes_received"] == results[0]["bytes_sent"] > 0


def test_views_are_packed_at_aligned_addresses(two):
    """owned=False: received ranges are views into the staging buffer, each
    at a multiple of RUNAI_STREAMER_CUDA_ALIGNMENT (512)."""
    results = two.of("views_rounds")
    for rank, r in results.items():
        assert r["align"] == 512
        received = {k: p for k, p in r["ptrs"].items() if r["owners"][k] not in (rank, -1)}
        assert len(received) > 20, len(received)
        bad = {k: p % 512 for k, p in received.items() if p % 512 and r["digests"][k][1][1]}
        assert not bad, f"rank {rank}: ranges off the 512-byte alignment: {bad}"


def test_memory_limit_bounds_each_ranks_buffer(two):
    results = two.of("memory_limit")
    for r in results.values():
        assert 0 < r["stats"]["arena_bytes"] <= 65536, r["stats"]["arena_bytes"]
        assert r["rounds"] > 5, r["rounds"]
        assert r["ring_info"] is not None and r["ring_info"][1] == 1
        assert r["ring_info"][2] <= 65536


def test_owned_chunks_are_the_callers(two):
    """owned=True with staging buffers of the largest range (rounds): every
    kept chunk still holds its bytes after the loop and the streamer's
    close, and no two share memory."""
    results = two.of("owned_rounds")
    for r in results.values():
        assert r["kept_ok"] and r["rounds"] > 5, r["rounds"]
        storages, chunks = r["storages"]
        assert storages == chunks == 201, r["storages"]


@pytest.mark.parametrize("scenario,key,why", [
    ("dist_off", "mixed", "RUNAI_STREAMER_DIST=0"),
    ("auto_gloo", "plain", "on by default only over the nccl backend"),
])
def test_fallback_delegates_to_the_file_streamer(two, blobs, scenario, key, why):
    results = two.of(scenario)
    assert_every_chunk(results, chunk_digests(blobs[key]))
    for r in results.values():
        assert not r["distributed"] and "rounds" not in r
        assert r["stats"]["bytes_read"] == union_bytes(blobs[key])  # each read everything
        lines = [l for l in r["logs"] if "distributed streaming off" in l]
        assert len(lines) == 1 and why in lines[0], r["logs"]


def test_not_asked_is_silent(two, blobs):
    results = two.of("not_asked")
    assert_every_chunk(results, chunk_digests(blobs["plain"]))
    for r in results.values():
        assert not r["distributed"]
        assert r["stats"]["bytes_read"] == union_bytes(blobs["plain"])
        assert not [l for l in r["logs"] if "distributed" in l]


def test_missing_file_on_one_rank_raises_on_every_rank(two):
    results = two.of("missing_on_one_rank")
    assert_failed_everywhere(results, 20)
    assert "RunaiStreamerFileNotFoundError" in results[1]["error_mro"], results[1]["error"]
    assert "last.bin" in results[1]["error"]
    r0 = results[0]
    assert "RunaiStreamerFileNotFoundError" in r0["error_mro"], r0["error"]
    assert "RunaiStreamerDistributedError" in r0["error_mro"]
    assert "rank 1" in r0["error"] and "last.bin" in r0["error"], r0["error"]


def test_empty_request(two):
    for r in two.of("empty_request").values():
        assert r["error"] is None and r["digests"] == {} and r["distributed"], r


def test_different_requests_fail_on_every_rank(two):
    for r in two.of("mismatch").values():
        assert "RunaiStreamerInvalidInputException" in r["error_mro"], r["error"]
        assert "asked for different things" in r["error"]


# ---------------------------------------------------------------------------
# Three processes
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three(blobs, tmp_path_factory):
    missing, cwds = _missing_on(blobs, tmp_path_factory, 3, 2)
    scenarios = [
        _ranges("mixed", blobs["mixed"], ON),
        _ranges("memory_limit", blobs["plain"],
                dict(ON, RUNAI_STREAMER_MEMORY_LIMIT="65536",
                     RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="16KiB"), owned=False),
        _ranges("missing_on_one_rank", missing, ON, rank_cwd=cwds),
        _ranges("pair", blobs["pair"], ON),
    ]
    return launch(tmp_path_factory.mktemp("three-ranges"), 3, scenarios)


@pytest.mark.parametrize("scenario,key", [("mixed", "mixed"), ("memory_limit", "plain")])
def test_three_processes_every_range_read_once(three, blobs, scenario, key):
    results = three.of(scenario)
    assert_every_chunk(results, chunk_digests(blobs[key]))
    assert all(r["distributed"] and r["group"] == [0, 1, 2] for r in results.values())
    assert all(r["stats"]["bytes_read"] > 0 for r in results.values())
    assert sum(r["stats"]["bytes_read"] for r in results.values()) == union_bytes(blobs[key])


def test_three_processes_more_ranks_than_ranges(three, blobs):
    """Two ranges, three ranks: one reads nothing, builds no ring, and still
    yields both."""
    results = three.of("pair")
    assert_every_chunk(results, chunk_digests(blobs["pair"]))
    reads = sorted(r["stats"]["bytes_read"] for r in results.values())
    assert reads == [0, 100_000, 100_000]
    assert sorted(r["ring_info"] is None for r in results.values()) == [False, False, True]


def test_three_processes_failing_rank(three):
    results = three.of("missing_on_one_rank")
    assert_failed_everywhere(results, 20)
    for rank in (0, 1):
        assert "rank 2" in results[rank]["error"], results[rank]["error"]
        assert "RunaiStreamerFileNotFoundError" in results[rank]["error_mro"]
