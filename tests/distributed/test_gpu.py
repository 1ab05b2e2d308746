"""GPU delivery and distributed streaming over NCCL. Skipped without CUDA
(NCCL tests: without two GPUs)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_matches, call_with_timeout, describe, reference_all

from .conftest import (
    BUFFERED,
    assert_every_tensor,
    assert_read_once,
    expected_digests,
    launch,
    tensor_bytes_total,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="needs two CUDA devices")


def _stream_to_cuda(paths, *, owned, set_env, memory_limit=None, read_mode="buffered"):
    """Streams paths to cuda:0 and checks every tensor; returns (copies from
    the pinned ring, copies)."""
    from runai_model_streamer import SafetensorsStreamer

    set_env(MODEL_STREAMER_READ_MODE=read_mode, RUNAI_STREAMER_MEMORY_LIMIT=memory_limit)
    expected = reference_all(paths)

    def run():
        seen = {}
        pinned = copies = 0
        kept = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_files([str(p) for p in paths], device="cuda:0", owned=owned)
            for name, tensor in streamer.get_tensors():
                assert tensor.device == torch.device("cuda", 0)
                assert_matches(name, describe(tensor.cpu()), expected[name])
                seen[name] = True
                kept[name] = tensor
                for state in streamer._iterators:
                    if state.copier is not None:
                        pinned, copies = state.copier.pinned_copies, state.copier.copies
        assert set(seen) == set(expected)
        for name, tensor in kept.items():  # device tensors are always the caller's
            assert_matches(name, describe(tensor.cpu()), expected[name])
        return pinned, copies

    return call_with_timeout(run, 120)


@cuda
@pytest.mark.parametrize("owned", [True, False])
def test_cuda_delivery_matches(checkpoints, set_env, owned):
    _stream_to_cuda(checkpoints["mixed"], owned=owned, set_env=set_env)


@cuda
def test_cuda_delivery_copies_from_the_pinned_ring(checkpoints, set_env):
    from runai_model_streamer import _native

    if _native._function(_native.load()[1], "ms_stream_arena") is None:
        pytest.skip("this library has no ms_stream_arena")
    pinned, _ = _stream_to_cuda(checkpoints["many"], owned=True, set_env=set_env,
                                memory_limit=1 << 20)
    assert pinned > 0


@cuda
def test_cuda_delivery_default_settings_copy_only_from_the_pinned_ring(checkpoints, set_env):
    """No memory limit, read mode auto, files in the page cache: every
    tensor (all are aligned) reaches the device from the pinned ring; none is
    mapped or read into fresh, pageable memory."""
    paths = checkpoints["many"]
    for p in paths:
        p.read_bytes()
    pinned, copies = _stream_to_cuda(paths, owned=False, set_env=set_env, read_mode=None)
    assert copies == 200 and pinned == copies, (pinned, copies)


@cuda
def test_cuda_delivery_single_huge_tensor(checkpoints, set_env):
    _stream_to_cuda(checkpoints["huge"], owned=True, set_env=set_env, memory_limit=0)


@two_gpus
def test_nccl_two_processes(checkpoints, tmp_path):
    mixed = [str(p) for p in checkpoints["mixed"]]
    many = [str(p) for p in checkpoints["many"]]
    on = dict(BUFFERED, RUNAI_STREAMER_DIST="1", RUNAI_STREAMER_DIST_TIMEOUT="60")
    scenarios = [
        {"name": "owned", "paths": mixed, "device": "cuda:{rank}", "env": on},
        {"name": "views_rounds", "paths": many, "device": "cuda:{rank}", "owned": False,
         "env": dict(on, RUNAI_STREAMER_MEMORY_LIMIT="0",
                     RUNAI_STREAMER_DIST_BUFFER_MIN_BYTESIZE="64KiB")},
        {"name": "huge", "paths": [str(p) for p in checkpoints["huge"]], "device": "cuda:{rank}",
         "env": on},
    ]
    run = launch(tmp_path, 2, scenarios, backend="nccl", deadline=240)
    for name, key in (("owned", "mixed"), ("views_rounds", "many"), ("huge", "huge")):
        results = run.of(name)
        assert_every_tensor(results, expected_digests(checkpoints[key]))
        assert all(r["distributed"] for r in results.values())
        assert_read_once(results, tensor_bytes_total(checkpoints[key]), [[0, 1]])
        for rank, r in results.items():
            assert set(r["devices"]) == {f"cuda:{rank}"}
