"""LMCache 0.5.6's own torch fallback agrees with us wherever it supports the layout.

The fallback (lmcache.v1.platform.torch_ops.mem_kernels) handles flash-attn (1), flashinfer (2)
and MLA (3) in multi_layer_kv_transfer, non-HND formats in single_layer_kv_transfer, and the two
flash ops (without skipping negative slots: tested with holes only where it skips them).
"""
from __future__ import annotations

import os

import pytest
import torch

from kvref import same
from ops_cases import NB, BS, HS, NT, paged_arg, ops_case

if os.environ.get("LMCACHE_ASCEND_REQUIRE_LMCACHE") == "1":
    import lmcache.lmcache_native as native
    from lmcache.v1.platform.torch_ops import mem_kernels as fallback
else:
    native = pytest.importorskip("lmcache.lmcache_native")
    fallback = pytest.importorskip("lmcache.v1.platform.torch_ops.mem_kernels")

import lmcache_ascend.ops as ops

D2H, H2D = native.TransferDirection.D2H, native.TransferDirection.H2D
FORMATS = {1: native.EngineKVFormat.NL_X_TWO_NB_BS_NH_HS, 2: native.EngineKVFormat.NL_X_NB_TWO_BS_NH_HS,
           3: native.EngineKVFormat.NL_X_NB_BS_HS}


@pytest.mark.parametrize("skip", [0, 9])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_multi_layer_matches_fallback(fmt, skip):
    _, layers, slots, kv = ops_case(fmt, torch.float16, seed=21)
    ptrs = paged_arg(fmt, layers, "addresses")
    ours, theirs = kv.clone(), kv.clone()
    args = ("cpu", NB * BS)
    ops.multi_layer_kv_transfer(ours, ptrs, slots, *args, D2H, FORMATS[fmt], BS, HS, skip)
    fallback.multi_layer_kv_transfer(theirs, ptrs, slots, torch.device("cpu"), NB * BS, D2H, FORMATS[fmt],
                                     BS, HS, skip)
    assert same(ours, theirs)

    # retrieve the gathered chunk into two fresh caches, one per implementation
    _, a, _, _ = ops_case(fmt, torch.float16, seed=22)
    _, b, _, _ = ops_case(fmt, torch.float16, seed=22)
    ops.multi_layer_kv_transfer(ours, paged_arg(fmt, a, "addresses"), slots, *args, H2D, FORMATS[fmt], BS, HS, skip)
    fallback.multi_layer_kv_transfer(theirs, paged_arg(fmt, b, "addresses"), slots, torch.device("cpu"), NB * BS,
                                     H2D, FORMATS[fmt], BS, HS, skip)
    assert all(same(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("token_major", [False, True])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_single_layer_matches_fallback(fmt, token_major):
    _, layers, slots, _ = ops_case(fmt, torch.bfloat16, seed=5)
    layer = layers[0]
    width = layer.shape[-1] if fmt == 3 else layer.shape[-2] * layer.shape[-1]
    shape = (NT, width) if fmt == 3 else ((NT, 2, width) if token_major else (2, NT, width))
    ours, theirs = torch.zeros(shape, dtype=layer.dtype), torch.zeros(shape, dtype=layer.dtype)
    ops.single_layer_kv_transfer(ours, layer, slots, D2H, FORMATS[fmt], token_major)
    fallback.single_layer_kv_transfer(theirs, layer, slots, D2H, FORMATS[fmt], token_major)
    assert same(ours, theirs)
    a, b = layer.clone(), layer.clone()
    ops.single_layer_kv_transfer(ours * 2, a, slots, H2D, FORMATS[fmt], token_major)
    fallback.single_layer_kv_transfer(theirs * 2, b, slots, H2D, FORMATS[fmt], token_major)
    assert same(a, b)


def test_flash_ops_match_fallback():
    _, layers, slots, kv = ops_case(16, torch.float16, seed=8)
    slots = slots[slots >= 0]  # the fallback's flash ops do not skip negative slots
    kv = kv[:, :, : slots.numel()].contiguous()
    ours, theirs = kv.clone(), kv.clone()
    for i, (k, v) in enumerate(layers):
        ops.load_and_reshape_flash(ours, k, v, slots, i)
        fallback.load_and_reshape_flash(theirs, k, v, slots, i)
    assert same(ours, theirs)
    _, a, _, _ = ops_case(16, torch.float16, seed=9)
    _, b, _, _ = ops_case(16, torch.float16, seed=9)
    for i in range(len(layers)):
        ops.reshape_and_cache_back_flash(ours, *a[i], slots, i)
        fallback.reshape_and_cache_back_flash(theirs, *b[i], slots, i)
    assert all(same(x, y) for x, y in zip(a, b))
