// Shared by the native test programs: the CPU emulation of the Ascend kernel, and "worlds" of paged
// KV caches, LMCache chunks and slot mappings in every supported layout, built in host memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "lmcache_ascend/ascend_tiling.hpp"
#include "lmcache_ascend/device_registration.hpp"
#include "lmcache_ascend/transfer.hpp"

namespace kvtest {

using namespace lmcache_ascend;
using namespace lmcache_ascend::npu;

inline ChipInfo chip(const char* soc) {
  ChipInfo c;
  CHECK(chip_info_for_soc(soc, &c));
  return c;
}

// A chip like 910B (or 310P) but with a small UB, so tiles hold few tokens.
inline ChipInfo tiny_ub_chip(bool copy_pad, int64_t buffer_bytes, int32_t cores) {
  ChipInfo c = copy_pad ? chip("Ascend910B1") : chip("Ascend310P3");
  c.ub_bytes = kUbReservedBytes + 2 * buffer_bytes;
  c.vector_cores = cores;
  return c;
}

// ---------------------------------------------------------------- memory the "device" may touch
struct Region {
  uintptr_t begin;
  size_t size;
  std::vector<uint8_t> writes;  // per byte, how often the emulated kernel wrote it
};

struct Memory {
  std::vector<Region> regions;
  void add(const void* p, size_t size) { regions.push_back({reinterpret_cast<uintptr_t>(p), size, std::vector<uint8_t>(size)}); }
  Region* find(uintptr_t addr, int64_t len) {
    for (Region& r : regions)
      if (addr >= r.begin && len >= 0 && addr + static_cast<uint64_t>(len) <= r.begin + r.size) return &r;
    return nullptr;
  }
  void clear_writes() {
    for (Region& r : regions) std::fill(r.writes.begin(), r.writes.end(), 0);
  }
};

// A DeviceRegistrar test double: registered host range i maps to device_base + i * window, or to
// its own host address when device_base is 0 (as with VA-flag registration).
class RangeRegistrar : public DeviceRegistrar {
 public:
  RangeRegistrar() = default;
  RangeRegistrar(uintptr_t device_base, uintptr_t window) : device_base_(device_base), window_(window) {}
  std::vector<std::pair<uintptr_t, size_t>> ranges;
  std::string name() const override { return "test-ranges"; }
  Status register_host(void* ptr, size_t size) override {
    ranges.emplace_back(reinterpret_cast<uintptr_t>(ptr), size);
    return Status::Ok();
  }
  Status unregister_host(void*) override { return Status::Ok(); }
  Status device_address(void* host_ptr, uintptr_t* out) const override {
    const uintptr_t p = reinterpret_cast<uintptr_t>(host_ptr);
    for (size_t i = 0; i < ranges.size(); ++i)
      if (p >= ranges[i].first && p < ranges[i].first + ranges[i].second) {
        *out = device_base_ == 0 ? p : device_base_ + i * window_ + (p - ranges[i].first);
        return Status::Ok();
      }
    return Status::Error(StatusCode::kInvalidArgument, "address not in any registered range");
  }

 private:
  uintptr_t device_base_ = 0, window_ = 0;
};

// ---------------------------------------------------------------- the kernel, emulated on the CPU
// Walks a launch exactly as kernels/kv_transfer_kernel.cpp does: the descriptor (KernelParams, chunk
// table, tile table) and the pointer table are read from memory, every core's items are moved
// through a UB buffer with the copy rules of ascend_kernel_params.hpp. Every global-memory access is
// bounds-checked against `mem`, every write counted, every copy checked against the limits of the
// copy instructions.
struct Emulator {
  Memory& mem;
  std::vector<uint8_t> ub;
  KernelParams p{};
  int problems = 0;
  std::string first_problem;
  int64_t max_ub_used = 0;

  explicit Emulator(Memory& memory) : mem(memory) {}

  void problem(const std::string& what) {
    if (problems++ == 0) first_problem = what;
  }

