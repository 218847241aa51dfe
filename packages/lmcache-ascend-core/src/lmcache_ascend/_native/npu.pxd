# Declarations of native/include/lmcache_ascend/npu_backend.hpp: the NPU entry of the CPU library,
# which loads liblmcache_ascend_npu.so on first use (absent on wheels built without CANN).
from libc.stdint cimport int32_t
from libcpp.vector cimport vector

from lmcache_ascend._native.native cimport ChunkRef, Status, TransferRequest


cdef extern from "lmcache_ascend/npu_backend.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass NpuTransferOptions:
        void* stream
        bint slots_on_device
        bint chunks_on_host
        bint fused
        bint stage_unregistered

    cdef cppclass PreparedNpuTransfer:
        vector[TransferRequest] groups
        vector[vector[ChunkRef]] chunks
        bint fused

    Status npu_transfer_kv(const TransferRequest* groups, int32_t num_groups, const NpuTransferOptions& options)
    Status prepare_npu_transfer(const TransferRequest* groups, int32_t num_groups, const void* host_slots,
                                const NpuTransferOptions& options, PreparedNpuTransfer* out)
    const char* npu_library_path()
    Status npu_synchronize_stream(void* stream)


cdef extern from "lmcache_ascend/transfer_validation.hpp" namespace "lmcache_ascend" nogil:
    Status validate_transfer_request(const TransferRequest& request)
