"""The differences between the LMCache generations we support, as the core sees them.

Generation 5 = LMCache 0.5.x (allocators in lmcache.v1.memory_allocators.*, plural shapes/dtypes);
generation 3 = LMCache 0.3.x (everything in lmcache.v1.memory_management, one shape per object).
Imported lazily: the core wheel works without LMCache installed. Integration wheels import the names
lmcache_ascend.lmcache_compat re-exports, not this module; differences only an integration sees live
in that integration (the vLLM connector's: lmcache_ascend.integration.vllm.lmcache_compat).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from lmcache.v1 import memory_management as _mm

from lmcache_ascend.engine_formats import ENGINE_FORMATS

MemoryFormat = _mm.MemoryFormat
MemoryObjMetadata = _mm.MemoryObjMetadata
TensorMemoryObj = _mm.TensorMemoryObj
BytesBufferMemoryObj = _mm.BytesBufferMemoryObj

try:  # 0.5.x split the allocators into their own modules
    MixedMemoryAllocator = importlib.import_module(
        "lmcache.v1.memory_allocators.mixed_memory_allocator").MixedMemoryAllocator
    BufferAllocator = importlib.import_module("lmcache.v1.memory_allocators.buffer_allocator").BufferAllocator
    GENERATION = 5
except ImportError:
    MixedMemoryAllocator = _mm.MixedMemoryAllocator
    BufferAllocator = _mm.BufferAllocator
    GENERATION = 3

# Formats the pinned pool serves (BINARY_BUFFER goes to plain bytearrays, as upstream). A tuple:
# `in` compares enum members by identity, much faster than hashing them.
KV_FORMATS = tuple(getattr(MemoryFormat, name) for name in
                   ("KV_2LTD", "KV_2TD", "KV_T2D", "KV_MLA_FMT", "EC_TD", "HS_TD") if hasattr(MemoryFormat, name))


def as_lists(shapes: Any, dtypes: Any) -> tuple[list[torch.Size], list[torch.dtype]]:
    """One shape/dtype or lists of them -> equal-length lists (0.5 objects may hold several)."""
    if type(shapes) is torch.Size and isinstance(dtypes, torch.dtype):  # the common case, fast
        return [shapes], [dtypes]
    if isinstance(shapes, torch.Size) or (shapes and isinstance(shapes[0], int)) or len(shapes) == 0:
        shapes = [shapes]
    shapes = [torch.Size(s) for s in shapes]
    dtypes = list(dtypes) if isinstance(dtypes, (list, tuple)) else [dtypes]
    if len(dtypes) != len(shapes):
        raise ValueError(f"shapes and dtypes differ in length: {len(shapes)} shapes, {len(dtypes)} dtypes")
    return shapes, dtypes


def size_bytes(shapes: list[torch.Size], dtypes: list[torch.dtype]) -> int:
    if len(shapes) == 1 and dtypes[0] is not None:
        return shapes[0].numel() * dtypes[0].itemsize
    if any(d is None for d in dtypes):
        raise ValueError("a dtype is required for KV memory formats")
    return sum(s.numel() * d.itemsize for s, d in zip(shapes, dtypes))


def make_metadata(shapes: list[torch.Size], dtypes: list[torch.dtype], offset: int, phy_size: int,
                  fmt: Any) -> Any:
    if GENERATION == 5:
        return MemoryObjMetadata(shapes[0], dtypes[0], offset, phy_size, 1, 0, fmt, shapes=shapes, dtypes=dtypes)
    return MemoryObjMetadata(shapes[0], dtypes[0], offset, phy_size, 1, 0, fmt)


def revive(obj: Any, fmt: Any) -> Any:
    """Start a new lifetime for a freed TensorMemoryObj of the same shapes, dtypes and slice
    (what LMCache's own PagedTensorMemoryAllocator does with its pages)."""
    meta = obj.meta
    meta.ref_count, meta.pin_count, meta.fmt = 1, 0, fmt
    if GENERATION == 5:
        meta.cached_positions = None
        obj._used_size_override = None
        obj.reset_l1_manager()
    obj.valid = True
    return obj


def revive_many(objs: list, fmt: Any) -> None:
    """revive() for a batch (new objects are revived too: harmless, they are fresh)."""
    for obj in objs:
        meta = obj.meta
        meta.ref_count, meta.pin_count, meta.fmt = 1, 0, fmt
        obj.valid = True
        if GENERATION == 5:
            meta.cached_positions = None
            obj._used_size_override = None
            obj.reset_l1_manager()


def buffer_allocate(allocator: Any, shapes: Any, dtypes: Any, fmt: Any, batch_size: int | None = None) -> Any:
    if batch_size is None:
        return allocator.allocate(shapes, dtypes, fmt)
    return allocator.batched_allocate(shapes, dtypes, batch_size, fmt)


# =============================================================================================
# The engine's KV layout (lmcache_ascend.lmcache_compat serves it to integration wheels)
#
# - 5: LMCache detects the engine's KV layout (EngineKVFormat, normalize_kv_and_discover_format,
#   layout_hints); 3: it does not, the layout is read here from the shapes of the tensors the
#   engine registered.
# Imported on first use: the allocator above needs none of it.
# =============================================================================================

# LMCache 0.5's EngineKVFormat names -> lmcache_ascend layout of one layer: engine_formats' table
# for the formats the connector serves, one tensor (or tuple) per layer in the layout's own axes
# (not cross-layer, SGLang's K-then-V lists, single-plane K or V, or DSA indexer planes: those are
# the device module's, for MP mode), except that the connector splits
# K|V rows packed per head (vLLM's CPU platform) into K and V planes, so its memory objects keep
# LMCache's standard KV_2LTD format.
LAYOUT_OF_ENGINE_FORMAT = {
    **{f.name: f.layout for f in ENGINE_FORMATS.values()
       if not f.packed and f.engine_axes is None and not f.kv_list
       and f.name != "NL_X_NB_BSV_BSS"},
    "NL_X_NB_NH_BS_CS": "cpu",      # [NB, NH, BS, 2*HS] vLLM CPU platform
    "NL_X_NB_BS_NH_CS": "cpu_nhd",  # [NB, BS, NH, 2*HS]
}


def discover_kv_layout(kvcaches: Any, *, hidden: int, use_mla: bool,
                       layout_hints: Any = None) -> tuple[str, list, str]:
    """How vLLM's registered KV caches are laid out.

    Returns (lmcache_ascend layout name, the per-layer entries to describe, what was recognised
    for logs). hidden: heads * head_size of LMCache's memory objects (the latent size for MLA).
    """
    first = first_tensor(kvcaches)
    if GENERATION == 3:  # no detection in LMCache
        return _layout_from_shapes(list(kvcaches), hidden, use_mla)
    detect = importlib.import_module("lmcache.v1.gpu_connector.utils").normalize_kv_and_discover_format
    engine_type = importlib.import_module("lmcache.utils").EngineType
    fmt, normalized = detect(list(kvcaches), engine_type.VLLM, layout_hints=layout_hints)
    layout = LAYOUT_OF_ENGINE_FORMAT.get(fmt.name)
    if layout is None:
        raise ValueError(f"vLLM's KV cache layout {fmt.name} (first layer: shape {list(first.shape)}, dtype "
                         f"{first.dtype}, device {first.device}) is not supported by lmcache-ascend; supported: "
                         f"{sorted(LAYOUT_OF_ENGINE_FORMAT)}")
    return layout, normalized, fmt.name


def first_tensor(kvcaches: Any) -> Any:
    """The first layer's tensor (its K tensor where layers are (K, V) pairs)."""
    if not len(kvcaches):
        raise ValueError("kvcaches: no layers given; pass vLLM's KV caches, one tensor (or (K, V) pair) per layer")
    return kvcaches[0][0] if isinstance(kvcaches[0], (tuple, list)) else kvcaches[0]


def _layout_from_shapes(kvcaches: list, hidden: int, use_mla: bool) -> tuple[str, list, str]:
    """LMCache 0.3.x: the layout of vLLM's per-layer caches from their shapes (vLLM's logical
    shapes; strides are read later by lmcache_ascend.layouts.describe_paged)."""
    entry = kvcaches[0]
    if isinstance(entry, (tuple, list)):
        shapes = [tuple(t.shape) for t in entry]
        if len(shapes) == 2 and all(len(s) == 4 and s[2] * s[3] == hidden for s in shapes) and not use_mla:
            return "separate_kv", kvcaches, f"(K, V) pairs of [NB, BS, NH, HS] = {list(shapes[0])}"
        if use_mla and all(len(s) in (3, 4) and s[2:-1] in ((), (1,)) for s in shapes) \
                and sum(s[-1] for s in shapes) == hidden:
            return "mla_planes", kvcaches, f"MLA plane tuples {[list(s) for s in shapes]}"
    else:
        shape = tuple(entry.shape)
        layout = _single_tensor_layout(shape, hidden, use_mla)
        if layout is not None:
            return layout, kvcaches, f"{layout} {list(shape)}"
        shapes = [shape]
    described = " and ".join(str(list(s)) for s in shapes)
    raise ValueError(
        f"kvcaches: cannot tell the layout of vLLM's KV cache (first layer: {described}, "
        f"{'MLA' if use_mla else 'not MLA'}, {hidden} elements per token and K/V plane expected from LMCache's "
        "metadata) under LMCache 0.3.x; supported per layer: [2, NB, BS, NH, HS] (flash-attn), "
        "[NB, 2, BS, NH, HS] (flashinfer), [NB, NH, BS, 2*HS] or [NB, BS, NH, 2*HS] (vLLM CPU), "
        "a (K, V) pair of [NB, BS, NH, HS] (vLLM-Ascend), [NB, BS, D] with use_mla, a tuple of [NB, BS, 1, W_i] "
        "planes with use_mla (vLLM-Ascend MLA / DSA, the W_i summing to D). Check that the model's "
        "kv heads x head_size (LMCache metadata kv_shape) match the cache, or upgrade to LMCache 0.5.x")


def _single_tensor_layout(shape: tuple, hidden: int, use_mla: bool) -> str | None:
    if use_mla:
        return "mla" if len(shape) == 3 and shape[2] == hidden else None
    if len(shape) == 5 and shape[3] * shape[4] == hidden:
        if shape[0] == 2:  # as LMCache 0.3.x decides: K/V axis first wins (NB == 2 is ambiguous)
            return "flash_attn"
        if shape[1] == 2:
            return "flashinfer"
    if len(shape) == 4 and shape[3] % 2 == 0:
        head_size = shape[3] // 2
        if shape[1] * head_size == hidden:  # vLLM's CPU platform (also when NH == BS)
            return "cpu"
        if shape[2] * head_size == hidden:
            return "cpu_nhd"
    return None
