// The one KV transfer kernel family: gather (paged -> LMCache chunks, "store") and scatter
// (LMCache chunks -> paged, "retrieve"), for any number of layers and any number of chunks of one
// request, over any layout a PageLayout / ChunkStrides pair can describe.
#pragma once

#include <cstdint>

#include "lmcache_ascend/page_layout.hpp"
#include "lmcache_ascend/status.hpp"

namespace lmcache_ascend {

enum class Direction : int {
  kPagedToChunk = 0,  // gather: engine KV cache -> LMCache memory object (store)
  kChunkToPaged = 1,  // scatter: LMCache memory object -> engine KV cache (retrieve)
};

struct TransferRequest {
  PageLayout page;
  // Elements addressable from every plane base (bounds check of the paged side).
  int64_t page_extent_elems = 0;
  const ChunkRef* chunks = nullptr;
  int64_t num_chunks = 0;
  // Bytes addressable from every chunk base (bounds check of the chunk side).
  const int64_t* chunk_extent_bytes = nullptr;
  SlotMapping slots;
  // Tokens whose index in the slot mapping is below this are left alone in both directions
  // (they are already in place). Chunk offsets are unaffected: token i of the slot mapping stays
  // at position i - token_begin of its chunk.
  int64_t skip_prefix_n_tokens = 0;
  Direction direction = Direction::kPagedToChunk;
};

// Validates everything (descriptor, extents, every slot) before the first byte moves; on error
// nothing has been written. Runs of consecutive slots inside a block move with one memcpy when
// both sides store them contiguously. Work is split over the shared thread pool.
Status transfer_kv(const TransferRequest& request);

}  // namespace lmcache_ascend
