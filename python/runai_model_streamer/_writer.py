"""A small SafeTensors writer for the demo: header + data from a byte source,
written in large sequential writes (no torch needed)."""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

DTYPE_SIZES: Dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U64": 8, "U32": 4, "U16": 2, "C64": 8,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}

TensorSpec = Tuple[str, str, Sequence[int]]  # (name, dtype, shape)


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    n = DTYPE_SIZES[dtype]
    for d in shape:
        n *= int(d)
    return n


def build_header(tensors: Sequence[TensorSpec],
                 metadata: Optional[Dict[str, str]] = None) -> Tuple[bytes, int]:
    """The 8-byte length + JSON header (space-padded to 8 bytes) for tensors
    packed in the given order; returns (header bytes, data size)."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in tensors:
        n = tensor_nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return len(text).to_bytes(8, "little") + text, offset


class RandomBytes:
    """An endless source of pseudo-random bytes: one random block, reused at a
    different rotation each time (cheap to produce, not trivially compressible)."""

    def __init__(self, block_bytes: int = 64 << 20, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._block = memoryview(rng.integers(0, 256, size=block_bytes, dtype=np.uint8).data)
        self._size = block_bytes
        self._step = 0

    def chunks(self, nbytes: int) -> Iterable[memoryview]:
        """Memoryviews adding up to nbytes."""
        left = nbytes
        while left > 0:
            self._step += 1
            rot = (self._step * 4099 * 4096 + self._step * 7) % self._size
            for view in (self._block[rot:], self._block[:rot]):
                if left <= 0:
                    break
                piece = view[: min(len(view), left)]
                if len(piece):
                    yield piece
                    left -= len(piece)


def write_safetensors(path: str, tensors: Sequence[TensorSpec], source: RandomBytes,
                      metadata: Optional[Dict[str, str]] = None) -> int:
    """Writes one file; returns its size."""
    header, data_size = build_header(tensors, metadata)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, memoryview(header))
        for chunk in source.chunks(data_size):
            _write_all(fd, chunk)
    finally:
        os.close(fd)
    return len(header) + data_size


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


def demo_model(total_bytes: int) -> List[TensorSpec]:
    """A transformer-like tensor list of about total_bytes: bf16 embeddings,
    attention and MLP matrices, f32 norms, i64 buffers, tiny, 0-d and empty
    tensors."""

    def layer(i: int, h: int, inter: int, kv: int) -> List[TensorSpec]:
        p = f"model.layers.{i}."
        specs: List[TensorSpec] = [
            (p + "input_layernorm.weight", "F32", (h,)),
            (p + "self_attn.q_proj.weight", "BF16", (h, h)),
            (p + "self_attn.k_proj.weight", "BF16", (kv, h)),
            (p + "self_attn.v_proj.weight", "BF16", (kv, h)),
            (p + "self_attn.o_proj.weight", "BF16", (h, h)),
            (p + "post_attention_layernorm.weight", "F32", (h,)),
            (p + "mlp.gate_proj.weight", "BF16", (inter, h)),
            (p + "mlp.up_proj.weight", "BF16", (inter, h)),
            (p + "mlp.down_proj.weight", "BF16", (h, inter)),
        ]
        if i % 4 == 0:
            specs.append((p + "self_attn.rotary_emb.inv_freq", "F32", (h // 64,)))
            specs.append((p + "self_attn.scale", "F32", ()))
            specs.append((p + "self_attn.unused_bias", "BF16", (0,)))
        return specs

    def sizes(h: int) -> Tuple[int, int, int, int]:
        inter = (h * 11 // 4) // 64 * 64
        kv = max(64, h // 4)
        vocab = 32000 if h >= 2048 else 16000 if h >= 512 else 4000
        per_layer = sum(tensor_nbytes(d, s) for _, d, s in layer(0, h, inter, kv))
        return inter, kv, vocab, per_layer

    h = 256
    for cand in (4096, 3072, 2048, 1024, 512, 256):
        inter, kv, vocab, per_layer = sizes(cand)
        if 2 * vocab * cand * 2 + 8 * per_layer <= total_bytes:
            h = cand
            break
    inter, kv, vocab, per_layer = sizes(h)
    specs: List[TensorSpec] = [
        ("model.embed_tokens.weight", "BF16", (vocab, h)),
        ("model.position_ids", "I64", (1, 4096)),
        ("model.attention_mask_buffer", "I64", (64, 64)),
    ]
    used = sum(tensor_nbytes(d, s) for _, d, s in specs) + tensor_nbytes("BF16", (vocab, h))
    i = 0
    while used + per_layer <= total_bytes or i == 0:
        specs.extend(layer(i, h, inter, kv))
        used += per_layer
        i += 1
    specs.append(("model.norm.weight", "F32", (h,)))
    specs.append(("model.num_layers", "I64", ()))
    specs.append(("model.empty_buffer", "F32", (0, h)))
    specs.append(("lm_head.weight", "BF16", (vocab, h)))
    return specs


def split_shards(specs: Sequence[TensorSpec], shards: int) -> List[List[TensorSpec]]:
    """Consecutive groups of about equal bytes; each group ordered by element
    size (largest first) so every tensor stays naturally aligned."""
    total = sum(tensor_nbytes(d, s) for _, d, s in specs)
    shards = max(1, min(shards, len(specs)))
    target = total / shards
    groups: List[List[TensorSpec]] = [[]]
    acc = 0
    for spec in specs:
        n = tensor_nbytes(spec[1], spec[2])
        if groups[-1] and acc + n / 2 > target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(spec)
        acc += n
    return [sorted(g, key=lambda s: -DTYPE_SIZES[s[1]]) for g in groups]


def write_demo_checkpoint(directory: str, total_bytes: int, shards: int = 4,
                          seed: int = 0,
                          on_file: Optional[Callable[[str, int], None]] = None) -> List[str]:
    """Writes model-0000i-of-0000n.safetensors files into directory."""
    os.makedirs(directory, exist_ok=True)
    groups = split_shards(demo_model(total_bytes), shards)
    source = RandomBytes(seed=seed)
    paths = []
    for i, group in enumerate(groups):
        path = os.path.join(directory, f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors")
        size = write_safetensors(path, group, source, {"format": "pt"})
        paths.append(path)
        if on_file is not None:
            on_file(path, size)
    return paths
