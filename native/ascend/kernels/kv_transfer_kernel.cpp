// AscendC kernel of the KV transfer family: gather (paged KV cache -> LMCache chunks) and scatter
// (chunks -> paged cache) for any number of layers, chunks and planes in one launch. Multi-layer,
// single-layer (layerwise) and batched transfers are the same kernel with other tables; merged,
// separate, HND, MLA (+ rope), DSA and the 310P NZ layout are other PlaneDesc values.
//
// Per work item (layer, plane, tile of tokens) one UB buffer is filled by one copy per run of
// consecutive slots (or per token / per piece, as the PlaneDesc allows), then emptied by one copy
// per run of moving tokens on the other side. A TQueBind of depth 2 double-buffers: the copy into
// one buffer overlaps the copy out of the other. Tokens in the skipped prefix or with slot < 0 move
// in neither direction. Every address and copy length comes from ascend_kernel_params.hpp, whose
// rules the CPU emulator in native/tests checks.
//
// The descriptor, pointer table and slots are read by the scalar unit through the per-core data
// cache, and the launcher rewrites those buffers (by DMA) between launches: every core invalidates
// its whole data cache at entry, before the first scalar read, so no line of an earlier launch's
// tables survives.
//
// Elements move as raw bits through a carrier type of the same width (int8_t, half, float): the
// copies never convert, so bf16 moves bit-exactly through the 2-byte carrier and no bfloat16_t
// appears in device code (310P has none). Never compiled or run here: see native/ascend/README.md.
#include "kernel_operator.h"

#define LMCACHE_ASCEND_KERNEL_FN __aicore__ inline
#include "lmcache_ascend/ascend_kernel_params.hpp"

// DataCopyPad (byte-exact global-memory lengths) exists from the 220 cores (910B, A3) on; the 310P
// (200) moves whole 32-byte blocks only, which the host planner guarantees before launching.
#if defined(__CCE_AICORE__) && __CCE_AICORE__ >= 220
#define LMCACHE_ASCEND_COPY_PAD 1
#else
#define LMCACHE_ASCEND_COPY_PAD 0
#endif

namespace lmcache_ascend {
namespace npu {
namespace device {

// Copies a device struct (8-byte words) from global memory into a local variable.
template <typename S>
__aicore__ inline void LoadWords(S* dst, __gm__ uint8_t* src) {
  int64_t* out = reinterpret_cast<int64_t*>(dst);
  __gm__ int64_t* in = reinterpret_cast<__gm__ int64_t*>(src);
  for (uint32_t i = 0; i < sizeof(S) / sizeof(int64_t); ++i) out[i] = in[i];
}

template <typename SlotT>
struct GmSlots {
  __gm__ SlotT* data;
  __aicore__ inline int64_t operator()(int64_t token) const { return static_cast<int64_t>(data[token]); }
};

template <typename T>
__aicore__ inline AscendC::GlobalTensor<T> GmSpan(__gm__ uint8_t* base, const CopyOp& op) {
  AscendC::GlobalTensor<T> gm;
  const int64_t span = (op.count - 1) * (op.len + op.gm_gap) + op.len;
  gm.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(base + op.gm_offset), static_cast<uint64_t>(span / sizeof(T)));
  return gm;
}

// Global memory -> UB: `count` blocks of `len` bytes, `gm_gap` bytes apart, packed at a 32-byte
// pitch in UB.
template <typename T>
struct CopyToUb {
  AscendC::LocalTensor<T> ub;
  __gm__ uint8_t* base;
  __aicore__ inline void operator()(const CopyOp& op) {
    AscendC::GlobalTensor<T> gm = GmSpan<T>(base, op);
#if LMCACHE_ASCEND_COPY_PAD
    AscendC::DataCopyExtParams params(static_cast<uint16_t>(op.count), static_cast<uint32_t>(op.len),
                                      static_cast<uint32_t>(op.gm_gap), 0, 0);
    AscendC::DataCopyPadExtParams<T> pad(false, 0, 0, static_cast<T>(0));
    AscendC::DataCopyPad(ub[op.ub_offset / sizeof(T)], gm, params, pad);
#else
    AscendC::DataCopyParams params(static_cast<uint16_t>(op.count), static_cast<uint16_t>(op.len / kUbBlockBytes),
                                   static_cast<uint16_t>(op.gm_gap / kUbBlockBytes), 0);
    AscendC::DataCopy(ub[op.ub_offset / sizeof(T)], gm, params);
#endif
  }
};

// UB -> global memory, the mirror of CopyToUb.
template <typename T>
struct CopyFromUb {
  AscendC::LocalTensor<T> ub;
  __gm__ uint8_t* base;
  __aicore__ inline void operator()(const CopyOp& op) {
    AscendC::GlobalTensor<T> gm = GmSpan<T>(base, op);
#if LMCACHE_ASCEND_COPY_PAD
    AscendC::DataCopyExtParams params(static_cast<uint16_t>(op.count), static_cast<uint32_t>(op.len), 0,
                                      static_cast<uint32_t>(op.gm_gap), 0);
    AscendC::DataCopyPad(gm, ub[op.ub_offset / sizeof(T)], params);
#else
    AscendC::DataCopyParams params(static_cast<uint16_t>(op.count), static_cast<uint16_t>(op.len / kUbBlockBytes), 0,
                                   static_cast<uint16_t>(op.gm_gap / kUbBlockBytes));
    AscendC::DataCopy(gm, ub[op.ub_offset / sizeof(T)], params);
#endif
  }
};

template <typename T, typename SlotT>
class KvTransfer {
 public:
  __aicore__ inline KvTransfer() {}

