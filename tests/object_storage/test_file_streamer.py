"""FileStreamer over S3 (MinIO), GCS (fake-gcs-server) and Azure Blob
(Azurite) on 127.0.0.1: byte ranges of raw and SafeTensors objects, each
chunk compared byte for byte with the local copy that was uploaded."""

from __future__ import annotations

import random
from typing import Dict, List

import pytest

from runai_model_streamer import (
    RunaiStreamerError,
    RunaiStreamerFileNotFoundError,
    RunaiStreamerInvalidInputException,
    RunaiStreamerMemoryLimitException,
    S3Credentials,
)
from runai_model_streamer.file_streamer import FileChunks, FileStreamer

from conftest import call_with_timeout

from .conftest import make_store

TIMEOUT = 60


def random_chunks(rng: random.Random, file_id: int, uri: str, size: int, n: int) -> FileChunks:
    """n ranges: unordered, overlapping, some empty, a few large."""
    offsets: List[int] = []
    sizes: List[int] = []
    for i in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            off, length = rng.randint(0, size), 0
        elif kind == 1:
            off = rng.randrange(size // 2)
            length = rng.randint(0, size - off)
        elif kind == 2 and i:
            j = rng.randrange(i)
            off, length = offsets[j], sizes[j]
        else:
            off = rng.randrange(size)
            length = min(rng.randint(1, 50000), size - off)
        offsets.append(off)
        sizes.append(length)
    return FileChunks(file_id, uri, offsets, sizes)


def stream_and_check(requests: List[FileChunks], data: Dict[int, bytes], **kwargs) -> Dict[str, int]:
    """Streams requests; every chunk is checked when yielded, and (owned, the
    default) again after the streamer is closed. Returns the stats."""
    expected = {}
    for r in requests:
        for i, (off, n) in enumerate(zip(r.offsets, r.sizes)):
            expected[(r.id, i)] = data[r.id][off:off + n]
    owned = kwargs.get("owned", True)

    def run():
        seen = {}
        with FileStreamer() as fs:
            fs.stream_files(requests, **kwargs)
            for file_id, index, chunk in fs.get_chunks():
                key = (file_id, index)
                assert key in expected and key not in seen, key
                assert tuple(chunk.shape) == (1, len(expected[key]))
                assert chunk.numpy().tobytes() == expected[key], f"{key}: bytes differ"
                seen[key] = chunk if owned else None
            stats = fs.stats()
        assert set(seen) == set(expected)
        if owned:
            for key, chunk in seen.items():
                assert chunk.numpy().tobytes() == expected[key], f"{key} changed after close"
        return stats

    return call_with_timeout(run, TIMEOUT)


@pytest.fixture
def uploaded(store, checkpoint):
    """A raw binary object and two SafeTensors objects in the store:
    (store, {id: uri}, {id: bytes})."""
    blob = random.Random(3).randbytes(1_300_001)
    uris = {0: store.put("blobs/raw.bin", blob)}
    data = {0: blob}
    for i, p in enumerate(checkpoint[:2], start=1):
        uris[i] = store.upload([p], under="ckpt")[0]
        data[i] = p.read_bytes()
    return store, uris, data


@pytest.mark.parametrize("limit,owned", [(-1, True), (0, False), (0, True), (400_000, False)])
def test_ranges_of_objects(uploaded, set_env, limit, owned):
    store, uris, data = uploaded
    set_env(RUNAI_STREAMER_CHUNK_BYTESIZE="64KiB")
    rng = random.Random(11)
    requests = [random_chunks(rng, i, uris[i], len(data[i]), 40) for i in sorted(uris)]
    largest = max(r.max_chunk_size() for r in requests)
    memory_limit = max(limit, largest) if limit > 0 else limit
    stats = stream_and_check(requests, data, memory_limit=memory_limit, owned=owned)
    assert stats["tensors_delivered"] == sum(len(r.sizes) for r in requests)
    assert stats["header_bytes_read"] == 0


def test_whole_object_in_chunks(uploaded, set_env):
    store, uris, data = uploaded
    set_env(RUNAI_STREAMER_MEMORY_LIMIT="0", RUNAI_STREAMER_CHUNK_BYTESIZE="128KiB")
    sizes = [100_000] * 13 + [1]
    stats = stream_and_check([FileChunks.contiguous(7, uris[0], 0, sizes)], {7: data[0]},
                             owned=False)
    assert stats["bytes_read"] == len(data[0])
    assert stats["arena_bytes"] <= 100_000 + 3 * 4096


def test_list_files(uploaded):
    store, uris, data = uploaded
    store.put("ckpt/config.json", b"{}")
    fs = FileStreamer()
    listed = dict(fs.list_files(store.uri()))
    assert listed[uris[0]] == len(data[0])
    assert listed[store.uri("ckpt/config.json")] == 2
    assert len(listed) == 4
    assert dict(fs.list_files(store.uri("ckpt"), allow_patterns=["*.safetensors"])) == {
        uris[1]: len(data[1]), uris[2]: len(data[2])}
    assert dict(fs.list_files(store.uri(), ignore_patterns=["ckpt/*"])) == {uris[0]: len(data[0])}
    assert fs.list_files(store.uri() + "/", is_recursive=False) == []  # only folders there


def test_errors_name_the_object(uploaded):
    store, uris, data = uploaded
    missing = store.uri("blobs/missing.bin")
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerFileNotFoundError) as e:
            fs.stream_files([FileChunks(0, uris[0], [0], [10]), FileChunks(1, missing, [0], [10])])
        assert missing in str(e.value)
        with pytest.raises(RunaiStreamerInvalidInputException) as e:
            fs.stream_files([FileChunks(0, uris[0], [len(data[0]) - 5], [6])])
        assert uris[0] in str(e.value) and "range 0" in str(e.value)
        with pytest.raises(RunaiStreamerMemoryLimitException, match=uris[0]):
            fs.stream_files([FileChunks(0, uris[0], [0, 10], [10, 1000])], memory_limit=999)
        with pytest.raises(RunaiStreamerInvalidInputException, match="multiple source types"):
            fs.stream_files([FileChunks(0, uris[0], [0], [1]), FileChunks(1, "/tmp/x", [0], [1])])


def test_s3_credentials_override_the_environment(request, monkeypatch):
    store = make_store(request, "s3")
    srv = store.server
    blob = random.Random(5).randbytes(300_000)
    uri = store.put("creds/blob.bin", blob)
    # Nothing usable in the environment: the explicit credentials do it all.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("MODEL_STREAMER_MAX_RETRIES", "0")
    creds = S3Credentials(access_key_id=srv["access_key"], secret_access_key=srv["secret_key"],
                          region_name=srv["region"], endpoint=srv["endpoint"])
    chunks = FileChunks(0, uri, [299_990, 0, 1000], [10, 300_000, 0])
    stream_and_check([chunks], {0: blob}, credentials=creds)
    with FileStreamer() as fs:
        with pytest.raises(RunaiStreamerError):
            fs.list_files(store.uri())  # the environment alone points nowhere
        fs.stream_files([chunks], credentials=creds)
        assert len(list(fs.get_chunks())) == 3
        # list_files uses the credentials of the last stream_files call.
        assert fs.list_files(store.uri()) == [(uri, len(blob))]
