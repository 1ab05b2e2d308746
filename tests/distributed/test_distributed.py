"""Distributed streaming over gloo on this machine: 2 and 4 processes.

Each launch runs several scenarios in one group of processes (importing torch
in every process is the expensive part); each test checks one scenario's
results. Every successful scenario checks that every rank got every tensor
bit for bit (against safetensors.safe_open) and that the group's bytes read
from storage add up to the request's tensor bytes once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import (
    BUFFERED,
    assert_every_chunk,
    assert_every_tensor,
    assert_failed_everywhere,
    assert_read_once,
    chunk_digests,
    expected_digests,
    launch,
    tensor_bytes_total,
    union_bytes,
)

ON = dict(BUFFERED, RUNAI_STREAMER_DIST="1", RUNAI_STREAMER_DIST_TIMEOUT="30")
SMALL_ROUNDS = {"RUNAI_STREAMER_MEMORY_LIMIT": "0",  # the ring holds the largest tensor
                "RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE": "64KiB"}
NAMES = ["big.w1", "big.ids", "big.mask"]


def paths_of(checkpoints, key):
    return [str(p) for p in checkpoints[key]]


# ---------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two(checkpoints, tmp_path_factory):
    mixed = paths_of(checkpoints, "mixed")
    # A copy of a checkpoint whose file is truncated under the readers.
    cut_dir = tmp_path_factory.mktemp("cut")
    cut = [str(cut_dir / p.name) for p in checkpoints["many"]]
    for src, dst in zip(checkpoints["many"], cut):
        shutil.copyfile(src, dst)
    header_end = 8 + int.from_bytes(Path(cut[0]).read_bytes()[:8], "little")
    scenarios = [
        {"name": "local", "paths": mixed, "env": ON},
        {"name": "global_rounds", "paths": paths_of(checkpoints, "many"), "owned": False,
         "env": dict(ON, RUNAI_STREAMER_DIST_GLOBAL="1", **SMALL_ROUNDS)},
        {"name": "names_limit", "paths": mixed, "tensor_names": NAMES,
         "env": dict(ON, RUNAI_STREAMER_MEMORY_LIMIT="600000")},
        {"name": "one_file", "paths": paths_of(checkpoints, "one_file"), "env": ON},
        {"name": "huge", "paths": paths_of(checkpoints, "huge"), "env": ON},
        {"name": "solo", "paths": paths_of(checkpoints, "solo"), "env": ON},
        {"name": "solo_views", "paths": paths_of(checkpoints, "solo"), "env": ON, "owned": False},
        {"name": "dist_off", "paths": mixed, "env": dict(ON, RUNAI_STREAMER_DIST="0")},
        {"name": "auto_local_files", "paths": mixed, "env": BUFFERED,
         "unset": ["RUNAI_STREAMER_DIST"]},
        {"name": "not_asked", "paths": mixed, "env": ON, "is_distributed": False},
        {"name": "one_rank_cannot", "paths": mixed, "env": ON,
         "inject": {"rank": 1, "kind": "no_memory"}},
        {"name": "mismatch", "paths": mixed, "env": ON,
         "rank_tensor_names": {"1": NAMES[:2]}},
        {"name": "unknown_name", "paths": mixed, "env": ON, "tensor_names": ["no.such"]},
        {"name": "read_error", "paths": mixed, "env": dict(ON, **SMALL_ROUNDS),
         "inject": {"rank": 1, "kind": "read_error", "after": 2}},
        {"name": "after_read_error", "paths": mixed, "env": ON},
        {"name": "truncated", "paths": cut, "env": dict(ON, RUNAI_STREAMER_MEMORY_LIMIT="0"),
         "truncate_after_open": {"path": cut[0], "size": header_end + 4096}},
        {"name": "close_early", "paths": mixed, "env": dict(ON, **SMALL_ROUNDS),
         "inject": {"rank": 0, "kind": "close_early", "after": 3}},
        {"name": "after_close_early", "paths": mixed, "env": dict(ON, RUNAI_STREAMER_DIST_GLOBAL="1")},
        {"name": "caller_collectives", "paths": paths_of(checkpoints, "many"), "owned": False,
         "caller_collectives": True, "env": dict(ON, **SMALL_ROUNDS)},
        {"name": "f4", "paths": paths_of(checkpoints, "f4"), "env": ON},
        {"name": "f4_views", "paths": paths_of(checkpoints, "f4"), "owned": False,
         "env": dict(ON, **SMALL_ROUNDS)},
    ]
    return launch(tmp_path_factory.mktemp("two"), 2, scenarios)


@pytest.mark.parametrize("scenario", ["local", "global_rounds", "one_file", "huge", "solo",
                                      "solo_views", "after_read_error", "after_close_early",
                                      "caller_collectives", "f4", "f4_views"])
def test_two_processes_every_tensor_read_once(two, checkpoints, scenario):
    key = {"one_file": "one_file", "huge": "huge", "global_rounds": "many", "solo": "solo",
           "solo_views": "solo", "caller_collectives": "many", "f4": "f4",
           "f4_views": "f4"}.get(scenario, "mixed")
    results = two.of(scenario)
    assert_every_tensor(results, expected_digests(checkpoints[key]))
    assert all(r["distributed"] for r in results.values())
    assert_read_once(results, tensor_bytes_total(checkpoints[key]), [[0, 1]])


def test_f4_tensors_keep_their_packed_shape(two):
    """F4 holds two values a byte: each rank yields torch.float4_e2m1fn_x2
    tensors whose last dimension is half the header's, the ones it read and
    the ones it received alike (every tensor is checked byte for byte
    against safetensors.safe_open above)."""
    for scenario in ("f4", "f4_views"):
        results = two.of(scenario)
        assert all(r["distributed"] for r in results.values())
        for r in results.values():
            assert r["digests"]["f4.big"][:2] == ["torch.float4_e2m1fn_x2", [1536, 1024]]
            assert r["digests"]["f4.small"][:2] == ["torch.float4_e2m1fn_x2", [64, 33]]
        # Each rank read part: the large one came from the other to one of them.
        assert all(r["stats"]["bytes_read"] > 0 for r in results.values())


def test_caller_collectives_interleave_with_the_exchange(two):
    """The caller's own collectives (default group and a group of its own),
    run between tensors while the exchange is mid-way, neither hang nor see
    the streamer's traffic: every one sums the ranks' 1 + 2."""
    results = two.of("caller_collectives")
    n = len(results[0]["digests"])
    calls = 1 + n // 5 + 1
    for r in results.values():
        assert r["collectives"] == [3] * (2 * calls), r["collectives"]


def test_two_processes_split_the_reading(two):
    results = two.of("local")
    assert all(r["stats"]["bytes_read"] > 0 for r in results.values())
    assert results[0]["group"] == [0, 1]
    # Each rank broadcast what it read and received the rest.
    for r in results.values():
        assert r["bytes_sent"] >= r["stats"]["bytes_read"]
    assert results[0]["bytes_received"] >= results[1]["stats"]["bytes_read"]


def test_memory_limit_forces_many_rounds(two):
    results = two.of("global_rounds")
    assert all(r["rounds"] > 20 for r in results.values()), [r["rounds"] for r in results.values()]
    assert results[0]["rounds"] == results[1]["rounds"]
    # RUNAI_STREAMER_MEMORY_LIMIT=0 bounds each rank's own ring to about
    # its largest tensor (16 KiB here, plus alignment).
    assert all(r["stats"]["arena_bytes"] <= 64 << 10 for r in results.values()), \
        [r["stats"]["arena_bytes"] for r in results.values()]


def test_tensor_names_with_memory_limit(two, checkpoints):
    results = two.of("names_limit")
    expected = {k: v for k, v in expected_digests(checkpoints["mixed"]).items() if k in NAMES}
    assert_every_tensor(results, expected)
    assert_read_once(results, tensor_bytes_total(checkpoints["mixed"], NAMES), [[0, 1]])


def test_single_huge_tensor_is_read_by_one_rank(two, checkpoints):
    results = two.of("huge")
    reads = sorted(r["stats"]["bytes_read"] for r in results.values())
    assert reads == [0, 64 << 20]


@pytest.mark.parametrize("scenario,why", [
    ("dist_off", "RUNAI_STREAMER_DIST=0"),
    ("auto_local_files", "on by default only for object storage to CUDA devices"),
])
def test_fallback_reads_everything_with_one_log_line(two, checkpoints, scenario, why):
    results = two.of(scenario)
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    total = tensor_bytes_total(checkpoints["mixed"])
    for r in results.values():
        assert not r["distributed"]
        assert r["stats"]["bytes_read"] == total
        lines = [l for l in r["logs"] if "distributed streaming off" in l]
        assert len(lines) == 1 and why in lines[0], r["logs"]


def test_one_rank_that_cannot_take_part_makes_the_group_fall_back(two, checkpoints):
    results = two.of("one_rank_cannot")
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    total = tensor_bytes_total(checkpoints["mixed"])
    for rank, r in results.items():
        assert not r["distributed"] and r["stats"]["bytes_read"] == total
        lines = [l for l in r["logs"] if "distributed streaming off" in l]
        assert len(lines) == 1 and "rank 1 of the group [0, 1] cannot take part" in lines[0]
    assert "injected: not enough memory" in [l for l in results[1]["logs"]
                                             if "streaming off" in l][0]


def test_not_asked_is_silent(two, checkpoints):
    results = two.of("not_asked")
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    for r in results.values():
        assert not r["distributed"]
        assert not [l for l in r["logs"] if "distributed" in l]


def test_different_requests_fail_on_every_rank(two):
    results = two.of("mismatch")
    for r in results.values():
        assert "RunaiStreamerInvalidInputException" in r["error_mro"], r["error"]
        assert "asked for different things" in r["error"]


def test_unknown_tensor_name_fails_on_every_rank(two):
    for r in two.of("unknown_name").values():
        assert "RunaiStreamerInvalidInputException" in r["error_mro"], r["error"]
        assert "no.such" in r["error"]


def test_failing_rank_raises_everywhere_naming_it(two):
    results = two.of("read_error")
    assert_failed_everywhere(results, 20)
    # The failing rank raises its own error ...
    assert results[1]["error"].startswith("RunaiStreamerIOError: injected")
    # ... the other the same class, naming the rank and its message.
    assert "RunaiStreamerIOError" in results[0]["error_mro"]
    assert "rank 1" in results[0]["error"] and "injected: pread" in results[0]["error"]


def test_file_truncated_under_the_readers(two):
    """A real read failure (the file loses its tail after every rank opened
    its share): every rank raises within bounded time, and the error names
    the file."""
    results = two.of("truncated")
    assert_failed_everywhere(results, 20)
    assert any("many-0.safetensors" in r["error"] for r in results.values()), \
        [r["error"] for r in results.values()]
    for r in results.values():
        assert "RunaiStreamerError" in r["error_mro"], r["error"]


def test_rank_that_stops_consuming_fails_the_others(two):
    results = two.of("close_early")
    assert results[0]["error"] is None  # it chose to stop
    r = results[1]
    assert r["error"] is not None and "RunaiStreamerDistributedError" in r["error_mro"], r
    assert r["elapsed"] < 20  # the group is torn down: no wait for the 30 s timeout


# ---------------------------------------------------------------------------
# A slow rank and a dying rank
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faults(checkpoints, tmp_path_factory):
    mixed = paths_of(checkpoints, "mixed")
    short = dict(ON, RUNAI_STREAMER_DIST_TIMEOUT="3", **SMALL_ROUNDS)
    scenarios = [
        {"name": "slow", "paths": mixed, "env": short,
         "inject": {"rank": 1, "kind": "sleep", "after": 2, "seconds": 6}},
        {"name": "after_slow", "paths": mixed, "env": ON},
        {"name": "killed", "paths": mixed, "env": dict(ON, **SMALL_ROUNDS),
         "inject": {"rank": 1, "kind": "exit", "after": 2}},
    ]
    return launch(tmp_path_factory.mktemp("faults"), 2, scenarios)


def test_slow_rank_times_out_the_others(faults):
    results = faults.of("slow")
    r0 = results[0]
    assert r0["error"] is not None and "RunaiStreamerDistributedError" in r0["error_mro"], r0
    assert r0["elapsed"] < 3 + 10, r0["elapsed"]
    # The slow rank itself fails when it comes back, instead of hanging.
    assert results[1]["error"] is not None


def test_group_recovers_after_a_timeout(faults, checkpoints):
    results = faults.of("after_slow")
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    assert_read_once(results, tensor_bytes_total(checkpoints["mixed"]), [[0, 1]])


def test_dead_rank_fails_the_others(faults):
    got = faults.results.get("killed", {})
    assert 1 not in got, "rank 1 should have died"
    assert faults.exit_codes[1] == 3
    r0 = got[0]
    assert r0["error"] is not None and "RunaiStreamerDistributedError" in r0["error_mro"], r0
    assert r0["elapsed"] < 20


# ---------------------------------------------------------------------------
# Four processes
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def four(checkpoints, tmp_path_factory):
    mixed = paths_of(checkpoints, "mixed")
    nodes = {"0": {"RUNAI_STREAMER_DIST_NODE": "node-a"}, "1": {"RUNAI_STREAMER_DIST_NODE": "node-a"},
             "2": {"RUNAI_STREAMER_DIST_NODE": "node-b"}, "3": {"RUNAI_STREAMER_DIST_NODE": "node-b"}}
    scenarios = [
        {"name": "two_nodes_local", "paths": mixed, "env": ON, "rank_env": nodes},
        {"name": "two_nodes_global", "paths": paths_of(checkpoints, "many"), "owned": False,
         "rank_env": nodes,
         "env": dict(ON, RUNAI_STREAMER_DIST_GLOBAL="1", **SMALL_ROUNDS)},
        {"name": "one_file", "paths": paths_of(checkpoints, "one_file"), "env": ON},
        {"name": "huge", "paths": paths_of(checkpoints, "huge"), "env": ON},
        {"name": "read_error", "paths": mixed, "env": dict(ON, RUNAI_STREAMER_DIST_GLOBAL="1"),
         "inject": {"rank": 2, "kind": "read_error", "after": 1}},
    ]
    return launch(tmp_path_factory.mktemp("four"), 4, scenarios)


def test_four_local_mode_one_group_per_node(four, checkpoints):
    results = four.of("two_nodes_local")
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    assert [results[r]["group"] for r in range(4)] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    # Each node reads the checkpoint once.
    assert_read_once(results, tensor_bytes_total(checkpoints["mixed"]), [[0, 1], [2, 3]])


def test_four_global_mode_many_rounds(four, checkpoints):
    results = four.of("two_nodes_global")
    assert_every_tensor(results, expected_digests(checkpoints["many"]))
    assert all(r["group"] == [0, 1, 2, 3] for r in results.values())
    assert_read_once(results, tensor_bytes_total(checkpoints["many"]), [[0, 1, 2, 3]])
    assert all(r["rounds"] > 10 for r in results.values()), [r["rounds"] for r in results.values()]


def test_four_more_ranks_than_files(four, checkpoints):
    results = four.of("one_file")
    assert_every_tensor(results, expected_digests(checkpoints["one_file"]))
    assert_read_once(results, tensor_bytes_total(checkpoints["one_file"]), [[0, 1, 2, 3]])
    # Three tensors, four ranks: one rank reads nothing and still gets all.
    assert sorted(r["stats"]["bytes_read"] > 0 for r in results.values()) == [False, True, True, True]


def test_four_single_huge_tensor(four, checkpoints):
    results = four.of("huge")
    assert_every_tensor(results, expected_digests(checkpoints["huge"]))
    assert sorted(r["stats"]["bytes_read"] for r in results.values()) == [0, 0, 0, 64 << 20]


def test_four_failing_rank(four):
    results = four.of("read_error")
    assert_failed_everywhere(results, 20)
    for rank in (0, 1, 3):
        assert "rank 2" in results[rank]["error"], results[rank]["error"]
        assert "RunaiStreamerIOError" in results[rank]["error_mro"]


# ---------------------------------------------------------------------------
# One process: no group, a group of one (SafetensorsStreamer, DistributedStreamer)
# ---------------------------------------------------------------------------

def test_single_process_fallbacks(checkpoints, tmp_path):
    mixed = paths_of(checkpoints, "mixed")
    ranges = [{"id": i, "path": p, "offsets": [0, 8, 4], "sizes": [8, 100, 50]}
              for i, p in enumerate(mixed)]
    scenarios = [
        {"name": "not_initialised", "paths": mixed, "env": ON},
        {"name": "ranges_not_initialised", "kind": "ranges", "requests": ranges, "env": ON},
        {"name": "world_of_one", "paths": mixed, "env": ON,
         "init_world1": f"file://{tmp_path / 'rdv1'}"},
        # The world of one is still initialised.
        {"name": "ranges_world_of_one", "kind": "ranges", "requests": ranges, "env": ON},
    ]
    run = launch(tmp_path / "single", 1, scenarios, init=False)
    # DistributedStreamer delegates to FileStreamer, after one log line.
    expected = chunk_digests(ranges)
    for name, why in (("ranges_not_initialised", "torch.distributed is not initialised"),
                      ("ranges_world_of_one", "the world has one process")):
        results = run.of(name)
        assert_every_chunk(results, expected)
        r = results[0]
        assert not r["distributed"] and r["stats"]["bytes_read"] == union_bytes(ranges)
        lines = [l for l in r["logs"] if "distributed streaming off" in l]
        assert len(lines) == 1 and why in lines[0], r["logs"]
    expected = expected_digests(checkpoints["mixed"])
    total = tensor_bytes_total(checkpoints["mixed"])
    for name, why in (("not_initialised", "torch.distributed is not initialised"),
                      ("world_of_one", "the world has one process")):
        results = run.of(name)
        assert_every_tensor(results, expected)
        r = results[0]
        assert not r["distributed"] and r["stats"]["bytes_read"] == total
        lines = [l for l in r["logs"] if "distributed streaming off" in l]
        assert len(lines) == 1 and why in lines[0], r["logs"]
