"""RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE and RUNAI_STREAMER_CUDA_ALIGNMENT
with the reference's values and meaning, in-process (settings, layout) and
over a gloo group of two processes (every tensor bit for bit, packed tensors
at aligned addresses), and the once-per-load CPU buffer line naming the rank."""

from __future__ import annotations

import pytest

from runai_model_streamer.distributed import DistSettings, slot_layout
from runai_model_streamer.exceptions import RunaiStreamerInvalidInputException

from .conftest import (
    BUFFERED,
    assert_every_tensor,
    assert_read_once,
    expected_digests,
    launch,
    tensor_bytes_total,
)

ON = dict(BUFFERED, RUNAI_STREAMER_DIST="1", RUNAI_STREAMER_DIST_TIMEOUT="30")


# ---------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("raw, want", [("0", 0), ("-5", 0), ("1000", 1000), ("64KiB", 65536),
                                       (" 7 ", 7)])
def test_buffer_min_accepts_every_integer(raw, want):
    """The reference takes any integer (buffers are max(it, the largest
    tensor)); 0 and below mean just the largest tensor."""
    s = DistSettings.from_env({"RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE": raw})
    assert s.buffer_min == want


@pytest.mark.parametrize("raw, want, slot", [
    (None, 512, 512), ("0", 0, 16), ("1", 1, 16), ("3", 3, 48), ("64", 64, 64),
    ("4096", 4096, 4096), ("1048576", 1 << 20, 1 << 20), ("1MiB", 1 << 20, 1 << 20),
])
def test_cuda_alignment_values(raw, want, slot):
    env = {} if raw is None else {"RUNAI_STREAMER_CUDA_ALIGNMENT": raw}
    s = DistSettings.from_env(env)
    assert (s.alignment, s.slot_align) == (want, slot)
    offsets, total = slot_layout([3, 1000, 1, 0, 100], s.slot_align)
    assert all(off % slot == 0 and off % max(want, 1) == 0 for off in offsets), offsets
    assert total == offsets[-1] + 100


@pytest.mark.parametrize("raw", ["-1", "1048577", "2MiB", "abc", "1.5"])
def test_cuda_alignment_out_of_range_is_a_value_error(raw):
    with pytest.raises(ValueError, match="RUNAI_STREAMER_CUDA_ALIGNMENT") as info:
        DistSettings.from_env({"RUNAI_STREAMER_CUDA_ALIGNMENT": raw})
    assert isinstance(info.value, RunaiStreamerInvalidInputException)


# ---------------------------------------------------------------------------
# Two processes


@pytest.fixture(scope="module")
def group(checkpoints, tmp_path_factory):
    mixed = [str(p) for p in checkpoints["mixed"]]
    many = [str(p) for p in checkpoints["many"]]
    scenarios = [
        {"name": "min0", "paths": many, "record_ptrs": True,
         "env": dict(ON, RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="0")},
        {"name": "align4096", "paths": mixed, "owned": False, "record_ptrs": True,
         "env": dict(ON, RUNAI_STREAMER_CUDA_ALIGNMENT="4096")},
        {"name": "align0", "paths": mixed, "owned": False, "record_ptrs": True,
         "env": dict(ON, RUNAI_STREAMER_CUDA_ALIGNMENT="0")},
        {"name": "align_differs", "paths": mixed, "env": ON,
         "rank_env": {"1": {"RUNAI_STREAMER_CUDA_ALIGNMENT": "1024"}}},
        {"name": "align_invalid", "paths": mixed,
         "env": dict(ON, RUNAI_STREAMER_CUDA_ALIGNMENT=str(2 << 20))},
    ]
    return launch(tmp_path_factory.mktemp("reference-settings"), 2, scenarios)


def received_ptrs(r, rank):
    """data_ptr of each tensor this rank received from the other (owned=False:
    a view of its staging buffer)."""
    return {n: p for n, p in r["ptrs"].items() if r["owners"][n] not in (rank, -1)}


def test_buffer_min_zero_streams_in_buffers_of_the_largest_tensor(group, checkpoints):
    results = group.of("min0")
    assert_every_tensor(results, expected_digests(checkpoints["many"]))
    assert all(r["distributed"] for r in results.values())
    assert_read_once(results, tensor_bytes_total(checkpoints["many"]), [[0, 1]])
    # Buffers of one largest tensor (16 KiB) hold one or two tensors: many
    # rounds for 200 tensors.
    assert all(r["rounds"] > 40 for r in results.values()), [r["rounds"] for r in results.values()]


@pytest.mark.parametrize("scenario, align", [("align4096", 4096), ("align0", 16)])
def test_packed_tensors_sit_at_aligned_addresses(group, checkpoints, scenario, align):
    results = group.of(scenario)
    assert_every_tensor(results, expected_digests(checkpoints["mixed"]))
    for rank, r in results.items():
        assert r["align"] == align
        got = received_ptrs(r, rank)
        assert len(got) > 10, f"rank {rank} received {len(got)} tensors"
        bad = {n: p % align for n, p in got.items() if p % align}
        assert not bad, f"rank {rank}: tensors off the {align}-byte alignment: {bad}"
        if scenario == "align0":
            # No alignment asked for: packing is tight (down to the dtype's
            # needs), so some tensors are off the default 512.
            assert any(p % 512 for p in got.values())


def test_alignment_must_agree_across_ranks(group):
    for r in group.of("align_differs").values():
        assert "RunaiStreamerInvalidInputException" in r["error_mro"], r["error"]
        assert "RUNAI_STREAMER_CUDA_ALIGNMENT" in r["error"]


def test_alignment_out_of_range_fails_on_every_rank(group):
    for r in group.of("align_invalid").values():
        assert "ValueError" in r["error_mro"], r["error"]
        assert "RUNAI_STREAMER_CUDA_ALIGNMENT" in r["error"] and "1048576" in r["error"]


def test_cpu_buffer_line_names_the_rank(group):
    """The once-per-load INFO line about the CPU buffer says which rank's
    buffer it is."""
    for rank, r in group.of("min0").items():
        lines = [l for l in r["logs"] if "CPU buffer" in l]
        assert len(lines) == 1, r["logs"]
        assert lines[0].startswith(f"[model-streamer] Rank {rank}: CPU buffer "), lines[0]
