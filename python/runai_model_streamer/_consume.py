"""What a user does with a loaded tensor, for benchmarks (the demo, bench/).

A load that hands out tensors whose bytes are not yet read (a lazy mapping, a
page-cache mapping not yet faulted in) looks free until the bytes are used,
so every loader is timed with one of these consumers applied to every tensor.
bench/worker.py loads this file by path (the PyPI peer's venv has its own
``runai_model_streamer``), so every loader runs exactly this code.

Only torch is imported: nothing of this package.
"""

import torch

CONSUMERS = ("sum", "copy")


def byte_view(t: "torch.Tensor") -> "torch.Tensor":
    """The tensor's bytes as a flat uint8 tensor (no copy for a contiguous tensor)."""
    flat = t.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat


class Consumer:
    """sum:  a sum over every byte of the tensor: its uint8 view read as little-endian
             int64 words (wrapping sum) plus its last n % 8 bytes one by one. torch's
             reduction over uint8 itself accumulates one byte at a time (~0.3 GB/s
             here); over int64 words it is vectorised (~8 GB/s on one core), and it
             still reads every byte. The sums are converted to a Python int per
             tensor and added into ``checksum`` (64-bit wrap), so the reduction runs
             for every tensor and its result is used; the words are counted from the
             tensor's first byte, so the total is the same for any loader of the same
             tensors (bench/ compares it).
    copy: a copy of every byte into a destination allocated and written once (so
          pre-faulted) before the clock by ``prepare(largest_tensor_bytes)``."""

    def __init__(self, kind: str) -> None:
        if kind not in CONSUMERS:
            raise ValueError(f"consumer {kind!r}: one of {', '.join(CONSUMERS)}")
        self.kind = kind
        self.checksum = 0
        self.bytes = 0
        self.dst = None

    def prepare(self, largest_bytes: int) -> None:
        if self.kind == "copy":
            self.dst = torch.zeros(max(1, int(largest_bytes)), dtype=torch.uint8)  # zeros writes every page

    def __call__(self, t: "torch.Tensor") -> None:
        u = byte_view(t)
        n = u.numel()
        if self.kind == "sum":
            m = n - n % 8
            words = None
            if m:
                try:
                    words = u[:m].view(torch.int64)
                except RuntimeError:
                    # A storage offset that is not a multiple of 8 (a piece of a larger
                    # buffer): the same bytes as a tensor of their own, offset 0.
                    words = torch.frombuffer(u[:m].numpy(), dtype=torch.int64)
            total = int(words.sum()) if words is not None else 0
            if m < n:
                total += int(u[m:].sum(dtype=torch.int64))
            self.checksum = (self.checksum + total) & 0xFFFFFFFFFFFFFFFF
        else:
            if self.dst is None or self.dst.numel() < n:
                raise ValueError(f"copy consumer: a {n}-byte tensor, destination has "
                                 f"{0 if self.dst is None else self.dst.numel()} (prepare() it)")
            self.dst[:n].copy_(u)
        self.bytes += n
