# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of the native host arena and host mappings (native/include/lmcache_ascend/host_*.hpp).

Both classes export their memory through the buffer protocol, so NumPy / torch.frombuffer views
can be taken without copies. Views keep a reference to the object, and pages are unmapped only when
the object is collected, so no view can ever point at unmapped memory.
"""
from libc.stdint cimport uintptr_t
from libcpp.vector cimport vector

from lmcache_ascend._native.native cimport (
    ArenaStats, AscendRuntimePaths, DeviceRegistrar, HostArena, HostMapping, HostMemoryOptions, Status,
    StatusCode, ascend_registration_description as _ascend_registration_description,
    device_registrar, disable_ascend_registration as _disable_ascend_registration,
    enable_ascend_registration as _enable_ascend_registration, has_cap_ipc_lock as _has_cap_ipc_lock,
    huge_pages_free as _huge_pages_free, memlock_limit_description as _memlock_limit_description,
    numa_node_count as _numa_node_count,
)

include "status.pxi"


cdef HostMemoryOptions _options(bint huge_pages, object numa_node, bint lock, bint populate, bint register):
    cdef HostMemoryOptions opt
    opt.huge_pages = huge_pages
    opt.numa_node = -1 if numa_node is None else int(numa_node)
    opt.lock = lock
    opt.populate = populate
    opt.register_with_device = register
    return opt


cdef void _byte_view(Py_buffer* view, object owner, void* data, size_t size, Py_ssize_t* shape,
                     Py_ssize_t* strides):
    """Fill `view` as a writable 1-D byte buffer of `owner`'s memory."""
    shape[0] = <Py_ssize_t>size
    strides[0] = 1
    view.buf = data
    view.obj = owner
    view.len = shape[0]
    view.readonly = 0
    view.itemsize = 1
    view.format = "B"
    view.ndim = 1
    view.shape = shape
    view.strides = strides
    view.suboffsets = NULL
    view.internal = NULL


