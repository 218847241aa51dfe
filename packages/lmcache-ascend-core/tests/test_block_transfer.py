"""ops.multi_layer_block_kv_transfer (LMCache MP mode's block op) for every EngineKVFormat an engine
hands over, against the torch-indexing oracle (kvref): both directions, dtypes, block ids as a
tensor or a list, tensors or raw addresses, skipped prefixes, bad input rejected before any write."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import lmcache_ascend.ops as ops
from block_cases import BS, CHUNK, FORMATS, HS, N_BLOCKS, NB, NH, NL, shape_desc, tensors_of
from kvref import random_tensor, ref_gather, ref_scatter, same
from lmcache_ascend.engine_formats import FORMAT_VALUES

H2D, D2H = 0, 1


def clone(kv):
    if isinstance(kv, torch.Tensor):
        return kv.clone()
    return type(kv)(clone(x) for x in kv)


def addresses(kv):
    return torch.tensor([t.data_ptr() for t in tensors_of(kv)], dtype=torch.int64)


def hidden_of(layout):
    return HS if layout == "mla" else NH * HS


def objects(planes, layout, dtype, gen=None, count=3):
    shape = ((2,) if planes == 2 else ()) + (NL, CHUNK, hidden_of(layout))
    return [random_tensor(shape, dtype, gen) if gen else torch.zeros(shape, dtype=dtype) for _ in range(count)]


def as_chunk(objs, planes):
    """The memory objects as one [P, L, T, D] object (the oracle's form)."""
    whole = torch.cat(objs, dim=-2)
    return whole if planes == 2 else whole[None]


def block_ids(kind, gen):
    ids = torch.randperm(NB, generator=gen)[:N_BLOCKS]
    return ids.tolist() if kind == "list" else ids.to(torch.int32 if kind == "int32" else torch.int64)


def slots_of(ids):
    ids = torch.as_tensor(ids, dtype=torch.int64)
    return (ids[:, None] * BS + torch.arange(BS)).reshape(-1)


def hidden_heads(layout):
    return 1 if layout == "mla" else NH


@pytest.mark.parametrize("skip", [0, 5])
@pytest.mark.parametrize("ids_kind", ["tensor", "list"])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_both_directions(name, ids_kind, skip):
    make, layers_of, layout, planes = FORMATS[name]
    fmt = FORMAT_VALUES[name]
    gen = torch.Generator().manual_seed(fmt * 10 + skip)
    dtype = torch.bfloat16
    kv = make(dtype, gen)
    ids = block_ids(ids_kind, gen)
    slots = slots_of(ids)
    padded = torch.full((3 * CHUNK,), -1, dtype=torch.int64)
    padded[:slots.numel()] = slots
    desc = shape_desc(dtype, hidden_heads(layout))

    out = objects(planes, layout, dtype)
    ops.multi_layer_block_kv_transfer(kv, out, ids, "cpu", D2H, desc, CHUNK, fmt, skip)
    expected = ref_gather(layout, layers_of(kv), padded, as_chunk(objects(planes, layout, dtype), planes), skip * BS)
    assert same(as_chunk(out, planes), expected)

    source = objects(planes, layout, dtype, gen)
    target = clone(kv)
    ops.multi_layer_block_kv_transfer(target, source, ids, torch.device("cpu"), H2D, desc, CHUNK, fmt, skip)
    want = ref_scatter(layout, as_chunk(source, planes), padded, [clone(x) for x in layers_of(kv)], skip * BS)
    got = layers_of(target)
    assert all(same(tuple(a) if isinstance(a, tuple) else a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.int8])
@pytest.mark.parametrize("name", ["NB_NL_TWO_BS_NH_HS", "NL_X_NB_NH_BS_CS", "NL_X_TWO_NB_BS_NH_HS"])
def test_raw_addresses_on_both_sides(name, dtype):
    """LMCache's server side passes the KV cache and the memory objects as addresses."""
    make, layers_of, layout, planes = FORMATS[name]
    fmt = FORMAT_VALUES[name]
    gen = torch.Generator().manual_seed(7)
    kv = make(dtype, gen)
    ids = block_ids("int32", gen)
    slots = slots_of(ids)
    padded = torch.full((3 * CHUNK,), -1, dtype=torch.int64)
    padded[:slots.numel()] = slots
    out = objects(planes, layout, dtype)
    ops.multi_layer_block_kv_transfer(addresses(kv), [o.data_ptr() for o in out], ids, "cpu", D2H,
                                      shape_desc(dtype, hidden_heads(layout)), CHUNK, fmt, 0)
    expected = ref_gather(layout, layers_of(kv), padded, as_chunk(objects(planes, layout, dtype), planes))
    assert same(as_chunk(out, planes), expected)


def test_memory_objects_of_the_in_process_engine_shape():
    """Single-plane objects may come as [1, L, T, D] (as LMCache's in-process engine allocates them)."""
    make, layers_of, layout, planes = FORMATS["NL_X_NB_BS_HS"]
    gen = torch.Generator().manual_seed(3)
    kv = make(torch.float16, gen)
    ids = block_ids("tensor", gen)
    out = [o[None] for o in objects(1, layout, torch.float16)]
    ops.multi_layer_block_kv_transfer(kv, out, ids, "cpu", D2H, shape_desc(torch.float16, 1), CHUNK,
                                      FORMAT_VALUES["NL_X_NB_BS_HS"], 0)
    padded = torch.full((3 * CHUNK,), -1, dtype=torch.int64)
    padded[:N_BLOCKS * BS] = slots_of(ids)
    assert same(torch.cat(out, dim=-2), ref_gather(layout, kv, padded, torch.zeros(1, NL, 3 * CHUNK, HS,
                                                                                    dtype=torch.float16)))


def _bad_call(**override):
    make, _, layout, planes = FORMATS["NL_X_TWO_NB_BS_NH_HS"]
    gen = torch.Generator().manual_seed(1)
    args = dict(paged_buffer_ptrs_tensor=make(torch.float16, gen), lmcache_objects_ptrs=objects(planes, layout,
                torch.float16, gen), block_ids=block_ids("tensor", gen), device="cpu", direction=H2D,
                shape_desc=shape_desc(torch.float16), lmcache_chunk_size=CHUNK,
                engine_kv_format=FORMAT_VALUES["NL_X_TWO_NB_BS_NH_HS"], skip_prefix_n_blocks=0)
    args.update(override)
    before = [t.clone() for t in args["paged_buffer_ptrs_tensor"]]
    return args, before


@pytest.mark.parametrize("override, error, words", [
    (dict(block_ids=torch.tensor([0, 1, NB])), IndexError, "block_ids"),
    (dict(block_ids=torch.tensor([0, -1, 2])), IndexError, "block_ids"),
    (dict(block_ids=torch.tensor([[0, 1]])), TypeError, "block_ids"),
    (dict(lmcache_chunk_size=40), ValueError, "lmcache_chunk_size"),
    (dict(skip_prefix_n_blocks=-1), ValueError, "skip_prefix_n_blocks"),
    (dict(direction=5), ValueError, "direction"),
    (dict(engine_kv_format=99), ValueError, "engine_kv_format"),
    (dict(device="npu"), ValueError, "device"),
    (dict(lmcache_objects_ptrs=[torch.zeros(2, NL, CHUNK, NH * HS, dtype=torch.float16)]), ValueError,
     "lmcache_objects_ptrs"),
    (dict(lmcache_objects_ptrs=[torch.zeros(2, NL, CHUNK, NH * HS, dtype=torch.float32)] * 3), TypeError, "dtype"),
    (dict(lmcache_objects_ptrs=[torch.zeros(2, NL, CHUNK, 8, dtype=torch.float16)] * 3), ValueError, "hidden"),
    (dict(shape_desc=SimpleNamespace(**{**vars(shape_desc(torch.float16)), "bs": 8})), ValueError, "bs"),
    (dict(lmcache_objects_ptrs=[0, 0, 0]), ValueError, "lmcache_objects_ptrs"),
])
def test_bad_input_is_rejected_before_any_write(override, error, words):
    args, before = _bad_call(**override)
    with pytest.raises(error, match=words):
        ops.multi_layer_block_kv_transfer(**args)
    assert all(same(a, b) for a, b in zip(args["paged_buffer_ptrs_tensor"], before))


def test_the_format_table_the_oracle_and_lmcache_cover_each_other():
    """A format LMCache adds, or one of ours without an oracle, fails here instead of going untested."""
    import kvref
    from lmcache_ascend.engine_formats import ENGINE_FORMATS

    lmcache_native = pytest.importorskip("lmcache.lmcache_native")
    theirs = {m.name: int(m) for m in lmcache_native.EngineKVFormat.__members__.values()}
    ours = {f.name: f.value for f in ENGINE_FORMATS.values()}
    assert theirs.items() <= ours.items()  # ours may hold newer releases' formats (19: LMCache 0.5.7)
    oracle = {*kvref.LAYOUTS, *kvref.GROUP_LAYOUTS, *kvref.NZ_LAYOUTS}
    assert {f.layout for f in ENGINE_FORMATS.values()} <= oracle
    # this file runs the block op for every format but the plane tuples (LMCache's parity suite does)
    assert set(FORMATS) == {f.name for f in ENGINE_FORMATS.values() if not f.plane_groups}
