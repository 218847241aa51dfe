"""Layers made of several tensors of different widths (vllm-ascend MLA latent + rope, DSA latent +
rope + indexer key) moved as plane groups, and the Ascend 310P NZ layout: bit-exact against the
torch-indexing oracle in kvref, errors raised before anything is written, and the request the NPU
entry would get (no NPU here: checked with the native host-side preparation, up to the missing
NPU library)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcache_ascend.c_ops as c_ops
import lmcache_ascend.ops as ops
import lmcache_ascend.transfer as transfer
from kvref import (GROUP_LAYOUTS, NZ_LAYOUTS, PLANE_WIDTHS, hidden, make_layer, make_planes, nz_fractal, random_slots,
                   random_tensor, ref_gather, ref_scatter, same)
from lmcache_ascend._native import transfer as native_transfer
from lmcache_ascend._tensors import as_view
from lmcache_ascend.engine_formats import engine_format
from lmcache_ascend.layouts import PlaneGroups, describe_chunk, describe_paged
from lmcache_ascend.transfer import GATHER, SCATTER, transfer_kv

DTYPES = [torch.float16, torch.bfloat16, torch.int8]
SLOT_DTYPES = [torch.int32, torch.int64]
H2D, D2H = 0, 1  # LMCache TransferDirection
PLANES_FORMAT = 17  # EngineKVFormat.NL_X_NP_X_NB_BS_ONE_HS


def split_chunks(chunk: torch.Tensor, sizes, direction):
    """Memory objects over consecutive token ranges, each its own tensor (LMCache's chunks)."""
    parts, begin = [], 0
    for n in sizes:
        part = chunk[:, :, begin:begin + n].clone()
        parts.append((part, begin, begin + n))
        begin += n
    return parts, [(describe_chunk(p, "KV_MLA_FMT", writable=direction == GATHER), b, e) for p, b, e in parts]


def world(layout, dtype, slot_dtype, nl=3, nb=6, bs=16, nt=70, head_axis=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layers = [make_planes(nb, bs, PLANE_WIDTHS[layout], dtype, gen, head_axis) for _ in range(nl)]
    slots = random_slots(nt, nb * bs, gen, slot_dtype, block_size=bs)
    return gen, layers, slots


@pytest.mark.parametrize("head_axis", [True, False], ids=["NB_BS_1_W", "NB_BS_W"])
@pytest.mark.parametrize("slot_dtype", SLOT_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(GROUP_LAYOUTS))
def test_groups_round_trip_several_chunks(layout, dtype, slot_dtype, head_axis):
    gen, layers, slots = world(layout, dtype, slot_dtype, head_axis=head_axis)
    nl, nt, width = len(layers), slots.numel(), sum(PLANE_WIDTHS[layout])
    paged = describe_paged(layers, layout)
    assert isinstance(paged, PlaneGroups) and paged.hidden == width
    sentinel = random_tensor((1, nl, nt, width), dtype, gen)  # untouched where slots are -1
    sizes = [32, 32, nt - 64]  # the last chunk is partial

    parts, views = split_chunks(sentinel, sizes, GATHER)
    transfer_kv(paged, views, slots, GATHER)
    gathered = torch.cat([p for p, _, _ in parts], dim=2)
    assert same(gathered, ref_gather(layout, layers, slots, sentinel))

    fresh = [make_planes(layers[0][0].shape[0], layers[0][0].shape[1], PLANE_WIDTHS[layout], dtype, gen, head_axis)
             for _ in range(nl)]
    expected = ref_scatter(layout, gathered, slots, fresh)
    _, views = split_chunks(gathered, sizes, SCATTER)
    transfer_kv(describe_paged(fresh, layout), views, slots, SCATTER)
    assert all(same(a, b) for a, b in zip(fresh, expected))


@pytest.mark.parametrize("layout", list(GROUP_LAYOUTS))
@pytest.mark.parametrize("skip", [0, 7, 70])
def test_groups_skip_prefix(layout, skip):
    gen, layers, slots = world(layout, torch.float16, torch.int64, seed=skip)
    width = sum(PLANE_WIDTHS[layout])
    sentinel = random_tensor((1, len(layers), slots.numel(), width), torch.float16, gen)
    chunk = sentinel.clone()
    view = describe_chunk(chunk, "KV_MLA_FMT", writable=True)
    transfer_kv(describe_paged(layers, layout), [(view, 0, slots.numel())], slots, GATHER, skip)
    assert same(chunk, ref_gather(layout, layers, slots, sentinel, skip))
    expected = ref_scatter(layout, sentinel, slots, layers, skip)
    transfer_kv(describe_paged(layers, layout), [(describe_chunk(sentinel, "KV_MLA_FMT"), 0, slots.numel())],
                slots, SCATTER, skip)
    assert all(same(a, b) for a, b in zip(layers, expected))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["mla_rope", "dsa"])
def test_groups_layerwise_one_layer(layout, dtype):
    gen, layers, slots = world(layout, dtype, torch.int32)
    nt, width = slots.numel(), sum(PLANE_WIDTHS[layout])
    paged = describe_paged(layers, layout)
    for layer in range(len(layers)):
        one = paged.layer(layer)
        assert one.num_layers == 1
        buf = torch.zeros(nt, width, dtype=dtype)  # layerwise buffer: [T, hidden]
        transfer_kv(one, [(describe_chunk(buf, "MLA_TD", writable=True), 0, nt)], slots, GATHER)
        expected = ref_gather(layout, [layers[layer]], slots, torch.zeros(1, 1, nt, width, dtype=dtype))
        assert same(buf, expected[0, 0])

        target = [tuple(t.clone() for t in layers[layer])]
        back = random_tensor((nt, width), dtype, gen)
        expected_layer = ref_scatter(layout, back[None, None], slots, target)
        transfer_kv(describe_paged(target, layout), [(describe_chunk(back, "MLA_TD"), 0, nt)], slots, SCATTER)
        assert same(target[0], expected_layer[0])


def test_groups_of_one_raw_buffer_per_layer():
    """vllm-ascend may carve a layer's planes out of one raw buffer, block by block (the block
    stride of each plane spans all planes of the block): strided planes, still bit-exact."""
    gen = torch.Generator().manual_seed(5)
    nb, bs, widths, nl = 5, 16, PLANE_WIDTHS["dsa"], 2
    layers = []
    for _ in range(nl):
        raw = random_tensor((nb, bs * sum(widths)), torch.bfloat16, gen)
        planes, offset = [], 0
        for w in widths:
            planes.append(torch.as_strided(raw, (nb, bs, 1, w), (bs * sum(widths), w, w, 1), offset))
            offset += bs * w
        layers.append(tuple(planes))
    slots = random_slots(40, nb * bs, gen, torch.int64, block_size=bs)
    empty = torch.zeros(1, nl, 40, sum(widths), dtype=torch.bfloat16)
    chunk = empty.clone()
    transfer_kv(describe_paged(layers, "dsa"), [(describe_chunk(chunk, "KV_MLA_FMT", writable=True), 0, 40)],
                slots, GATHER)
    assert same(chunk, ref_gather("dsa", layers, slots, empty))
    noise = random_tensor(chunk.shape, torch.bfloat16, gen)
    expected = ref_scatter("dsa", noise, slots, layers)
    transfer_kv(describe_paged(layers, "dsa"), [(describe_chunk(noise, "KV_MLA_FMT"), 0, 40)], slots, SCATTER)
    assert all(same(tuple(t.contiguous() for t in a), b) for a, b in zip(layers, expected))


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.sampled_from([1, 3, 8, 16, 64]), min_size=1, max_size=4),
    nb=st.integers(1, 6), bs=st.sampled_from([1, 2, 16, 128]), nl=st.integers(1, 3),
    head_axis=st.booleans(), seed=st.integers(0, 2**31 - 1), fill=st.floats(0.0, 1.0),
)
def test_random_plane_widths(widths, nb, bs, nl, head_axis, seed, fill):
    gen = torch.Generator().manual_seed(seed)
    layers = [make_planes(nb, bs, widths, torch.float16, gen, head_axis) for _ in range(nl)]
    nt = max(1, int(nb * bs * fill))
    slots = torch.randperm(nb * bs, generator=gen)[:nt]
    slots[::3] = -1
    sentinel = random_tensor((1, nl, nt, sum(widths)), torch.float16, gen)
    chunk = sentinel.clone()
    paged = describe_paged(layers, "mla_planes")
    transfer_kv(paged, [(describe_chunk(chunk, "KV_MLA_FMT", writable=True), 0, nt)], slots, GATHER)
    assert same(chunk, ref_gather("mla_planes", layers, slots, sentinel))
    noise = random_tensor(chunk.shape, torch.float16, gen)
    expected = ref_scatter("mla_planes", noise, slots, layers)
    transfer_kv(paged, [(describe_chunk(noise, "KV_MLA_FMT"), 0, nt)], slots, SCATTER)
    assert all(same(a, b) for a, b in zip(layers, expected))


