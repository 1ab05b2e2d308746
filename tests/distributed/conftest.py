"""Helpers of the distributed tests: checkpoints, launching groups of gloo
processes on this machine (see _worker.py), and checks on their results."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from conftest import make_random_checkpoint, reference_all, subprocess_env  # tests/conftest.py

WORKER = Path(__file__).resolve().parent / "_worker.py"

# Every distributed scenario reads through the page cache, so that the
# bytes_read figures are exactly the tensor bytes (no O_DIRECT slack).
BUFFERED = {"MODEL_STREAMER_READ_MODE": "buffered"}


def expected_digests(paths: Sequence[Path]) -> Dict[str, list]:
    """name -> [dtype, shape, sha256] as safetensors.safe_open reads them."""
    out = {}
    for name, (dtype, shape, data) in reference_all(paths).items():
        out[name] = [str(dtype), list(shape), hashlib.sha256(data).hexdigest()]
    return out


def tensor_bytes_total(paths: Sequence[Path], names: Optional[Sequence[str]] = None) -> int:
    ref = reference_all(paths)
    return sum(len(v[2]) for k, v in ref.items() if names is None or k in set(names))


class Launch:
    """The results of one group of worker processes: results[name][rank]."""

    def __init__(self, out: Path, world: int, returncode: int, stderr: str) -> None:
        self.world = world
        self.stderr = stderr
        self.returncode = returncode
        exit_file = out / "exit.json"
        self.exit_codes = json.loads(exit_file.read_text()) if exit_file.exists() else None
        self.results: Dict[str, Dict[int, dict]] = {}
        self.worker_errors: List[str] = []
        for rank in range(world):
            f = out / f"rank{rank}.jsonl"
            if not f.exists():
                continue
            for line in f.read_text().splitlines():
                r = json.loads(line)
                if r["name"] == "__worker__":
                    self.worker_errors.append(r["error"])
                    continue
                self.results.setdefault(r["name"], {})[rank] = r

    def of(self, name: str) -> Dict[int, dict]:
        got = self.results.get(name, {})
        if len(got) != self.world:
            pytest.fail(f"scenario {name!r}: results from ranks {sorted(got)} of {self.world}; "
                        f"exit codes {self.exit_codes}; worker errors {self.worker_errors}; "
                        f"stderr:\n{self.stderr[-4000:]}")
        return got


def launch(tmp: Path, world: int, scenarios: List[dict], *, init: bool = True,
           deadline: float = 150, backend: str = "gloo") -> Launch:
    """Runs scenarios in `world` forked processes (file:// rendezvous)."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "out"
    out.mkdir()
    spec = {"world": world, "init": f"file://{tmp / 'rendezvous'}" if init else None,
            "out": str(out), "scenarios": scenarios, "deadline": deadline, "backend": backend}
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, str(WORKER), str(spec_file)], capture_output=True,
                              text=True, timeout=deadline + 30, env=subprocess_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the worker processes did not finish (hang?): {e.stderr}")
    return Launch(out, world, proc.returncode, proc.stderr)


def assert_every_tensor(results: Dict[int, dict], expected: Dict[str, list]) -> None:
    """Every rank got every tensor once, bit for bit (dtype, shape, bytes)."""
    for rank, r in sorted(results.items()):
        assert r["error"] is None, f"rank {rank}: {r['error']}\n{r.get('traceback')}"
        assert not r.get("duplicates"), f"rank {rank}: delivered twice: {r['duplicates'][:5]}"
        got = r["digests"]
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        assert not missing and not extra, f"rank {rank}: missing {missing[:5]}, extra {extra[:5]}"
        wrong = [n for n in expected if got[n] != expected[n]]
        assert not wrong, (f"rank {rank}: {len(wrong)} tensor(s) differ, e.g. {wrong[0]}: "
                           f"{got[wrong[0]]} != {expected[wrong[0]]}")
        assert r.get("kept_ok", True), f"rank {rank}: an owned tensor changed after the loop"
        assert r["n_meta"] == len(expected), f"rank {rank}: files_to_tensors_metadata"


def bytes_read(results: Dict[int, dict], ranks: Sequence[int]) -> int:
    return sum(results[r]["stats"]["bytes_read"] for r in ranks)


def assert_read_once(results: Dict[int, dict], total: int, groups: Sequence[Sequence[int]]
                     ) -> None:
    """Within each group, the ranks' bytes read from storage add up to the
    request's tensor bytes, once."""
    for group in groups:
        per_rank = {r: results[r]["stats"]["bytes_read"] for r in group}
        assert sum(per_rank.values()) == total, (
            f"group {list(group)} read {sum(per_rank.values())} bytes for {total} "
            f"(per rank: {per_rank})")


