"""LMCache MP mode's object-group fast paths in lmcache_ascend.ops: execute_object_group_transfer
(the staged plan) and execute_direct_copy_transfer (memory object <-> paged KV, no staging).

Driven through LMCache's own server code (object_group_transfer.transfer_kv_per_object_group over
a real CPUCacheContext, which builds the plans exactly as the lmcache-driven server does), bit-exact
against the same code running LMCache's torch baseline; then each op on its own against LMCache's
torch reference of the block op, and bad plans refused before any write."""
from __future__ import annotations

import pytest
import torch

import lmcache_ascend.ops as ops
from block_cases import FORMATS, shape_desc, tensors_of
from kvref import random_tensor
from lmcache_ascend.engine_formats import FORMAT_VALUES

ogt = pytest.importorskip("lmcache.v1.multiprocess.object_group_transfer", reason="needs LMCache >= 0.5.6")
torch_ops = pytest.importorskip("lmcache.v1.platform.torch_ops")
from lmcache.v1.gpu_connector import gpu_ops  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj  # noqa: E402
from lmcache.v1.platform.devices.cpu.cache_context import CPUCacheContext  # noqa: E402
from lmcache.v1.platform.devices.cpu.device_ops import CpuDeviceOps  # noqa: E402

import lmcache.lmcache_native as ln  # noqa: E402

H2D, D2H = ln.TransferDirection.H2D, ln.TransferDirection.D2H
NL, NB, BS, NH, HS = 2, 40, 16, 2, 32
CHUNK = 64  # 4 blocks per chunk
PIN = 1 << 12  # LMCache's pin-chunk alignment, small enough to cut objects


class _Wrapper:
    """What CPUCacheContext reads of the worker's shared-memory KV wrappers."""

    def __init__(self, tensor):
        self.tensor = tensor

    def to_tensor(self):
        return self.tensor


# Engine layouts as LMCache's own detection reads them (shape, its kv_layout hint): vLLM's CPU
# platform, flash-attn, flashinfer, flash-attn HND.
ENGINE_SHAPES = {
    "vllm_cpu": ((NB, NH, BS, 2 * HS), "HND"),
    "flash_attn": ((2, NB, BS, NH, HS), "NHD"),
    "flashinfer": ((NB, 2, BS, NH, HS), "NHD"),
    "flash_attn_hnd": ((2, NB, NH, BS, HS), "HND"),
}


def _memory_objects(ctx, n, gen):
    shape, dtype = ctx.get_kernel_group_shape_dtype(CHUNK, 0)
    nbytes = shape.numel() * dtype.itemsize
    objs = []
    for i in range(n):
        raw = torch.randint(0, 256, (nbytes,), generator=gen, dtype=torch.uint8) if gen else \
            torch.zeros(nbytes, dtype=torch.uint8)
        meta = MemoryObjMetadata(shape=torch.Size([nbytes]), dtype=torch.uint8, address=i * nbytes + 1000,
                                 phy_size=nbytes, ref_count=1, fmt=MemoryFormat.KV_2LTD)
        objs.append(TensorMemoryObj(raw, meta, None))
    return objs


def _bits(t):
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def _device_ops(kind):
    """LMCache's CPU device ops: its torch baseline (never bound), or with lmcache_ascend.ops bound as
    LMCache binds a device module."""
    device_ops = CpuDeviceOps()
    if kind != "torch":
        device_ops.bind_native(ops)
    return device_ops


def _run_lmcache(monkeypatch, path, ctx, memory_objs, block_ids, direction, skip_tokens, calls):
    device_ops = _device_ops(path)
    if path != "torch":
        name = "execute_direct_copy_transfer" if path == "direct" else "execute_object_group_transfer"
        assert getattr(device_ops, name) is getattr(ops, name)  # ours is what LMCache calls

        def spy(*args, **kwargs):
            calls.append(name)
            return getattr(ops, name)(*args, **kwargs)

        setattr(device_ops, name, spy)
    for module in (ogt, gpu_ops):
        monkeypatch.setattr(module, "device_ops", device_ops)
    monkeypatch.setattr(ogt, "_HAS_NATIVE_OBJECT_GROUP_TRANSFER", path == "plan")
    monkeypatch.setattr(ogt, "_HAS_BATCH_MEMCPY_ASYNC", path == "direct")
    monkeypatch.setattr(ogt, "_HAS_TRANSFER_PHASE_TIMING", False)
    staged = ogt.downsample_and_stage_block_ids(ctx, [list(block_ids)])
    ogt.transfer_kv_per_object_group(ctx, staged, memory_objs, object_group_id=0, batch_size=ctx.max_batch_size,
                                     skip_first_n_tokens=skip_tokens, direction=direction, transfer_key="test",
                                     block_ids_host=[list(block_ids)])