  // The limits the copy instructions impose (DataCopyPad on 910B/A3, DataCopy on 310P).
  bool legal(const CopyOp& op) {
    if (op.count < 1 || op.count > kMaxBlockCount) return problem("blockCount " + std::to_string(op.count)), false;
    if (op.len < 1 || op.gm_gap < 0) return problem("negative gap or empty block"), false;
    if (p.has_copy_pad) {
      if (op.len > kMaxPadBlockLen || op.gm_gap > kMaxU32) return problem("DataCopyExtParams overflow"), false;
    } else if (op.len % kUbBlockBytes || op.gm_gap % kUbBlockBytes || op.len / kUbBlockBytes > kMaxU16 ||
               op.gm_gap / kUbBlockBytes > kMaxU16) {
      return problem("DataCopyParams needs 32-byte multiples that fit uint16: len " + std::to_string(op.len) +
                     " gap " + std::to_string(op.gm_gap)),
             false;
    }
    if (op.ub_offset % kUbBlockBytes) return problem("UB offset not 32-byte aligned"), false;
    const int64_t ub_end = op.ub_offset + (op.count - 1) * align_up(op.len, kUbBlockBytes) + op.len;
    max_ub_used = std::max(max_ub_used, ub_end);
    if (ub_end > p.buffer_bytes) return problem("UB overflow: " + std::to_string(ub_end)), false;
    return true;
  }

  struct In {
    Emulator& e;
    uint64_t base;
    void operator()(const CopyOp& op) {
      if (!e.legal(op)) return;
      for (int64_t k = 0; k < op.count; ++k) {
        uintptr_t gm = base + static_cast<uint64_t>(op.gm_offset + k * (op.len + op.gm_gap));
        if (!e.mem.find(gm, op.len)) return e.problem("read outside every buffer");
        std::memcpy(e.ub.data() + op.ub_offset + k * align_up(op.len, kUbBlockBytes), reinterpret_cast<void*>(gm),
                    static_cast<size_t>(op.len));
      }
    }
  };
  struct Out {
    Emulator& e;
    uint64_t base;
    void operator()(const CopyOp& op) {
      if (!e.legal(op)) return;
      for (int64_t k = 0; k < op.count; ++k) {
        uintptr_t gm = base + static_cast<uint64_t>(op.gm_offset + k * (op.len + op.gm_gap));
        Region* r = e.mem.find(gm, op.len);
        if (!r) return e.problem("write outside every buffer");
        std::memcpy(reinterpret_cast<void*>(gm), e.ub.data() + op.ub_offset + k * align_up(op.len, kUbBlockBytes),
                    static_cast<size_t>(op.len));
        for (int64_t b = 0; b < op.len; ++b) ++r->writes[gm - r->begin + static_cast<size_t>(b)];
      }
    }
  };

  template <typename S>
  static S load(const uint8_t* at) {
    S s;
    std::memcpy(&s, at, sizeof(S));
    return s;
  }

