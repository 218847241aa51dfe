// Host-side entry of the AscendC kernels (defined in kernels/kv_transfer_kernel.cpp, compiled by the
// AscendC toolchain), called by the launcher.
#pragma once

#include <stdint.h>

extern "C" int32_t lmcache_ascend_launch_kv_transfer(uint32_t block_dim, void* stream, uint8_t* descriptor,
                                                     uint8_t* plane_ptrs, uint8_t* slots, int32_t elem_size,
                                                     int32_t slot_bytes);