@pytest.mark.parametrize("skip_tokens", [0, 40])
@pytest.mark.parametrize("layout", sorted(ENGINE_SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_lmcache_server_transfer_matches_its_torch_baseline(monkeypatch, layout, dtype, skip_tokens):
    """Store and retrieve 6 chunks (two batches of LMCache's 4 staging slots) through each path.
    skip_first_n_tokens only on retrieve (where LMCache uses it, to spare blocks other requests
    share): a store's skipped blocks are whatever its staging buffer held, undefined on LMCache's
    own staged path."""
    gen = torch.Generator().manual_seed(len(layout) + skip_tokens)
    shape, hint = ENGINE_SHAPES[layout]
    kv = [random_tensor(shape, dtype, gen) for _ in range(NL)]
    n_chunks = 6
    block_ids = torch.randperm(NB, generator=gen)[:n_chunks * CHUNK // BS].tolist()
    fresh = [random_tensor(shape, dtype, gen) for _ in range(NL)]
    stored, retrieved = {}, {}
    for path in ("torch", "plan", "direct"):
        calls: list = []
        ctx = CPUCacheContext([_Wrapper(t) for t in kv], CHUNK, {"kv_layout": hint})
        objs = _memory_objects(ctx, n_chunks, None)
        _run_lmcache(monkeypatch, path, ctx, objs, block_ids, D2H, 0, calls)
        stored[path] = [o.raw_tensor.clone() for o in objs]

        target = [t.clone() for t in fresh]
        ctx = CPUCacheContext([_Wrapper(t) for t in target], CHUNK, {"kv_layout": hint})
        objs = _memory_objects(ctx, n_chunks, torch.Generator().manual_seed(7))
        _run_lmcache(monkeypatch, path, ctx, objs, block_ids, H2D, skip_tokens, calls)
        retrieved[path] = target
        if path != "torch":
            assert len(calls) == 2 and len(set(calls)) == 1  # one call per object group and direction
    for path in ("plan", "direct"):
        assert all(torch.equal(a, b) for a, b in zip(stored["torch"], stored[path])), path
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(retrieved["torch"], retrieved[path])), path
    assert any(o.any() for o in stored["torch"])  # something moved


# ---- the ops on their own, against LMCache's torch reference of the block op ------------------

def _lmcache_block_op(kv, objects, ids, direction, desc, chunk, fmt, skip):
    """LMCache's torch block op over the engine's KV: as pointers, but (K, V) tuples as the tensors
    its reference takes for them."""
    paged = list(kv) if fmt == FORMAT_VALUES["NL_X_TWO_X_NB_BS_NH_HS"] else \
        torch.tensor([t.data_ptr() for t in tensors_of(kv)], dtype=torch.int64)
    torch_ops.multi_layer_block_kv_transfer(paged, objects, ids, "cpu", direction, desc, chunk, fmt, skip)


# The formats of this LMCache (its torch reference takes no other).
LMCACHE_FORMATS = sorted(n for n in FORMATS if n in ln.EngineKVFormat.__members__)
DIRECT_FORMATS = [n for n in LMCACHE_FORMATS if ops.direct_copy_format_supported(FORMAT_VALUES[n])]


def _group(name, dtype, gen):
    make, _, layout, planes = FORMATS[name]
    kv = make(dtype, gen)
    sd = shape_desc(dtype, 1 if layout == "mla" else 2)
    sd.kv_size, sd.nl, sd.nb = planes, 3, 24
    region = planes * 3 * CHUNK * sd.nh * sd.hs * sd.element_size
    return kv, sd, region


@pytest.mark.parametrize("direction", [H2D, D2H], ids=["retrieve", "store"])
@pytest.mark.parametrize("name", DIRECT_FORMATS)
def test_direct_copy_matches_the_staged_block_op(name, direction):
    """Two kernel groups in one memory object, three chunks, the first one's first block skipped,
    objects cut by the pin alignment: the bytes LMCache's staged path (its torch block op into a
    zeroed staging buffer) leaves, and skipped blocks untouched."""
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(3)
    groups = [_group(name, dtype, gen), _group(name, dtype, gen)]
    fmt = FORMAT_VALUES[name]
    n_chunks, per_chunk = 3, CHUNK // BS
    ids = [torch.randperm(24, generator=gen)[:n_chunks * per_chunk].tolist() for _ in groups]
    offsets = [0, groups[0][2]]
    nbytes = groups[0][2] + groups[1][2]
    host = [torch.randint(0, 256, (nbytes,), generator=gen, dtype=torch.uint8) if direction == H2D
            else torch.zeros(nbytes, dtype=torch.uint8) for _ in range(n_chunks)]
    ref_kv = [tuple_clone(kv) for kv, _, _ in groups]
    ref_host = [h.clone() for h in host]
    for c in range(n_chunks):
        staging = ref_host[c].clone() if direction == H2D else torch.zeros_like(ref_host[c])
        for g, (_, sd, region) in enumerate(groups):
            _lmcache_block_op(ref_kv[g], [staging[offsets[g]:].data_ptr()],
                              torch.tensor(ids[g][c * per_chunk:(c + 1) * per_chunk]), direction, sd, CHUNK, fmt,
                              1 if c == 0 else 0)
        if direction == D2H:
            ref_host[c].copy_(staging)
    specs = [ops.DirectCopyGroupSpec([t.data_ptr() for t in tensors_of(kv)], sd, fmt, CHUNK, offsets[g], ids[g])
             for g, (kv, sd, _) in enumerate(groups)]
    objects = [ops.DirectCopyObject(h.data_ptr(), c * nbytes + 1000, nbytes, c, [1 if c == 0 else 0] * 2)
               for c, h in enumerate(host)]
    ops.execute_direct_copy_transfer(direction, torch.device("cpu"), PIN, specs, objects)
    if direction == H2D:
        for (kv, _, _), ref in zip(groups, ref_kv):
            assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(tensors_of(kv), tensors_of(ref)))
    else:
        assert all(torch.equal(a, b) for a, b in zip(host, ref_host))
        assert any(h.any() for h in host)


def tuple_clone(kv):
    if isinstance(kv, torch.Tensor):
        return kv.clone()
    return type(kv)(tuple_clone(x) for x in kv)


def _plan(name, dtype, gen, n_chunks=5, batch=2, skip_blocks=1):
    """A staged plan as LMCache's planner builds it: one kernel group, `batch` staging slots."""
    make, _, layout, planes = FORMATS[name]
    kv = make(dtype, gen)
    sd = shape_desc(dtype, 1 if layout == "mla" else 2)
    sd.kv_size, sd.nl, sd.nb = planes, 3, 24
    per_chunk = CHUNK // BS
    region = planes * 3 * CHUNK * sd.nh * sd.hs * sd.element_size
    ptrs = torch.tensor([t.data_ptr() for t in tensors_of(kv)], dtype=torch.int64)
    ids = torch.randperm(24, generator=gen)[:n_chunks * per_chunk].to(torch.int64)
    staging = [torch.zeros(region, dtype=torch.uint8) for _ in range(batch)]
    fmt = FORMAT_VALUES[name]
    spec = ops.KernelGroupSpec(ptrs.data_ptr(), [s.data_ptr() for s in staging], sd, CHUNK, fmt, ids.data_ptr(),
                               ids.numel())
    return kv, sd, fmt, ptrs, ids, staging, spec, per_chunk, region


def _steps(host, staging, per_chunk, batch, direction, skip_blocks):
    steps = []
    for first in range(0, len(host), batch):
        objs = host[first:first + batch]
        copies = [ops.StagingCopy(*((s.data_ptr(), h.data_ptr()) if direction == H2D else
                                    (h.data_ptr(), s.data_ptr())), h.numel(), 1000 + (first + i) * h.numel())
                  for i, (h, s) in enumerate(zip(objs, staging))]
        skip = skip_blocks if first == 0 else 0
        steps.append(ops.BatchStep(copies, [ops.LaunchVar(0, first * per_chunk, len(objs) * per_chunk, len(objs),
                                                          skip)]))
    return steps


@pytest.mark.parametrize("direction", [H2D, D2H], ids=["retrieve", "store"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int8])
@pytest.mark.parametrize("name", LMCACHE_FORMATS)
def test_object_group_plan_matches_lmcaches_block_op(name, dtype, direction):
    """Five chunks in batches of two: staging copies and launches as LMCache's fallback loop runs them
    (its torch block op, chunk by chunk through the same staging slots)."""
    gen = torch.Generator().manual_seed(11)
    kv, sd, fmt, ptrs, ids, staging, spec, per_chunk, region = _plan(name, dtype, gen)
    host = [torch.randint(0, 256, (region,), generator=gen, dtype=torch.uint8) if direction == H2D
            else torch.zeros(region, dtype=torch.uint8) for _ in range(5)]
    ref_kv, ref_host = tuple_clone(kv), [h.clone() for h in host]
    ref_staging = [s.clone() for s in staging]
    for first in range(0, 5, 2):
        objs = ref_host[first:first + 2]
        if direction == H2D:
            for h, s in zip(objs, ref_staging):
                s.copy_(h)
        _lmcache_block_op(ref_kv, [s.data_ptr() for s in ref_staging[:len(objs)]],
                          ids[first * per_chunk:(first + len(objs)) * per_chunk], direction, sd, CHUNK, fmt,
                          1 if first == 0 else 0)
        if direction == D2H:
            for h, s in zip(objs, ref_staging):
                h.copy_(s)
    ops.execute_object_group_transfer(direction, torch.device("cpu"), PIN, [spec],
                                      _steps(host, staging, per_chunk, 2, direction, 1))
    if direction == H2D:
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(tensors_of(kv), tensors_of(ref_kv)))
    else:
        assert all(torch.equal(a, b) for a, b in zip(host, ref_host)) and any(h.any() for h in host)


