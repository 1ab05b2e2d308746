"""When the memory behind a tensor goes back to the library: owned=True on the
garbage collection of the last tensor viewing it, owned=False when the
iteration advances; never twice too early, never leaked."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from runai_model_streamer import SafetensorsStreamer, _native
from conftest import assert_matches, describe, reference_all, tensor_bytes, write_raw_file


class Recorder:
    """Stands in for the cffi lib: forwards every call, records the tokens
    delivered by ms_stream_next (with their raw addresses) and released."""

    def __init__(self, lib, ffi):
        self._lib = lib
        self._ffi = ffi
        self.delivered = {}  # token -> (address, nbytes)
        self.released = []

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def ms_stream_next(self, handle, out, max_, n, timeout_ms, err, err_len):
        rc = self._lib.ms_stream_next(handle, out, max_, n, timeout_ms, err, err_len)
        if rc == _native.MS_OK:
            for i in range(n[0]):
                addr = int(self._ffi.cast("uintptr_t", out[i].data))
                self.delivered[int(out[i].token)] = (addr, int(out[i].nbytes))
        return rc

    def ms_release(self, token):
        self.released.append(int(token))
        return self._lib.ms_release(token)


@pytest.fixture
def recorder(monkeypatch):
    gc.collect()  # releases left over from earlier tests go to the real lib
    ffi, lib = _native.load()
    rec = Recorder(lib, ffi)
    monkeypatch.setattr(_native._state, "lib", rec)
    yield rec
    gc.collect()


@pytest.fixture
def equal_tensors(tmp_path) -> Path:
    return write_raw_file(tmp_path / "eq.safetensors", [
        (f"t{i}", "F32", [64], tensor_bytes(torch.full((64,), float(i)))) for i in range(6)
    ] + [("empty", "F32", [0], b"")])


def test_owned_true_releases_when_the_last_view_dies(recorder, equal_tensors):
    with SafetensorsStreamer() as s:
        s.stream_file(str(equal_tensors))
        tensors = dict(s.get_tensors())
    gc.collect()
    assert len(recorder.delivered) == 7
    empty_token = [t for t, (_, n) in recorder.delivered.items() if n == 0]
    # Only the empty tensor's memory went back: the others are held by the caller.
    assert sorted(set(recorder.released)) == empty_token
    t3 = tensors.pop("t3")
    view = t3[10:12]  # a view keeps the memory alive too
    del t3
    gc.collect()
    assert len(set(recorder.released)) == 1
    assert torch.equal(view, torch.full((2,), 3.0))
    tensors.clear()
    gc.collect()
    assert len(set(recorder.released)) == 6
    del view
    gc.collect()
    assert set(recorder.released) == set(recorder.delivered)


def test_owned_false_releases_as_the_iteration_advances(recorder, equal_tensors):
    ref = reference_all([equal_tensors])
    with SafetensorsStreamer() as s:
        s.stream_file(str(equal_tensors), owned=False)
        it = s.get_tensors()
        earlier = []
        for _ in range(4):
            name, t = next(it)
            assert_matches(name, describe(t), ref[name])
            if t.numel():
                token = next(k for k, (a, n) in recorder.delivered.items() if a == t.data_ptr())
                assert token not in recorder.released, f"{name} released while current"
                earlier.append(token)
            # Every tensor yielded before this one has been given back.
            assert set(earlier[:-1]) <= set(recorder.released)
            del t
        assert len(earlier) >= 3
        assert earlier[-1] not in recorder.released
    # close(): everything delivered went back, including the unconsumed ones.
    gc.collect()
    assert set(recorder.released) == set(recorder.delivered)


@pytest.mark.parametrize("owned", [True, False])
def test_nothing_leaks_when_the_loop_is_abandoned(recorder, tmp_path, owned):
    path = write_raw_file(tmp_path / "many.safetensors", [
        (f"t{i}", "I32", [16], tensor_bytes(torch.arange(16, dtype=torch.int32) + i))
        for i in range(200)
    ])
    with SafetensorsStreamer() as s:
        s.stream_file(str(path), owned=owned)
        for i, (name, t) in enumerate(s.get_tensors()):
            if i == 5:
                break
        del t
    gc.collect()
    assert recorder.delivered, "nothing was delivered"
    assert set(recorder.released) == set(recorder.delivered)


@pytest.mark.parametrize("mode", ["buffered", "direct", "mmap", "auto"])
def test_unaligned_addresses_are_copied(recorder, tmp_path, set_env, mode):
    """An odd-sized U8 tensor first puts the F32/I64 tensors after it at odd
    file offsets; wherever the library places them, every tensor handed out
    is aligned, and exactly the misplaced ones were copied. Where misaligned
    views are safe (streamer.MISALIGNED_VIEWS_OK: x86-64) nothing is copied
    and each tensor sits where the library placed it."""
    from runai_model_streamer.streamer import MISALIGNED_VIEWS_OK

    f32 = torch.arange(6, dtype=torch.float32)
    i64 = torch.arange(5, dtype=torch.int64) * 1000003
    path = write_raw_file(tmp_path / "odd.safetensors", [
        ("odd", "U8", [3], b"\x01\x02\x03"),
        ("f32", "F32", [2, 3], tensor_bytes(f32)),
        ("i64", "I64", [5], tensor_bytes(i64)),
        ("f16", "F16", [3], tensor_bytes(torch.ones(3, dtype=torch.float16))),
    ], pad=True)
    set_env(MODEL_STREAMER_READ_MODE=mode)
    ref = reference_all([path])
    with SafetensorsStreamer() as s:
        s.stream_file(str(path))
        got = {}
        addrs = {}
        for name, t in s.get_tensors():
            if not MISALIGNED_VIEWS_OK:
                assert t.data_ptr() % t.element_size() == 0, name
            addrs[name] = t.data_ptr()
            got[name] = describe(t)
        copies = s.unaligned_copies
    for name in ref:
        assert_matches(name, got[name], ref[name])
    sizes = {"odd": 1, "f32": 4, "i64": 8, "f16": 2}
    misplaced = 0
    # Match the raw deliveries to tensors by size (all sizes differ here).
    nbytes = {"odd": 3, "f32": 24, "i64": 40, "f16": 6}
    for token, (addr, n) in recorder.delivered.items():
        name = next(k for k, v in nbytes.items() if v == n)
        if addr % sizes[name]:
            misplaced += 1
        if MISALIGNED_VIEWS_OK:
            assert addrs[name] == addr, name  # handed out in place
    if MISALIGNED_VIEWS_OK:
        assert copies == 0
        if mode == "mmap":
            assert misplaced == 3
        return
    assert copies == misplaced
    if mode == "mmap":
        # A mapping keeps file offsets: 3 bytes in, f32, i64 and f16 are all odd.
        assert copies == 3
