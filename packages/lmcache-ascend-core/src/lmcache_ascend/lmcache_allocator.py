"""PinnedArenaAllocator: LMCache's local CPU pool served by the native host arena.

It is a MixedMemoryAllocator subclass (LMCache's local CPU backend asserts that type on its
eviction path) that never calls the parent constructor: the pool is a HostPool, carved by the
native allocator, and every KV memory object is a TensorMemoryObj over a slice of one
torch.frombuffer view of the pool. BINARY_BUFFER objects go to LMCache's own BufferAllocator, as
upstream. Works with LMCache 0.5.x and 0.3.x (differences: lmcache_ascend._lmcache_compat).
"""
from __future__ import annotations

import logging
import threading
from collections import namedtuple
from typing import Any, Optional

import torch

from lmcache_ascend import _lmcache_compat as compat
from lmcache_ascend.memory import HostPool

logger = logging.getLogger(__name__)

FreeBlock = namedtuple("FreeBlock", ["start", "size"])
_MAX_SPARES = 4096  # bounds the memory-object cache (each holds only a view, not pool memory)

# LMCache constructor options that select its own allocator flavours; accepted for drop-in use.
_LMCACHE_OPTIONS = {"use_paging", "shapes", "dtypes", "shape", "dtype", "fmt", "config", "shm_name", "numa_mapping"}


def _numa_node(numa_mapping: Any) -> Optional[int]:
    """LMCache's NUMA mapping (GPU index -> node) names one node for this process's pool."""
    if not numa_mapping:
        return None
    nodes = set(getattr(numa_mapping, "gpu_to_numa_mapping", numa_mapping).values()) \
        if not isinstance(numa_mapping, int) else {numa_mapping}
    return min(nodes) if nodes else None


