// Tests of the Ascend launch planning (ascend_tiling.hpp) and of the kernel's addressing rules
// (ascend_kernel_params.hpp) without an NPU: a CPU emulation walks every plan exactly as the kernel
// does (core split, tiles, copy ops, UB offsets), with every global-memory access bounds-checked
// against the buffers it may touch and every write counted, and its result is compared with the
// CPU backend's transfer_kv on the same data. Hand-picked numbers cover the chip table and limits.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "kv_test_support.hpp"
#include "lmcache_ascend/ascend_tiling.hpp"
#include "lmcache_ascend/transfer.hpp"
#include "lmcache_ascend/transfer_validation.hpp"

using namespace lmcache_ascend;
using namespace lmcache_ascend::npu;
using namespace kvtest;

namespace {

// Plans `w` for `ci`, runs the emulated kernel (optionally staged), compares with the CPU backend.
// Returns false when planning failed (message in *error).
bool run_case(World& w, const ChipInfo& ci, int32_t cores, bool staged, std::string* error) {
  const std::string what = w.cfg.describe() + " cores=" + std::to_string(cores) + (staged ? " fused" : "") +
                           " ub=" + std::to_string(ci.ub_bytes) + (ci.has_copy_pad ? "" : " no-pad");
  for (const TransferRequest& r : w.groups) {
    Status v = validate_transfer_request(r);
    if (!CHECK(v.ok())) {
      std::fprintf(stderr, "  case %s: %s\n", what.c_str(), v.message.c_str());
      return true;
    }
  }
  const Snapshot before = snapshot(w);
  for (const TransferRequest& r : w.groups) CHECK(transfer_kv(r).ok());
  const Snapshot expected = snapshot(w);
  restore(w, before);

  PlanOptions options;
  options.chip = ci;
  options.cores = cores;
  options.stage_chunks = staged;
  LaunchPlan plan;
  Status st = plan_launch(w.groups.data(), static_cast<int32_t>(w.groups.size()), options, &plan);
  if (!st.ok()) {
    *error = st.message;
    return false;
  }

  Memory mem;
  for (auto& t : w.paged) mem.add(t.data(), t.size());
  std::vector<uint8_t> staging(static_cast<size_t>(plan.staging_bytes), 0x5A);
  if (staged) {
    mem.add(staging.data(), staging.size());
    relocate_staging(&plan, reinterpret_cast<uint64_t>(staging.data()));
  } else {
    for (auto& t : w.chunk_objects) mem.add(t.data(), t.size());
  }
  // Staged scatter: host -> staging first; every copy stays inside its chunk and the staging buffer.
  auto host_of = [&](const StagingCopy& s) {
    return reinterpret_cast<uint8_t*>(w.chunks[static_cast<size_t>(s.group)][static_cast<size_t>(s.chunk)].base) + s.host_offset;
  };
  for (const StagingCopy& s : plan.staging_copies) {
    const auto& obj_extent = w.extents[static_cast<size_t>(s.group)][static_cast<size_t>(s.chunk)];
    CHECK(s.host_offset >= 0 && s.host_offset + s.bytes <= obj_extent);
    CHECK(s.staging_offset >= 0 && s.staging_offset + s.bytes <= plan.staging_bytes);
  }
  if (staged && w.cfg.direction == Direction::kChunkToPaged)
    for (const StagingCopy& s : plan.staging_copies)
      std::memcpy(staging.data() + s.staging_offset, host_of(s), static_cast<size_t>(s.bytes));

  Emulator emu(mem);
  const std::vector<uint8_t> descriptor = plan.descriptor();
  emu.run(descriptor.data(), plan.plane_ptrs.data(), w.groups[0].slots.data, plan.block_dim());
  if (staged && w.cfg.direction == Direction::kPagedToChunk)
    for (const StagingCopy& s : plan.staging_copies)
      std::memcpy(host_of(s), staging.data() + s.staging_offset, static_cast<size_t>(s.bytes));

  bool ok = CHECK(emu.problems == 0);
  if (!ok) std::fprintf(stderr, "  case %s: %s\n", what.c_str(), emu.first_problem.c_str());
  // Every byte written at most once, and exactly the bytes of the moving tokens.
  int64_t written = 0;
  bool once = true;
  for (const Region& r : mem.regions)
    for (uint8_t n : r.writes) written += n, once = once && n <= 1;
  ok &= CHECK(once);
  ok &= CHECK_EQ(written, expected_written(w));
  ok &= CHECK(snapshot(w) == expected);
  ok &= CHECK(emu.max_ub_used <= plan.params.buffer_bytes);
  ok &= CHECK(plan.params.buffer_bytes <= ub_buffer_bytes(ci));
  if (!ok) std::fprintf(stderr, "  case %s\n", what.c_str());
  return true;
}

// Whether `c` has a contiguous piece that is not a whole number of 32-byte blocks.
bool has_unaligned_piece(const World& w) {
  for (const TransferRequest& r : w.groups) {
    const int64_t piece = (r.page.token_row_contiguous() ? r.page.hidden() : r.page.head_size) * r.page.elem_size;
    if (piece % 32) return true;
  }
  return false;
}

int64_t widest_row_ub(const World& w) {
  int64_t widest = 0;
  for (const TransferRequest& r : w.groups) {
    const bool contiguous = r.page.token_row_contiguous();
    const int64_t piece = (contiguous ? r.page.hidden() : r.page.head_size) * r.page.elem_size;
    widest = std::max(widest, (contiguous ? 1 : r.page.num_heads) * align_up(piece, 32));
  }
  return widest;
}

// ---------------------------------------------------------------- tests
void test_chip_table() {
  ChipInfo c;
  CHECK(chip_info_for_soc("Ascend910B1", &c) && c.vector_cores == 48 && c.ub_bytes == 196608 && c.has_copy_pad);
  CHECK(chip_info_for_soc("Ascend910B2C", &c) && c.vector_cores == 48 && c.aicore_arch == 220);
  CHECK(chip_info_for_soc("Ascend910B3", &c) && c.vector_cores == 40);
  CHECK(chip_info_for_soc("Ascend910B4", &c) && c.vector_cores == 40);
  CHECK(chip_info_for_soc("Ascend910_9392", &c) && c.family == ChipFamily::kAscend910_93 && c.vector_cores == 48);
  CHECK(chip_info_for_soc("Ascend310P3", &c) && c.ub_bytes == 262144 && !c.has_copy_pad && c.aicore_arch == 200);
  CHECK(!chip_info_for_soc("Ascend910A", &c));
  CHECK(!chip_info_for_soc(nullptr, &c));
  CHECK_EQ(ub_buffer_bytes(chip("Ascend910B1")), (196608 - kUbReservedBytes) / 2);
  CHECK(ub_buffer_bytes(chip("Ascend910B1")) % 32 == 0);
}

void test_core_split() {
  // Every item goes to exactly one core, ranges are contiguous, sizes differ by at most one.
  for (int64_t items = 1; items <= 130; ++items)
    for (int64_t cores = 1; cores <= 50; ++cores) {
      KernelParams p{};
      p.num_items = items;
      p.used_cores = std::min(cores, items);
      p.items_per_core = items / p.used_cores;
      p.items_remainder = items % p.used_cores;
      std::vector<int> seen(static_cast<size_t>(items));
      int64_t next = 0, smallest = items, largest = 0;
      bool ok = true;
      for (int64_t core = 0; core < p.used_cores + 2; ++core) {
        int64_t begin = 0, count = 0;
        core_items(p, core, &begin, &count);
        if (core >= p.used_cores) {
          ok &= count == 0;
          continue;
        }
        ok &= begin == next;
        next = begin + count;
        smallest = std::min(smallest, count), largest = std::max(largest, count);
        for (int64_t i = begin; i < begin + count; ++i) ok &= i < items && ++seen[static_cast<size_t>(i)] == 1;
      }
      ok &= next == items && largest - smallest <= 1 && smallest >= 1;
      if (!CHECK(ok)) std::fprintf(stderr, "  items=%lld cores=%lld\n", (long long)items, (long long)cores);
    }
  // item_coords is the inverse of (layer, plane, tile) ordering.
  KernelParams p{};
  p.num_layers = 3, p.num_planes = 2, p.num_tiles = 5;
  int64_t item = 0;
  bool ok = true;
  for (int64_t l = 0; l < 3; ++l)
    for (int64_t pl = 0; pl < 2; ++pl)
      for (int64_t t = 0; t < 5; ++t, ++item) {
        ItemCoords c = item_coords(p, item);
        ok &= c.layer == l && c.plane == pl && c.tile == t;
      }
  CHECK(ok);
}

Config base_config() {
  Config c;
  c.skip_prob = 0;
  return c;
}

void test_hand_picked() {
  std::string err;
  {  // 910B, hidden 1024 fp16: 2048-byte rows, (192 KiB - 16 KiB) / 2 / 2048 = 44 tokens per tile.
    Config c = base_config();
    c.layout = Layout::kFlash, c.heads = 8, c.head_size = 128, c.tokens = 100, c.chunk_tokens = 100;
    c.num_blocks = 8, c.block_size = 16, c.layers = 1;
    World w;
    build(w, c);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = chip("Ascend910B1");
    CHECK(plan_launch(w.groups.data(), 1, o, &plan).ok());
    CHECK_EQ(plan.params.tile_tokens, 44);
    CHECK_EQ(plan.params.buffer_bytes, 44 * 2048);
    CHECK_EQ(plan.tiles.size(), 3u);  // 44 + 44 + 12: tokens not divisible by the tile
    CHECK_EQ(plan.tiles.back().count, 12);
    CHECK_EQ(plan.params.num_items, 1 * 2 * 3);
    CHECK_EQ(plan.block_dim(), 6u);  // more cores than work: one item each
    CHECK_EQ(plan.params.planes[0].pieces, 1);
    CHECK_EQ(plan.params.planes[0].paged_run_copies, 1);
    CHECK_EQ(plan.chunk_planes[0].dense_rows, 1);
    std::vector<uint8_t> blob = plan.descriptor();
    CHECK_EQ(blob.size(), sizeof(KernelParams) + 2 * sizeof(ChunkPlane) + 3 * sizeof(Tile));
    KernelParams back;
    std::memcpy(&back, blob.data(), sizeof(back));
    CHECK_EQ(back.tile_tokens, 44);
    CHECK(run_case(w, o.chip, 0, false, &err));
  }
  {  // One token, one layer: a 1-token tile and a buffer of exactly one row.
    Config c = base_config();
    c.tokens = 1, c.chunk_tokens = 1, c.layers = 1;
    World w;
    build(w, c);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = chip("Ascend910B4");
    CHECK(plan_launch(w.groups.data(), 1, o, &plan).ok());
    CHECK_EQ(plan.params.tile_tokens, 1);
    CHECK_EQ(plan.params.buffer_bytes, 32);  // 2 heads x 8 x fp16 = 32 bytes
    CHECK_EQ(plan.block_dim(), 2u);
    CHECK(run_case(w, o.chip, 0, false, &err));
  }
  {  // Hidden 5 x fp16 = 10 bytes: padded to one 32-byte UB block on 910B, refused on 310P.
    Config c = base_config();
    c.layout = Layout::kMla, c.heads = 1, c.head_size = 5, c.tokens = 7;
    World w;
    build(w, c);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = chip("Ascend910B1");
    CHECK(plan_launch(w.groups.data(), 1, o, &plan).ok());
    CHECK_EQ(plan.params.planes[0].piece_bytes, 10);
    CHECK_EQ(plan.params.planes[0].row_ub_bytes, 32);
    CHECK(run_case(w, o.chip, 3, false, &err));
    o.chip = chip("Ascend310P3");
    Status st = plan_launch(w.groups.data(), 1, o, &plan);
    CHECK(st.code == StatusCode::kInvalidArgument);
    CHECK_CONTAINS(st.message, "multiple of 32");
    CHECK_CONTAINS(st.message, "10 bytes");
  }
  {  // Rows wider than a UB buffer: a clear error naming the sizes.
    Config c = base_config();
    c.layout = Layout::kMla, c.heads = 1, c.head_size = 65536, c.es = 2, c.tokens = 2, c.num_blocks = 1, c.block_size = 2, c.layers = 1;
    World w;
    build(w, c);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = chip("Ascend910B1");
    Status st = plan_launch(w.groups.data(), 1, o, &plan);
    CHECK(st.code == StatusCode::kInvalidArgument);
    CHECK_CONTAINS(st.message, "131072 bytes");
    CHECK_CONTAINS(st.message, "UB");
  }
  {  // blockCount: with a huge UB, tiny rows would exceed 4095 blocks per copy without the cap.
    Config c = base_config();
    c.layout = Layout::kHnd, c.heads = 4, c.head_size = 16, c.tokens = 2000, c.chunk_tokens = 2000;
    c.num_blocks = 64, c.block_size = 32, c.layers = 1;
    World w;
    build(w, c);
    ChipInfo big = tiny_ub_chip(true, 1 << 20, 8);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = big;
    CHECK(plan_launch(w.groups.data(), 1, o, &plan).ok());
    CHECK_EQ(plan.params.tile_tokens, kMaxBlockCount / 4);
    CHECK(run_case(w, big, 0, false, &err));
  }
  {  // Fused gather of a full KV_2LTD chunk is one device-to-host copy.
    Config c = base_config();
    c.tokens = 8, c.chunk_tokens = 8, c.layers = 3;
    World w;
    build(w, c);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = chip("Ascend910B1");
    o.stage_chunks = true;
    CHECK(plan_launch(w.groups.data(), 1, o, &plan).ok());
    CHECK_EQ(plan.staging_copies.size(), 1u);
    CHECK_EQ(plan.staging_bytes, 2 * 3 * 8 * 16 * 2);
    CHECK(run_case(w, o.chip, 0, true, &err));
  }
  {  // Mismatched plane groups and too many planes are refused.
    Config c = base_config();
    c.layout = Layout::kDsa;
    World w;
    build(w, c);
    std::vector<TransferRequest> groups = w.groups;
    groups.push_back(w.groups[0]);
    groups.push_back(w.groups[0]);
    LaunchPlan plan;
    PlanOptions o;
    o.chip = chip("Ascend910B1");
    Status st = plan_launch(groups.data(), static_cast<int32_t>(groups.size()), o, &plan);
    CHECK_CONTAINS(st.message, "at most 4");
    groups.resize(3);
    groups[1].skip_prefix_n_tokens = 3;
    st = plan_launch(groups.data(), 3, o, &plan);
    CHECK_CONTAINS(st.message, "plane group 1");
    o.chip = ChipInfo{};
    st = plan_launch(w.groups.data(), 3, o, &plan);
    CHECK_CONTAINS(st.message, "chip limits are unknown");
  }
}

void test_shared_validation() {
  Config c = base_config();
  World w;
  build(w, c);
  w.slots64[3] = c.num_blocks * c.block_size;  // one past the last slot
  Status v = validate_transfer_request(w.groups[0]);
  Status t = transfer_kv(w.groups[0]);
  CHECK(v.code == StatusCode::kOutOfRange);
  CHECK(v.message == t.message);
  CHECK_CONTAINS(v.message, "slot_mapping[3]");
  w.groups[0].skip_prefix_n_tokens = 4;  // skipped tokens are never checked nor moved
  CHECK(validate_transfer_request(w.groups[0]).ok());
  CHECK(any_token_moves(w.groups[0]));
  for (size_t t = 4; t < w.slots64.size(); ++t) w.slots64[t] = -1;
  CHECK(!any_token_moves(w.groups[0]));
  w.groups[0].skip_prefix_n_tokens = 0;
  CHECK(any_token_moves(w.groups[0]));
}

// Every layout x dtype x direction x chip x fused, with random shapes: planned, emulated, compared.
void test_sweep() {
  std::mt19937 rng(12345);
  auto pick = [&rng](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  const Layout layouts[] = {Layout::kFlash, Layout::kFlashInfer, Layout::kSeparate, Layout::kHnd, Layout::kCpu,
                            Layout::kMla,   Layout::kNz,         Layout::kMlaRope,  Layout::kDsa};
  int planned = 0, refused = 0;
  for (int round = 0; round < 6; ++round)
    for (Layout layout : layouts)
      for (int32_t es : {1, 2, 4})
        for (Direction dir : {Direction::kPagedToChunk, Direction::kChunkToPaged}) {
          Config c;
          c.layout = layout;
          c.es = es;
          c.direction = dir;
          c.layers = static_cast<int32_t>(pick({1, 2, 3}));
          c.block_size = static_cast<int32_t>(pick({1, 3, 4, 16}));
          c.num_blocks = pick({2, 5, 9});
          c.heads = static_cast<int32_t>(pick({1, 2, 3}));
          c.head_size = static_cast<int32_t>(layout == Layout::kNz ? 32 / es : pick({1, 5, 8, 16, 24}));
          c.tokens = std::max<int64_t>(1, std::min<int64_t>(c.num_blocks * c.block_size, pick({1, 7, 16, 33})));
          c.chunk_tokens = pick({1, 4, 5, 16, 64});
          c.token_major = rng() % 2;
          c.int32_slots = rng() % 2;
          c.skip_prob = pick({0, 1, 3}) / 10.0;
          c.skip_prefix = rng() % 3 == 0 ? static_cast<int64_t>(rng() % static_cast<uint32_t>(c.tokens + 1)) : 0;
          c.seed = rng();
          const bool pad = rng() % 3 != 0;
          ChipInfo ci = pad ? chip(pick({0, 1}) ? "Ascend910B1" : "Ascend910_9392") : chip("Ascend310P3");
          World w;
          build(w, c);
          const int64_t widest = widest_row_ub(w);
          if (rng() % 2) ci = tiny_ub_chip(pad, widest * pick({1, 2, 3}) + (rng() % 2) * 32, static_cast<int32_t>(pick({1, 3, 48})));
          const int32_t cores = static_cast<int32_t>(pick({0, 1, 2, 7}));
          for (bool staged : {false, true}) {
            std::string err;
            const bool expect_refusal = !pad && has_unaligned_piece(w);
            const bool planned_ok = run_case(w, ci, cores, staged, &err);
            if (expect_refusal) {
              refused += CHECK(!planned_ok);
              CHECK_CONTAINS(err, "multiple of 32");
            } else {
              planned += planned_ok;
              if (!CHECK(planned_ok)) std::fprintf(stderr, "  %s: %s\n", c.describe().c_str(), err.c_str());
            }
          }
        }
  std::printf("sweep: %d plans emulated, %d refused as expected (310P, pieces not 32-byte multiples)\n", planned, refused);
  CHECK(planned > 300);
  CHECK(refused > 10);
}

}  // namespace

int main() {
  test_chip_table();
  test_core_split();
  test_hand_picked();
  test_shared_validation();
  test_sweep();
  return lmcache_ascend_test::finish("test_ascend_tiling");
}
