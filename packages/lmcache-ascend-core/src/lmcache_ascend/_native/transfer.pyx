# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of the native KV transfer kernel family (native/include/lmcache_ascend/transfer.hpp) and
of its NPU entry (npu_backend.hpp), which loads the Ascend backend on first use.

Takes plain integers (addresses, sizes, element strides) so it stays free of torch; the Python
layer (`lmcache_ascend.layouts`) turns tensors into these numbers.
"""
from libc.stdint cimport int32_t, int64_t, uintptr_t
from libcpp.vector cimport vector
from cpython.buffer cimport PyBUF_RECORDS, PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_GetBuffer

from lmcache_ascend._native.native cimport (
    ChunkRef, Direction, Status, StatusCode, TransferRequest,
    get_num_threads as _get_num_threads, set_num_threads as _set_num_threads,
    transfer_kv as _transfer_kv, usable_cpu_count as _usable_cpu_count,
)
from lmcache_ascend._native.npu cimport (
    NpuTransferOptions, PreparedNpuTransfer, npu_library_path as _npu_library_path,
    npu_synchronize_stream as _npu_synchronize_stream,
    npu_transfer_kv as _npu_transfer_kv, prepare_npu_transfer as _prepare_npu_transfer,
    validate_transfer_request,
)

include "status.pxi"

GATHER = 0   # paged -> LMCache chunk (store)
SCATTER = 1  # LMCache chunk -> paged (retrieve)


def usable_cpu_count():
    """CPUs this process may run on."""
    return _usable_cpu_count()


def get_num_threads():
    """Threads a transfer is split over, the calling thread included."""
    return _get_num_threads()


def set_num_threads(int n):
    """Set the transfer thread count; n < 1 restores the default (usable cores)."""
    _set_num_threads(n)


cdef class _Requests:
    """TransferRequests of one call, one per plane group, and the arrays they point into.

    page: (plane_bases, elem_size, num_layers, num_planes, num_blocks, block_size, num_heads,
    head_size, block_stride, head_stride, token_stride, page_extent_elems) per group; chunks:
    (address, token_begin, token_end, extent_bytes, plane_stride, layer_stride, token_stride) per
    LMCache memory object, per group. The groups share the slot mapping, skip and direction.
    """
    cdef vector[TransferRequest] reqs
    cdef vector[vector[uintptr_t]] bases
    cdef vector[vector[ChunkRef]] refs
    cdef vector[vector[int64_t]] extents

    def __init__(self, pages, chunk_lists, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
                 int64_t skip_prefix_n_tokens, int direction):
        if direction != GATHER and direction != SCATTER:
            raise ValueError(f"direction must be {GATHER} (gather) or {SCATTER} (scatter), got {direction}")
        pages, chunk_lists = list(pages), list(chunk_lists)
        if not pages or len(pages) != len(chunk_lists):
            raise ValueError(f"{len(pages)} page layouts and {len(chunk_lists)} chunk lists given; pass one chunk "
                             "list per plane group (at least one group)")
        cdef size_t n = len(pages)
        # Sized once, so the arrays each request points into never move.
        self.reqs.resize(n)
        self.bases.resize(n)
        self.refs.resize(n)
        self.extents.resize(n)
        cdef size_t g
        cdef ChunkRef ref
        cdef TransferRequest* req
        for g in range(n):
            (plane_bases, elem_size, num_layers, num_planes, num_blocks, block_size, num_heads, head_size,
             block_stride, head_stride, token_stride, page_extent_elems) = pages[g]
            for b in plane_bases:
                self.bases[g].push_back(<uintptr_t>b)
            if <int64_t>self.bases[g].size() != <int64_t>num_layers * num_planes:
                raise ValueError(
                    f"plane_bases has {self.bases[g].size()} addresses; expected num_layers * num_planes = "
                    f"{num_layers} * {num_planes}")
            for base, begin, end, extent, plane_stride, layer_stride, chunk_token_stride in chunk_lists[g]:
                ref.base = <uintptr_t>base
                ref.token_begin = begin
                ref.token_end = end
                ref.strides.plane_stride = plane_stride
                ref.strides.layer_stride = layer_stride
                ref.strides.token_stride = chunk_token_stride
                self.refs[g].push_back(ref)
                self.extents[g].push_back(extent)
            req = &self.reqs[g]
            req.page.elem_size = elem_size
            req.page.num_layers = num_layers
            req.page.num_planes = num_planes
            req.page.plane_bases = self.bases[g].data()
            req.page.num_blocks = num_blocks
            req.page.block_size = block_size
            req.page.num_heads = num_heads
            req.page.head_size = head_size
            req.page.block_stride = block_stride
            req.page.head_stride = head_stride
            req.page.token_stride = token_stride
            req.page_extent_elems = page_extent_elems
            req.chunks = self.refs[g].data()
            req.num_chunks = <int64_t>self.refs[g].size()
            req.chunk_extent_bytes = self.extents[g].data()
            req.slots.data = <const void*>slot_address
            req.slots.length = num_tokens
            req.slots.index_bytes = index_bytes
            req.skip_prefix_n_tokens = skip_prefix_n_tokens
            req.direction = Direction.kPagedToChunk if direction == GATHER else Direction.kChunkToPaged


cdef NpuTransferOptions _npu_options(uintptr_t stream, bint slots_on_device, bint chunks_on_host, fused):
    cdef NpuTransferOptions options
    options.stream = <void*>stream
    options.slots_on_device = slots_on_device
    options.chunks_on_host = chunks_on_host
    options.fused = fused is True
    options.stage_unregistered = fused is None
    return options


def transfer_kv(pages, chunk_lists, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
                int64_t skip_prefix_n_tokens, int direction):
    """Move KV between a paged cache and LMCache chunks; see transfer.hpp for the meaning.

    One TransferRequest per plane group (see _Requests for the tuples). Every group is validated
    (descriptor, extents, every slot) before the first group moves a byte, so an error in any group
    leaves every buffer untouched. Releases the GIL while bytes move.
    """
    cdef _Requests r = _Requests(pages, chunk_lists, slot_address, num_tokens, index_bytes,
                                 skip_prefix_n_tokens, direction)
    cdef size_t n = r.reqs.size()
    cdef size_t g
    cdef Status st
    for g in range(n if n > 1 else 0):  # one group validates itself inside _transfer_kv
        with nogil:
            st = validate_transfer_request(r.reqs[g])
        if not st.ok():
            st.message = f"plane group {g}: ".encode() + st.message
        raise_on_error(st)
    for g in range(n):
        with nogil:
            st = _transfer_kv(r.reqs[g])
        raise_on_error(st)


def transfer_kv_npu(pages, chunk_lists, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
                    int64_t skip_prefix_n_tokens, int direction,
                    uintptr_t stream, bint slots_on_device, bint chunks_on_host, fused=None):
    """transfer_kv for a paged cache in NPU memory: all plane groups in one launch on `stream`
    (an aclrtStream).

    slots_on_device: slot_address is device memory. chunks_on_host: chunk addresses are host memory.
    fused: True stages host chunks through device memory, False requires them registered with the
    device, None stages only when they are not. Raises RuntimeError with the fix when the wheel was
    built without the Ascend backend.
    """
    cdef _Requests r = _Requests(pages, chunk_lists, slot_address, num_tokens, index_bytes,
                                 skip_prefix_n_tokens, direction)
    cdef NpuTransferOptions options = _npu_options(stream, slots_on_device, chunks_on_host, fused)
    cdef Status st
    with nogil:
        st = _npu_transfer_kv(r.reqs.data(), <int32_t>r.reqs.size(), options)
    raise_on_error(st)


def synchronize_npu_stream(uintptr_t stream):
    """Return once the work queued on `stream` (an aclrtStream) has finished."""
    cdef Status st
    with nogil:
        st = _npu_synchronize_stream(<void*>stream)
    raise_on_error(st)


def prepare_npu_launch(pages, chunk_lists, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
                       int64_t skip_prefix_n_tokens, int direction, bint chunks_on_host, fused=None):
    """The host-side half of transfer_kv_npu (native prepare_npu_transfer), without the NPU library:
    every group validated against the slot mapping (host memory here) and registered host chunks
    mapped to device addresses. Returns what the launcher would get: {"fused": bool, "groups": [{
    "page": {...}, "chunks": [(base, token_begin, token_end, plane_stride, layer_stride,
    token_stride), ...]}, ...]}. Raises what transfer_kv_npu would raise for these arguments.
    """
    cdef _Requests r = _Requests(pages, chunk_lists, slot_address, num_tokens, index_bytes,
                                 skip_prefix_n_tokens, direction)
    cdef NpuTransferOptions options = _npu_options(0, False, chunks_on_host, fused)
    cdef PreparedNpuTransfer prepared
    cdef Status st
    with nogil:
        st = _prepare_npu_transfer(r.reqs.data(), <int32_t>r.reqs.size(), NULL, options, &prepared)
    raise_on_error(st)
    groups = []
    cdef size_t g
    cdef int64_t c, i
    cdef TransferRequest* q
    for g in range(prepared.groups.size()):
        q = &prepared.groups[g]
        page = {
            "elem_size": q.page.elem_size, "num_layers": q.page.num_layers, "num_planes": q.page.num_planes,
            "plane_bases": [q.page.plane_bases[i] for i in range(<int64_t>q.page.num_layers * q.page.num_planes)],
            "num_blocks": q.page.num_blocks, "block_size": q.page.block_size, "num_heads": q.page.num_heads,
            "head_size": q.page.head_size, "block_stride": q.page.block_stride,
            "head_stride": q.page.head_stride, "token_stride": q.page.token_stride,
        }
        chunks = [(q.chunks[c].base, q.chunks[c].token_begin, q.chunks[c].token_end,
                   q.chunks[c].strides.plane_stride, q.chunks[c].strides.layer_stride,
                   q.chunks[c].strides.token_stride) for c in range(q.num_chunks)]
        groups.append({"page": page, "chunks": chunks})
    return {"fused": prepared.fused, "groups": groups}


def npu_library_path():
    """Where the NPU backend (liblmcache_ascend_npu.so) is loaded from; it may be absent."""
    return (<bytes>_npu_library_path()).decode("utf-8", "replace")


def buffer_info(obj, bint writable=False):
    """(address, nbytes, shape, strides_in_bytes, itemsize, format) of a buffer-protocol object.

    Lets NumPy arrays, memoryviews and bytearrays take part in transfers without torch. The
    caller keeps `obj` alive for as long as it uses the address.
    """
    cdef Py_buffer view
    cdef int flags = PyBUF_RECORDS if writable else PyBUF_RECORDS_RO
    try:
        PyObject_GetBuffer(obj, &view, flags)
    except BufferError as exc:
        raise ValueError(
            f"cannot use a {type(obj).__name__} as a KV buffer ({exc}); "
            + ("pass a writable buffer" if writable else "pass a tensor or buffer-protocol object")) from exc
    try:
        shape = tuple(view.shape[i] for i in range(view.ndim))
        strides = tuple(view.strides[i] for i in range(view.ndim))
        fmt = view.format.decode("ascii") if view.format != NULL else "B"
        return <uintptr_t>view.buf, view.len, shape, strides, view.itemsize, fmt
    finally:
        PyBuffer_Release(&view)
