"""The Python examples of the user contract (spec/usage.md) run verbatim,
with only the placeholder file paths (and the CUDA device when there is no
GPU) substituted."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_matches, describe, make_random_checkpoint, reference_all

SPEC_CANDIDATES = [
    os.environ.get("MODEL_STREAMER_SPEC", ""),
    REPO / "spec" / "usage.md",
    REPO / "docs" / "spec" / "usage.md",
    REPO / "docs" / "usage.md",
    REPO.parent / "shared" / "spec" / "usage.md",
]


def spec_path() -> Path:
    for c in SPEC_CANDIDATES:
        if c and Path(c).is_file():
            return Path(c)
    pytest.skip("spec/usage.md not found (set MODEL_STREAMER_SPEC)")


def python_blocks(text: str):
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def streamer_examples():
    path = spec_path()
    blocks = python_blocks(path.read_text())
    return [b for b in blocks if "SafetensorsStreamer" in b], blocks


def test_spec_has_the_examples():
    examples, blocks = streamer_examples()
    assert len(examples) >= 3, "the spec's streaming examples are gone"
    for b in blocks:
        compile(b, "usage.md", "exec")  # every snippet is valid Python


def _device() -> str:
    return "'cuda:0'" if torch.cuda.is_available() else "'cpu'"


def test_spec_examples_run(tmp_path, monkeypatch):
    from runai_model_streamer import SafetensorsStreamer

    examples, _ = streamer_examples()
    paths = make_random_checkpoint(tmp_path, 3, "safetensors", max_files=3, max_tensors=20)
    while len(paths) < 2:  # the multi-file examples name two files
        paths += make_random_checkpoint(tmp_path, 4 + len(paths), "raw", max_files=1,
                                        max_tensors=10, prefix=f"more{len(paths)}.")
    yielded = []
    original = SafetensorsStreamer.get_tensors

    def recording(self):
        for name, tensor in original(self):
            yielded.append(name)
            yield name, tensor

    monkeypatch.setattr(SafetensorsStreamer, "get_tensors", recording)

    for i, code in enumerate(examples):
        placeholders = list(dict.fromkeys(re.findall(r'"(/path/to/[^"]+)"', code)))
        assert placeholders, f"example {i} names no file"
        assert len(placeholders) <= len(paths)
        used = paths[: len(placeholders)]
        for placeholder, real in zip(placeholders, used):
            code = code.replace(f'"{placeholder}"', repr(str(real)))
        code = code.replace("'CUDA:0'", _device()).replace('"CUDA:0"', _device())
        yielded.clear()
        namespace = {"__name__": f"usage_example_{i}"}
        exec(compile(code, f"usage.md example {i}", "exec"), namespace)
        expected = reference_all(used)
        assert sorted(yielded) == sorted(expected), f"example {i} did not stream every tensor"
        if "tensors" in namespace and isinstance(namespace["tensors"], dict):
            got = namespace["tensors"]
            assert got.keys() == expected.keys()
            for name, t in got.items():
                assert_matches(name, describe(t.cpu()), expected[name])
