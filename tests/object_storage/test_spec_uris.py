"""The Python examples of the user contract (spec/usage.md) run verbatim
against S3 (MinIO), GCS (fake-gcs-server) and Azure Blob (Azurite), with the
environment the spec tells users to set. Only the placeholder file paths are
substituted (and the CUDA device when there is no GPU); the spec's own
object storage snippets (s3://my-bucket/my/file/path.safetensors, ...) run
as written, against a bucket of that name."""

from __future__ import annotations

import re

from runai_model_streamer import SafetensorsStreamer

from conftest import assert_matches, describe, reference_all
from test_spec_examples import _device, python_blocks, spec_path, streamer_examples

from .conftest import SCHEMES


def _run_example(code: str, label: str, expected, monkeypatch):
    yielded = []
    original = SafetensorsStreamer.get_tensors

    def recording(self):
        for name, tensor in original(self):
            yielded.append(name)
            yield name, tensor

    monkeypatch.setattr(SafetensorsStreamer, "get_tensors", recording)
    code = code.replace("'CUDA:0'", _device()).replace('"CUDA:0"', _device())
    namespace = {"__name__": label}
    exec(compile(code, label, "exec"), namespace)
    monkeypatch.setattr(SafetensorsStreamer, "get_tensors", original)
    assert sorted(yielded) == sorted(expected), f"{label} did not stream every tensor once"
    got = namespace.get("tensors")
    if isinstance(got, dict):
        assert got.keys() == expected.keys()
        for name, t in got.items():
            assert_matches(name, describe(t.cpu()), expected[name])


def test_spec_streaming_examples_with_uris(store, checkpoint, monkeypatch):
    examples, _ = streamer_examples()
    assert len(examples) >= 3
    uris = store.upload(checkpoint)
    for i, code in enumerate(examples):
        placeholders = list(dict.fromkeys(re.findall(r'"(/path/to/[^"]+)"', code)))
        assert placeholders, f"example {i} names no file"
        used = list(range(len(placeholders)))
        for placeholder, j in zip(placeholders, used):
            code = code.replace(f'"{placeholder}"', repr(uris[j]))
        expected = reference_all([checkpoint[j] for j in used])
        _run_example(code, f"usage.md example {i} ({store.scheme}://)", expected, monkeypatch)


def _spec_object_uris():
    """The object storage paths the spec's snippets and text use, by scheme."""
    text = spec_path().read_text()
    found = {}
    for block in python_blocks(text):
        for m in re.finditer(r'file_path = "((s3|gs|az)://[^"]+)"', block):
            found.setdefault(m.group(2), m.group(0))
    for m in re.finditer(r"`((gs)://[^`\s]+\.safetensors)`", text):
        found.setdefault("gs", f'file_path = "{m.group(1)}"')
    return found


def test_spec_names_a_path_for_every_scheme():
    assert sorted(_spec_object_uris()) == sorted(SCHEMES)


def test_spec_object_storage_snippets_verbatim(store, checkpoint, monkeypatch):
    snippets = _spec_object_uris()
    line = snippets[store.scheme]
    uri = re.search(r'"([^"]+)"', line).group(1)
    bucket, key = uri.split("://", 1)[1].split("/", 1)
    store.create_bucket(bucket)
    store.bucket = bucket
    store.put_key(key, checkpoint[0].read_bytes())

    examples, _ = streamer_examples()
    first = examples[0]
    assert 'file_path = "/path/to/file.safetensors"' in first
    code = first.replace('file_path = "/path/to/file.safetensors"', line)
    _run_example(code, f"usage.md example 0 with {uri}", reference_all([checkpoint[0]]),
                 monkeypatch)


def test_spec_examples_name_files_only_by_placeholder():
    """Guard for the substitution above: the spec's streaming examples name
    files only as /path/to/... placeholders."""
    examples, _ = streamer_examples()
    for code in examples:
        assert not re.search(r'"(s3|gs|az)://', code)