# ---- bad plans are refused before any write -----------------------------------------------------

def _snapshot(*tensors):
    return [t.clone() for t in tensors]


@pytest.mark.parametrize("direction", [H2D, D2H], ids=["retrieve", "store"])
@pytest.mark.parametrize("breakage, error, words", [
    ("capacity", ValueError, ["batch_steps[2].launches[0]", "block_ids_capacity"]),
    ("group", ValueError, ["batch_steps[2].launches[0].group_idx=3", "kernel_group_specs"]),
    ("objects", ValueError, ["batch_steps[2].launches[0].num_objects=3", "[1, 2]"]),
    ("block", IndexError, ["batch_steps[2].launches[0]", "outside the KV cache's 24 blocks"]),
    ("alignment", ValueError, ["host_buffer_alignment=48", "power of two"]),
    ("direction", ValueError, ["direction=5", "TransferDirection"]),
])
def test_bad_plan_is_refused_before_any_write(breakage, error, words, direction):
    gen = torch.Generator().manual_seed(5)
    kv, sd, fmt, ptrs, ids, staging, spec, per_chunk, region = _plan("NL_X_TWO_NB_BS_NH_HS", torch.float16, gen)
    host = [torch.randint(0, 256, (region,), generator=gen, dtype=torch.uint8) for _ in range(5)]
    steps = _steps(host, staging, per_chunk, 2, direction, 0)
    alignment, use_direction = PIN, direction
    last = steps[-1].launches[0]
    if breakage == "capacity":
        last.total_blocks += 1
    elif breakage == "group":
        last.group_idx = 3
    elif breakage == "objects":
        last.num_objects = 3
    elif breakage == "block":
        ids[-1] = 24
    elif breakage == "alignment":
        alignment = 48
    else:
        use_direction = 5
    before = _snapshot(*tensors_of(kv), *host, *staging)
    with pytest.raises(error) as info:
        ops.execute_object_group_transfer(use_direction, "cpu", alignment, [spec], steps)
    for word in words:
        assert word in str(info.value)
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(before, [*tensors_of(kv), *host, *staging]))


