"""Backend routing follows the KV cache's device, and the NPU path fails clearly where it cannot run.

No NPU exists here: "npu tensors" are host buffers whose TensorView says device "npu", so the
routing and the native NPU entry are exercised up to the point where liblmcache_ascend_npu.so (not
built on this machine) would be loaded. Nothing may be written on any of these paths.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

import lmcache_ascend.ops as ops
import lmcache_ascend.transfer as transfer
from lmcache_ascend import _tensors
from lmcache_ascend._native import transfer as native_transfer
from lmcache_ascend._tensors import as_view
from lmcache_ascend.layouts import describe_chunk, describe_paged
from lmcache_ascend.transfer import CPU, GATHER, NPU, SCATTER, backend_for

NB, BS, NH, HS, NT, L = 4, 4, 2, 16, 6, 2


def on_npu(array):
    """A host buffer presented as NPU memory (the routing only reads the device type)."""
    return dataclasses.replace(as_view(array, "test tensor", writable=True), device="npu")


def world():
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((2, NB, BS, NH, HS)).astype(np.float16) for _ in range(L)]
    chunk = rng.standard_normal((2, L, NT, NH * HS)).astype(np.float16)
    slots = np.array([5, 6, -1, 0, 1, 15], dtype=np.int64)
    return layers, chunk, slots


@pytest.mark.parametrize("kv, chunks, slots, expected", [
    (CPU, [CPU], CPU, CPU),
    (CPU, [CPU, CPU], CPU, CPU),
    (NPU, [CPU], CPU, NPU),
    (NPU, [CPU, CPU], NPU, NPU),
    (NPU, [NPU], NPU, NPU),
    (NPU, [NPU], CPU, NPU),
])
def test_backend_follows_the_kv_cache(kv, chunks, slots, expected):
    assert backend_for(kv, chunks, slots) == expected


@pytest.mark.parametrize("kv, chunks, slots, message", [
    (NPU, [CPU, NPU], CPU, r"memory objects: mixes devices \['cpu', 'npu'\]"),
    (CPU, [NPU], CPU, "memory object: is on device 'npu' but the KV cache"),
    (CPU, [CPU, NPU], CPU, "memory object 1: is on device 'npu'"),
    (CPU, [CPU], NPU, r"pass slot_mapping.cpu\(\)"),
    (NPU, ["xpu"], CPU, "memory object: is on device 'xpu'"),
    (NPU, [CPU], "meta", "slot_mapping: is on device 'meta'"),
    ("meta", [CPU], CPU, "kv_caches: is on device 'meta'"),
    ("cuda", [CPU], CPU, r"kv_caches: is on device 'cuda'.*\(npu\)"),
])
def test_device_mixes_are_rejected_by_name(kv, chunks, slots, message):
    with pytest.raises(ValueError, match=message):
        backend_for(kv, chunks, slots)


def test_npu_cache_reaches_the_native_entry_and_explains_the_missing_backend(monkeypatch):
    layers, chunk, slots = world()
    before = chunk.copy()
    streams = []
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: streams.append(1) or 0x1234)
    paged = describe_paged([on_npu(t) for t in layers], "flash_attn")
    assert paged.device == NPU
    for fused in (None, True, False):
        with pytest.raises(RuntimeError, match="built without the Ascend backend") as info:
            transfer.transfer_kv(paged, [(describe_chunk(chunk, "KV_2LTD", writable=True), 0, NT)], slots, GATHER,
                                 fused=fused)
        message = str(info.value)
        assert "liblmcache_ascend_npu.so" in message and "ASCEND_HOME_PATH" in message
        assert "reinstall lmcache-ascend-core from source" in message
    assert len(streams) == 3  # the stream is looked up for npu transfers
    np.testing.assert_array_equal(chunk, before)


def test_npu_errors_in_arguments_come_before_the_backend(monkeypatch):
    layers, chunk, slots = world()
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: pytest.fail("stream looked up before the checks"))
    paged = describe_paged([on_npu(t) for t in layers], "flash_attn")
    wrong_dtype = chunk.astype(np.float32)
    with pytest.raises(TypeError, match="memory object: dtype float32 differs"):
        transfer.transfer_kv(paged, [(describe_chunk(wrong_dtype, "KV_2LTD"), 0, NT)], slots, SCATTER)
    npu_chunk = describe_chunk(on_npu(chunk), "KV_2LTD")
    host_chunk = describe_chunk(chunk, "KV_2LTD")
    with pytest.raises(ValueError, match="mixes devices"):
        transfer.transfer_kv(paged, [(host_chunk, 0, 3), (npu_chunk, 3, NT)], slots, SCATTER)


def test_ops_surface_routes_npu_caches(monkeypatch):
    layers, chunk, slots = world()
    before = [t.copy() for t in layers]
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: 0x1234)
    key_value = torch.from_numpy(chunk)
    with pytest.raises(RuntimeError, match="built without the Ascend backend"):
        ops.multi_layer_kv_transfer(key_value, [on_npu(t) for t in layers], torch.from_numpy(slots), "npu:0",
                                    NB * BS, 0, 1, BS)  # H2D = retrieve into the (pretend) NPU cache
    for a, b in zip(before, layers):
        np.testing.assert_array_equal(a, b)


def test_cpu_transfers_never_look_up_an_npu_stream(monkeypatch):
    layers, chunk, slots = world()
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: pytest.fail("npu stream looked up for cpu tensors"))
    paged = describe_paged(layers, "flash_attn")
    transfer.transfer_kv(paged, [(describe_chunk(chunk, "KV_2LTD", writable=True), 0, NT)], slots, GATHER)
    token, slot = 5, 15
    np.testing.assert_array_equal(chunk[0, 1, token], layers[1][0, slot // BS, slot % BS].reshape(-1))


def test_current_npu_stream_reads_torch_npu(monkeypatch):
    class Stream:
        npu_stream = 0xABC

    class FakeNpu:
        @staticmethod
        def current_stream():
            return Stream()

    monkeypatch.setattr(torch, "npu", FakeNpu, raising=False)
    assert _tensors.current_npu_stream() == 0xABC


def test_current_npu_stream_without_torch_npu(monkeypatch):
    monkeypatch.delattr(torch, "npu", raising=False)
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` fail
    with pytest.raises(RuntimeError, match="torch_npu cannot be imported"):
        _tensors.current_npu_stream()


def test_npu_library_is_looked_up_next_to_the_cpu_library():
    path = native_transfer.npu_library_path()
    assert path.endswith("/lmcache_ascend/_native/liblmcache_ascend_npu.so")


def test_block_op_routes_an_npu_cache_to_the_npu_and_writes_nothing_here(monkeypatch):
    """LMCache's MP block op on an NPU KV cache goes to the NPU entry (here: a build without it)."""
    from types import SimpleNamespace

    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: 0x1234)

    layers, chunk, _ = world()
    objects = [np.zeros((2, L, 8, NH * HS), dtype=np.float16)]
    before = [o.copy() for o in objects]
    desc = SimpleNamespace(nl=L, nb=NB, bs=BS, nh=NH, hs=HS, element_size=2, block_stride_elems=0, dtype=None)
    with pytest.raises(RuntimeError, match="built without the Ascend backend"):
        ops.multi_layer_block_kv_transfer([on_npu(t) for t in layers], objects, [1, 3], "npu", 1, desc, 8, 1, 0)
    assert all((a == b).all() for a, b in zip(objects, before))


def test_records_on_an_npu_stream_need_the_npu_library():
    with pytest.raises(RuntimeError, match="built without the Ascend backend"):
        ops.record_event_on_stream(0x1, "store", "s", {}, {})
    assert ops.drain_recorded_events() == []
