# Declarations of native/include/lmcache_ascend/*.hpp, one block per header.
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uintptr_t
from libcpp.pair cimport pair
from libcpp.string cimport string
from libcpp.vector cimport vector


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
        ChunkStrides strides

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
        const ChunkRef* chunks
        int64_t num_chunks
        const int64_t* chunk_extent_bytes
        SlotMapping slots
        int64_t skip_prefix_n_tokens
        Direction direction

    Status transfer_kv(const TransferRequest& request)


cdef extern from "lmcache_ascend/host_memory.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass HostMemoryOptions:
        bint huge_pages
        int numa_node
        bint lock
        bint populate
        bint register_with_device

    cdef cppclass HostMapping:
        HostMapping()
        @staticmethod
        Status create(size_t size, const HostMemoryOptions& options, HostMapping* out)
        void release()
        char* data()
        size_t size()
        bint locked()
        bint registered()

    string memlock_limit_description()
    bint has_cap_ipc_lock()
    long huge_pages_free()
    int numa_node_count()


cdef extern from "lmcache_ascend/host_arena.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass ArenaStats:
        size_t capacity
        size_t used
        size_t free
        size_t largest_free
        size_t free_blocks
        size_t allocations
        double fragmentation

    cdef cppclass HostArena:
        @staticmethod
        Status create(size_t size, size_t alignment, const HostMemoryOptions& options, HostArena** out)
        Status allocate(size_t size, uintptr_t* out)
        Status allocate_batch(size_t size, size_t count, uintptr_t* out)
        Status free(uintptr_t address)
        Status free_batch(const uintptr_t* addresses, size_t count)
        size_t allocation_size(uintptr_t address)
        ArenaStats stats()
        Status discard_pages()
        vector[pair[size_t, size_t]] free_extents()
        uintptr_t base()
        size_t capacity()
        size_t alignment()
        bint locked()
        bint registered()


cdef extern from "lmcache_ascend/device_registration.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass DeviceRegistrar:
        string name()
        Status device_address(void* host_ptr, uintptr_t* out)

    DeviceRegistrar* device_registrar()


cdef extern from "lmcache_ascend/ascend_registrar.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass AscendRuntimePaths:
        vector[string] acl
        vector[string] hal
        vector[string] dsmi
        string visible_devices
        string driver_version_fallback

    Status enable_ascend_registration(const AscendRuntimePaths& paths)
    Status disable_ascend_registration()
    string ascend_registration_description()


cdef extern from "lmcache_ascend/cachegen_codec.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass SymbolTensor:
        uint8_t* data
        int64_t extent
        int64_t layer_stride
        int64_t token_stride
        int64_t channel_stride

    cdef cppclass CodecShape:
        int64_t num_layers
        int64_t num_tokens
        int64_t num_channels
        int64_t cdf_len

    cdef enum class IntKind(int):
        kInt8
        kUint8
        kInt16
        kInt32
        kInt64

    cdef cppclass IntTensor:
        const void* data
        IntKind kind
        int64_t extent
        int64_t layer_stride
        int64_t token_stride
        int64_t channel_stride

    cdef enum class FloatKind(int):
        kFloat16
        kBFloat16
        kFloat32

    cdef cppclass RotaryRequest:
        void* key
        FloatKind key_kind
        int64_t key_extent
        int64_t num_tokens, num_heads, key_last_dim
        int64_t token_stride, head_stride, elem_stride
        const void* cos_sin_cache
        FloatKind cache_kind
        int64_t max_position, rot_dim
        const int64_t* old_positions
        const int64_t* new_positions
        bint is_neox

    Status calculate_cdf(const IntTensor& input, int64_t num_layers, int64_t num_tokens, int64_t num_channels,
                         int64_t num_bins, int16_t* out, int64_t out_len)
    Status cachegen_encode(const uint16_t* cdf, int64_t cdf_entries, const SymbolTensor& symbols,
                           const CodecShape& shape, uint8_t* out_buffer, int64_t buffer_size, int64_t out_buffer_len,
                           int32_t* out_lengths, int64_t out_lengths_len)
    Status cachegen_decode_rows(const uint16_t* cdf, int64_t cdf_entries, const uint8_t* streams, int64_t row_size,
                                int64_t streams_len, const int64_t* ends, const CodecShape& shape,
                                const SymbolTensor& symbols)
    Status cachegen_decode_packed(const uint16_t* cdf, int64_t cdf_entries, const uint8_t* streams,
                                  int64_t streams_len, const int64_t* ends, const CodecShape& shape,
                                  const SymbolTensor& symbols)
    Status rotary_embedding_k_fused(const RotaryRequest& request)
