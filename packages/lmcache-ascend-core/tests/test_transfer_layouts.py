"""Every engine layout x direction x dtype x slot dtype, bit-exact against plain torch indexing."""
from __future__ import annotations

import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvref import (LAYOUTS, hidden, make_layer, planes, random_slots, random_tensor, ref_gather, ref_scatter,
                   same)
from lmcache_ascend.layouts import describe_chunk, describe_paged
from lmcache_ascend.transfer import GATHER, SCATTER, transfer_kv

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int8]
SLOT_DTYPES = [torch.int32, torch.int64]


def transfer(layout, layers, chunk, slots, direction, skip=0, fmt=None):
    fmt = fmt or ("KV_MLA_FMT" if planes(layout) == 1 else "KV_2LTD")
    paged = describe_paged(layers, layout)
    view = describe_chunk(chunk, fmt, writable=direction == GATHER)
    transfer_kv(paged, [(view, 0, slots.numel())], slots, direction, skip)


@pytest.mark.parametrize("slot_dtype", SLOT_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_matches_torch(layout, dtype, slot_dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{layout} {dtype} {slot_dtype}".encode()))  # replayable
    nl, nb, bs, nh, hs, nt = 3, 7, 16, 2, 32, 50
    layers = [make_layer(layout, nb, bs, nh, hs, dtype, gen) for _ in range(nl)]
    slots = random_slots(nt, nb * bs, gen, slot_dtype)
    empty = torch.zeros(planes(layout), nl, nt, hidden(layout, nh, hs), dtype=dtype)

    chunk = empty.clone()
    transfer(layout, layers, chunk, slots, GATHER)
    assert same(chunk, ref_gather(layout, layers, slots, empty))

    fresh = [make_layer(layout, nb, bs, nh, hs, dtype, gen) for _ in range(nl)]
    expected = ref_scatter(layout, chunk, slots, fresh)
    transfer(layout, fresh, chunk, slots, SCATTER)
    assert all(same(a, b) for a, b in zip(fresh, expected))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("skip", [0, 1, 17, 50])
def test_skip_prefix_leaves_prefix_alone(layout, skip):
    gen = torch.Generator().manual_seed(skip)
    nl, nb, bs, nh, hs, nt = 2, 5, 16, 1, 64, 50
    layers = [make_layer(layout, nb, bs, nh, hs, torch.float16, gen) for _ in range(nl)]
    slots = random_slots(nt, nb * bs, gen, torch.int64)
    sentinel = random_tensor((planes(layout), nl, nt, hidden(layout, nh, hs)), torch.float16, gen)
    chunk = sentinel.clone()
    transfer(layout, layers, chunk, slots, GATHER, skip)
    assert same(chunk, ref_gather(layout, layers, slots, sentinel, skip))

    expected = ref_scatter(layout, chunk, slots, layers, skip)
    transfer(layout, layers, chunk, slots, SCATTER, skip)
    assert all(same(a, b) for a, b in zip(layers, expected))


@pytest.mark.parametrize("fmt", ["KV_T2D", "KV_2TD"])
@pytest.mark.parametrize("layout", ["flash_attn", "cpu", "separate_kv_hnd"])
def test_single_layer_formats(layout, fmt):
    gen = torch.Generator().manual_seed(3)
    nb, bs, nh, hs, nt = 6, 16, 4, 16, 70
    layer = make_layer(layout, nb, bs, nh, hs, torch.bfloat16, gen)
    slots = random_slots(nt, nb * bs, gen, torch.int32)
    shape = (nt, 2, nh * hs) if fmt == "KV_T2D" else (2, nt, nh * hs)
    chunk = torch.zeros(shape, dtype=torch.bfloat16)
    transfer(layout, [layer], chunk, slots, GATHER, fmt=fmt)
    as_2ltd = (chunk.transpose(0, 1) if fmt == "KV_T2D" else chunk).unsqueeze(1)
    assert same(as_2ltd, ref_gather(layout, [layer], slots, torch.zeros(2, 1, nt, nh * hs, dtype=torch.bfloat16)))


def test_batched_chunks_of_different_lengths_equal_one_big_chunk():
    # LMCache's last chunk of a request is shorter than the others: each chunk has its own strides.
    gen = torch.Generator().manual_seed(11)
    nl, nb, bs, nh, hs = 4, 20, 16, 2, 64
    sizes = [64, 64, 100, 28]
    nt = sum(sizes)
    layers = [make_layer("flash_attn", nb, bs, nh, hs, torch.float16, gen) for _ in range(nl)]
    slots = random_slots(nt, nb * bs, gen, torch.int64)
    paged = describe_paged(layers, "flash_attn")
    chunks = [torch.zeros(2, nl, n, nh * hs, dtype=torch.float16) for n in sizes]
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    refs = [(describe_chunk(c, "KV_2LTD"), bounds[i], bounds[i + 1]) for i, c in enumerate(chunks)]
    transfer_kv(paged, refs, slots, GATHER)
    expected = ref_gather("flash_attn", layers, slots, torch.zeros(2, nl, nt, nh * hs, dtype=torch.float16))
    assert same(torch.cat(chunks, dim=2), expected)
    fresh = [make_layer("flash_attn", nb, bs, nh, hs, torch.float16, gen) for _ in range(nl)]
    want = ref_scatter("flash_attn", expected, slots, fresh)
    transfer_kv(describe_paged(fresh, "flash_attn"), refs, slots, SCATTER)
    assert all(same(a, b) for a, b in zip(fresh, want))


def test_last_partial_chunk_uses_leading_tokens():
    # LMCache's last chunk of a request is often shorter than the memory object it sits in.
    gen = torch.Generator().manual_seed(5)
    layers = [make_layer("cpu", 4, 16, 1, 32, torch.float16, gen) for _ in range(2)]
    slots = torch.arange(10, 40, dtype=torch.int64)
    chunk = torch.zeros(2, 2, 64, 32, dtype=torch.float16)
    transfer_kv(describe_paged(layers, "cpu"), [(describe_chunk(chunk, "KV_2LTD"), 0, 30)], slots, GATHER)
    expected = ref_gather("cpu", layers, slots, torch.zeros(2, 2, 30, 32, dtype=torch.float16))
    assert same(chunk[:, :, :30], expected)
    assert not chunk[:, :, 30:].any()


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    nb=st.integers(1, 9), bs=st.sampled_from([1, 2, 16, 128]), nh=st.integers(1, 3),
    hs=st.sampled_from([1, 3, 8, 64]), nl=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1), fill=st.floats(0.0, 1.0), hole_every=st.integers(1, 7),
)
def test_random_shapes_and_slot_mappings(layout, nb, bs, nh, hs, nl, seed, fill, hole_every):
    gen = torch.Generator().manual_seed(seed)
    nt = max(1, int(nb * bs * fill))
    layers = [make_layer(layout, nb, bs, nh, hs, torch.float16, gen) for _ in range(nl)]
    slots = random_slots(nt, nb * bs, gen, torch.int64, hole_every, bs)
    empty = torch.zeros(planes(layout), nl, nt, hidden(layout, nh, hs), dtype=torch.float16)
    chunk = empty.clone()
    transfer(layout, layers, chunk, slots, GATHER)
    assert same(chunk, ref_gather(layout, layers, slots, empty))
    expected = ref_scatter(layout, chunk, slots, layers)
    transfer(layout, layers, chunk, slots, SCATTER)
    assert all(same(a, b) for a, b in zip(layers, expected))