# ---- errors: named, and raised before any group writes ----

def test_bad_second_group_leaves_first_group_unwritten():
    """The rope plane has fewer blocks than the latent plane, so one slot is valid for group 0 only:
    the transfer must fail before group 0 moves anything, in both directions."""
    gen = torch.Generator().manual_seed(9)
    nb, bs = 4, 16
    layers = [(random_tensor((nb, bs, 1, 64), torch.float16, gen),
               random_tensor((nb - 1, bs, 1, 16), torch.float16, gen)) for _ in range(2)]
    slots = torch.tensor([0, 1, 2, nb * bs - 1], dtype=torch.int64)  # the last slot is out of range for rope
    paged = describe_paged(layers, "mla_rope")
    chunk = random_tensor((1, 2, 4, 80), torch.float16, gen)
    before = chunk.clone()
    with pytest.raises(IndexError, match=r"plane group 1: slot_mapping\[3\] = 63 is out of range"):
        transfer_kv(paged, [(describe_chunk(chunk, "KV_MLA_FMT", writable=True), 0, 4)], slots, GATHER)
    assert same(chunk, before)
    paged_before = [tuple(t.clone() for t in layer) for layer in layers]
    with pytest.raises(IndexError, match="plane group 1"):
        transfer_kv(paged, [(describe_chunk(chunk, "KV_MLA_FMT"), 0, 4)], slots, SCATTER)
    assert all(same(a, b) for a, b in zip(layers, paged_before))