@pytest.mark.parametrize("breakage, words", [
    ("block", ["objects[2] x group_specs[0]", "outside the KV cache's 24 blocks"]),
    ("short", ["objects[2]", "past the object size nbytes="]),
    ("chunk", ["objects[2].chunk_idx=3", "block ids [12, 16)"]),
    ("skip", ["objects[2].skip_prefix_n_blocks[0]=5", "4 blocks"]),
    ("skips", ["objects[2].skip_prefix_n_blocks has 2 entries", "one per group spec (1)"]),
    ("pointers", ["group_specs[0].paged_layer_ptrs has 2 pointers", "needs 3"]),
    ("slots", ["group_specs[0].slots_per_chunk=60", "multiple of shape_desc.bs=16"]),
])
def test_bad_direct_copy_is_refused_before_any_write(breakage, words):
    gen = torch.Generator().manual_seed(6)
    kv, sd, region = _group("NL_X_TWO_NB_BS_NH_HS", torch.float16, gen)
    ids = torch.randperm(24, generator=gen)[:12].tolist()
    host = [torch.randint(0, 256, (region,), generator=gen, dtype=torch.uint8) for _ in range(3)]
    layer_ptrs, slots = [t.data_ptr() for t in tensors_of(kv)], CHUNK
    sizes, chunk_of, skips = [region] * 3, [0, 1, 2], [[0], [0], [0]]
    if breakage == "block":
        ids[-1] = 24
    elif breakage == "short":
        sizes[2] = region - 1
    elif breakage == "chunk":
        chunk_of[2] = 3
    elif breakage == "skip":
        skips[2] = [5]
    elif breakage == "skips":
        skips[2] = [0, 0]
    elif breakage == "pointers":
        layer_ptrs = layer_ptrs[:2]
    else:
        slots = 60
    spec = ops.DirectCopyGroupSpec(layer_ptrs, sd, int(ln.EngineKVFormat.NL_X_TWO_NB_BS_NH_HS), slots, 0, ids)
    objects = [ops.DirectCopyObject(h.data_ptr(), 0, n, c, s) for h, n, c, s in zip(host, sizes, chunk_of, skips)]
    before = _snapshot(*tensors_of(kv))
    with pytest.raises((ValueError, IndexError)) as info:
        ops.execute_direct_copy_transfer(H2D, "cpu", PIN, [spec], objects)
    for word in words:
        assert word in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, tensors_of(kv)))