# Transfers of >= 4 MiB write with non-temporal stores (native/cpu/transfer.cpp); every row size
# class and a chunk off the 16-byte grid must still land bit-exact, and nothing around it.
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("layout,nh,hs", [("cpu", 8, 128), ("flash_attn", 8, 128), ("cpu", 3, 13),
                                          ("separate_kv_hnd", 5, 40)])
def test_large_transfers_are_exact(layout, nh, hs, offset):
    gen = torch.Generator().manual_seed(nh * hs + offset)
    nb, bs = 64, 16
    nt = nb * bs - 3
    width = hidden(layout, nh, hs)
    moved = nt - len(range(0, nt, 97))  # the hole_every=97 tokens below are skipped
    nl = -(-(5 << 20) // (planes(layout) * moved * width * 2))  # layers enough for 5 MiB of fp16 (>= 4 MiB)
    layers = [make_layer(layout, nb, bs, nh, hs, torch.float16, gen) for _ in range(nl)]
    slots = random_slots(nt, nb * bs, gen, torch.int64, hole_every=97, block_size=bs)
    size = planes(layout) * nl * nt * width
    backing = random_tensor((size + 2 * offset + 8,), torch.float16, gen)
    chunk = backing[offset:offset + size].view(planes(layout), nl, nt, width)
    untouched = backing.clone()
    expected = ref_gather(layout, layers, slots, chunk.clone())
    transfer(layout, layers, chunk, slots, GATHER)
    assert same(chunk, expected)
    assert same(backing[:offset], untouched[:offset]) and same(backing[offset + size:], untouched[offset + size:])

    fresh = [make_layer(layout, nb, bs, nh, hs, torch.float16, gen) for _ in range(nl)]
    expected = ref_scatter(layout, chunk, slots, fresh)
    transfer(layout, fresh, chunk, slots, SCATTER)
    assert all(same(a, b) for a, b in zip(fresh, expected))