  __aicore__ inline void Init(GM_ADDR descriptor, GM_ADDR plane_ptrs, GM_ADDR slots) {
    // ENTIRE_DATA_CACHE ignores the address: any global tensor will do.
    AscendC::GlobalTensor<uint8_t> any;
    any.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(descriptor), sizeof(KernelParams));
    AscendC::DataCacheCleanAndInvalid<uint8_t, AscendC::CacheLine::ENTIRE_DATA_CACHE>(any);
    descriptor_ = descriptor;
    LoadWords(&params_, descriptor);
    plane_ptrs_ = reinterpret_cast<__gm__ uint64_t*>(plane_ptrs);
    slots_.data = reinterpret_cast<__gm__ SlotT*>(slots);
    pipe_.InitBuffer(queue_, 2, static_cast<uint32_t>(params_.buffer_bytes));
  }

  __aicore__ inline void Process() {
    int64_t begin = 0, count = 0;
    core_items(params_, static_cast<int64_t>(AscendC::GetBlockIdx()), &begin, &count);
    for (int64_t item = begin; item < begin + count; ++item) MoveItem(item);
  }

 private:
  __aicore__ inline void MoveItem(int64_t item) {
    const ItemCoords c = item_coords(params_, item);
    Tile tile;
    LoadWords(&tile, descriptor_ + params_.tile_table_offset + c.tile * static_cast<int64_t>(sizeof(Tile)));
    ChunkPlane chunk;
    LoadWords(&chunk, descriptor_ + params_.chunk_table_offset +
                          (tile.chunk * params_.num_planes + c.plane) * static_cast<int64_t>(sizeof(ChunkPlane)));
    const PlaneDesc& plane = params_.planes[c.plane];
    __gm__ uint8_t* paged = reinterpret_cast<__gm__ uint8_t*>(plane_ptrs_[c.layer * params_.num_planes + c.plane]);
    __gm__ uint8_t* chunk_base = reinterpret_cast<__gm__ uint8_t*>(chunk.base);

    AscendC::LocalTensor<T> buffer = queue_.template AllocTensor<T>();
    if (params_.direction == kGather) {
      CopyToUb<T> in{buffer, paged};
      paged_side_copies(params_, plane, tile, slots_, in);
      queue_.EnQue(buffer);
      buffer = queue_.template DeQue<T>();
      CopyFromUb<T> out{buffer, chunk_base};
      chunk_side_copies(params_, plane, chunk, tile, c.layer, slots_, out);
    } else {
      CopyToUb<T> in{buffer, chunk_base};
      chunk_side_copies(params_, plane, chunk, tile, c.layer, slots_, in);
      queue_.EnQue(buffer);
      buffer = queue_.template DeQue<T>();
      CopyFromUb<T> out{buffer, paged};
      paged_side_copies(params_, plane, tile, slots_, out);
    }
    queue_.FreeTensor(buffer);
  }

