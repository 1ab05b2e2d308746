"""The cache's share of a distributed load: bytes received on a device come
back to host memory, piece by piece, only when this process writes an entry.
(The CPU path runs end to end in test_object_storage.py's cache test; a GPU
is not needed to check the device path's bookkeeping: it runs on CPU tensors
here.)"""

import ctypes

import pytest
import torch

from runai_model_streamer import _native
from runai_model_streamer.distributed import cache_fill


@pytest.fixture
def entry(monkeypatch):
    """A fake entry being written for 'uri': records what it is handed."""
    got = {}

    def take(uri, offset, address, nbytes):
        assert uri == "s3://b/m.safetensors"
        # The bytes are borrowed: read them before returning, as the library does.
        got[offset] = ctypes.string_at(address, nbytes)
        return True

    monkeypatch.setattr(_native, "cache_contribute", take)
    monkeypatch.setattr(_native, "cache_writing", lambda uri: True)
    return got


def test_device_path_hands_every_byte_in_pieces(entry):
    data = torch.randint(0, 256, (10_000,), dtype=torch.uint8)
    host = torch.empty(4096, dtype=torch.uint8)
    sizes = []

    def host_buffer(n):
        sizes.append(n)
        return host[:n]

    assert cache_fill.contribute_via_host("s3://b/m.safetensors", 1000, data, host_buffer, piece=4096)
    assert sizes == [4096, 4096, 1808]
    assert sorted(entry) == [1000, 5096, 9192]
    assert b"".join(entry[k] for k in sorted(entry)) == bytes(data.tolist())


def test_device_bytes_are_not_copied_without_an_entry(monkeypatch):
    monkeypatch.setattr(_native, "cache_writing", lambda uri: False)
    monkeypatch.setattr(_native, "cache_contribute", lambda *a: pytest.fail("contributed without an entry"))
    flat = torch.empty(8, dtype=torch.uint8, device="meta")  # any non-CPU device
    assert not cache_fill.contribute("s3://b/m.safetensors", 0, flat,
                                     lambda n: pytest.fail("copied back without an entry"))


def test_cache_writing_asks_the_library():
    # No stream of this process writes an entry for this URI.
    assert _native.cache_writing("s3://no-such-bucket/m.safetensors") is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bytes_received_on_a_gpu_reach_the_entry(entry):
    data = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8)
    on_gpu = data.to("cuda:0")
    pinned = lambda n: torch.empty(n, dtype=torch.uint8, pin_memory=True)  # noqa: E731
    assert cache_fill.contribute("s3://b/m.safetensors", 7, on_gpu, pinned)
    assert b"".join(entry[k] for k in sorted(entry)) == bytes(data.tolist())
