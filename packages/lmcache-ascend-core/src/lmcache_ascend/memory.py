"""Pinned host memory: a native arena for LMCache's local CPU pool, and the alloc_pinned_ptr family.

`HostPool` is the arena (one mmap'd region, O(log n) best-fit allocator); `PinnedArenaAllocator`
(lmcache_ascend.lmcache_allocator) adapts it to LMCache's allocator interface. Pinning (mlock) and
device registration only matter when a device reads host memory directly: `lock="auto"` and
`register="auto"` turn them on exactly when device registration is enabled.

Device registration (Ascend) is enabled explicitly, never by importing something:
`enable_device_registration()` loads the CANN runtime with dlopen (the wheel itself needs no CANN)
and from then on pools are registered with the current NPU; a pool made with `register=True`
enables it on first use (and fails with the reason when it cannot). `device_registration_status()`
says which registrar is active or why none is. Call it in the process that owns the NPU, after
`torch.npu.set_device(...)`: registration maps host pages for the current device.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from lmcache_ascend import _cann
from lmcache_ascend._native import memory as _native

logger = logging.getLogger(__name__)

memlock_limit_description = _native.memlock_limit_description
has_cap_ipc_lock = _native.has_cap_ipc_lock
huge_pages_free = _native.huge_pages_free
numa_node_count = _native.numa_node_count
device_registrar_name = _native.device_registrar_name


def _resolve(option: Any, name: str) -> bool:
    """'auto' -> whether a device backend is installed (pinning is only needed for device DMA)."""
    if option == "auto":
        return device_registrar_name() is not None
    if isinstance(option, bool):
        return option
    raise ValueError(f"{name}={option!r} must be True, False or 'auto'")


# -- device registration -------------------------------------------------------------------------
_registration_lock = threading.Lock()
_registration_failure: str | None = None  # why the last enable_device_registration() failed
_NOT_ENABLED = ("not enabled: call lmcache_ascend.memory.enable_device_registration() in the process that "
                "owns the NPU (after torch.npu.set_device), or create the pool with register=True")


def enable_device_registration(env: Mapping[str, str] = os.environ, *,
                               driver_root: Path = _cann.DEFAULT_DRIVER_ROOT) -> str:
    """Register host pools with the Ascend NPU from now on; returns the registrar's name
    ('ascend-acl' on driver >= 25, 'ascend-hal' before). Idempotent.

    The runtime libraries are searched as `_cann.runtime_library_candidates` says (LMCACHE_ASCEND_ACL_LIB,
    _HAL_LIB, _DSMI_LIB override); the driver version comes from dsmi, else <driver_root>/version.info.
    Raises RuntimeError, with the library or call that failed and the fix, when the CANN runtime
    cannot be used here; nothing changes then and pools keep working unregistered.
    """
    global _registration_failure
    search = _cann.runtime_library_candidates(env, driver_root)
    with _registration_lock:
        try:
            _native.enable_ascend_registration(search["acl"], search["hal"], search["dsmi"],
                                               env.get("ASCEND_RT_VISIBLE_DEVICES", ""),
                                               _cann.driver_version(driver_root) or "")
        except (RuntimeError, ValueError) as exc:
            _registration_failure = f"cannot register host memory with an NPU: {exc}"
            raise RuntimeError(_registration_failure) from None
        _registration_failure = None
    logger.info("lmcache-ascend: device registration enabled (%s)", _native.ascend_registration_description())
    return device_registrar_name()


def disable_device_registration() -> None:
    """Stop registering new pools. ValueError while memory is still registered (close and drop
    those pools first)."""
    _native.disable_ascend_registration()


def device_registration_status() -> tuple[str | None, str]:
    """(registrar name, how it registers) when enabled, else (None, why not)."""
    name = device_registrar_name()
    if name is not None:
        return name, _native.ascend_registration_description() or f"{name}, installed by a device backend"
    with _registration_lock:
        return None, _registration_failure or _NOT_ENABLED


def device_address(host_address: int) -> int:
    """The device's address for a byte inside a registered pool (what NPU kernels are given)."""
    return _native.device_address(host_address)


def _resolve_register(option: Any) -> bool:
    if option is True and device_registrar_name() is None:
        try:
            enable_device_registration()
        except RuntimeError as exc:
            raise RuntimeError(f"register=True: {exc}. Pass register='auto' to register only where device "
                               "registration is enabled") from None
    return _resolve(option, "register")