def test_wrong_hidden_names_the_plane_widths():
    _, layers, slots = world("dsa", torch.float16, torch.int64)
    chunk = torch.zeros(1, 3, slots.numel(), 64 + 16, dtype=torch.float16)  # the indexer columns are missing
    with pytest.raises(ValueError, match=r"hidden size 80 differs from the KV cache's planes "
                                         r"\(dsa: 64 \+ 16 \+ 32 = 112"):
        transfer_kv(describe_paged(layers, "dsa"), [(describe_chunk(chunk, "KV_MLA_FMT", writable=True), 0, 70)],
                    slots, GATHER)
    assert not chunk.any()
    kv_chunk = torch.zeros(2, 3, slots.numel(), 112, dtype=torch.float16)
    with pytest.raises(ValueError, match="has 2 K/V plane"):
        transfer_kv(describe_paged(layers, "dsa"), [(describe_chunk(kv_chunk, "KV_2LTD", writable=True), 0, 70)],
                    slots, GATHER)


@pytest.mark.parametrize("entries, message", [
    (lambda ls: [ls[0][:2]] + ls[1:], r"kv_caches\[0\]: layout 'dsa' takes a \(latent, rope, indexer key\) tuple"),
    (lambda ls: ls[:1] + [ls[1][:2]] + ls[2:], r"kv_caches\[1\]: layout 'dsa' takes .* got 2 tensors"),
    (lambda ls: [ls[0][0]] + ls[1:], r"kv_caches\[0\]: layout 'dsa' takes .* \(3 tensors\), got a Tensor"),
    (lambda ls: [(a, b.float(), c) for a, b, c in ls],
     r"kv_caches\[0\]\[1\]: every plane of a layer must share dtype"),
    (lambda ls: [(ls[0][0].reshape(6, 16, 2, 32), *ls[0][1:])] + ls[1:],
     r"kv_caches\[0\]\[0\] \(latent\): .*\[num_blocks, block_size, 1, width\] tensors, got shape \[6, 16, 2, 32\]"),
    (lambda ls: ls[:2] + [(ls[2][0], ls[2][1][:, :8], ls[2][2])],
     r"kv_caches\[2\]\[1\]: every layer must have the same shape"),
])
def test_malformed_plane_tuples_are_named(entries, message):
    _, layers, _ = world("dsa", torch.float16, torch.int64)
    with pytest.raises(ValueError, match=message):
        describe_paged(entries(list(layers)), "dsa")


