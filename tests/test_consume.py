"""The benchmarks' consumer (bench/, `model-streamer demo`): the sum must read
every byte and give the same checksum for the same bytes wherever they sit."""

from __future__ import annotations

import pytest
import torch

from runai_model_streamer._consume import Consumer


def reference(data: bytes) -> int:
    """Little-endian int64 words from the first byte, wrapping, plus the tail bytes."""
    m = len(data) - len(data) % 8
    total = sum(int.from_bytes(data[i:i + 8], "little") for i in range(0, m, 8)) + sum(data[m:])
    return total & 0xFFFFFFFFFFFFFFFF


@pytest.mark.parametrize("start,length", [(0, 64), (3, 61), (8, 1), (5, 0), (1, 800)])
def test_sum_matches_every_byte_at_any_offset(start, length):
    g = torch.Generator().manual_seed(start * 1000 + length)
    buf = torch.randint(0, 256, (1024,), dtype=torch.uint8, generator=g)
    piece = buf[start:start + length]  # storage offset `start`: not a multiple of 8 for some
    c = Consumer("sum")
    c(piece)
    assert c.checksum == reference(bytes(piece.tolist()))
    assert c.bytes == length
    other = Consumer("sum")
    other(piece.clone())  # the same bytes at offset 0
    assert other.checksum == c.checksum


def test_sum_sees_a_change_in_any_byte():
    t = torch.zeros(37, dtype=torch.bfloat16)
    base = Consumer("sum")
    base(t)
    for i in range(t.numel() * 2):
        u = t.clone()
        u.view(torch.uint8)[i] = 1
        c = Consumer("sum")
        c(u)
        assert c.checksum != base.checksum, i


def test_copy_copies_into_the_prepared_destination():
    t = torch.arange(10, dtype=torch.float32).reshape(2, 5)
    c = Consumer("copy")
    with pytest.raises(ValueError):
        c(t)  # not prepared
    c.prepare(64)
    c(t)
    assert torch.equal(c.dst[:40].view(torch.float32), t.reshape(-1))
    assert c.bytes == 40