  AscendC::TPipe pipe_;
  AscendC::TQueBind<AscendC::TPosition::VECIN, AscendC::TPosition::VECOUT, 2> queue_;
  KernelParams params_;
  __gm__ uint8_t* descriptor_ = nullptr;
  __gm__ uint64_t* plane_ptrs_ = nullptr;
  GmSlots<SlotT> slots_;
};

}  // namespace device
}  // namespace npu
}  // namespace lmcache_ascend

// One entry per (element width, slot width). A data-movement kernel needs vector cores only: on the
// 220 cores the launcher's blockDim counts vector cores, which holds only for an AIV-only kernel, so
// a toolchain without the macro must fail the build rather than launch a mixed kernel.
#if defined(__CCE_AICORE__) && __CCE_AICORE__ >= 220
#ifndef KERNEL_TASK_TYPE_DEFAULT
#error "KERNEL_TASK_TYPE_DEFAULT is not defined: this AscendC toolkit cannot mark the kernel AIV-only (KERNEL_TYPE_AIV_ONLY); build with a newer CANN toolkit"
#endif
#define LMCACHE_ASCEND_VECTOR_ONLY() KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY)
#else
#define LMCACHE_ASCEND_VECTOR_ONLY()
#endif

#define LMCACHE_ASCEND_KV_KERNEL(NAME, CARRIER, SLOT)                                                      \
  extern "C" __global__ __aicore__ void NAME(GM_ADDR descriptor, GM_ADDR plane_ptrs, GM_ADDR slots) {      \
    LMCACHE_ASCEND_VECTOR_ONLY();                                                                          \
    lmcache_ascend::npu::device::KvTransfer<CARRIER, SLOT> op;                                             \
    op.Init(descriptor, plane_ptrs, slots);                                                                \
    op.Process();                                                                                          \
  }

LMCACHE_ASCEND_KV_KERNEL(lmcache_ascend_kv_transfer_e1_s4, int8_t, int32_t)
LMCACHE_ASCEND_KV_KERNEL(lmcache_ascend_kv_transfer_e1_s8, int8_t, int64_t)
LMCACHE_ASCEND_KV_KERNEL(lmcache_ascend_kv_transfer_e2_s4, half, int32_t)
LMCACHE_ASCEND_KV_KERNEL(lmcache_ascend_kv_transfer_e2_s8, half, int64_t)
LMCACHE_ASCEND_KV_KERNEL(lmcache_ascend_kv_transfer_e4_s4, float, int32_t)
LMCACHE_ASCEND_KV_KERNEL(lmcache_ascend_kv_transfer_e4_s8, float, int64_t)

// Host-side launch: picks the entry for the element and slot widths. Returns 0, or -1 for a width
// without an entry (the launcher checked them before).
extern "C" int32_t lmcache_ascend_launch_kv_transfer(uint32_t block_dim, void* stream, uint8_t* descriptor,
                                                     uint8_t* plane_ptrs, uint8_t* slots, int32_t elem_size,
                                                     int32_t slot_bytes) {
  switch (elem_size * 10 + slot_bytes) {
    case 14: lmcache_ascend_kv_transfer_e1_s4<<<block_dim, nullptr, stream>>>(descriptor, plane_ptrs, slots); return 0;
    case 18: lmcache_ascend_kv_transfer_e1_s8<<<block_dim, nullptr, stream>>>(descriptor, plane_ptrs, slots); return 0;
    case 24: lmcache_ascend_kv_transfer_e2_s4<<<block_dim, nullptr, stream>>>(descriptor, plane_ptrs, slots); return 0;
    case 28: lmcache_ascend_kv_transfer_e2_s8<<<block_dim, nullptr, stream>>>(descriptor, plane_ptrs, slots); return 0;
    case 44: lmcache_ascend_kv_transfer_e4_s4<<<block_dim, nullptr, stream>>>(descriptor, plane_ptrs, slots); return 0;
    case 48: lmcache_ascend_kv_transfer_e4_s8<<<block_dim, nullptr, stream>>>(descriptor, plane_ptrs, slots); return 0;
    default: return -1;
  }
}