def test_mla_planes_takes_one_to_four_planes():
    gen = torch.Generator().manual_seed(1)
    five = [make_planes(2, 16, (16, 16, 16, 16, 16), torch.float16, gen)]
    with pytest.raises(ValueError, match=r"kv_caches\[0\]: layout 'mla_planes' takes a tuple of 1 to 4 planes"):
        describe_paged(five, "mla_planes")
    one = describe_paged([five[0][:1]], "mla_planes")
    assert one.hidden == 16 and one.columns == (0,)


# ---- NZ (Ascend 310P fractal) ----

@pytest.mark.parametrize("slot_dtype", SLOT_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int8], ids=str)
@pytest.mark.parametrize("layout", NZ_LAYOUTS)
def test_nz_round_trip(layout, dtype, slot_dtype):
    gen = torch.Generator().manual_seed(11)
    nl, nb, bs, nh, hs, nt = 2, 5, 16, 2, 64, 50
    layers = [make_layer(layout, nb, bs, nh, hs, dtype, gen) for _ in range(nl)]
    paged = describe_paged(layers, layout)
    assert (paged.num_heads, paged.head_size) == (nh * hs // nz_fractal(dtype), nz_fractal(dtype))
    slots = random_slots(nt, nb * bs, gen, slot_dtype, block_size=bs)
    sentinel = random_tensor((2, nl, nt, hidden(layout, nh, hs)), dtype, gen)
    chunk = sentinel.clone()
    transfer_kv(paged, [(describe_chunk(chunk, "KV_2LTD", writable=True), 0, nt)], slots, GATHER)
    assert same(chunk, ref_gather(layout, layers, slots, sentinel))
    noise = random_tensor(chunk.shape, dtype, gen)
    expected = ref_scatter(layout, noise, slots, layers)
    transfer_kv(paged, [(describe_chunk(noise, "KV_2LTD"), 0, nt)], slots, SCATTER)
    assert all(same(a, b) for a, b in zip(layers, expected))


def test_nz_hidden_columns_are_fractals_in_order():
    """Element (block, c, t, e) of an NZ cache is hidden element c * 16 + e of token t."""
    nb, bs, cols = 2, 16, 4
    k = torch.arange(nb * cols * bs * 16, dtype=torch.float32).to(torch.float16).reshape(nb, cols, bs, 16)
    v = -k
    chunk = torch.zeros(2, 1, 1, cols * 16, dtype=torch.float16)
    transfer_kv(describe_paged([(k, v)], "nz"), [(describe_chunk(chunk, "KV_2LTD", writable=True), 0, 1)],
                torch.tensor([bs + 3]), GATHER)
    assert torch.equal(chunk[0, 0, 0], k[1, :, 3, :].reshape(-1))
    assert torch.equal(chunk[1, 0, 0], v[1, :, 3, :].reshape(-1))


def test_nz_shape_is_checked_not_guessed():
    gen = torch.Generator().manual_seed(2)
    int8_as_fp16_shape = (random_tensor((4, 8, 16, 16), torch.int8, gen),) * 2  # int8 fractals are 32 wide
    with pytest.raises(ValueError, match=r"kv_caches\[0\]\[0\]: .*NZ cache of int8 has fractals of 32 elements "
                                         r"\(32 bytes\): expected shape \[num_blocks, hidden/32, block_size, 32\]"):
        describe_paged([int8_as_fp16_shape], "nz")
    whole = random_tensor((4, 8, 32, 16), torch.float16, gen)
    strided = whole[:, :, :16]  # a view: its NZ storage order cannot be taken from the shape
    with pytest.raises(ValueError, match="must be a whole NZ tensor"):
        describe_paged([(strided, strided)], "nz")


# ---- LMCache surfaces ----

def test_engine_format_17_is_the_plane_tuple_format():
    fmt = engine_format(PLANES_FORMAT)
    assert (fmt.name, fmt.layout, fmt.plane_groups, fmt.planes) == ("NL_X_NP_X_NB_BS_ONE_HS", "mla_planes", True, 1)


@pytest.mark.parametrize("flat", [False, True], ids=["tuples", "flat"])
@pytest.mark.parametrize("layout", ["mla_rope", "dsa"])
def test_ops_multi_layer_with_plane_tuples(layout, flat):
    gen, layers, slots = world(layout, torch.bfloat16, torch.int64)
    nb, bs = layers[0][0].shape[:2]
    width, nt = sum(PLANE_WIDTHS[layout]), slots.numel()
    ptrs = [t for layer in layers for t in layer] if flat else layers
    sentinel = random_tensor((1, len(layers), nt, width), torch.bfloat16, gen)
    key_value = sentinel.clone()
    ops.multi_layer_kv_transfer(key_value, ptrs, slots, "cpu", nb * bs, D2H, PLANES_FORMAT)
    assert same(key_value, ref_gather(layout, layers, slots, sentinel))
    noise = random_tensor(key_value.shape, torch.bfloat16, gen)
    expected = ref_scatter(layout, noise, slots, layers)
    ops.multi_layer_kv_transfer(noise, ptrs, slots, "cpu", nb * bs, H2D, PLANES_FORMAT, skip_prefix_n_tokens=0)
    assert all(same(a, b) for a, b in zip(layers, expected))


def test_ops_plane_tuples_errors_before_writing():
    _, layers, slots = world("mla_rope", torch.float16, torch.int64)
    nb, bs = layers[0][0].shape[:2]
    key_value = torch.zeros(1, 3, slots.numel(), 80, dtype=torch.float16)
    addresses = [t.data_ptr() for layer in layers for t in layer]
    with pytest.raises(ValueError, match="needs the per-layer plane tensors, not their addresses"):
        ops.multi_layer_kv_transfer(key_value, addresses, slots, "cpu", nb * bs, D2H, PLANES_FORMAT)
    with pytest.raises(ValueError, match="needs the per-layer plane tensors"):
        ops.multi_layer_kv_transfer(key_value, torch.tensor(addresses), slots, "cpu", nb * bs, D2H, PLANES_FORMAT)
    with pytest.raises(ValueError, match=r"page_buffer_size=48 but the planes in key_value_ptrs hold 6 blocks x 16"):
        ops.multi_layer_kv_transfer(key_value, layers, slots, "cpu", 48, D2H, PLANES_FORMAT)
    with pytest.raises(ValueError, match="key_value_ptrs has 2 layers; key_value has 3"):
        ops.multi_layer_kv_transfer(key_value, layers[:2], slots, "cpu", nb * bs, D2H, PLANES_FORMAT)
    assert not key_value.any()


def test_ops_single_layer_with_plane_tuples():
    gen, layers, slots = world("dsa", torch.float16, torch.int32)
    nt, width = slots.numel(), sum(PLANE_WIDTHS["dsa"])
    lmc = torch.zeros(nt, width, dtype=torch.float16)
    ops.single_layer_kv_transfer(lmc, layers[1], slots, D2H, PLANES_FORMAT)
    expected = ref_gather("dsa", [layers[1]], slots, torch.zeros(1, 1, nt, width, dtype=torch.float16))
    assert same(lmc, expected[0, 0])
    noise = random_tensor((nt, width), torch.float16, gen)
    want = ref_scatter("dsa", noise[None, None], slots, [layers[1]])[0]
    ops.single_layer_kv_transfer(noise, layers[1], slots, H2D, PLANES_FORMAT)
    assert same(layers[1], want)


def test_c_ops_use_mla_with_plane_tuples():
    gen, layers, slots = world("mla_rope", torch.float16, torch.int64)
    nb, bs = layers[0][0].shape[:2]
    sentinel = random_tensor((1, len(layers), slots.numel(), 80), torch.float16, gen)
    key_value = sentinel.clone()
    c_ops.multi_layer_kv_transfer(key_value, layers, slots, "cpu", nb * bs, True, True)
    assert same(key_value, ref_gather("mla_rope", layers, slots, sentinel))
    noise = random_tensor(key_value.shape, torch.float16, gen)
    expected = ref_scatter("mla_rope", noise, slots, layers)
    c_ops.multi_layer_kv_transfer(noise, layers, slots, "cpu", nb * bs, False, True)
    assert all(same(a, b) for a, b in zip(layers, expected))


# ---- NPU routing (no NPU here) ----

def on_npu(tensor):
    """A host tensor presented as NPU memory (the routing only reads the device type)."""
    return dataclasses.replace(as_view(tensor, "test tensor", writable=True), device="npu")


def npu_world(layout):
    _, layers, slots = world(layout, torch.float16, torch.int64, nl=2, nt=20)
    npu_layers = [tuple(on_npu(t) for t in layer) for layer in layers]
    chunk = torch.zeros(1, 2, 20, sum(PLANE_WIDTHS[layout]), dtype=torch.float16)
    return layers, npu_layers, slots, chunk


@pytest.mark.parametrize("layout", ["mla_rope", "dsa"])
def test_npu_groups_reach_the_native_entry_unwritten(layout, monkeypatch):
    layers, npu_layers, slots, chunk = npu_world(layout)
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: 0x1234)
    paged = describe_paged(npu_layers, layout)
    assert paged.device == "npu"
    for direction in (GATHER, SCATTER):
        with pytest.raises(RuntimeError, match="built without the Ascend backend"):
            transfer_kv(paged, [(describe_chunk(chunk, "KV_MLA_FMT", writable=True), 0, 20)], slots, direction)
    assert not chunk.any()