class HostPool:
    """A pool of host memory handing out aligned byte ranges.

    size_bytes: pool size. alignment: of every allocation (power of two, default 4 KiB).
    huge_pages: back with 2 MiB huge pages. numa_node: bind to this NUMA node (None = no binding).
    lock: mlock the pool ('auto': when device registration is enabled). register: register with
    the current NPU ('auto': when device registration is enabled; True: enable it now, or fail with
    why it cannot be). populate: fault all pages in up front. Registration happens after NUMA
    binding, population and locking, so the device maps the pages where they will stay; closing
    an empty pool (or collecting it) unregisters it.
    """

    def __init__(self, size_bytes: int, *, alignment: int = 4096, huge_pages: bool = False,
                 numa_node: int | None = None, lock: bool | str = "auto", register: bool | str = "auto",
                 populate: bool = False) -> None:
        if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
            raise ValueError(f"size_bytes={size_bytes!r} must be a positive number of bytes")
        if not isinstance(alignment, int) or alignment < 64 or alignment & (alignment - 1):
            raise ValueError(f"alignment={alignment!r} must be a power of two >= 64 (default 4096)")
        register = _resolve_register(register)  # first: register=True enables registration, which lock="auto" follows
        self._arena = _native.Arena(size_bytes, alignment, huge_pages=huge_pages, numa_node=numa_node,
                                    lock=_resolve(lock, "lock"), populate=populate, register=register)

    # -- allocation ------------------------------------------------------------------------
    def allocate(self, size: int) -> int | None:
        """Address of `size` bytes, or None when the pool cannot fit them right now."""
        return self._arena.allocate(_positive(size, "size"))

    def allocate_batch(self, size: int, count: int) -> list[int] | None:
        """`count` addresses of `size` bytes each, all or nothing; None when they do not fit now."""
        return self._arena.allocate_batch(_positive(size, "size"), _positive(count, "count"))

    def free(self, address: int) -> None:
        self._arena.free(address)

    def free_batch(self, addresses: list[int]) -> None:
        self._arena.free_batch(list(addresses))

    def allocation_size(self, address: int) -> int:
        return self._arena.allocation_size(address)

    def free_extents(self) -> list[tuple[int, int]]:
        """(offset, size) of every free block, in address order."""
        return self._arena.free_extents()

    # -- views -----------------------------------------------------------------------------
    def buffer(self) -> memoryview:
        """The whole pool as a writable memoryview (keeps the pool's pages mapped while alive)."""
        return memoryview(self._arena)

    def tensor(self, address: int, nbytes: int, dtype: Any = None, shape: tuple[int, ...] | None = None):
        """A torch tensor over `nbytes` at `address` (no copy). Needs torch."""
        import torch

        offset = address - self.base
        if offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(f"range 0x{address:x}+{nbytes} is outside this pool "
                             f"[0x{self.base:x}, 0x{self.base + self.capacity:x})")
        t = torch.frombuffer(self._arena, dtype=torch.uint8, count=nbytes, offset=offset)
        if dtype is not None:
            t = t.view(dtype)
        return t.view(shape) if shape is not None else t

    # -- state -----------------------------------------------------------------------------
    def stats(self) -> dict:
        """capacity, used, free, largest_free, free_blocks, allocations, fragmentation."""
        return self._arena.stats()

    @property
    def base(self) -> int:
        return self._arena.base

    @property
    def capacity(self) -> int:
        return self._arena.capacity

    @property
    def locked(self) -> bool:
        return self._arena.locked

    @property
    def registered(self) -> bool:
        """Registered with a device; False on hosts without a device backend."""
        return self._arena.registered

    @property
    def closed(self) -> bool:
        return self._arena.closed

    def close(self) -> int:
        """Stop allocating. Live allocations are reported (warning) and their memory stays valid
        until the pool object is collected; returns how many there were."""
        live = self._arena.close()
        if live:
            logger.warning("lmcache-ascend: closing a host pool with %d live allocation(s); their memory "
                           "stays mapped until the pool is garbage-collected", live)
        return live

    def __enter__(self) -> "HostPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _positive(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


# -- the alloc_pinned_ptr family (LMCache's c_ops / cuda_ops names) -------------------------------
_mappings: dict[int, Any] = {}
_mappings_lock = threading.Lock()


