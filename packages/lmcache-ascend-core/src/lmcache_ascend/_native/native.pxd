# Declarations of native/include/lmcache_ascend/*.hpp, one block per header.
from libc.stdint cimport int32_t, int64_t, uintptr_t
from libcpp.string cimport string


cdef extern from "lmcache_ascend/status.hpp" namespace "lmcache_ascend" nogil:
    cdef enum class StatusCode(int):
        kOk
        kInvalidArgument
        kOutOfRange
        kOutOfMemory
        kRuntimeError

    cdef cppclass Status:
        StatusCode code
        string message
        bint ok()


cdef extern from "lmcache_ascend/page_layout.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass PageLayout:
        int32_t elem_size
        int32_t num_layers
        int32_t num_planes
        const uintptr_t* plane_bases
        int64_t num_blocks
        int32_t block_size
        int32_t num_heads
        int32_t head_size
        int64_t block_stride
        int64_t head_stride
        int64_t token_stride

    cdef cppclass ChunkStrides:
        int64_t plane_stride
        int64_t layer_stride
        int64_t token_stride

    cdef cppclass ChunkRef:
        uintptr_t base
        int64_t token_begin
        int64_t token_end

    cdef cppclass SlotMapping:
        const void* data
        int64_t length
        int32_t index_bytes


cdef extern from "lmcache_ascend/thread_pool.hpp" namespace "lmcache_ascend" nogil:
    int usable_cpu_count()
    int get_num_threads()
    void set_num_threads(int n)


cdef extern from "lmcache_ascend/transfer.hpp" namespace "lmcache_ascend" nogil:
    cdef enum class Direction(int):
        kPagedToChunk
        kChunkToPaged

    cdef cppclass TransferRequest:
        PageLayout page
        int64_t page_extent_elems
        ChunkStrides chunk
        const ChunkRef* chunks
        int64_t num_chunks
        const int64_t* chunk_extent_bytes
        SlotMapping slots
        int64_t skip_prefix_n_tokens
        Direction direction

    Status transfer_kv(const TransferRequest& request)