def test_ops_route_npu_plane_tuples(monkeypatch):
    layers, npu_layers, slots, chunk = npu_world("dsa")
    before = [tuple(t.clone() for t in layer) for layer in layers]
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: 0x1234)
    with pytest.raises(RuntimeError, match="built without the Ascend backend"):
        ops.multi_layer_kv_transfer(chunk + 1, npu_layers, slots, "npu:0", 6 * 16, H2D, PLANES_FORMAT)
    assert all(same(a, b) for a, b in zip(layers, before))
    with pytest.raises(ValueError, match="paged_memory_device=cpu but the KV-cache tensors are on npu"):
        ops.multi_layer_kv_transfer(chunk, npu_layers, slots, "cpu", 6 * 16, D2H, PLANES_FORMAT)
    assert not chunk.any()


@pytest.mark.parametrize("chunks_on_host, fused, staged", [(False, None, False), (True, True, True),
                                                           (True, None, True)])
@pytest.mark.parametrize("layout", ["mla_rope", "dsa"])
def test_npu_launch_gets_one_group_per_plane(layout, chunks_on_host, fused, staged):
    """What the NPU launcher would get: one group per plane, each at its chunk column, the chunk's
    full hidden as token stride; all in one launch (prepare_npu_transfer, the host-side half)."""
    layers, npu_layers, slots, chunk = npu_world(layout)
    paged = describe_paged(npu_layers, layout)
    view = describe_chunk(chunk, "KV_MLA_FMT", writable=True)
    pages, chunk_lists = transfer.native_request(paged, [(view, 0, 12), (view, 12, 20)])
    s = as_view(slots, "slots")
    prepared = native_transfer.prepare_npu_launch(pages, chunk_lists, s.address, 20, 8, 0, GATHER,
                                                  chunks_on_host, fused)
    assert prepared["fused"] == staged
    groups = prepared["groups"]
    widths = PLANE_WIDTHS[layout]
    assert len(groups) == len(widths)
    column = 0
    for g, (group, width) in enumerate(zip(groups, widths)):
        page = group["page"]
        assert (page["num_planes"], page["num_layers"], page["num_heads"], page["head_size"]) == (1, 2, 1, width)
        assert page["plane_bases"] == [layer[g].data_ptr() for layer in layers]
        assert page["token_stride"] == width and page["block_stride"] == 16 * width
        for (base, begin, end, _, layer_stride, token_stride), want in zip(group["chunks"], [(0, 12), (12, 20)]):
            assert base == chunk.data_ptr() + column * 2 and (begin, end) == want
            assert (layer_stride, token_stride) == (20 * sum(widths), sum(widths))
        column += width