def _alloc(size: int, numa_node: int | None, *, pinned: bool = True, huge_pages: bool = False) -> int:
    size = _positive(size, "size")
    lock, register = (_resolve("auto", "lock"), _resolve("auto", "register")) if pinned else (False, False)
    try:
        mapping = _native.Mapping(size, huge_pages=huge_pages, numa_node=numa_node, lock=lock, register=register)
    except (MemoryError, RuntimeError, OSError) as exc:
        if not huge_pages:
            raise
        # LMCache asks for huge pages as an optimisation: without free ones, regular pages serve.
        logger.warning("lmcache-ascend: no huge pages for %d bytes (%s); using regular pages", size, exc)
        mapping = _native.Mapping(size, numa_node=numa_node, lock=lock, register=register)
    with _mappings_lock:
        _mappings[mapping.address] = mapping
    return mapping.address


def _free(ptr: int, name: str) -> None:
    with _mappings_lock:
        mapping = _mappings.pop(ptr, None)
    if mapping is None:
        raise ValueError(f"{name}(0x{ptr:x}): not a pointer returned by lmcache_ascend's alloc functions, "
                         "or already freed")


def alloc_pinned_ptr(size: int, device_id: int = 0) -> int:
    """Zeroed host memory, page-locked and device-registered when a device backend is present.
    Parameter names are LMCache's (DeviceOps binds by name). `device_id`: LMCache passes the device
    its worker runs on, which is the current NPU that registration maps the pages for."""
    return _alloc(size, None)


def free_pinned_ptr(ptr: int) -> None:
    _free(ptr, "free_pinned_ptr")


def alloc_pinned_numa_ptr(size: int, numa_id: int = 0) -> int:
    """Like alloc_pinned_ptr, with the pages bound to NUMA node `numa_id`."""
    return _alloc(size, numa_id)


def free_pinned_numa_ptr(ptr: int, size: int | None = None) -> None:
    """`size` is accepted for LMCache's signature; the mapping knows its own size."""
    _free(ptr, "free_pinned_numa_ptr")


def alloc_numa_ptr(size: int, numa_id: int = 0) -> int:
    """Zeroed host memory bound to NUMA node `numa_id`, neither locked nor device-registered."""
    return _alloc(size, numa_id, pinned=False)


def free_numa_ptr(ptr: int, size: int | None = None) -> None:
    _free(ptr, "free_numa_ptr")


def alloc_hugepage_pinned_ptr(size: int, device_id: int = 0) -> int:
    """Like alloc_pinned_ptr, backed by 2 MiB huge pages where the host has free ones."""
    return _alloc(size, None, huge_pages=True)


def free_hugepage_pinned_ptr(ptr: int, size: int = 0) -> None:
    _free(ptr, "free_hugepage_pinned_ptr")


def alloc_hugepage_pinned_numa_ptr(size: int, numa_id: int = 0) -> int:
    """Like alloc_pinned_numa_ptr, backed by huge pages where the host has free ones."""
    return _alloc(size, numa_id, huge_pages=True)


def free_hugepage_pinned_numa_ptr(ptr: int, size: int = 0) -> None:
    _free(ptr, "free_hugepage_pinned_numa_ptr")


_shm: dict[int, Any] = {}


def alloc_shm_pinned_ptr(size: int, shm_name: str = "") -> int:
    """`size` bytes of POSIX shared memory named `shm_name` (other processes map it by name; a stale
    segment of that name is replaced). Neither locked nor registered: the mapping is Python's
    (multiprocessing.shared_memory), as the native arena has no named segments."""
    from multiprocessing import shared_memory

    from lmcache_ascend._tensors import as_view

    size = _positive(size, "size")
    name = shm_name.lstrip("/") or None
    if name:
        try:
            stale = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            pass
        else:
            stale.close()
            stale.unlink()
    segment = shared_memory.SharedMemory(name=name, create=True, size=size)
    view = memoryview(segment.buf)
    address = as_view(view, "shared memory", writable=True).address
    with _mappings_lock:
        _shm[address] = (segment, view)
    return address


def free_shm_pinned_ptr(ptr: int, size: int = 0, shm_name: str = "") -> None:
    with _mappings_lock:
        entry = _shm.pop(ptr, None)
    if entry is None:
        raise ValueError(f"free_shm_pinned_ptr(0x{ptr:x}): not a pointer returned by alloc_shm_pinned_ptr, "
                         "or already freed")
    segment, view = entry
    view.release()
    segment.close()
    segment.unlink()


def pinned_mapping(ptr: int) -> Any:
    """The buffer-protocol object behind a pointer from the alloc functions (for zero-copy views)."""
    with _mappings_lock:
        return _mappings[ptr]


def __getattr__(name: str) -> Any:
    # PinnedArenaAllocator needs torch and LMCache; import them only when it is asked for.
    if name == "PinnedArenaAllocator":
        from lmcache_ascend.lmcache_allocator import PinnedArenaAllocator

        return PinnedArenaAllocator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
