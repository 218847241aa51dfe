// Launch planning for the Ascend KV transfer kernel: chip limits, unified-buffer (UB) budget, tokens
// per tile, split of the work over vector cores, the device tables (paged plane pointers, chunk
// planes, tiles) and, for the fused variants, the device staging buffer and its host copies.
//
// Plain C++17, header-only, no AscendC or ACL: the host launcher uses it, and native/tests checks
// every plan against a CPU emulation of the kernel. The structs the kernel reads live in
// ascend_kernel_params.hpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "lmcache_ascend/ascend_kernel_params.hpp"
#include "lmcache_ascend/page_layout.hpp"
#include "lmcache_ascend/status.hpp"
#include "lmcache_ascend/transfer.hpp"

namespace lmcache_ascend {
namespace npu {

enum class ChipFamily : int32_t { kUnknown = 0, kAscend910B = 1, kAscend910_93 = 2, kAscend310P = 3 };

struct ChipInfo {
  ChipFamily family = ChipFamily::kUnknown;
  int32_t vector_cores = 0;  // AIV cores on 910B / A3 (separated cores), AI cores on 310P (coupled)
  int64_t ub_bytes = 0;      // unified buffer per core (see apply_queried_ub)
  int32_t aicore_arch = 0;   // 220 (910B, A3) or 200 (310P)
  bool has_copy_pad = false; // DataCopyPad (byte-exact GM lengths) exists on 910B and A3 only
};

inline const char* chip_family_name(ChipFamily f) {
  switch (f) {
    case ChipFamily::kAscend910B: return "Ascend910B (A2)";
    case ChipFamily::kAscend910_93: return "Ascend910_93 (A3)";
    case ChipFamily::kAscend310P: return "Ascend310P";
    default: return "unknown Ascend chip";
  }
}

// Limits by SoC name as aclrtGetSocName() / `npu-smi info` report it. False for names we do not know.
inline bool chip_info_for_soc(const char* soc, ChipInfo* out) {
  if (soc == nullptr) return false;
  const std::string s(soc);
  auto starts = [&s](const char* prefix) { return s.rfind(prefix, 0) == 0; };
  ChipInfo c;
  if (starts("Ascend910B1") || starts("Ascend910B2")) {
    c = {ChipFamily::kAscend910B, 48, 192 * 1024, 220, true};
  } else if (starts("Ascend910B3") || starts("Ascend910B4")) {
    c = {ChipFamily::kAscend910B, 40, 192 * 1024, 220, true};
  } else if (starts("Ascend910_93")) {
    c = {ChipFamily::kAscend910_93, 48, 192 * 1024, 220, true};
  } else if (starts("Ascend310P")) {
    // UB size from a secondary source: the launcher takes the smaller of this and the size the
    // platform library reports (PlatformAscendC::GetCoreMemSize) where it can ask.
    c = {ChipFamily::kAscend310P, 8, 256 * 1024, 200, false};
  } else {
    return false;
  }
  *out = c;
  return true;
}

// The UB size the runtime reports on this machine, when it answers (0: no answer): the table value
// is an upper bound we trust less than the runtime, so the smaller one wins.
inline void apply_queried_ub(ChipInfo* chip, int64_t queried) {
  if (queried > 0 && queried < chip->ub_bytes) chip->ub_bytes = queried;
}

// UB kept free for the AscendC runtime; the rest is split into two buffers (double buffering: the
// copy into one overlaps the copy out of the other).
constexpr int64_t kUbReservedBytes = 16 * 1024;

inline int64_t ub_buffer_bytes(const ChipInfo& chip) {
  return (chip.ub_bytes - kUbReservedBytes) / 2 / kUbBlockBytes * kUbBlockBytes;
}

// Fused variants: bytes [host_offset, host_offset + bytes) of chunk `chunk` of group `group` (from
// its ChunkRef::base) live at staging_offset in the device staging buffer.
struct StagingCopy {
  int64_t group;
  int64_t chunk;
  int64_t host_offset;
  int64_t staging_offset;
  int64_t bytes;
};

struct PlanOptions {
  ChipInfo chip;
  int32_t cores = 0;          // vector cores to spread over; 0 = chip.vector_cores
  bool stage_chunks = false;  // fused: chunks are host memory moved through a device staging buffer
};

struct LaunchPlan {
  KernelParams params{};
  std::vector<ChunkPlane> chunk_planes;  // [chunk][plane]
  std::vector<Tile> tiles;
  std::vector<uint64_t> plane_ptrs;      // [layer][plane]: the paged plane bases
  std::vector<StagingCopy> staging_copies;
  int64_t staging_bytes = 0;
  bool staged = false;

