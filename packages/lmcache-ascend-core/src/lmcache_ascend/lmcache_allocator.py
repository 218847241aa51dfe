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
        self.size = size_bytes
        self.align_bytes = alignment
        self.use_hugepages = huge_pages
        self.numa_mapping = options.get("numa_mapping")
        self.buffer = torch.frombuffer(self.pool.buffer(), dtype=torch.uint8)
        self.pin_allocator = self  # LMCache code reaches the carving allocator through this name
        self.host_mem_lock = threading.RLock()  # free() may run from __del__ during an allocation
        self.buffer_allocator = compat.BufferAllocator("cpu")
        self._unregistered = False

    # -- the allocator interface (generation-specific signatures are bound below) ---------------
    def _allocate(self, shapes: Any, dtypes: Any, fmt: Any, batch_size: Optional[int] = None) -> Any:
        if fmt == compat.MemoryFormat.BINARY_BUFFER:
            return compat.buffer_allocate(self.buffer_allocator, shapes, dtypes, fmt, batch_size)
        if fmt not in compat.KV_FORMATS:
            raise ValueError(f"Unsupported memory format: {fmt}")
        if batch_size is not None and batch_size <= 0:
            return [] if batch_size == 0 else None
        shapes, dtypes = compat.as_lists(shapes, dtypes)
        if any(d is None for d in dtypes):
            raise ValueError(f"dtype must be given for format {fmt}")
        nbytes = sum(s.numel() * d.itemsize for s, d in zip(shapes, dtypes))
        if nbytes <= 0:
            raise ValueError("size must be greater than 0")
        if self._unregistered:
            raise ValueError("PinnedArenaAllocator is closed; create a new one")
        if nbytes * (batch_size or 1) > self.pool.capacity:
            # HostPool raises for requests that can never fit; LMCache expects None (memory pressure).
            logger.debug("lmcache-ascend: %d x %d bytes exceed the %d-byte pool", batch_size or 1, nbytes,
                         self.pool.capacity)
            return None
        with self.host_mem_lock:
            if batch_size is None:
                address = self.pool.allocate(nbytes)
                return None if address is None else self._object(address, nbytes, nbytes, shapes, dtypes, fmt)
            addresses = self.pool.allocate_batch(nbytes, batch_size)
            if addresses is None:
                return None
            aligned = self.pool.allocation_size(addresses[0])
            return [self._object(a, aligned, nbytes, shapes, dtypes, fmt) for a in addresses]

    def _object(self, address: int, view_bytes: int, nbytes: int, shapes: list, dtypes: list, fmt: Any) -> Any:
        offset = address - self.pool.base
        metadata = compat.make_metadata(shapes, dtypes, offset, self.pool.allocation_size(address), fmt)
        return compat.TensorMemoryObj(self.buffer[offset: offset + view_bytes], metadata, parent_allocator=self)

    def free(self, memory_obj: Any, allocator_type: Optional[str] = None) -> None:
        self.batched_free([memory_obj], allocator_type)

    def batched_free(self, memory_objs: list, allocator_type: Optional[str] = None, update_stats: bool = True) -> None:
        if not memory_objs or self._unregistered:  # after close, late frees (e.g. from __del__) are no-ops
            return
        buffers = [o for o in memory_objs if isinstance(o, compat.BytesBufferMemoryObj)]
        if buffers:
            self.buffer_allocator.batched_free(buffers)
        with self.host_mem_lock:
            live = [o for o in memory_objs if not isinstance(o, compat.BytesBufferMemoryObj) and o.is_valid()]
            if not live:
                return
            # One native call validates every address first: a foreign object leaves the pool unchanged.
            self.pool.free_batch([self.pool.base + o.meta.address for o in live])
            for o in live:
                o.invalidate()

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
