"""lmcache_ascend.ops (LMCache 0.5 cuda_ops names) and lmcache_ascend.c_ops (LMCache 0.3.x)."""
from __future__ import annotations

import ctypes
import importlib.util
import inspect
import os

import pytest
import torch

import lmcache_ascend.c_ops as c_ops
import lmcache_ascend.ops as ops
from kvref import hidden, planes, ref_gather, ref_scatter, same
from ops_cases import BS, D2H, FORMAT_LAYOUTS, H2D, HS, NB, NH, NT, ops_case, paged_arg


@pytest.mark.parametrize("mode", ["tensors", "addresses"])
@pytest.mark.parametrize("fmt", sorted(FORMAT_LAYOUTS))
def test_multi_layer_kv_transfer_every_format(fmt, mode):
    layout, layers, slots, kv = ops_case(fmt)
    ptrs = paged_arg(fmt, layers, mode)
    ops.multi_layer_kv_transfer(kv, ptrs, slots, torch.device("cpu"), NB * BS, D2H, fmt,
                                block_size=BS, head_size=HS)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))

    _, fresh, _, _ = ops_case(fmt, seed=100)
    expected = ref_scatter(layout, kv, slots, fresh)
    ops.multi_layer_kv_transfer(kv, paged_arg(fmt, fresh, mode), slots, "cpu", NB * BS, H2D, fmt,
                                block_size=BS, head_size=HS)
    assert all(same(a, b) for a, b in zip(fresh, expected))


@pytest.mark.parametrize("skip", [0, 5, 69, 70])
def test_multi_layer_skip_prefix(skip):
    layout, layers, slots, kv = ops_case(1)
    sentinel = torch.full_like(kv, 7)
    out = sentinel.clone()
    ops.multi_layer_kv_transfer(out, layers, slots, "cpu", NB * BS, D2H, 1, block_size=BS,
                                skip_prefix_n_tokens=skip)
    assert same(out, ref_gather(layout, layers, slots, sentinel, skip))


def test_multi_layer_int32_slots_and_enum_like_arguments():
    class Enum:  # pybind11 enums are not IntEnums: only int() works on them
        def __init__(self, v):
            self.v = v

        def __int__(self):
            return self.v

    layout, layers, slots, kv = ops_case(2, torch.float16)
    ops.multi_layer_kv_transfer(kv, layers, slots.int(), "cpu", NB * BS, Enum(D2H), Enum(2), BS)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))


@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("fmt", [1, 2, 3, 6, 7, 12, 13])
def test_single_layer_kv_transfer(fmt, token_major):
    layout, layers, slots, _ = ops_case(fmt)
    layer = layers[0]
    d = hidden(layout, NH, HS)
    if planes(layout) == 1:
        lmc = torch.zeros(NT, d, dtype=layer.dtype)
        as_2ltd = lambda t: t[None, None]  # noqa: E731
    elif token_major:
        lmc = torch.zeros(NT, 2, d, dtype=layer.dtype)
        as_2ltd = lambda t: t.transpose(0, 1)[:, None]  # noqa: E731
    else:
        lmc = torch.zeros(2, NT, d, dtype=layer.dtype)
        as_2ltd = lambda t: t[:, None]  # noqa: E731
    ops.single_layer_kv_transfer(lmc, layer, slots, D2H, fmt, token_major)
    empty = torch.zeros(planes(layout), 1, NT, d, dtype=layer.dtype)
    assert same(as_2ltd(lmc), ref_gather(layout, [layer], slots, empty))

    target = layer.clone()
    expected = ref_scatter(layout, as_2ltd(lmc), slots, [target])[0]
    ops.single_layer_kv_transfer(lmc, target, slots, H2D, fmt, token_major)
    assert same(target, expected)


def test_flash_ops_move_one_layer_of_separate_kv():
    layout, layers, slots, kv = ops_case(16, torch.float16)
    for i, (k, v) in enumerate(layers):
        ops.load_and_reshape_flash(kv, k, v, slots, i)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))
    _, fresh, _, _ = ops_case(16, torch.float16, seed=9)
    expected = ref_scatter(layout, kv, slots, fresh)
    for i, (k, v) in enumerate(fresh):
        ops.reshape_and_cache_back_flash(kv, k, v, slots, i)
    assert all(same(a, b) for a, b in zip(fresh, expected))