  uint32_t block_dim() const { return static_cast<uint32_t>(params.used_cores); }

  // KernelParams, then the chunk table, then the tile table: one upload.
  std::vector<uint8_t> descriptor() const {
    std::vector<uint8_t> out(static_cast<size_t>(params.tile_table_offset) + tiles.size() * sizeof(Tile));
    std::memcpy(out.data(), &params, sizeof(params));
    if (!chunk_planes.empty())
      std::memcpy(out.data() + params.chunk_table_offset, chunk_planes.data(), chunk_planes.size() * sizeof(ChunkPlane));
    if (!tiles.empty())
      std::memcpy(out.data() + params.tile_table_offset, tiles.data(), tiles.size() * sizeof(Tile));
    return out;
  }
};

// Plane groups of one launch share layers, chunks, slots, skipped prefix and direction, and hold
// at most kMaxPlanes planes together. Checked by the CPU library before validation and again by
// the planner.
inline Status check_plane_groups(const TransferRequest* groups, int32_t num_groups) {
  if (groups == nullptr || num_groups < 1)
    return Status::Error(StatusCode::kInvalidArgument, "no transfer given: pass at least one TransferRequest");
  const TransferRequest& g0 = groups[0];
  int64_t planes = 0;
  for (int32_t g = 0; g < num_groups; ++g) {
    const TransferRequest& r = groups[g];
    const std::string which = "plane group " + std::to_string(g);
    planes += r.page.num_planes;
    if (r.page.elem_size != g0.page.elem_size)
      return Status::Error(StatusCode::kInvalidArgument,
                           which + " has " + std::to_string(r.page.elem_size) + "-byte elements but group 0 has " +
                               std::to_string(g0.page.elem_size) + ": every plane of one launch needs the same dtype");
    if (r.page.num_layers != g0.page.num_layers || r.num_chunks != g0.num_chunks ||
        r.slots.data != g0.slots.data || r.slots.length != g0.slots.length ||
        r.slots.index_bytes != g0.slots.index_bytes || r.skip_prefix_n_tokens != g0.skip_prefix_n_tokens ||
        r.direction != g0.direction)
      return Status::Error(StatusCode::kInvalidArgument,
                           which + " differs from group 0 in layers, chunks, slot mapping, skip_prefix_n_tokens or "
                                   "direction: plane groups of one launch share everything but the planes");
    if (r.num_chunks > 0 && (r.chunks == nullptr || g0.chunks == nullptr))
      return Status::Error(StatusCode::kInvalidArgument, which + " has chunks but a null chunk table");
    for (int64_t c = 0; c < r.num_chunks; ++c)
      if (r.chunks[c].token_begin != g0.chunks[c].token_begin || r.chunks[c].token_end != g0.chunks[c].token_end)
        return Status::Error(StatusCode::kInvalidArgument,
                             which + " chunk " + std::to_string(c) + " covers other tokens than in group 0");
  }
  if (planes > kMaxPlanes)
    return Status::Error(StatusCode::kInvalidArgument,
                         "the launch has " + std::to_string(planes) + " planes per layer; the NPU kernel takes at most " +
                             std::to_string(kMaxPlanes) + " (K+V, MLA latent+rope, DSA latent+rope+indexer)");
  return Status::Ok();
}

namespace detail {

inline Status plan_error(StatusCode code, const std::string& msg) { return Status::Error(code, msg); }

// Whether a global-memory gap between blocks fits the copy instruction.
inline bool gap_fits(int64_t gap, bool copy_pad) {
  if (gap < 0) return false;
  return copy_pad ? gap <= kMaxU32 : gap % kUbBlockBytes == 0 && gap / kUbBlockBytes <= kMaxU16;
}

inline Status describe_plane(const PageLayout& page, const ChipInfo& chip, int64_t plane_index, PlaneDesc* out) {
  const int64_t es = page.elem_size;
  PlaneDesc d{};
  const bool contiguous = page.token_row_contiguous();
  d.pieces = contiguous ? 1 : page.num_heads;
  d.piece_bytes = (contiguous ? page.hidden() : page.head_size) * es;
  d.piece_ub_bytes = align_up(d.piece_bytes, kUbBlockBytes);
  d.row_ub_bytes = d.pieces * d.piece_ub_bytes;
  d.piece_stride_bytes = page.head_stride * es;
  d.block_stride_bytes = page.block_stride * es;
  d.token_stride_bytes = page.token_stride * es;
  d.block_size = page.block_size;
  d.num_slots = page.num_slots();
  const bool pad = chip.has_copy_pad;
  if (!pad && d.piece_bytes % kUbBlockBytes != 0)
    return plan_error(StatusCode::kInvalidArgument,
                      "plane " + std::to_string(plane_index) + ": " + chip_family_name(chip.family) +
                          " has no DataCopyPad, so every contiguous piece of a token must be a multiple of 32 "
                          "bytes, but it is " + std::to_string(d.piece_bytes) + " bytes (" +
                          std::to_string(d.piece_bytes / es) + " elements x " + std::to_string(es) +
                          " bytes); use a head size (or NZ fractal width) whose bytes are a multiple of 32, "
                          "or keep this KV cache on the CPU backend");
  d.paged_run_copies = d.pieces == 1 && gap_fits(d.token_stride_bytes - d.piece_bytes, pad) ? 1 : 0;
  d.paged_strided_pieces =
      d.pieces > 1 && d.pieces <= kMaxBlockCount && gap_fits(d.piece_stride_bytes - d.piece_bytes, pad) ? 1 : 0;
  *out = d;
  return Status::Ok();
}

// Byte ranges of one chunk that a transfer touches, merged, in address order.
inline std::vector<std::pair<int64_t, int64_t>> touched_ranges(const TransferRequest& r, int64_t chunk,
                                                                const KernelParams& p, const PlaneDesc* planes,
                                                                int64_t first_plane) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  const ChunkRef& ch = r.chunks[chunk];
  const int64_t es = r.page.elem_size;
  const ChunkStrides& s = ch.strides;
  for (int64_t lp = 0; lp < r.page.num_planes; ++lp) {
    const PlaneDesc& d = planes[first_plane + lp];
    const int64_t row = d.pieces * d.piece_bytes;
    const bool dense = s.token_stride * es == row;
    for (int64_t layer = 0; layer < r.page.num_layers; ++layer) {
      const int64_t layer_base = (lp * s.plane_stride + layer * s.layer_stride) * es;
      int64_t t = ch.token_begin;
      while (t < ch.token_end) {
        if (!token_moves(p, d, t, r.slots.at(t))) {
          ++t;
          continue;
        }
        int64_t end = t + 1;
        while (end < ch.token_end && token_moves(p, d, end, r.slots.at(end))) ++end;
        const int64_t first = layer_base + (t - ch.token_begin) * s.token_stride * es;
        if (dense) {
          ranges.emplace_back(first, first + (end - t) * row);
        } else {
          for (int64_t k = 0; k < end - t; ++k)
            ranges.emplace_back(first + k * s.token_stride * es, first + k * s.token_stride * es + row);
        }
        t = end;
      }
    }
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (const auto& range : ranges) {
    if (!merged.empty() && range.first <= merged.back().second)
      merged.back().second = std::max(merged.back().second, range.second);
    else
      merged.push_back(range);
  }
  return merged;
}

}  // namespace detail

// Plans one launch over `num_groups` plane groups that share layers, chunks and slots (one group
// for K/V or MLA; several for MLA latent + rope or DSA, whose planes differ in width). The groups
// must already have passed validate_transfer_request (every slot checked). With stage_chunks the
// slot mapping in groups[0].slots must be readable on the host.
inline Status plan_launch(const TransferRequest* groups, int32_t num_groups, const PlanOptions& options,
                          LaunchPlan* out) {
  Status st = check_plane_groups(groups, num_groups);
  if (!st.ok()) return st;
  const ChipInfo& chip = options.chip;
  if (chip.family == ChipFamily::kUnknown || chip.ub_bytes <= kUbReservedBytes || chip.vector_cores < 1)
    return detail::plan_error(StatusCode::kInvalidArgument, "chip limits are unknown: pass a ChipInfo from chip_info_for_soc");
  const TransferRequest& g0 = groups[0];
  LaunchPlan plan;
  KernelParams& p = plan.params;
  p.num_layers = g0.page.num_layers;
  p.num_chunks = g0.num_chunks;
  p.skip_prefix_n_tokens = g0.skip_prefix_n_tokens;
  p.direction = g0.direction == Direction::kPagedToChunk ? kGather : kScatter;
  p.slot_bytes = g0.slots.index_bytes;
  p.elem_size = g0.page.elem_size;
  p.has_copy_pad = chip.has_copy_pad ? 1 : 0;

  // Planes, in group order, and the paged pointer table [layer][plane].
  std::vector<int64_t> first_plane(static_cast<size_t>(num_groups));
  for (int32_t g = 0; g < num_groups; ++g) {
    first_plane[static_cast<size_t>(g)] = p.num_planes;
    for (int32_t lp = 0; lp < groups[g].page.num_planes; ++lp, ++p.num_planes) {
      st = detail::describe_plane(groups[g].page, chip, p.num_planes, &p.planes[p.num_planes]);
      if (!st.ok()) return st;
    }
  }
  plan.plane_ptrs.resize(static_cast<size_t>(p.num_layers * p.num_planes));
  for (int32_t g = 0; g < num_groups; ++g)
    for (int64_t layer = 0; layer < p.num_layers; ++layer)
      for (int32_t lp = 0; lp < groups[g].page.num_planes; ++lp)
        plan.plane_ptrs[static_cast<size_t>(layer * p.num_planes + first_plane[static_cast<size_t>(g)] + lp)] =
            groups[g].page.plane_bases[layer * groups[g].page.num_planes + lp];

  // Tokens per tile: as many rows of the widest plane as one UB buffer holds.
  const int64_t buffer = ub_buffer_bytes(chip);
  int64_t widest = 0, most_pieces = 1, widest_plane = 0;
  for (int64_t i = 0; i < p.num_planes; ++i) {
    if (p.planes[i].row_ub_bytes > widest) widest = p.planes[i].row_ub_bytes, widest_plane = i;
    most_pieces = std::max(most_pieces, p.planes[i].pieces);
  }
  if (widest > buffer) {
    const PlaneDesc& d = p.planes[widest_plane];
    return detail::plan_error(
        StatusCode::kInvalidArgument,
        "plane " + std::to_string(widest_plane) + ": one token row is " + std::to_string(d.pieces * d.piece_bytes) +
            " bytes (" + std::to_string(d.row_ub_bytes) + " bytes in UB), but a UB buffer of " +
            chip_family_name(chip.family) + " holds " + std::to_string(buffer) + " bytes (" +
            std::to_string(chip.ub_bytes) + " bytes of UB, two buffers); the NPU kernel supports rows up to " +
            std::to_string(buffer) + " bytes: use a smaller hidden size per plane or the CPU backend");
  }
  int64_t longest_chunk = 0;
  for (int64_t c = 0; c < p.num_chunks; ++c)
    longest_chunk = std::max(longest_chunk, g0.chunks[c].token_end - g0.chunks[c].token_begin);
  p.tile_tokens = std::max<int64_t>(1, std::min({buffer / widest, kMaxBlockCount / most_pieces, longest_chunk}));
  p.buffer_bytes = p.tile_tokens * widest;

  // Chunk planes; with staging, bases are offsets into the staging buffer until relocate_staging.
  plan.staged = options.stage_chunks;
  plan.chunk_planes.resize(static_cast<size_t>(p.num_chunks * p.num_planes));
  for (int32_t g = 0; g < num_groups; ++g) {
    const TransferRequest& r = groups[g];
    const int64_t es = r.page.elem_size;
    for (int64_t c = 0; c < r.num_chunks; ++c) {
      const ChunkRef& ch = r.chunks[c];
      int64_t region_lo = 0, region_offset = 0;
      if (plan.staged) {
        auto ranges = detail::touched_ranges(r, c, p, p.planes, first_plane[static_cast<size_t>(g)]);
        if (!ranges.empty()) {
          region_offset = align_up(plan.staging_bytes, 512);
          region_lo = ranges.front().first;
          for (const auto& range : ranges)
            plan.staging_copies.push_back(
                {g, c, range.first, region_offset + range.first - region_lo, range.second - range.first});
          plan.staging_bytes = region_offset + ranges.back().second - region_lo;
        }
      }
      for (int32_t lp = 0; lp < r.page.num_planes; ++lp) {
        const int64_t plane = first_plane[static_cast<size_t>(g)] + lp;
        const PlaneDesc& d = p.planes[plane];
        ChunkPlane& cp = plan.chunk_planes[static_cast<size_t>(c * p.num_planes + plane)];
        const int64_t plane_offset = lp * ch.strides.plane_stride * es;
        cp.base = plan.staged ? static_cast<uint64_t>(region_offset + plane_offset - region_lo)
                              : static_cast<uint64_t>(ch.base + static_cast<uint64_t>(plane_offset));
        cp.layer_stride_bytes = ch.strides.layer_stride * es;
        cp.token_stride_bytes = ch.strides.token_stride * es;
        const int64_t row = d.pieces * d.piece_bytes;
        cp.dense_rows = cp.token_stride_bytes == row ? 1 : 0;
        cp.strided_rows = d.pieces == 1 && detail::gap_fits(cp.token_stride_bytes - row, chip.has_copy_pad) ? 1 : 0;
      }
    }
  }

  // Tiles: the moving part of every chunk (the skipped prefix never is).
  for (int64_t c = 0; c < p.num_chunks; ++c) {
    const ChunkRef& ch = g0.chunks[c];
    for (int64_t t = std::max(ch.token_begin, p.skip_prefix_n_tokens); t < ch.token_end; t += p.tile_tokens)
      plan.tiles.push_back({c, t, t - ch.token_begin, std::min(p.tile_tokens, ch.token_end - t)});
  }
  p.num_tiles = static_cast<int64_t>(plan.tiles.size());
  p.num_items = p.num_layers * p.num_planes * p.num_tiles;
  const int64_t cores = options.cores > 0 ? options.cores : chip.vector_cores;
  p.used_cores = std::min<int64_t>(cores, p.num_items);
  p.items_per_core = p.used_cores ? p.num_items / p.used_cores : 0;
  p.items_remainder = p.used_cores ? p.num_items % p.used_cores : 0;
  p.chunk_table_offset = static_cast<int64_t>(sizeof(KernelParams));
  p.tile_table_offset = p.chunk_table_offset + static_cast<int64_t>(plan.chunk_planes.size() * sizeof(ChunkPlane));
  *out = std::move(plan);
  return Status::Ok();
}

// Whether any token of `r` moves (slots must be host memory): launches where none does are skipped.
inline bool any_token_moves(const TransferRequest& r) {
  for (int64_t c = 0; c < r.num_chunks; ++c)
    for (int64_t t = std::max(r.chunks[c].token_begin, r.skip_prefix_n_tokens); t < r.chunks[c].token_end; ++t)
      if (r.slots.at(t) >= 0) return true;
  return false;
}

// Fused variants: turns the staging offsets of the chunk table into device addresses.
inline void relocate_staging(LaunchPlan* plan, uint64_t staging_base) {
  if (!plan->staged) return;
  for (ChunkPlane& cp : plan->chunk_planes) cp.base += staging_base;
}

}  // namespace npu
}  // namespace lmcache_ascend