  void run(const uint8_t* descriptor, const uint64_t* plane_ptrs, const void* slot_data, uint32_t block_dim) {
    p = load<KernelParams>(descriptor);
    if (static_cast<int64_t>(block_dim) != p.used_cores) problem("blockDim differs from used_cores");
    const SlotMapping mapping{slot_data, 0, p.slot_bytes};
    const auto slots = [&mapping](int64_t token) { return mapping.at(token); };
    ub.assign(static_cast<size_t>(p.buffer_bytes), 0xCD);
    for (int64_t core = 0; core < static_cast<int64_t>(block_dim); ++core) {
      int64_t begin = 0, count = 0;
      core_items(p, core, &begin, &count);
      for (int64_t item = begin; item < begin + count; ++item) {
        const ItemCoords c = item_coords(p, item);
        const Tile tile = load<Tile>(descriptor + p.tile_table_offset + c.tile * static_cast<int64_t>(sizeof(Tile)));
        const ChunkPlane cp = load<ChunkPlane>(descriptor + p.chunk_table_offset +
                                               (tile.chunk * p.num_planes + c.plane) * static_cast<int64_t>(sizeof(ChunkPlane)));
        const PlaneDesc& d = p.planes[c.plane];
        const uint64_t paged = plane_ptrs[c.layer * p.num_planes + c.plane];
        std::fill(ub.begin(), ub.end(), 0xCD);  // UB holds garbage between items
        if (p.direction == kGather) {
          In in{*this, paged};
          paged_side_copies(p, d, tile, slots, in);
          Out out{*this, cp.base};
          chunk_side_copies(p, d, cp, tile, c.layer, slots, out);
        } else {
          In in{*this, cp.base};
          chunk_side_copies(p, d, cp, tile, c.layer, slots, in);
          Out out{*this, paged};
          paged_side_copies(p, d, tile, slots, out);
        }
      }
    }
  }
};

// ---------------------------------------------------------------- test worlds
enum class Layout { kFlash, kFlashInfer, kSeparate, kHnd, kCpu, kMla, kNz, kMlaRope, kDsa };
inline const char* layout_name(Layout l) {
  static const char* names[] = {"flash", "flashinfer", "separate", "hnd", "cpu", "mla", "nz", "mla_rope", "dsa"};
  return names[static_cast<int>(l)];
}

struct Config {
  Layout layout = Layout::kFlash;
  int32_t es = 2;
  int32_t layers = 2;
  int64_t num_blocks = 6;
  int32_t block_size = 4;
  int32_t heads = 2;
  int32_t head_size = 8;
  int64_t tokens = 10;
  int64_t chunk_tokens = 4;   // capacity of each chunk; the last one holds fewer
  bool token_major = false;   // chunks [L, T, P, H] instead of [P, L, T, H]
  bool int32_slots = false;
  double skip_prob = 0.1;     // share of tokens with slot -1
  int64_t skip_prefix = 0;
  Direction direction = Direction::kPagedToChunk;
  uint32_t seed = 1;
  std::string describe() const {
    return std::string(layout_name(layout)) + " es=" + std::to_string(es) + " L=" + std::to_string(layers) +
           " NB=" + std::to_string(num_blocks) + " BS=" + std::to_string(block_size) + " NH=" +
           std::to_string(heads) + " HS=" + std::to_string(head_size) + " T=" + std::to_string(tokens) +
           " chunk=" + std::to_string(chunk_tokens) + (token_major ? " token-major" : "") +
           (int32_slots ? " i32" : " i64") + " skip=" + std::to_string(skip_prefix) +
           (direction == Direction::kPagedToChunk ? " gather" : " scatter") + " seed=" + std::to_string(seed);
  }
};

// Plane group widths (elements per token) of the layouts with several groups.
inline std::vector<int32_t> group_widths(const Config& c) {
  if (c.layout == Layout::kMlaRope) return {c.head_size * 4, c.head_size};
  if (c.layout == Layout::kDsa) return {c.head_size * 4, c.head_size, c.head_size * 2};
  return {c.heads * c.head_size};
}

struct World {
  Config cfg;
  std::vector<std::vector<uint8_t>> paged;   // every paged tensor
  std::vector<std::vector<uint8_t>> chunk_objects;
  std::vector<std::vector<uintptr_t>> bases;  // per group
  std::vector<std::vector<ChunkRef>> chunks;  // per group
  std::vector<std::vector<int64_t>> extents;  // per group
  std::vector<int64_t> slots64;
  std::vector<int32_t> slots32;
  std::vector<TransferRequest> groups;

