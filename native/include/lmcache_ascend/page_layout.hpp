// Layout descriptors for the two sides of every KV transfer.
//
// Paged side (the engine's KV cache): tokens live in blocks of `block_size`; a slot is
// block_id * block_size + offset_in_block. Every engine layout we support (flash-attn,
// flashinfer, separate K/V, vLLM CPU platform, HND, MLA, ...) is described by one table of
// plane base pointers plus four element strides; head_dim is always contiguous.
//
// Chunk side (LMCache's contiguous memory object): `[plane, layer, token, hidden]` in any
// order, described by three element strides; hidden = num_heads * head_size is contiguous.
//
// This header knows bytes, strides and pointers only: no Python, no torch.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lmcache_ascend {

struct PageLayout {
  int32_t elem_size = 0;     // bytes per element: 1, 2 or 4
  int32_t num_layers = 0;    // layers described by plane_bases
  int32_t num_planes = 0;    // 2 = K and V, 1 = MLA latent
  // plane_bases[layer * num_planes + plane]: address of element (block 0, head 0, token 0, dim 0)
  // of that layer's K (plane 0) or V (plane 1) plane. Separate K/V tensors, a merged tensor with
  // a K/V axis anywhere, or an interleaved K|V row all reduce to this table.
  const uintptr_t* plane_bases = nullptr;
  int64_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t num_heads = 0;
  int32_t head_size = 0;
  // Element strides. Strides are per plane: the K/V stride is folded into plane_bases.
  int64_t block_stride = 0;
  int64_t head_stride = 0;
  int64_t token_stride = 0;  // token-in-block

  int64_t num_slots() const { return num_blocks * static_cast<int64_t>(block_size); }
  int64_t hidden() const { return static_cast<int64_t>(num_heads) * head_size; }
  // True when one token's heads form one contiguous row of `hidden` elements.
  bool token_row_contiguous() const { return num_heads == 1 || head_stride == head_size; }
};

// Element strides of an LMCache memory object. The four LMCache formats map to:
//   KV_2LTD [2, L, T, D]: plane = L*T*D, layer = T*D, token = D
//   KV_T2D  [T, 2, D]   : plane = D,     layer = -,   token = 2*D
//   KV_2TD  [2, T, D]   : plane = T*D,   layer = -,   token = D
//   MLA     [1, L, T, D]: plane = -,     layer = T*D, token = D
struct ChunkStrides {
  int64_t plane_stride = 0;
  int64_t layer_stride = 0;
  int64_t token_stride = 0;
};

// One LMCache memory object taking part in a transfer: it holds the tokens
// [token_begin, token_end) of the slot mapping (token_begin is its token 0). Each carries its own
// strides: the last chunk of a request is usually shorter than the others.
struct ChunkRef {
  uintptr_t base = 0;
  int64_t token_begin = 0;
  int64_t token_end = 0;
  ChunkStrides strides;
};

// The slot mapping as handed over by the engine: int32 or int64, one entry per token.
struct SlotMapping {
  const void* data = nullptr;
  int64_t length = 0;
  int32_t index_bytes = 0;  // 4 or 8

  int64_t at(int64_t i) const {
    return index_bytes == 4 ? static_cast<const int32_t*>(data)[i]
                            : static_cast<const int64_t*>(data)[i];
  }
};

}  // namespace lmcache_ascend