def assert_failed_everywhere(results: Dict[int, dict], seconds: float) -> None:
    for rank, r in sorted(results.items()):
        assert r["error"] is not None, f"rank {rank} did not fail"
        assert r["elapsed"] < seconds, f"rank {rank} took {r['elapsed']:.1f}s to fail"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Dict[str, List[Path]]:
    """mixed: random files (every dtype, odd unaligned tensors) plus a file of
    larger tensors; one_file: one file of three 96 KiB tensors; huge: one 64 MiB
    tensor; many: two files of 100 small tensors (8-16 KiB) each; solo: small
    tensors and 1.5 MiB ones (which travel alone) in one file; f4: F4 tensors
    (torch.float4_e2m1fn_x2) among others."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("dist-ckpt")
    mixed = make_random_checkpoint(root / "mixed", 7, "raw", max_files=4, max_tensors=40)
    g = torch.Generator().manual_seed(1)
    big = {
        "big.embed": torch.randn(256, 512, generator=g).to(torch.bfloat16),  # 256 KiB
        "big.w1": torch.randn(128, 1024, generator=g),  # 512 KiB
        "big.w2": torch.randn(300, 301, generator=g).to(torch.float16),
        "big.ids": torch.arange(20000, dtype=torch.int64),
        "big.norm": torch.randn(1000, generator=g),
        "big.mask": torch.rand(999, generator=g) > 0.5,
    }
    big_path = root / "mixed" / "big.safetensors"
    save_file(big, str(big_path))
    one = root / "one" / "one.safetensors"
    one.parent.mkdir()
    save_file({f"one.t{i}": torch.randn(24576, generator=g) for i in range(3)}, str(one))
    huge = root / "huge" / "huge.safetensors"
    huge.parent.mkdir()
    save_file({"huge.weight": torch.randint(0, 255, (64 << 20,), dtype=torch.uint8,
                                            generator=g)}, str(huge))
    many = []
    for fi in range(2):
        path = root / "many" / f"many-{fi}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file({f"many.{fi}.{i}": torch.randn(4096, generator=g).to(
            (torch.float32, torch.bfloat16, torch.int32)[i % 3]) for i in range(100)}, str(path))
        many.append(path)
    solo = root / "solo" / "solo.safetensors"
    solo.parent.mkdir()
    tensors = {}
    for i in range(24):  # 1.5 MiB tensors (sent alone) among small ones (packed)
        n = 393216 if i % 6 == 0 else 1000 + i
        tensors[f"solo.{i}"] = torch.randn(n, generator=g)
    save_file(tensors, str(solo))
    # F4 (torch.float4_e2m1fn_x2): two 4-bit values per byte, so the header's
    # last dimension is twice the torch tensor's. One large (sent alone), two
    # small (packed) among other dtypes.
    f4 = root / "f4" / "f4.safetensors"
    f4.parent.mkdir()

    def packed(*shape):
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).view(
            torch.float4_e2m1fn_x2)

    save_file({"f4.big": packed(1536, 1024), "f4.small": packed(64, 33), "f4.tiny": packed(3),
               "f4.norm": torch.randn(1000, generator=g),
               "f4.bias": torch.randn(77, generator=g).to(torch.bfloat16)}, str(f4))
    return {"mixed": mixed + [big_path], "one_file": [one], "huge": [huge], "many": many,
            "solo": [solo], "f4": [f4]}


# ---------------------------------------------------------------------------
# DistributedStreamer: byte ranges
# ---------------------------------------------------------------------------

def chunk_digests(requests: Sequence[dict], root: Optional[Path] = None) -> Dict[str, list]:
    """"id:index" -> [dtype, shape, sha256] of every range of requests
    ({"id", "path", "offsets", "sizes"}), read with plain file reads (a
    relative path is read below root)."""
    out = {}
    for r in requests:
        path = Path(r["path"])
        with open(path if path.is_absolute() or root is None else root / path, "rb") as f:
            for i, (offset, size) in enumerate(zip(r["offsets"], r["sizes"])):
                f.seek(offset)
                data = f.read(size)
                assert len(data) == size, (r["path"], i)
                out[f"{r['id']}:{i}"] = ["torch.uint8", [1, size], hashlib.sha256(data).hexdigest()]
    return out


def union_bytes(requests: Sequence[dict]) -> int:
    """Bytes the ranges of requests cover, each byte of a file counted once."""
    total = 0
    by_path: Dict[str, list] = {}
    for r in requests:
        by_path.setdefault(r["path"], []).extend(
            (o, o + n) for o, n in zip(r["offsets"], r["sizes"]) if n > 0)
    for spans in by_path.values():
        end = -1
        for b, e in sorted(spans):
            if b > end:
                total += e - b
            elif e > end:
                total += e - end
            end = max(end, e)
    return total


def assert_every_chunk(results: Dict[int, dict], expected: Dict[str, list]) -> None:
    """Every rank got every range once, byte for byte (dtype uint8, shape
    (1, size), the file's bytes)."""
    for rank, r in sorted(results.items()):
        assert r["error"] is None, f"rank {rank}: {r['error']}\n{r.get('traceback')}"
        assert not r.get("duplicates"), f"rank {rank}: delivered twice: {r['duplicates'][:5]}"
        got = r["digests"]
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        assert not missing and not extra, f"rank {rank}: missing {missing[:5]}, extra {extra[:5]}"
        wrong = [k for k in expected if got[k] != expected[k]]
        assert not wrong, (f"rank {rank}: {len(wrong)} range(s) differ, e.g. {wrong[0]}: "
                           f"{got[wrong[0]]} != {expected[wrong[0]]}")
        assert r.get("kept_ok", True), f"rank {rank}: an owned chunk changed after the loop"