def test_plan_types_refuse_bad_fields_and_foreign_types():
    with pytest.raises(ValueError, match=r"StagingCopy.dest=0 is a null address"):
        ops.StagingCopy(0, 8, 16, 0)
    with pytest.raises(ValueError, match=r"LaunchVar.total_blocks=-1 must be an integer >= 0"):
        ops.LaunchVar(0, 0, -1, 1, 0)
    with pytest.raises(ValueError, match=r"KernelGroupSpec.engine_kv_format=99"):
        ops.KernelGroupSpec(8, [8], shape_desc(torch.float16), CHUNK, 99, 8, 1)
    with pytest.raises(ValueError, match=r"DirectCopyObject.host_ptr=0"):
        ops.DirectCopyObject(0, 0, 16, 0, [0])
    # LMCache's own KernelGroupSpec hides its fields from Python: say what to build instead
    native = ln.KernelGroupSpec(8, [8], ln.PageBufferShapeDesc(), CHUNK, 1, 8, 1)
    with pytest.raises(TypeError, match=r"kernel_group_specs\[0\].*lmcache_ascend.ops.KernelGroupSpec"):
        ops.execute_object_group_transfer(H2D, "cpu", PIN, [native], [])
    with pytest.raises(TypeError, match=r"BatchStep.launches\[0\]"):
        ops.BatchStep([], [object()])


