// What the Ascend KV transfer kernel reads from device memory, and the addressing rules it follows.
//
// Shared verbatim by the AscendC kernel (native/ascend/kernels) and by host C++ (the launcher, the
// tiling planner and the CPU-side kernel emulator in native/tests). Everything here is POD with
// fixed-width fields and header-only inline code with no library calls, so the kernel compiler can
// take it as is. The kernel defines LMCACHE_ASCEND_KERNEL_FN as `__aicore__ inline` before including
// this header; host code gets plain `inline`.
//
// One kernel family covers every layout: the paged side of each plane is described by a PlaneDesc
// (a token is `pieces` contiguous pieces of `piece_bytes`, `piece_stride_bytes` apart: one piece for
// NHD rows, one per head for HND layouts, one per 16/32-element fractal for the 310P NZ layout),
// the LMCache side by one ChunkPlane per (chunk, plane). Work is a list of items
// (layer, plane, tile of consecutive tokens of one chunk), split over vector cores.
#pragma once

#include <stdint.h>

#ifndef LMCACHE_ASCEND_KERNEL_FN
#define LMCACHE_ASCEND_KERNEL_FN inline
#endif

namespace lmcache_ascend {
namespace npu {

// K and V, MLA latent + rope, DSA latent + rope + indexer key: at most 4 planes per launch.
constexpr int32_t kMaxPlanes = 4;
// Unified-buffer (UB) addresses and DataCopy lengths come in 32-byte blocks.
constexpr int64_t kUbBlockBytes = 32;
// blockCount of DataCopy / DataCopyPad is a 12-bit field: at most 4095 blocks per copy.
constexpr int64_t kMaxBlockCount = 4095;
// DataCopyParams (no DataCopyPad, 310P): length and gaps are uint16 counts of 32-byte blocks.
constexpr int64_t kMaxU16 = 65535;
// DataCopyExtParams: blockLen up to 2^21 - 1 bytes, GM gaps are uint32 bytes.
constexpr int64_t kMaxPadBlockLen = 2097151;
constexpr int64_t kMaxU32 = 4294967295LL;

constexpr int32_t kGather = 0;   // paged -> chunk (store)
constexpr int32_t kScatter = 1;  // chunk -> paged (retrieve)

// One plane (K, V, latent, rope, ...) of the paged KV cache, identical for every layer.
struct PlaneDesc {
  int64_t piece_bytes;         // bytes of one contiguous piece of a token's row
  int64_t piece_ub_bytes;      // piece_bytes rounded up to 32: pitch of pieces in UB
  int64_t pieces;              // pieces per token (1 when the whole row is contiguous)
  int64_t row_ub_bytes;        // pieces * piece_ub_bytes: pitch of tokens in UB
  int64_t piece_stride_bytes;  // paged distance between the pieces of one token
  int64_t block_stride_bytes;  // paged distance between blocks
  int64_t token_stride_bytes;  // paged distance between tokens of one block
  int64_t block_size;          // tokens per block
  int64_t num_slots;           // blocks * block_size: slots at or above are never touched
  int32_t paged_run_copies;    // 1: consecutive slots of one block move with one copy (pieces == 1)
  int32_t paged_strided_pieces;  // 1: a token's pieces move with one strided copy; 0: one per piece
};

// One plane of one LMCache chunk (memory object) as the kernel addresses it.
struct ChunkPlane {
  uint64_t base;               // device address of (layer 0, chunk token 0) of this plane
  int64_t layer_stride_bytes;
  int64_t token_stride_bytes;
  int32_t dense_rows;          // 1: token rows are adjacent: a run of tokens moves with one copy
  int32_t strided_rows;        // 1: a run of single-piece rows moves with one strided copy
};

// Consecutive tokens of one chunk, processed together in one UB buffer.
struct Tile {
  int64_t chunk;        // index into the chunk table
  int64_t first_token;  // index of the first token in the slot mapping
  int64_t chunk_token;  // its position inside the chunk
  int64_t count;        // tokens in this tile (<= KernelParams::tile_tokens)
};

// Launch-wide parameters, followed in device memory by the chunk table
// (num_chunks * num_planes ChunkPlane, chunk-major) and the tile table (num_tiles Tile). Fields
// marked "host" are not read by the kernel: the launcher and the CPU emulator in native/tests use
// them (the kernel's widths are template arguments, its copy instruction a compile-time choice).
struct KernelParams {
  int64_t num_layers;         // host
  int64_t num_planes;
  int64_t num_chunks;         // host
  int64_t num_tiles;
  int64_t num_items;          // host: num_layers * num_planes * num_tiles
  int64_t used_cores;         // blockDim of the launch
  int64_t items_per_core;     // num_items / used_cores
  int64_t items_remainder;    // the first `items_remainder` cores take one item more
  int64_t tile_tokens;        // host: most tokens in one tile
  int64_t buffer_bytes;       // bytes of each of the two UB buffers
  int64_t skip_prefix_n_tokens;
  int64_t chunk_table_offset;  // bytes from the start of KernelParams
  int64_t tile_table_offset;
  int32_t direction;          // kGather or kScatter
  int32_t slot_bytes;         // host: 4 or 8 (picks the kernel entry)
  int32_t elem_size;          // host: 1, 2 or 4 (picks the kernel entry)
  int32_t has_copy_pad;       // host: 1: DataCopyPad (byte-exact lengths); 0: whole 32-byte blocks only
  PlaneDesc planes[kMaxPlanes];
};

static_assert(sizeof(PlaneDesc) % 8 == 0, "device structs are copied as 8-byte words");
static_assert(sizeof(ChunkPlane) % 8 == 0, "device structs are copied as 8-byte words");
static_assert(sizeof(Tile) % 8 == 0, "device structs are copied as 8-byte words");
static_assert(sizeof(KernelParams) % 8 == 0, "device structs are copied as 8-byte words");

// One DataCopy / DataCopyPad between UB and global memory: `count` blocks of `len` bytes, packed
// in UB at a 32-byte pitch starting at `ub_offset`, and `gm_gap` bytes apart in global memory
// starting at `gm_offset` (relative to the plane's base for this layer).
struct CopyOp {
  int64_t ub_offset;
  int64_t gm_offset;
  int64_t count;
  int64_t len;
  int64_t gm_gap;
};

struct ItemCoords {
  int64_t layer;
  int64_t plane;
  int64_t tile;
};

LMCACHE_ASCEND_KERNEL_FN int64_t align_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }

// Items of core `core`: a contiguous range, sizes differing by at most one across cores.
LMCACHE_ASCEND_KERNEL_FN void core_items(const KernelParams& p, int64_t core, int64_t* begin, int64_t* count) {
  int64_t extra = core < p.items_remainder ? core : p.items_remainder;
  *begin = core * p.items_per_core + extra;
  *count = core < p.used_cores ? p.items_per_core + (core < p.items_remainder ? 1 : 0) : 0;
}

// Items are ordered (layer, plane, tile): a core's range walks the tiles of one plane in order.
LMCACHE_ASCEND_KERNEL_FN ItemCoords item_coords(const KernelParams& p, int64_t item) {
  ItemCoords c;
  c.tile = item % p.num_tiles;
  int64_t layer_plane = item / p.num_tiles;
  c.plane = layer_plane % p.num_planes;
  c.layer = layer_plane / p.num_planes;
  return c;
}

LMCACHE_ASCEND_KERNEL_FN int64_t paged_row_offset(const PlaneDesc& d, int64_t slot) {
  return (slot / d.block_size) * d.block_stride_bytes + (slot % d.block_size) * d.token_stride_bytes;
}

LMCACHE_ASCEND_KERNEL_FN int64_t chunk_row_offset(const ChunkPlane& c, int64_t layer, int64_t chunk_token) {
  return layer * c.layer_stride_bytes + chunk_token * c.token_stride_bytes;
}

// A token moves unless it is in the skipped prefix or its slot is negative (padding). Slots at or
// above num_slots were rejected on the host; the check here keeps a stale table from writing
// outside the cache.
LMCACHE_ASCEND_KERNEL_FN bool token_moves(const KernelParams& p, const PlaneDesc& d, int64_t token, int64_t slot) {
  return token >= p.skip_prefix_n_tokens && slot >= 0 && slot < d.num_slots;
}

// Copies between UB and the paged cache for one tile. `slots(token)` returns the slot of a token;
// `visit(op)` performs (kernel) or checks (tests) one copy; offsets are from the plane base.
template <typename Slots, typename Visit>
LMCACHE_ASCEND_KERNEL_FN void paged_side_copies(const KernelParams& p, const PlaneDesc& d, const Tile& tile,
                                                const Slots& slots, Visit& visit) {
  int64_t i = 0;
  while (i < tile.count) {
    const int64_t token = tile.first_token + i;
    const int64_t slot = slots(token);
    if (!token_moves(p, d, token, slot)) {
      ++i;
      continue;
    }
    CopyOp op;
    op.ub_offset = i * d.row_ub_bytes;
    op.gm_offset = paged_row_offset(d, slot);
    op.len = d.piece_bytes;
    if (d.paged_run_copies) {
      // Extend while the next token is the next slot of the same block.
      int64_t run = 1;
      const int64_t room = d.block_size - slot % d.block_size;
      while (i + run < tile.count && run < room) {
        const int64_t next = slots(token + run);
        if (next != slot + run || !token_moves(p, d, token + run, next)) break;
        ++run;
      }
      op.count = run;
      op.gm_gap = d.token_stride_bytes - d.piece_bytes;
      visit(op);
      i += run;
      continue;
    }
    if (d.paged_strided_pieces) {
      op.count = d.pieces;
      op.gm_gap = d.piece_stride_bytes - d.piece_bytes;
      visit(op);
    } else {
      op.count = 1;
      op.gm_gap = 0;
      for (int64_t k = 0; k < d.pieces; ++k) {
        visit(op);
        op.ub_offset += d.piece_ub_bytes;
        op.gm_offset += d.piece_stride_bytes;
      }
    }
    ++i;
  }
}

// Copies between UB and one chunk plane for one tile; offsets are from the chunk plane's base.
template <typename Slots, typename Visit>
LMCACHE_ASCEND_KERNEL_FN void chunk_side_copies(const KernelParams& p, const PlaneDesc& d, const ChunkPlane& c,
                                                const Tile& tile, int64_t layer, const Slots& slots, Visit& visit) {
  int64_t i = 0;
  while (i < tile.count) {
    if (!token_moves(p, d, tile.first_token + i, slots(tile.first_token + i))) {
      ++i;
      continue;
    }
    int64_t run = 1;  // moving tokens sit in consecutive chunk rows whatever their slots
    while (i + run < tile.count && token_moves(p, d, tile.first_token + i + run, slots(tile.first_token + i + run)))
      ++run;
    CopyOp op;
    op.ub_offset = i * d.row_ub_bytes;
    op.gm_offset = chunk_row_offset(c, layer, tile.chunk_token + i);
    op.len = d.piece_bytes;
    op.gm_gap = 0;
    if (c.dense_rows) {
      op.count = run * d.pieces;
      visit(op);
    } else if (d.pieces == 1 && c.strided_rows) {
      op.count = run;
      op.gm_gap = c.token_stride_bytes - d.piece_bytes;
      visit(op);
    } else {
      op.count = d.pieces;  // one token: its pieces are adjacent in the chunk row
      for (int64_t t = 0; t < run; ++t) {
        visit(op);
        op.ub_offset += d.row_ub_bytes;
        op.gm_offset += c.token_stride_bytes;
      }
    }
    i += run;
  }
}

}  // namespace npu
}  // namespace lmcache_ascend