def test_ops_module_exposes_only_ops():
    # LMCache's DeviceOps.bind_native binds every public callable / class of lmcache_ascend.ops.
    public = {n for n in dir(ops) if not n.startswith("_")}
    kernels = {"multi_layer_kv_transfer", "multi_layer_kv_transfer_unilateral", "multi_layer_block_kv_transfer",
               "single_layer_kv_transfer", "single_layer_kv_transfer_sgl", "load_and_reshape_flash",
               "reshape_and_cache_back_flash", "batched_memcpy", "lmcache_memcpy_async", "tensor_from_ptr",
               "record_completion_on_stream", "drain_recorded_completions", "record_event_on_stream",
               "drain_recorded_events", "calculate_cdf", "encode_fast_new", "decode_fast_new", "decode_fast_prefsum",
               "rotary_embedding_k_fused", "rotary_embedding_k_fused_strided"}
    memory = {f"{verb}_{kind}_ptr" for verb in ("alloc", "free")
              for kind in ("pinned", "pinned_numa", "numa", "hugepage_pinned", "hugepage_pinned_numa", "shm_pinned")}
    # MP mode's object-group fast paths and their plan types
    fast_paths = {"execute_object_group_transfer", "KernelGroupSpec", "LaunchVar", "BatchStep", "StagingCopy",
                  "execute_direct_copy_transfer", "DirectCopyGroupSpec", "DirectCopyObject", "batch_memcpy_supported",
                  "direct_copy_format_supported"}
    # LMCache's own types, re-exported where LMCache is installed
    lmcache_types = {"EngineKVFormat", "PageBufferShapeDesc", "TransferDirection"} \
        if importlib.util.find_spec("lmcache") else set()
    assert public == kernels | memory | fast_paths | lmcache_types
    # LMCache's worker hands tensors (not pinned copies it cannot make on the CPU) only to a block op
    # whose lmcache_objects_ptrs annotation names Tensor.
    annotation = inspect.signature(ops.multi_layer_block_kv_transfer).parameters["lmcache_objects_ptrs"].annotation
    assert "Tensor" in str(annotation)
    assert list(inspect.signature(ops.multi_layer_kv_transfer).parameters) == [
        "key_value", "key_value_ptrs", "slot_mapping", "paged_memory_device", "page_buffer_size", "direction",
        "engine_kv_format", "block_size", "head_size", "skip_prefix_n_tokens", "block_stride_elems"]
    assert list(inspect.signature(ops.single_layer_kv_transfer).parameters) == [
        "lmc_key_value_cache", "vllm_key_value_cache", "slot_mapping", "direction", "engine_kv_format",
        "token_major"]


# ---- LMCache 0.3.x surface -------------------------------------------------------------------

@pytest.mark.parametrize("use_mla", [False, True])
def test_c_ops_multi_layer(use_mla):
    fmt = 3 if use_mla else 1
    layout, layers, slots, kv = ops_case(fmt)
    ptrs = torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64)
    c_ops.multi_layer_kv_transfer(kv, ptrs, slots, torch.device("cpu"), NB * BS, True, use_mla)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))
    _, fresh, _, _ = ops_case(fmt, seed=3)
    expected = ref_scatter(layout, kv, slots, fresh)
    c_ops.multi_layer_kv_transfer(kv, [t for t in fresh], slots, torch.device("cpu"), NB * BS, False, use_mla)
    assert all(same(a, b) for a, b in zip(fresh, expected))


def test_c_ops_unilateral_takes_k_layers_then_v_layers():
    layout, layers, slots, kv = ops_case(16)
    flat = [k.view(NB * BS, -1) for k, _ in layers] + [v.view(NB * BS, -1) for _, v in layers]
    ptrs = torch.tensor([t.data_ptr() for t in flat], dtype=torch.int64)
    c_ops.multi_layer_kv_transfer_unilateral(kv, ptrs, slots, torch.device("cpu"), NB * BS, True, False)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))


@pytest.mark.parametrize("two_major", [False, True])
@pytest.mark.parametrize("token_major", [False, True])
def test_c_ops_single_layer(token_major, two_major):
    layout, layers, slots, _ = ops_case(1 if two_major else 2)
    layer = layers[0]
    lmc = torch.zeros((NT, 2, NH * HS) if token_major else (2, NT, NH * HS), dtype=layer.dtype)
    c_ops.single_layer_kv_transfer(lmc, layer, slots, True, token_major, two_major)
    as_2ltd = lmc.transpose(0, 1) if token_major else lmc
    empty = torch.zeros(2, 1, NT, NH * HS, dtype=layer.dtype)
    assert same(as_2ltd[:, None], ref_gather(layout, [layer], slots, empty))


def test_c_ops_rejects_non_bool_direction():
    _, layers, slots, kv = ops_case(1)
    with pytest.raises(ValueError, match="direction"):
        c_ops.multi_layer_kv_transfer(kv, layers, slots, "cpu", NB * BS, 2, False)