def test_direct_copy_eligibility_covers_lmcaches_table():
    """Every format LMCache's copy engine takes (its test_format_eligibility_table), and more: the
    block transfer also gathers HND blocks. Not the plane tuples, which pointers cannot describe."""
    fmt = ln.EngineKVFormat
    lmcache_eligible = {fmt.NB_NL_TWO_BS_NH_HS, fmt.NL_X_TWO_NB_BS_NH_HS, fmt.NL_X_NB_TWO_BS_NH_HS, fmt.NL_X_NB_BS_HS,
                        fmt.TWO_X_NL_X_NBBS_NH_HS, fmt.NL_X_NBBS_ONE_HS, fmt.TWO_X_NL_X_NB_BS_NH_HS,
                        fmt.NL_X_NB_BS_NH_TWO_HS, fmt.NL_X_NB_BS_NH_CS}
    assert all(ops.direct_copy_format_supported(f) for f in lmcache_eligible)
    assert ops.direct_copy_format_supported(fmt.NL_X_NB_NH_BS_CS)  # vLLM's CPU layout
    assert not ops.direct_copy_format_supported(fmt.NL_X_NP_X_NB_BS_ONE_HS)
    assert not ops.direct_copy_format_supported(99)
    assert ops.batch_memcpy_supported() is True


# ---- on an NPU cache (stand-ins: host buffers the routing sees as NPU memory) -------------------

def _record_devices(monkeypatch):
    import lmcache_ascend.transfer as transfer

    seen, real = [], transfer.backend_for
    monkeypatch.setattr(transfer, "current_npu_stream", lambda *_: 0x1234)
    monkeypatch.setattr(transfer, "backend_for", lambda kv, chunks, slots: seen.append((kv, tuple(chunks)))
                        or real(kv, chunks, slots))
    return seen


def test_direct_copy_on_an_npu_cache_goes_to_the_npu_with_host_objects(monkeypatch):
    seen = _record_devices(monkeypatch)
    gen = torch.Generator().manual_seed(8)
    kv, sd, region = _group("NL_X_TWO_NB_BS_NH_HS", torch.float16, gen)
    host = torch.randint(0, 256, (region,), generator=gen, dtype=torch.uint8)
    before = _snapshot(*tensors_of(kv))
    spec = ops.DirectCopyGroupSpec([t.data_ptr() for t in tensors_of(kv)], sd, FORMAT_VALUES["NL_X_TWO_NB_BS_NH_HS"],
                                   CHUNK, 0, list(range(4)))
    with pytest.raises(RuntimeError, match="built without the Ascend backend"):
        ops.execute_direct_copy_transfer(H2D, "npu:0", PIN, [spec], [ops.DirectCopyObject(host.data_ptr(), 0,
                                                                                          region, 0, [0])])
    assert ("npu", ("cpu",)) in seen
    assert all(torch.equal(a, b) for a, b in zip(before, tensors_of(kv)))


def test_plan_on_an_npu_cache_views_its_staging_buffers_on_the_npu(monkeypatch):
    """Pointer arrays and block ids are read through tensor_from_ptr on the device (here: host
    views), staging buffers are device memory; D2H launches come before any staging copy."""
    seen = _record_devices(monkeypatch)
    devices = []
    real = ops.tensor_from_ptr
    monkeypatch.setattr(ops, "tensor_from_ptr", lambda ptr, shape, dtype, device: devices.append(str(device))
                        or real(ptr, shape, dtype, "cpu"))
    gen = torch.Generator().manual_seed(9)
    kv, sd, fmt, ptrs, ids, staging, spec, per_chunk, region = _plan("NL_X_TWO_NB_BS_NH_HS", torch.float16, gen)
    host = [torch.zeros(region, dtype=torch.uint8) for _ in range(2)]
    with pytest.raises(RuntimeError, match="built without the Ascend backend"):
        ops.execute_object_group_transfer(D2H, "npu:0", PIN, [spec], _steps(host, staging, per_chunk, 2, D2H, 0))
    assert devices and set(devices) == {"npu:0"}
    assert ("npu", ("npu", "npu")) in seen
    assert not any(h.any() for h in host) and not any(s.any() for s in staging)
