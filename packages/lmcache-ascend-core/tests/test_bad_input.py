"""Every rejected input raises an error naming the argument and leaves the destination untouched."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import lmcache_ascend.ops as ops
from kvref import same
from lmcache_ascend.layouts import describe_chunk, describe_paged
from lmcache_ascend.transfer import GATHER, transfer_kv
from ops_cases import BS, HS, NB, NT, ops_case

H2D, D2H = 0, 1
CPU = "cpu"


def snapshot(obj):
    return [t.clone() for layer in obj for t in (layer if isinstance(layer, tuple) else (layer,))] \
        if isinstance(obj, list) else obj.clone()


def unchanged(before, obj) -> bool:
    if isinstance(obj, list):
        now = [t for layer in obj for t in (layer if isinstance(layer, tuple) else (layer,))]
        return all(same(a, b) for a, b in zip(before, now))
    return same(before, obj)


def bad_slot_at_end(slots):
    bad = slots.clone()
    bad[-1] = NB * BS  # one past the last slot: every earlier token would be copied first
    return bad


# (name, direction, callable(kv, layers, slots), exception, message fragment)
CASES = [
    ("slot out of range, store", D2H,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, bad_slot_at_end(s), CPU, NB * BS, D2H, 1, BS),
     IndexError, f"slot_mapping[{NT - 1}] = {NB * BS}"),
    ("slot out of range, retrieve", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, bad_slot_at_end(s), CPU, NB * BS, H2D, 1, BS),
     IndexError, "out of range"),
    ("float slots", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s.float(), CPU, NB * BS, H2D, 1, BS),
     TypeError, "slot_mapping: dtype float32"),
    ("2-D slots", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s.view(2, -1), CPU, NB * BS, H2D, 1, BS),
     ValueError, "slot_mapping: expected a 1-D"),
    ("slot mapping shorter than the chunk", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s[:-1], CPU, NB * BS, H2D, 1, BS),
     IndexError, f"outside slot_mapping of {NT - 1} tokens"),
    ("slot mapping longer than the chunk", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, torch.cat([s, s[:1]]), CPU, NB * BS, H2D, 1, BS),
     ValueError, f"slot_mapping: has {NT + 1} slots but key_value holds {NT} tokens"),
    ("dtype mismatch", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, [t.view(torch.float16) for t in L], s, CPU, NB * BS, H2D, 1, BS),
     TypeError, "dtype bfloat16 differs from the KV cache dtype float16"),
    ("wrong layer count", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L[:-1], s, CPU, NB * BS, H2D, 1, BS),
     ValueError, "key_value_ptrs has 2 tensors"),
    ("unknown format", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s, CPU, NB * BS, H2D, 99, BS),
     ValueError, "engine_kv_format=99"),
    ("bad direction", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s, CPU, NB * BS, 5, 1, BS),
     ValueError, "direction=5"),
    ("page_buffer_size beyond the tensors", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s, CPU, 2 * NB * BS, H2D, 1, BS),
     ValueError, "each paged tensor holds"),
    ("missing block_size", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s, CPU, NB * BS, H2D, 1),
     ValueError, "block_size=0 is required"),
    ("null pointer", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, torch.zeros(3, dtype=torch.int64), s, CPU, NB * BS, H2D, 1, BS),
     ValueError, "null address"),
    ("device mismatch", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s, "npu:0", NB * BS, H2D, 1, BS),
     ValueError, "paged_memory_device=npu:0"),
    ("hidden size mismatch", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv[..., :-2], L, s, CPU, NB * BS, H2D, 1, BS),
     ValueError, "key_value's last dimension or page_buffer_size does not match"),
    ("MLA object for a K/V cache", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv[:1], L, s, CPU, NB * BS, H2D, 1, BS),
     ValueError, "key_value: format KV_2LTD has 2 K/V plane(s)"),
    ("HND without head_size", H2D,
     lambda kv, L, s: ops.multi_layer_kv_transfer(kv, L, s, CPU, NB * BS, H2D, 6, BS),
     ValueError, "head_size=0 is required"),
]


@pytest.mark.parametrize("name,direction,call,exc,fragment", CASES, ids=[c[0] for c in CASES])
def test_rejected_and_untouched(name, direction, call, exc, fragment):
    _, layers, slots, _ = ops_case(1)
    kv = torch.randn(2, 3, NT, 2 * HS).to(torch.bfloat16)
    before = snapshot(kv if direction == D2H else layers)
    with pytest.raises(exc) as info:
        call(kv, layers, slots)
    assert fragment in str(info.value)
    assert unchanged(before, kv if direction == D2H else layers)


def test_paged_tensor_with_strided_head_dim_is_described_in_the_error():
    layer = torch.zeros(2, NB, BS, HS, 2).transpose(-1, -2)  # head_dim stride 2
    with pytest.raises(ValueError, match=r"kv_caches\[0\].*strides.*head_dim must be contiguous"):
        describe_paged([layer], "flash_attn")


def test_tensor_on_another_device_is_rejected_before_moving():
    layers = [torch.zeros(2, NB, BS, 2, HS, device="meta")]
    chunk = torch.zeros(2, 1, 4, 2 * HS)
    with pytest.raises(ValueError, match="kv_caches: is on device 'meta'"):
        transfer_kv(describe_paged(layers, "flash_attn"), [(describe_chunk(chunk, "KV_2LTD"), 0, 4)],
                    torch.zeros(4, dtype=torch.int64), GATHER)


def test_read_only_buffer_cannot_be_a_gather_destination():
    chunk = np.zeros((2, 1, 4, 8), dtype=np.float16)
    chunk.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|writable"):
        describe_chunk(chunk, "KV_2LTD", writable=True)


def test_unsupported_element_size_is_rejected_by_native_code():
    layers = [torch.zeros(2, 2, 4, 1, 8, dtype=torch.float64)]
    chunk = torch.ones(2, 1, 3, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="element size 8 bytes"):
        transfer_kv(describe_paged(layers, "flash_attn"), [(describe_chunk(chunk, "KV_2LTD"), 0, 3)],
                    torch.arange(3), GATHER)
    assert (chunk == 1).all()


def test_chunk_too_small_for_its_tokens():
    layers = [torch.zeros(2, 4, 4, 1, 8, dtype=torch.float16)]
    chunk = torch.ones(2, 1, 3, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="room for 3 tokens but 5"):
        transfer_kv(describe_paged(layers, "flash_attn"), [(describe_chunk(chunk, "KV_2LTD"), 0, 5)],
                    torch.arange(5), GATHER)
    assert (chunk == 1).all()


@pytest.mark.parametrize("field,value", [("num_blocks", 2 * NB), ("block_stride", 10**9), ("num_heads", 3)])
def test_native_bounds_guard_catches_a_descriptor_larger_than_its_buffer(field, value):
    # The last line of defence: whatever Python hands it, native code checks the descriptor's
    # reach against the buffer's extent before touching memory.
    _, layers, slots, _ = ops_case(1)
    paged = dataclasses.replace(describe_paged(layers, "flash_attn"), **{field: value})
    before = snapshot(layers)
    chunk = torch.ones(2, 3, NT, paged.hidden, dtype=torch.bfloat16)
    with pytest.raises(IndexError, match="layout reaches element"):
        transfer_kv(paged, [(describe_chunk(chunk, "KV_2LTD"), 0, NT)], slots.clamp(max=0), 1)
    assert unchanged(before, layers)