# ---- the rest of LMCache 0.5's DeviceOps names ------------------------------------------------

def test_completions_and_events_drain_in_record_order():
    ops.drain_recorded_completions(), ops.drain_recorded_events()
    ops.record_completion_on_stream(0, "store", b"a")
    ops.record_completion_on_stream(0, "retrieve", b"b")
    assert ops.drain_recorded_completions() == [("store", b"a"), ("retrieve", b"b")]
    assert ops.drain_recorded_completions() == []
    ops.record_event_on_stream(0, "lookup", "session-1", {"k": "v"}, {"n": 3})
    [(name, session, stamp, strs, ints)] = ops.drain_recorded_events()
    assert (name, session, strs, ints) == ("lookup", "session-1", {"k": "v"}, {"n": 3}) and stamp > 0


def test_record_on_an_npu_stream_without_the_npu_backend_is_an_error():
    with pytest.raises(RuntimeError):
        ops.record_completion_on_stream(0x1234, "store", b"a")
    assert ops.drain_recorded_completions() == []  # nothing recorded for work that cannot be waited for


def test_tensor_from_ptr_views_host_memory_without_copying():
    base = torch.arange(12, dtype=torch.float32)
    view = ops.tensor_from_ptr(base.data_ptr(), (3, 4), torch.float32, "cpu")
    base[5] = 100
    assert view.shape == (3, 4) and view[1, 1] == 100
    with pytest.raises(ValueError, match="ptr"):
        ops.tensor_from_ptr(0, (3, 4), torch.float32, "cpu")


def test_memcpy_ops_copy_and_refuse_mismatched_arguments():
    src, dst = torch.arange(64, dtype=torch.int16), torch.zeros(64, dtype=torch.int16)
    ops.lmcache_memcpy_async(dst.data_ptr(), src.data_ptr(), 32, 0, 0, 64)
    assert torch.equal(dst[:16], src[:16]) and not dst[16:].any()
    ops.lmcache_memcpy_async(dst, src, 128, 1, 0, 64)
    assert torch.equal(dst, src)
    with pytest.raises(ValueError, match="power of two"):
        ops.lmcache_memcpy_async(dst, src, 8, 0, 0, 48)
    with pytest.raises(ValueError, match="fewer than nbytes"):
        ops.lmcache_memcpy_async(dst, src, 256, 0, 0, 64)
    with pytest.raises(TypeError, match="both"):
        ops.lmcache_memcpy_async(dst, src.data_ptr(), 8, 0, 0, 64)
    a, b = torch.zeros(8, dtype=torch.uint8), torch.full((8,), 7, dtype=torch.uint8)
    ops.batched_memcpy([b.data_ptr(), b.data_ptr()], [a.data_ptr(), a.data_ptr() + 4], [2, 3])
    assert a.tolist() == [7, 7, 0, 0, 7, 7, 7, 0]
    with pytest.raises(ValueError, match="sizes"):
        ops.batched_memcpy([b.data_ptr()], [a.data_ptr()], [1, 2])


def test_shared_memory_is_visible_by_name_and_freed():
    from multiprocessing import shared_memory

    name = f"/lmcache_ascend_test_{os.getpid()}"
    ptr = ops.alloc_shm_pinned_ptr(4096, name)
    ctypes.memmove(ptr, b"kv", 2)
    other = shared_memory.SharedMemory(name=name.lstrip("/"))
    try:
        assert bytes(other.buf[:2]) == b"kv"
    finally:
        other.close()
    ops.free_shm_pinned_ptr(ptr, 4096, name)
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name.lstrip("/"))
    with pytest.raises(ValueError, match="alloc_shm_pinned_ptr"):
        ops.free_shm_pinned_ptr(ptr, 4096, name)


@pytest.mark.parametrize("alloc, free", [("alloc_numa_ptr", "free_numa_ptr"),
                                         ("alloc_hugepage_pinned_ptr", "free_hugepage_pinned_ptr"),
                                         ("alloc_hugepage_pinned_numa_ptr", "free_hugepage_pinned_numa_ptr")])
def test_other_host_allocators_give_zeroed_usable_memory(alloc, free):
    ptr = getattr(ops, alloc)(1 << 21, 0)
    view = (ctypes.c_uint8 * (1 << 21)).from_address(ptr)
    assert view[0] == 0 and view[(1 << 21) - 1] == 0
    view[100] = 5
    getattr(ops, free)(ptr, 1 << 21)
    with pytest.raises(ValueError, match=free):
        getattr(ops, free)(ptr, 1 << 21)