class PinnedArenaAllocator(compat.MixedMemoryAllocator):
    """LMCache memory allocator over a native pinned host arena.

    size_bytes: pool size. Options: alignment / align_bytes (default 4096), huge_pages /
    use_hugepages, numa_node (or LMCache's numa_mapping), lock, register, populate (see
    lmcache_ascend.memory.HostPool). LMCache's own options (use_paging, shapes, dtypes, fmt, config,
    shm_name) are accepted and ignored: the arena serves every KV format without paging.
    """

    def __init__(self, size_bytes: int, use_paging: bool = False, **options: Any) -> None:  # noqa: D107
        # Deliberately no super().__init__(): it would allocate a second pool of size_bytes.
        alignment = options.pop("align_bytes", options.pop("alignment", 4096))
        huge_pages = options.pop("use_hugepages", options.pop("huge_pages", False))
        numa_node = options.pop("numa_node", None)
        if numa_node is None:
            numa_node = _numa_node(options.get("numa_mapping"))
        pool_options = {k: options.pop(k) for k in ("lock", "register", "populate") if k in options}
        unknown = set(options) - _LMCACHE_OPTIONS
        if unknown:
            raise TypeError(f"PinnedArenaAllocator: unknown option(s) {sorted(unknown)}; accepted: alignment, "
                            "huge_pages, numa_node, lock, register, populate and LMCache's "
                            f"{sorted(_LMCACHE_OPTIONS)}")
        if use_paging:
            logger.info("lmcache-ascend: use_paging ignored; the arena allocates every size without pages")
        self.pool = HostPool(size_bytes, alignment=alignment, huge_pages=huge_pages, numa_node=numa_node,
                             **pool_options)
        logger.info("lmcache-ascend: LMCache local CPU pool of %.2f GiB in a native arena (huge pages %s, NUMA node "
                    "%s, locked %s, registered with a device %s)", size_bytes / 2**30, huge_pages, numa_node,
                    self.pool.locked, self.pool.registered)
        self.size = size_bytes
        self.align_bytes = alignment
        self.use_hugepages = huge_pages
        self.numa_mapping = options.get("numa_mapping")
        self.buffer = torch.frombuffer(self.pool.buffer(), dtype=torch.uint8)
        self._arena = self.pool._arena  # the native arena, called directly on the hot path
        self._base, self._capacity, self._align_mask = self.pool.base, self.pool.capacity, alignment - 1
        self.pin_allocator = self  # LMCache code reaches the carving allocator through this name
        self.host_mem_lock = threading.RLock()  # free() may run from __del__ during an allocation
        self.buffer_allocator = compat.BufferAllocator("cpu")
        self._unregistered = False
        # Freed memory objects by offset, revived when the same slice is handed out again for the
        # same layout: building a TensorMemoryObj costs more than the allocation itself.
        self._spares: dict[int, tuple[Any, tuple]] = {}  # offset -> (object, layout key)

    # -- the allocator interface (generation-specific signatures are bound below) ---------------
    # The hot path talks to the native arena directly and keeps Python work to a minimum: LMCache
    # allocates and frees one object per chunk per request.
    def _allocate(self, shapes: Any, dtypes: Any, fmt: Any, batch_size: Optional[int] = None) -> Any:
        if fmt not in compat.KV_FORMATS:
            if fmt == compat.MemoryFormat.BINARY_BUFFER:
                return compat.buffer_allocate(self.buffer_allocator, shapes, dtypes, fmt, batch_size)
            raise ValueError(f"Unsupported memory format: {fmt}")
        if batch_size is not None and batch_size <= 0:
            return [] if batch_size == 0 else None
        shapes, dtypes = compat.as_lists(shapes, dtypes)
        nbytes = compat.size_bytes(shapes, dtypes)
        if nbytes <= 0:
            raise ValueError("size must be greater than 0")
        if self._unregistered:
            raise ValueError("PinnedArenaAllocator is closed; create a new one")
        if nbytes * (batch_size or 1) > self._capacity:
            # HostPool raises for requests that can never fit; LMCache expects None (memory pressure).
            return None
        aligned = (nbytes + self._align_mask) & ~self._align_mask
        # Spares are only revived for the same slice length and layout, compared as one tuple.
        key = (tuple(shapes), tuple(dtypes))
        if batch_size is None:
            address = self._arena.allocate(nbytes)
            return None if address is None else self._object(address - self._base, nbytes, aligned, shapes,
                                                              dtypes, fmt, (key, nbytes))
        addresses = self._arena.allocate_batch(nbytes, batch_size)
        if addresses is None:
            return None
        # Upstream gives batched objects their padded slice; single ones their exact size.
        key, base, spares, out = (key, aligned), self._base, self._spares, []
        for a in addresses:  # inlined _object: this loop runs once per chunk of a request
            spare = spares.pop(a - base, None)
            if spare is not None and spare[1] == key:
                out.append(spare[0])
            else:
                out.append(self._object(a - base, aligned, aligned, shapes, dtypes, fmt, key, spare))
        compat.revive_many(out, fmt)
        return out

    def _object(self, offset: int, view_bytes: int, aligned: int, shapes: list, dtypes: list, fmt: Any,
                key: tuple, spare: Any = ()) -> Any:
        if spare == ():
            spare = self._spares.pop(offset, None)
            if spare is not None and spare[1] == key:
                return compat.revive(spare[0], fmt)
        metadata = compat.make_metadata(shapes, dtypes, offset, aligned, fmt)
        obj = compat.TensorMemoryObj(self.buffer[offset: offset + view_bytes], metadata, parent_allocator=self)
        obj._lmcache_ascend_layout = key  # lets free() keep it as a spare
        return obj

    def free(self, memory_obj: Any, allocator_type: Optional[str] = None) -> None:
        if self._unregistered:  # after close, late frees (e.g. from __del__) are no-ops
            return
        if type(memory_obj) is compat.BytesBufferMemoryObj:
            self.buffer_allocator.free(memory_obj)
            return
        with self.host_mem_lock:  # the validity check and the free must be one step
            if not memory_obj.is_valid():
                return
            offset = memory_obj.meta.address
            self._arena.free(self._base + offset)  # raises for a foreign object, pool unchanged
            memory_obj.invalidate()
            if len(self._spares) >= _MAX_SPARES:  # keep the cache bounded; dropped spares are rebuilt
                self._spares.clear()
            self._spares[offset] = (memory_obj, memory_obj._lmcache_ascend_layout)

    def batched_free(self, memory_objs: list, allocator_type: Optional[str] = None, update_stats: bool = True) -> None:
        if not memory_objs or self._unregistered:
            return
        # type() identity, not isinstance: these are ABCs, and isinstance on them dominates this loop.
        buffer_type = compat.BytesBufferMemoryObj
        buffers = [o for o in memory_objs if type(o) is buffer_type]
        if buffers:
            self.buffer_allocator.batched_free(buffers)
        with self.host_mem_lock:
            live = [o for o in memory_objs if type(o) is not buffer_type and o.is_valid()]
            if live:
                # One native call checks every address first: a foreign object leaves the pool unchanged.
                base = self._base
                self._arena.free_batch([base + o.meta.address for o in live])
                if len(self._spares) + len(live) > _MAX_SPARES:
                    self._spares.clear()
                spares = self._spares
                for o in live:
                    o.invalidate()
                    spares[o.meta.address] = (o, o._lmcache_ascend_layout)

    def memcheck(self) -> bool:
        s = self.pool.stats()
        extents = self.pool.free_extents()
        merged = all(a[0] + a[1] < b[0] for a, b in zip(extents, extents[1:]))
        return merged and s["used"] + sum(size for _, size in extents) == s["capacity"]

    def close(self) -> None:
        """Release the pool; live objects are reported and stay readable until they are dropped."""
        if self._unregistered:
            return
        self._unregistered = True
        self.pool.close()

    # -- what LMCache's tests and storage backends read --------------------------------------
    @property
    def total_allocated_size(self) -> int:
        return self.pool.stats()["used"]

    @property
    def num_active_allocations(self) -> int:
        return self.pool.stats()["allocations"]

    @property
    def explicit_list(self) -> list:
        """LMCache 0.3's name for the free-block list (its tests inspect it)."""
        return [FreeBlock(offset, size) for offset, size in self.pool.free_extents()]

    def get_paged_buffers(self) -> None:
        return None

    def get_underlying_buffer(self) -> torch.Tensor:
        """The whole pool as one uint8 tensor (what the memory objects slice)."""
        return self.buffer

    def __str__(self) -> str:
        return "PinnedArenaAllocator"