cdef class Arena:
    """A thread-safe allocator over one mmap'd host region (see host_arena.hpp)."""
    cdef HostArena* _arena
    cdef bint _closed
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    def __cinit__(self, size_t size, size_t alignment=4096, *, bint huge_pages=False, numa_node=None,
                  bint lock=False, bint populate=False, bint register=False):
        cdef HostMemoryOptions opt = _options(huge_pages, numa_node, lock, populate, register)
        cdef Status st
        with nogil:
            st = HostArena.create(size, alignment, opt, &self._arena)
        raise_on_error(st)

    def __dealloc__(self):
        del self._arena  # views hold a reference, so none is alive once this runs

    cdef int _check_open(self) except -1:
        if self._closed:
            raise ValueError("this pool is closed; create a new one")
        return 0

    def allocate(self, size_t size):
        """Address of `size` bytes (rounded up to the alignment), or None when the pool is full."""
        self._check_open()
        cdef uintptr_t address
        cdef Status st = self._arena.allocate(size, &address)
        if st.code == StatusCode.kOutOfMemory:
            return None
        raise_on_error(st)
        return address

    def allocate_batch(self, size_t size, size_t count):
        """`count` addresses of `size` bytes each, all or nothing (None when the pool is full)."""
        self._check_open()
        cdef vector[uintptr_t] out
        out.resize(count)
        cdef Status st = self._arena.allocate_batch(size, count, out.data())
        if st.code == StatusCode.kOutOfMemory:
            return None
        raise_on_error(st)
        return [a for a in out]

    def free(self, uintptr_t address):
        self._check_open()
        raise_on_error(self._arena.free(address))

    def free_batch(self, addresses):
        self._check_open()
        cdef vector[uintptr_t] v = addresses
        raise_on_error(self._arena.free_batch(v.data(), v.size()))

    def allocation_size(self, uintptr_t address):
        """Bytes reserved for a live allocation; 0 if `address` is not one."""
        return 0 if self._closed else self._arena.allocation_size(address)

    def stats(self):
        cdef ArenaStats s = self._arena.stats()
        return {"capacity": s.capacity, "used": s.used, "free": s.free, "largest_free": s.largest_free,
                "free_blocks": s.free_blocks, "allocations": s.allocations, "fragmentation": s.fragmentation}

    def free_extents(self):
        """[(offset, size)] of the free blocks, in address order."""
        return [(e.first, e.second) for e in self._arena.free_extents()]

    @property
    def base(self):
        return self._arena.base()

    @property
    def capacity(self):
        return self._arena.capacity()

    @property
    def alignment(self):
        return self._arena.alignment()

    @property
    def locked(self):
        return self._arena.locked()

    @property
    def registered(self):
        return self._arena.registered()

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Stop handing out memory. Returns the number of allocations still live (the caller
        reports them). With none live the pages go back to the OS now; otherwise they stay until
        this object is collected."""
        if self._closed:
            return 0
        self._closed = True
        live = self._arena.stats().allocations
        if live == 0:
            raise_on_error(self._arena.discard_pages())
        return live

    def __getbuffer__(self, Py_buffer* view, int flags):
        self._check_open()
        _byte_view(view, self, <void*>self._arena.base(), self._arena.capacity(), self._shape, self._strides)


cdef class Mapping:
    """One standalone host mapping (the alloc_pinned_ptr family)."""
    cdef HostMapping _mapping
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    def __cinit__(self, size_t size, *, bint huge_pages=False, numa_node=None, bint lock=False,
                  bint populate=False, bint register=False):
        cdef HostMemoryOptions opt = _options(huge_pages, numa_node, lock, populate, register)
        cdef Status st
        with nogil:
            st = HostMapping.create(size, opt, &self._mapping)
        raise_on_error(st)

    @property
    def address(self):
        return <uintptr_t>self._mapping.data()

    @property
    def size(self):
        return self._mapping.size()

    @property
    def locked(self):
        return self._mapping.locked()

    @property
    def registered(self):
        return self._mapping.registered()

    def __getbuffer__(self, Py_buffer* view, int flags):
        _byte_view(view, self, <void*>self._mapping.data(), self._mapping.size(), self._shape, self._strides)


def memlock_limit_description():
    return _memlock_limit_description().decode()


def has_cap_ipc_lock():
    return _has_cap_ipc_lock()


def huge_pages_free():
    return _huge_pages_free()


def numa_node_count():
    return _numa_node_count()


def device_registrar_name():
    """Name of the installed device registrar, or None on hosts without a device backend."""
    reg = device_registrar()
    return None if reg == NULL else reg.name().decode()


def device_address(uintptr_t host_address):
    """Address the device uses for a byte of registered host memory (ValueError if not registered,
    RuntimeError without a device registrar)."""
    cdef DeviceRegistrar* reg = device_registrar()
    if reg == NULL:
        raise RuntimeError("no device registrar is installed: host memory is not registered with any device "
                           "(see lmcache_ascend.memory.device_registration_status())")
    cdef uintptr_t out = 0
    raise_on_error(reg.device_address(<void*>host_address, &out))
    return out


def enable_ascend_registration(acl, hal, dsmi, str visible_devices, str driver_version_fallback):
    """Load the CANN runtime from the first loadable path of each list and install the Ascend registrar."""
    cdef AscendRuntimePaths paths
    paths.acl = [p.encode() for p in acl]
    paths.hal = [p.encode() for p in hal]
    paths.dsmi = [p.encode() for p in dsmi]
    paths.visible_devices = visible_devices.encode()
    paths.driver_version_fallback = driver_version_fallback.encode()
    cdef Status st
    with nogil:
        st = _enable_ascend_registration(paths)
    raise_on_error(st)


def disable_ascend_registration():
    raise_on_error(_disable_ascend_registration())


def ascend_registration_description():
    """How host memory is registered ('ascend-acl: aclrtHostRegister (driver ...)'), '' when not enabled."""
    return _ascend_registration_description().decode()
