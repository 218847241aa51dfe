"""lmcache_ascend.ops (LMCache 0.5 cuda_ops names) and lmcache_ascend.c_ops (LMCache 0.3.x)."""
from __future__ import annotations

import inspect

import pytest
import torch

import lmcache_ascend.c_ops as c_ops
import lmcache_ascend.ops as ops
from kvref import hidden, make_layer, planes, ref_gather, ref_scatter, same
from test_transfer_layouts import random_slots

H2D, D2H = 0, 1  # LMCache's TransferDirection values
# EngineKVFormat value -> oracle layout
FORMAT_LAYOUTS = {1: "flash_attn", 2: "flashinfer", 3: "mla", 5: "mla", 6: "hnd", 7: "flashinfer_hnd",
                  10: "packed_hnd", 11: "packed_nhd", 12: "packed_hnd", 13: "packed_nhd", 16: "separate_kv"}
NL, NB, BS, NH, HS, NT = 3, 9, 16, 2, 32, 70


def setup(fmt: int, dtype=torch.bfloat16, seed=0):
    layout = FORMAT_LAYOUTS[fmt]
    gen = torch.Generator().manual_seed(seed + fmt)
    layers = [make_layer(layout, NB, BS, NH, HS, dtype, gen) for _ in range(NL)]
    slots = random_slots(NT, NB * BS, gen, torch.int64)
    kv = torch.zeros(planes(layout), NL, NT, hidden(layout, NH, HS), dtype=dtype)
    return layout, layers, slots, kv


def paged_arg(fmt: int, layers, mode: str):
    tensors = [t for layer in layers for t in (layer if isinstance(layer, tuple) else (layer,))]
    if fmt == 5:  # SGLang MLA: [NB*BS, 1, D] per layer
        tensors = [t.view(NB * BS, 1, -1) for t in tensors]
    if mode == "addresses":
        return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    return tensors


@pytest.mark.parametrize("mode", ["tensors", "addresses"])
@pytest.mark.parametrize("fmt", sorted(FORMAT_LAYOUTS))
def test_multi_layer_kv_transfer_every_format(fmt, mode):
    layout, layers, slots, kv = setup(fmt)
    ptrs = paged_arg(fmt, layers, mode)
    ops.multi_layer_kv_transfer(kv, ptrs, slots, torch.device("cpu"), NB * BS, D2H, fmt,
                                block_size=BS, head_size=HS)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))

    _, fresh, _, _ = setup(fmt, seed=100)
    expected = ref_scatter(layout, kv, slots, fresh)
    ops.multi_layer_kv_transfer(kv, paged_arg(fmt, fresh, mode), slots, "cpu", NB * BS, H2D, fmt,
                                block_size=BS, head_size=HS)
    assert all(same(a, b) for a, b in zip(fresh, expected))


@pytest.mark.parametrize("skip", [0, 5, 69, 70])
def test_multi_layer_skip_prefix(skip):
    layout, layers, slots, kv = setup(1)
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

    layout, layers, slots, kv = setup(2, torch.float16)
    ops.multi_layer_kv_transfer(kv, layers, slots.int(), "cpu", NB * BS, Enum(D2H), Enum(2), BS)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))


@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("fmt", [1, 2, 3, 6, 7, 12, 13])
def test_single_layer_kv_transfer(fmt, token_major):
    layout, layers, slots, _ = setup(fmt)
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
    layout, layers, slots, kv = setup(16, torch.float16)
    for i, (k, v) in enumerate(layers):
        ops.load_and_reshape_flash(kv, k, v, slots, i)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))
    _, fresh, _, _ = setup(16, torch.float16, seed=9)
    expected = ref_scatter(layout, kv, slots, fresh)
    for i, (k, v) in enumerate(fresh):
        ops.reshape_and_cache_back_flash(kv, k, v, slots, i)
    assert all(same(a, b) for a, b in zip(fresh, expected))


def test_ops_module_exposes_only_ops():
    # LMCache's DeviceOps.bind_native binds every public callable / class of lmcache_ascend.ops.
    public = {n for n in dir(ops) if not n.startswith("_")}
    assert public == {"multi_layer_kv_transfer", "multi_layer_kv_transfer_unilateral", "single_layer_kv_transfer",
                      "load_and_reshape_flash", "reshape_and_cache_back_flash", "alloc_pinned_ptr",
                      "free_pinned_ptr", "alloc_pinned_numa_ptr", "free_pinned_numa_ptr"}
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
    layout, layers, slots, kv = setup(fmt)
    ptrs = torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64)
    c_ops.multi_layer_kv_transfer(kv, ptrs, slots, torch.device("cpu"), NB * BS, True, use_mla)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))
    _, fresh, _, _ = setup(fmt, seed=3)
    expected = ref_scatter(layout, kv, slots, fresh)
    c_ops.multi_layer_kv_transfer(kv, [t for t in fresh], slots, torch.device("cpu"), NB * BS, False, use_mla)
    assert all(same(a, b) for a, b in zip(fresh, expected))


def test_c_ops_unilateral_takes_k_layers_then_v_layers():
    layout, layers, slots, kv = setup(16)
    flat = [k.view(NB * BS, -1) for k, _ in layers] + [v.view(NB * BS, -1) for _, v in layers]
    ptrs = torch.tensor([t.data_ptr() for t in flat], dtype=torch.int64)
    c_ops.multi_layer_kv_transfer_unilateral(kv, ptrs, slots, torch.device("cpu"), NB * BS, True, False)
    assert same(kv, ref_gather(layout, layers, slots, torch.zeros_like(kv)))


@pytest.mark.parametrize("two_major", [False, True])
@pytest.mark.parametrize("token_major", [False, True])
def test_c_ops_single_layer(token_major, two_major):
    layout, layers, slots, _ = setup(1 if two_major else 2)
    layer = layers[0]
    lmc = torch.zeros((NT, 2, NH * HS) if token_major else (2, NT, NH * HS), dtype=layer.dtype)
    c_ops.single_layer_kv_transfer(lmc, layer, slots, True, token_major, two_major)
    as_2ltd = lmc.transpose(0, 1) if token_major else lmc
    empty = torch.zeros(2, 1, NT, NH * HS, dtype=layer.dtype)
    assert same(as_2ltd[:, None], ref_gather(layout, [layer], slots, empty))


def test_c_ops_rejects_non_bool_direction():
    _, layers, slots, kv = setup(1)
    with pytest.raises(ValueError, match="direction"):
        c_ops.multi_layer_kv_transfer(kv, layers, slots, "cpu", NB * BS, 2, False)
