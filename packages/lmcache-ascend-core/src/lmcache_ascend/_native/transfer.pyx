# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of the native KV transfer kernel family (native/include/lmcache_ascend/transfer.hpp) and
of its NPU entry (npu_backend.hpp), which loads the Ascend backend on first use.

Takes plain integers (addresses, sizes, element strides) so it stays free of torch; the Python
layer (`lmcache_ascend.layouts`) turns tensors into these numbers.
"""
from libc.stdint cimport int64_t, uintptr_t
from libcpp.vector cimport vector
from cpython.buffer cimport PyBUF_RECORDS, PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_GetBuffer

from lmcache_ascend._native.native cimport (
    ChunkRef, Direction, Status, StatusCode, TransferRequest,
    get_num_threads as _get_num_threads, set_num_threads as _set_num_threads,
    transfer_kv as _transfer_kv, usable_cpu_count as _usable_cpu_count,
)
from lmcache_ascend._native.npu cimport (
    NpuTransferOptions, npu_library_path as _npu_library_path, npu_transfer_kv as _npu_transfer_kv,
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


cdef int _build_request(
    TransferRequest* req, vector[uintptr_t]& bases, vector[ChunkRef]& refs, vector[int64_t]& extents,
    plane_bases, int elem_size, int num_layers, int num_planes,
    int64_t num_blocks, int block_size, int num_heads, int head_size,
    int64_t block_stride, int64_t head_stride, int64_t token_stride, int64_t page_extent_elems,
    chunks, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
    int64_t skip_prefix_n_tokens, int direction,
) except -1:
    """Fills `req` from Python numbers; `bases`, `refs` and `extents` own the arrays it points to."""
    if direction != GATHER and direction != SCATTER:
        raise ValueError(f"direction must be {GATHER} (gather) or {SCATTER} (scatter), got {direction}")
    for b in plane_bases:
        bases.push_back(<uintptr_t>b)
    if <int64_t>bases.size() != <int64_t>num_layers * num_planes:
        raise ValueError(
            f"plane_bases has {bases.size()} addresses; expected num_layers * num_planes = "
            f"{num_layers} * {num_planes}")
    cdef ChunkRef ref
    for base, begin, end, extent, plane_stride, layer_stride, chunk_token_stride in chunks:
        ref.base = <uintptr_t>base
        ref.token_begin = begin
        ref.token_end = end
        ref.strides.plane_stride = plane_stride
        ref.strides.layer_stride = layer_stride
        ref.strides.token_stride = chunk_token_stride
        refs.push_back(ref)
        extents.push_back(extent)

    req.page.elem_size = elem_size
    req.page.num_layers = num_layers
    req.page.num_planes = num_planes
    req.page.plane_bases = bases.data()
    req.page.num_blocks = num_blocks
    req.page.block_size = block_size
    req.page.num_heads = num_heads
    req.page.head_size = head_size
    req.page.block_stride = block_stride
    req.page.head_stride = head_stride
    req.page.token_stride = token_stride
    req.page_extent_elems = page_extent_elems
    req.chunks = refs.data()
    req.num_chunks = <int64_t>refs.size()
    req.chunk_extent_bytes = extents.data()
    req.slots.data = <const void*>slot_address
    req.slots.length = num_tokens
    req.slots.index_bytes = index_bytes
    req.skip_prefix_n_tokens = skip_prefix_n_tokens
    req.direction = Direction.kPagedToChunk if direction == GATHER else Direction.kChunkToPaged
    return 0


def transfer_kv(
    plane_bases, int elem_size, int num_layers, int num_planes,
    int64_t num_blocks, int block_size, int num_heads, int head_size,
    int64_t block_stride, int64_t head_stride, int64_t token_stride, int64_t page_extent_elems,
    chunks, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
    int64_t skip_prefix_n_tokens, int direction,
):
    """Move KV between a paged cache and LMCache chunks; see transfer.hpp for the meaning.

    plane_bases: addresses, layer-major then plane. chunks: (address, token_begin, token_end,
    extent_bytes, plane_stride, layer_stride, token_stride) per LMCache memory object. Releases the GIL while bytes move.
    """
    cdef vector[uintptr_t] bases
    cdef vector[ChunkRef] refs
    cdef vector[int64_t] extents
    cdef TransferRequest req
    _build_request(&req, bases, refs, extents, plane_bases, elem_size, num_layers, num_planes, num_blocks,
                   block_size, num_heads, head_size, block_stride, head_stride, token_stride, page_extent_elems,
                   chunks, slot_address, num_tokens, index_bytes, skip_prefix_n_tokens, direction)
    cdef Status st
    with nogil:
        st = _transfer_kv(req)
    raise_on_error(st)


def transfer_kv_npu(
    plane_bases, int elem_size, int num_layers, int num_planes,
    int64_t num_blocks, int block_size, int num_heads, int head_size,
    int64_t block_stride, int64_t head_stride, int64_t token_stride, int64_t page_extent_elems,
    chunks, uintptr_t slot_address, int64_t num_tokens, int index_bytes,
    int64_t skip_prefix_n_tokens, int direction,
    uintptr_t stream, bint slots_on_device, bint chunks_on_host, fused=None,
):
    """transfer_kv for a paged cache in NPU memory, launched on `stream` (an aclrtStream).

    slots_on_device: slot_address is device memory. chunks_on_host: chunk addresses are host memory.
    fused: True stages host chunks through device memory, False requires them registered with the
    device, None stages only when they are not. Raises RuntimeError with the fix when the wheel was
    built without the Ascend backend.
    """
    cdef vector[uintptr_t] bases
    cdef vector[ChunkRef] refs
    cdef vector[int64_t] extents
    cdef TransferRequest req
    _build_request(&req, bases, refs, extents, plane_bases, elem_size, num_layers, num_planes, num_blocks,
                   block_size, num_heads, head_size, block_stride, head_stride, token_stride, page_extent_elems,
                   chunks, slot_address, num_tokens, index_bytes, skip_prefix_n_tokens, direction)
    cdef NpuTransferOptions options
    options.stream = <void*>stream
    options.slots_on_device = slots_on_device
    options.chunks_on_host = chunks_on_host
    options.fused = fused is True
    options.stage_unregistered = fused is None
    cdef Status st
    with nogil:
        st = _npu_transfer_kv(&req, 1, options)
    raise_on_error(st)


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
