"""Serve LMCache's local CPU pool from lmcache-ascend's native arena (PinnedArenaAllocator).

Why: LMCache's LocalCPUBackend builds its L1 pool as a MixedMemoryAllocator: memory from
  alloc_pinned_ptr carved by a Python first-fit allocator (~5x slower per operation, see
  docs/benchmarks.md), and on Ascend the pool must be pinned and registered with the NPU, which
  the arena does. There is no setting to choose the allocator class.
How: while `LocalCPUBackend.initialize_allocator` runs, the name `MixedMemoryAllocator` in its
  module resolves to a factory that builds a PinnedArenaAllocator (a MixedMemoryAllocator
  subclass, so LMCache's isinstance checks hold) for the plain pool, and LMCache's own class for
  the paged variants (NIXL, io_uring) it builds with use_paging=True. In a worker whose NPU is
  current (vllm-ascend has imported torch_npu and set the device), registration with the NPU is
  enabled first, so the pool is registered and the kernels address it directly.
Versions: LMCache 0.5.x (checked against 0.5.6) and 0.3.7 (same method, called without
  use_paging); 0.3.3 has no initialize_allocator and is left alone.
Remove when: LMCache lets a config key or device plugin choose the local CPU allocator.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any

_MARK = "_lmcache_ascend_patched"
logger = logging.getLogger(__name__)


def _register_with_the_npu() -> None:
    """On an NPU worker: enable host-memory registration; without it the pool still works and NPU
    transfers stage through a device buffer (slower), so a failure is a warning with its fix."""
    torch_npu = sys.modules.get("torch_npu")  # imported by vllm-ascend on NPU hosts only
    if torch_npu is None or not torch_npu.npu.is_available():
        return
    from lmcache_ascend.memory import enable_device_registration

    try:
        enable_device_registration()
    except RuntimeError as exc:
        logger.warning("lmcache-ascend: LMCache's CPU pool stays unregistered, so NPU transfers are staged "
                       "through device memory: %s", exc)


def apply() -> None:
    import lmcache.v1.storage_backend.local_cpu_backend as module

    backend = module.LocalCPUBackend
    original = getattr(backend, "initialize_allocator", None)
    if original is None or getattr(original, _MARK, False):  # None: LMCache 0.3.3, which takes its allocator
        return                                                # from the caller (and is CUDA-only there)
    upstream = module.MixedMemoryAllocator

    def arena_unless_paged(size: int, use_paging: bool = False, **kwargs: Any) -> Any:
        if use_paging:
            return upstream(size, use_paging=True, **kwargs)
        from lmcache_ascend.memory import PinnedArenaAllocator

        return PinnedArenaAllocator(size, **kwargs)

    @functools.wraps(original)
    def initialize_allocator(self: Any, config: Any, metadata: Any = None) -> Any:
        _register_with_the_npu()
        module.MixedMemoryAllocator = arena_unless_paged
        try:
            return original(self, config, metadata)
        finally:
            module.MixedMemoryAllocator = upstream

    setattr(initialize_allocator, _MARK, True)
    backend.initialize_allocator = initialize_allocator
