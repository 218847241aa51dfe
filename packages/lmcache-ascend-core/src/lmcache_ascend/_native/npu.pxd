# Declarations of native/include/lmcache_ascend/npu_backend.hpp: the NPU entry of the CPU library,
# which loads liblmcache_ascend_npu.so on first use (absent on wheels built without CANN).
from libc.stdint cimport int32_t

from lmcache_ascend._native.native cimport Status, TransferRequest


cdef extern from "lmcache_ascend/npu_backend.hpp" namespace "lmcache_ascend" nogil:
    cdef cppclass NpuTransferOptions:
        void* stream
        bint slots_on_device
        bint chunks_on_host
        bint fused
        bint stage_unregistered

    Status npu_transfer_kv(const TransferRequest* groups, int32_t num_groups, const NpuTransferOptions& options)
    const char* npu_library_path()
