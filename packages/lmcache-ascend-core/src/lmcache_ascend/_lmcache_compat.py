"""Every difference between the LMCache generations we support, in one place.

Generation 5 = LMCache 0.5.x (allocators in lmcache.v1.memory_allocators.*, plural shapes/dtypes);
generation 3 = LMCache 0.3.x (everything in lmcache.v1.memory_management, one shape per object).
Imported lazily: the core wheel works without LMCache installed.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from lmcache.v1 import memory_management as _mm

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