if compat.GENERATION == 5:
    def _allocate_5(self, shapes, dtypes, fmt=compat.MemoryFormat.KV_2LTD, allocator_type=None):
        # Fast path for what LMCache asks for per chunk: one shape, one dtype, a KV format.
        if type(shapes) is torch.Size and isinstance(dtypes, torch.dtype) and fmt in compat.KV_FORMATS \
                and not self._unregistered:
            nbytes = shapes.numel() * dtypes.itemsize
            if 0 < nbytes <= self._capacity:
                address = self._arena.allocate(nbytes)
                if address is None:
                    return None
                offset = address - self._base
                key = (((shapes,), (dtypes,)), nbytes)
                spare = self._spares.pop(offset, None)
                if spare is not None and spare[1] == key:
                    return compat.revive(spare[0], fmt)
                aligned = (nbytes + self._align_mask) & ~self._align_mask
                return self._object(offset, nbytes, aligned, [shapes], [dtypes], fmt, key, None)
        return self._allocate(shapes, dtypes, fmt)

    def _batched_allocate_5(self, shapes, dtypes, batch_size, fmt=compat.MemoryFormat.KV_2LTD, allocator_type=None):
        return self._allocate(shapes, dtypes, fmt, batch_size)

    PinnedArenaAllocator.allocate = _allocate_5
    PinnedArenaAllocator.batched_allocate = _batched_allocate_5
else:
    def _allocate_3(self, shape, dtype, fmt=compat.MemoryFormat.KV_2LTD, allocator_type=None):
        return self._allocate(shape, dtype, fmt)

    def _batched_allocate_3(self, shape, dtype, batch_size, fmt=compat.MemoryFormat.KV_2LTD, allocator_type=None):
        return self._allocate(shape, dtype, fmt, batch_size)

    PinnedArenaAllocator.allocate = _allocate_3
    PinnedArenaAllocator.batched_allocate = _batched_allocate_3