  std::vector<uint8_t>& new_tensor(size_t bytes, std::mt19937& rng) {
    paged.emplace_back(bytes);
    for (auto& b : paged.back()) b = static_cast<uint8_t>(rng());
    return paged.back();
  }
};

// Builds the paged tensors, chunks and slots of `c`. Strides follow the real engine layouts.
inline void build(World& w, const Config& c) {
  std::mt19937 rng(c.seed);
  w.cfg = c;
  const int64_t es = c.es, nb = c.num_blocks, bs = c.block_size;
  const auto widths = group_widths(c);
  w.paged.reserve(64);
  w.bases.resize(widths.size());
  for (size_t g = 0; g < widths.size(); ++g) {
    PageLayout page;
    page.elem_size = c.es;
    page.num_layers = c.layers;
    page.num_blocks = nb;
    page.block_size = c.block_size;
    int64_t extent = 0;
    const int64_t nh = c.heads, hs = c.head_size, hidden = nh * hs;
    for (int32_t layer = 0; layer < c.layers; ++layer) {
      switch (c.layout) {
        case Layout::kFlash: {  // [2, NB, BS, NH, HS]
          auto& t = w.new_tensor(static_cast<size_t>(2 * nb * bs * hidden * es), rng);
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data()));
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data() + nb * bs * hidden * es));
          page.num_planes = 2, page.num_heads = c.heads, page.head_size = c.head_size;
          page.block_stride = bs * hidden, page.token_stride = hidden, page.head_stride = hs;
          extent = nb * bs * hidden;
          break;
        }
        case Layout::kFlashInfer: {  // [NB, 2, BS, NH, HS]
          auto& t = w.new_tensor(static_cast<size_t>(2 * nb * bs * hidden * es), rng);
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data()));
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data() + bs * hidden * es));
          page.num_planes = 2, page.num_heads = c.heads, page.head_size = c.head_size;
          page.block_stride = 2 * bs * hidden, page.token_stride = hidden, page.head_stride = hs;
          extent = 2 * nb * bs * hidden - bs * hidden;
          break;
        }
        case Layout::kSeparate:  // (K, V), [NB, BS, NH, HS] each
        case Layout::kNz: {      // (K, V), [NB, hidden/C0, BS, C0] each: HND with C0-wide heads
          for (int kv = 0; kv < 2; ++kv) {
            auto& t = w.new_tensor(static_cast<size_t>(nb * bs * hidden * es), rng);
            w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data()));
          }
          page.num_planes = 2, page.num_heads = c.heads, page.head_size = c.head_size;
          page.block_stride = bs * hidden;
          if (c.layout == Layout::kSeparate)
            page.token_stride = hidden, page.head_stride = hs;
          else
            page.token_stride = hs, page.head_stride = bs * hs;
          extent = nb * bs * hidden;
          break;
        }
        case Layout::kHnd: {  // [2, NB, NH, BS, HS]
          auto& t = w.new_tensor(static_cast<size_t>(2 * nb * bs * hidden * es), rng);
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data()));
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data() + nb * bs * hidden * es));
          page.num_planes = 2, page.num_heads = c.heads, page.head_size = c.head_size;
          page.block_stride = bs * hidden, page.token_stride = hs, page.head_stride = bs * hs;
          extent = nb * bs * hidden;
          break;
        }
        case Layout::kCpu: {  // [NB, NH, BS, 2*HS]: K then V inside each head's row
          auto& t = w.new_tensor(static_cast<size_t>(2 * nb * bs * hidden * es), rng);
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data()));
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data() + hs * es));
          page.num_planes = 2, page.num_heads = c.heads, page.head_size = c.head_size;
          page.block_stride = 2 * bs * hidden, page.token_stride = 2 * hs, page.head_stride = 2 * bs * hs;
          extent = 2 * nb * bs * hidden - hs;
          break;
        }
        case Layout::kMla:
        case Layout::kMlaRope:
        case Layout::kDsa: {  // [NB, BS, width] per group
          const int64_t width = widths[g];
          auto& t = w.new_tensor(static_cast<size_t>(nb * bs * width * es), rng);
          w.bases[g].push_back(reinterpret_cast<uintptr_t>(t.data()));
          page.num_planes = 1, page.num_heads = 1, page.head_size = static_cast<int32_t>(width);
          page.block_stride = bs * width, page.token_stride = width, page.head_stride = width;
          extent = nb * bs * width;
          break;
        }
      }
    }
    TransferRequest r;
    r.page = page;
    r.page_extent_elems = extent;
    r.direction = c.direction;
    r.skip_prefix_n_tokens = c.skip_prefix;
    w.groups.push_back(r);
  }

  // Slots: blocks in random order, filled token by token (as an engine allocates), some -1.
  std::vector<int64_t> block_order(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) block_order[static_cast<size_t>(b)] = b;
  std::shuffle(block_order.begin(), block_order.end(), rng);
  std::uniform_real_distribution<double> unit(0, 1);
  for (int64_t t = 0; t < c.tokens; ++t) {
    int64_t slot = block_order[static_cast<size_t>((t / bs) % nb)] * bs + t % bs;
    if (unit(rng) < c.skip_prob) slot = -1;
    w.slots64.push_back(slot);
    w.slots32.push_back(static_cast<int32_t>(slot));
  }

  // Chunks: one object per chunk_tokens, holding every group's planes side by side in a row.
  const int64_t planes = c.layout == Layout::kMla || c.layout == Layout::kMlaRope || c.layout == Layout::kDsa ? 1 : 2;
  int64_t row = 0;
  for (int32_t width : widths) row += width;
  w.chunks.resize(widths.size());
  w.extents.resize(widths.size());
  for (int64_t begin = 0; begin < c.tokens; begin += c.chunk_tokens) {
    const int64_t end = std::min(c.tokens, begin + c.chunk_tokens);
    const int64_t cap = c.chunk_tokens;
    w.chunk_objects.emplace_back(static_cast<size_t>(planes * c.layers * cap * row * es));
    for (auto& b : w.chunk_objects.back()) b = static_cast<uint8_t>(rng());
    uint8_t* obj = w.chunk_objects.back().data();
    int64_t column = 0;
    for (size_t g = 0; g < widths.size(); ++g) {
      ChunkRef ref;
      ref.base = reinterpret_cast<uintptr_t>(obj + column * es);
      ref.token_begin = begin;
      ref.token_end = end;
      if (c.token_major)  // [L, T, P, row]
        ref.strides = {row, cap * planes * row, planes * row};
      else  // [P, L, T, row]
        ref.strides = {c.layers * cap * row, cap * row, row};
      w.chunks[g].push_back(ref);
      w.extents[g].push_back(static_cast<int64_t>(w.chunk_objects.back().size()) - column * es);
      column += widths[g];
    }
  }
  for (size_t g = 0; g < widths.size(); ++g) {
    TransferRequest& r = w.groups[g];
    r.page.plane_bases = w.bases[g].data();
    r.chunks = w.chunks[g].data();
    r.num_chunks = static_cast<int64_t>(w.chunks[g].size());
    r.chunk_extent_bytes = w.extents[g].data();
    r.slots.length = c.tokens;
    r.slots.index_bytes = c.int32_slots ? 4 : 8;
    r.slots.data = c.int32_slots ? static_cast<const void*>(w.slots32.data()) : static_cast<const void*>(w.slots64.data());
  }
}

using Snapshot = std::vector<std::vector<uint8_t>>;
inline Snapshot snapshot(const World& w) {
  Snapshot s = w.paged;
  s.insert(s.end(), w.chunk_objects.begin(), w.chunk_objects.end());
  return s;
}
inline void restore(World& w, const Snapshot& s) {
  size_t i = 0;
  for (auto& t : w.paged) std::memcpy(t.data(), s[i++].data(), t.size());
  for (auto& t : w.chunk_objects) std::memcpy(t.data(), s[i++].data(), t.size());
}

// Bytes the transfer should write: moving tokens x layers x every plane's row.
inline int64_t expected_written(const World& w) {
  int64_t moving = 0;
  for (int64_t t = w.cfg.skip_prefix; t < w.cfg.tokens; ++t) moving += w.slots64[static_cast<size_t>(t)] >= 0;
  int64_t row_bytes = 0;
  for (const TransferRequest& r : w.groups) row_bytes += r.page.num_planes * r.page.hidden() * r.page.elem_size;
  return moving * w.cfg.layers * row_bytes;
}

}  // namespace kvtest