def test_npu_launch_names_the_bad_group():
    layers, npu_layers, slots, chunk = npu_world("dsa")
    short = [(a, b, on_npu(layer[2][:2])) for (a, b, _), layer in zip(npu_layers, layers)]  # indexer: 2 blocks
    paged = describe_paged(short, "dsa")
    pages, chunk_lists = transfer.native_request(paged, [(describe_chunk(chunk, "KV_MLA_FMT", writable=True), 0, 20)])
    s = as_view(slots, "slots")
    with pytest.raises(IndexError, match=r"plane group 2: slot_mapping\[\d+\] = \d+ is out of range: the paged KV "
                                         r"cache has 32 slots"):
        native_transfer.prepare_npu_launch(pages, chunk_lists, s.address, 20, 8, 0, SCATTER, False, None)


def test_npu_nz_is_one_group_of_fractal_heads():
    gen = torch.Generator().manual_seed(4)
    layers = [make_layer("nz", 3, 16, 2, 64, torch.float16, gen) for _ in range(2)]
    paged = describe_paged([tuple(on_npu(t) for t in layer) for layer in layers], "nz")
    chunk = np.zeros((2, 2, 10, 128), dtype=np.float16)
    pages, chunk_lists = transfer.native_request(paged, [(describe_chunk(chunk, "KV_2LTD", writable=True), 0, 10)])
    slots = torch.arange(10, dtype=torch.int64)
    s = as_view(slots, "slots")
    prepared = native_transfer.prepare_npu_launch(pages, chunk_lists, s.address, 10, 8, 0, GATHER, False, None)
    (group,) = prepared["groups"]
    page = group["page"]
    assert (page["num_planes"], page["num_heads"], page["head_size"]) == (2, 8, 16)
    assert (page["head_stride"], page["token_stride"], page["block_stride"]) == (16 * 16, 16, 8 * 16 * 16)
