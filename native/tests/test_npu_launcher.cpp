// The NPU launcher (native/ascend/launch/npu_launcher.cpp) run on the CPU against fake_acl.hpp (a
// host-memory ACL whose streams defer work until the host waits) and an emulated kernel: the same
// launcher code that ships, from the host copy of the slots to the last staging copy, checked
// against the CPU backend for every layout, zero-copy / fused / auto-staged / device chunks, host
// and device slot mappings (rewritten after validation: the kernel must follow the validated copy),
// pipelined launches through the ring of launch slots, failures after the launch, the UB size the
// platform reports, and its errors.
// What this cannot show is whether the real runtime and kernel behave like the fakes.
#define LMCACHE_ASCEND_ACL_HEADER "../../tests/fake_acl.hpp"
#define LMCACHE_ASCEND_AICORE_ARCH 220
#define LMCACHE_ASCEND_SOC_VERSION "Ascend910B1"
#define LMCACHE_ASCEND_HAVE_PLATFORM 1
#include "../ascend/launch/npu_launcher.cpp"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "kv_test_support.hpp"
#include "lmcache_ascend/device_registration.hpp"
#include "lmcache_ascend/npu_backend.hpp"
#include "lmcache_ascend/transfer_validation.hpp"

namespace launcher_test {

using namespace kvtest;

// One stream for the whole program, like torch_npu's streams: the launcher's launch slots keep
// events recorded on it.
fake_acl::Stream& test_stream() {
  static fake_acl::Stream* stream = new fake_acl::Stream;
  return *stream;
}

// Host buffers the emulated kernel may touch besides fake device allocations.
std::vector<std::pair<const uint8_t*, size_t>> g_host_buffers;
std::vector<uint32_t> g_block_dims;
std::vector<int64_t> g_buffer_bytes;  // KernelParams::buffer_bytes of every launch
int g_kernel_problems = 0;
std::string g_first_problem;

void note_world(const World& w) {
  for (const auto& t : w.paged) g_host_buffers.emplace_back(t.data(), t.size());
  for (const auto& t : w.chunk_objects) g_host_buffers.emplace_back(t.data(), t.size());
}

// Runs the queued kernel: what the AI cores would do with the tables in device memory.
void run_kernel(uint32_t block_dim, const uint8_t* descriptor, const uint8_t* plane_ptrs, const uint8_t* slots,
                int32_t elem_size, int32_t slot_bytes) {
  Memory mem;
  for (const auto& b : g_host_buffers) mem.add(b.first, b.second);
  for (const auto& a : fake_acl::state().allocations) mem.add(a.first, a.second);
  Emulator emu(mem);
  emu.run(descriptor, reinterpret_cast<const uint64_t*>(plane_ptrs), slots, block_dim);
  if (emu.p.elem_size != elem_size || emu.p.slot_bytes != slot_bytes) emu.problem("kernel entry for other widths");
  if (emu.problems && g_kernel_problems++ == 0) g_first_problem = emu.first_problem;
}

enum class ChunkMode { kRegistered, kFused, kAutoStaged, kOnDevice };
const char* mode_name(ChunkMode m) {
  static const char* names[] = {"registered", "fused", "auto-staged", "device"};
  return names[static_cast<int>(m)];
}

// One transfer through prepare_npu_transfer and the launcher's C ABI, as npu_transfer_kv does it.
struct Launch {
  World* world;
  Snapshot expected;
  void* device_slots = nullptr;
  std::vector<TransferRequest> groups;
  RangeRegistrar registrar;  // device address = host address
  std::string what;
};

// The device copy of the slots is rewritten after validation (other slots, all in range): the
// kernel must still move what the validated host copy says. With `error` the launch may fail and
// its message lands there.
bool start(Launch& l, ChunkMode mode, bool slots_on_device, fake_acl::Stream* stream, std::string* error = nullptr) {
  World& w = *l.world;
  l.what = w.cfg.describe() + " " + mode_name(mode) + (slots_on_device ? " device-slots" : " host-slots");
  const Snapshot before = snapshot(w);
  for (const TransferRequest& r : w.groups) CHECK(transfer_kv(r).ok());
  l.expected = snapshot(w);
  restore(w, before);
  note_world(w);

  l.groups = w.groups;
  const size_t slot_bytes = static_cast<size_t>(w.cfg.tokens) * static_cast<size_t>(w.groups[0].slots.index_bytes);
  if (slots_on_device) {
    CHECK(aclrtMalloc(&l.device_slots, slot_bytes, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_SUCCESS);
    std::memcpy(l.device_slots, w.groups[0].slots.data, slot_bytes);
    for (TransferRequest& r : l.groups) r.slots.data = l.device_slots;
  }
  NpuTransferOptions options;
  options.stream = stream;
  options.slots_on_device = slots_on_device;
  options.chunks_on_host = mode != ChunkMode::kOnDevice;
  options.fused = mode == ChunkMode::kFused;
  options.stage_unregistered = mode == ChunkMode::kAutoStaged;
  if (mode == ChunkMode::kRegistered)
    for (const auto& t : w.chunk_objects) l.registrar.register_host(const_cast<uint8_t*>(t.data()), t.size());
  install_device_registrar(&l.registrar);
  PreparedNpuTransfer prepared;
  Status st = prepare_npu_transfer(l.groups.data(), static_cast<int32_t>(l.groups.size()),
                                   slots_on_device ? w.groups[0].slots.data : nullptr, options, &prepared);
  install_device_registrar(nullptr);
  if (!CHECK(st.ok())) {
    std::fprintf(stderr, "  %s: %s\n", l.what.c_str(), st.message.c_str());
    return false;
  }
  CHECK(prepared.fused == (mode == ChunkMode::kFused || mode == ChunkMode::kAutoStaged));
  if (slots_on_device) {  // the engine reuses its slot tensor: every slot now names the next one
    const int64_t num_slots = w.groups[0].page.num_slots();
    for (int64_t t = 0; t < w.cfg.tokens; ++t) {
      const int64_t next = (std::max<int64_t>(w.slots64[static_cast<size_t>(t)], 0) + 1) % num_slots;
      if (w.cfg.int32_slots)
        static_cast<int32_t*>(l.device_slots)[t] = static_cast<int32_t>(next);
      else
        static_cast<int64_t*>(l.device_slots)[t] = next;
    }
  }
  NpuLaunchArgs args{stream, prepared.fused ? 1 : 0};
  char err[1024] = {0};
  const int32_t code = lmcache_ascend_npu_transfer_kv(prepared.groups.data(), static_cast<int32_t>(prepared.groups.size()),
                                                      &args, err, sizeof(err));
  if (error != nullptr) {
    *error = err;
    return code == 0;
  }
  if (!CHECK(code == 0)) std::fprintf(stderr, "  %s: %s\n", l.what.c_str(), err);
  return code == 0;
}

void finish(Launch& l) {
  if (!CHECK(snapshot(*l.world) == l.expected)) std::fprintf(stderr, "  result differs: %s\n", l.what.c_str());
  if (l.device_slots) aclrtFree(l.device_slots);
  l.device_slots = nullptr;
}

Config random_config(std::mt19937& rng) {
  auto pick = [&rng](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  const Layout layouts[] = {Layout::kFlash, Layout::kFlashInfer, Layout::kSeparate, Layout::kHnd, Layout::kCpu,
                            Layout::kMla,   Layout::kNz,         Layout::kMlaRope,  Layout::kDsa};
  Config c;
  c.layout = layouts[rng() % 9];
  c.es = static_cast<int32_t>(pick({1, 2, 4}));
  c.direction = rng() % 2 ? Direction::kPagedToChunk : Direction::kChunkToPaged;
  c.layers = static_cast<int32_t>(pick({1, 2, 3}));
  c.block_size = static_cast<int32_t>(pick({1, 4, 16}));
  c.num_blocks = pick({2, 5});
  c.heads = static_cast<int32_t>(pick({1, 2}));
  c.head_size = static_cast<int32_t>(c.layout == Layout::kNz ? 32 / c.es : pick({5, 8, 16}));
  c.tokens = std::max<int64_t>(1, std::min<int64_t>(c.num_blocks * c.block_size, pick({1, 9, 20})));
  c.chunk_tokens = pick({4, 16});
  c.token_major = rng() % 2;
  c.int32_slots = rng() % 2;
  c.skip_prob = pick({0, 2}) / 10.0;
  c.skip_prefix = rng() % 3 == 0 ? static_cast<int64_t>(rng() % static_cast<uint32_t>(c.tokens + 1)) : 0;
  c.seed = rng();
  return c;
}

void test_every_mode_matches_the_cpu_backend() {
  std::mt19937 rng(2024);
  fake_acl::Stream& stream = test_stream();
  int runs = 0;
  for (int i = 0; i < 40; ++i) {
    World w;
    build(w, random_config(rng));
    for (ChunkMode mode : {ChunkMode::kRegistered, ChunkMode::kFused, ChunkMode::kAutoStaged, ChunkMode::kOnDevice})
      for (bool device_slots : {false, true}) {
        Launch l{&w, {}, nullptr, {}, {}, {}};
        if (start(l, mode, device_slots, &stream)) {
          char err[256] = {0};
          CHECK(lmcache_ascend_npu_synchronize(&stream, err, sizeof(err)) == 0);
          finish(l);
          ++runs;
        }
        g_host_buffers.clear();
      }
  }
  std::printf("launcher: %d transfers through the launcher matched the CPU backend\n", runs);
  CHECK_EQ(runs, 320);
  if (!CHECK_EQ(g_kernel_problems, 0)) std::fprintf(stderr, "  first kernel problem: %s\n", g_first_problem.c_str());
}

// More launches in flight than launch slots: a slot is reused only after its kernel ran. (Staged
// gathers wait inside the call, so device and registered chunks keep the stream busy.)
void test_pipelined_launches_share_the_ring_safely() {
  std::mt19937 rng(7);
  fake_acl::Stream& stream = test_stream();
  std::vector<World> worlds(3 * kRingSize);
  std::vector<Launch> launches(worlds.size());
  for (size_t i = 0; i < worlds.size(); ++i) {
    Config c = random_config(rng);
    c.layout = Layout::kFlash;
    build(worlds[i], c);
    launches[i].world = &worlds[i];
    CHECK(start(launches[i], i % 2 ? ChunkMode::kRegistered : ChunkMode::kOnDevice, i % 3 == 0, &stream));
  }
  CHECK(stream.done < stream.work.size());  // the host did not wait for everything
  CHECK(aclrtSynchronizeStream(&stream) == ACL_SUCCESS);
  for (Launch& l : launches) finish(l);
  g_host_buffers.clear();
}

// A staged gather into host memory is complete when the launcher returns: the staging buffer came
// back with synchronous copies after the kernel ran, without the caller waiting on the stream.
void test_staged_gather_is_complete_on_return() {
  std::mt19937 rng(11);
  fake_acl::Stream& stream = test_stream();
  Config c = random_config(rng);
  c.direction = Direction::kPagedToChunk;
  c.skip_prob = 0.3;
  World w;
  build(w, c);
  Launch l{&w, {}, nullptr, {}, {}, {}};
  CHECK(start(l, ChunkMode::kFused, false, &stream));
  CHECK(stream.done == stream.work.size());
  finish(l);
  g_host_buffers.clear();
}

// aclrtRecordEvent fails after the kernel was queued: the call fails, but only after the kernel
// ran, so its launch slot is not reused under it; the next launches (more than the ring holds,
// without waiting) stay correct.
void test_a_failure_after_the_launch_keeps_the_ring_safe() {
  std::mt19937 rng(13);
  fake_acl::Stream& stream = test_stream();
  std::vector<World> worlds(2 * kRingSize + 1);
  std::vector<Launch> launches(worlds.size());
  for (size_t i = 0; i < worlds.size(); ++i) {
    Config c = random_config(rng);
    c.layout = Layout::kFlash;
    c.skip_prob = 0;
    build(worlds[i], c);
    launches[i].world = &worlds[i];
  }
  fake_acl::state().fail_record_event = 1;
  std::string error;
  CHECK(!start(launches[0], ChunkMode::kOnDevice, false, &stream, &error));
  CHECK_CONTAINS(error, "aclrtRecordEvent failed with ACL error");
  CHECK(stream.done == stream.work.size());  // the launcher waited for the kernel it had queued
  finish(launches[0]);  // and that kernel did its work
  for (size_t i = 1; i < launches.size(); ++i) CHECK(start(launches[i], ChunkMode::kOnDevice, false, &stream));
  CHECK(stream.done < stream.work.size());
  CHECK(aclrtSynchronizeStream(&stream) == ACL_SUCCESS);
  for (size_t i = 1; i < launches.size(); ++i) finish(launches[i]);
  if (!CHECK_EQ(g_kernel_problems, 0)) std::fprintf(stderr, "  first kernel problem: %s\n", g_first_problem.c_str());
  g_host_buffers.clear();
}

// When even the wait after a failed launch fails, the device's workspace is refused from then on:
// its ring may hold buffers a kernel still reads.
void test_a_failed_wait_after_a_failed_launch_retires_the_workspace() {
  std::mt19937 rng(19);
  fake_acl::Stream& stream = test_stream();
  fake_acl::state().device = 31;
  Config c = random_config(rng);
  c.layout = Layout::kFlash;
  World w;
  build(w, c);
  Launch l{&w, {}, nullptr, {}, {}, {}};
  fake_acl::state().fail_record_event = 1;
  fake_acl::state().fail_synchronize_stream = 1;
  std::string error;
  CHECK(!start(l, ChunkMode::kOnDevice, false, &stream, &error));
  CHECK_CONTAINS(error, "the NPU transfer workspace of device 31 is unusable");
  CHECK_CONTAINS(error, "aclrtRecordEvent failed");
  CHECK_CONTAINS(error, "restart the process");
  Launch again{&w, {}, nullptr, {}, {}, {}};
  CHECK(!start(again, ChunkMode::kOnDevice, false, &stream, &error));
  CHECK_CONTAINS(error, "is unusable");
  CHECK(aclrtSynchronizeStream(&stream) == ACL_SUCCESS);  // the first kernel runs while its world lives
  finish(l);
  fake_acl::state().device = 0;
  g_host_buffers.clear();
}

// The UB size the platform library reports caps the chip table's, never raises it.
void test_the_queried_ub_size_caps_the_table() {
  std::mt19937 rng(17);
  fake_acl::Stream& stream = test_stream();
  const int64_t table_buffer = ub_buffer_bytes(kvtest::chip("Ascend910B1"));
  const int64_t small_buffer = 4096;
  struct Case {
    int32_t device;
    int64_t reported;
    int64_t max_buffer;
  } cases[] = {{21, kUbReservedBytes + 2 * small_buffer, small_buffer}, {22, int64_t{1} << 30, table_buffer}};
  for (const Case& k : cases) {
    fake_acl::state().device = k.device;  // a new workspace asks the platform once
    fake_acl::state().platform_ub_bytes = k.reported;
    Config c = random_config(rng);
    c.layout = Layout::kFlash, c.es = 2, c.heads = 2, c.head_size = 128, c.tokens = 20, c.num_blocks = 5;
    c.block_size = 4, c.chunk_tokens = 16;
    World w;
    build(w, c);
    Launch l{&w, {}, nullptr, {}, {}, {}};
    CHECK(start(l, ChunkMode::kOnDevice, false, &stream));
    CHECK(aclrtSynchronizeStream(&stream) == ACL_SUCCESS);
    finish(l);
    CHECK(!g_buffer_bytes.empty() && g_buffer_bytes.back() <= k.max_buffer);
    g_host_buffers.clear();
  }
  CHECK(g_buffer_bytes.size() >= 2 && g_buffer_bytes.back() > small_buffer);
  fake_acl::state().device = 0;
  fake_acl::state().platform_ub_bytes = 0;
}

void test_core_count_comes_from_the_runtime_and_empty_transfers_do_not_launch() {
  std::mt19937 rng(5);
  fake_acl::Stream& stream = test_stream();
  fake_acl::state().device = 9;
  fake_acl::state().cores = 3;
  Config c = random_config(rng);
  c.tokens = 20, c.num_blocks = 5, c.block_size = 4, c.chunk_tokens = 4, c.layout = Layout::kFlash, c.skip_prob = 0;
  World w;
  build(w, c);
  Launch l{&w, {}, nullptr, {}, {}, {}};
  const size_t launches_before = g_block_dims.size();
  CHECK(start(l, ChunkMode::kOnDevice, false, &stream));
  CHECK(aclrtSynchronizeStream(&stream) == ACL_SUCCESS);
  finish(l);
  CHECK(g_block_dims.size() == launches_before + 1 && g_block_dims.back() == 3);

  for (auto& s : w.slots64) s = -1;  // nothing moves: no kernel at all
  for (auto& s : w.slots32) s = -1;
  Launch empty{&w, {}, nullptr, {}, {}, {}};
  CHECK(start(empty, ChunkMode::kOnDevice, false, &stream));
  CHECK(g_block_dims.size() == launches_before + 1);
  finish(empty);
  fake_acl::state().device = 0;
  fake_acl::state().cores = 48;
  g_host_buffers.clear();
}

void test_launcher_errors_say_what_to_do() {
  World w;
  build(w, Config{});
  fake_acl::Stream& stream = test_stream();
  NpuLaunchArgs args{&stream, 0};
  char err[1024] = {0};
  auto launch_once = [&] {
    std::memset(err, 0, sizeof(err));
    return lmcache_ascend_npu_transfer_kv(w.groups.data(), 1, &args, err, sizeof(err));
  };
  fake_acl::state().device = -1;
  CHECK(launch_once() == static_cast<int32_t>(StatusCode::kRuntimeError));
  CHECK_CONTAINS(err, "no NPU is current on this thread");
  fake_acl::state().device = 7;
  fake_acl::state().soc = "Ascend910A";
  CHECK(launch_once() == static_cast<int32_t>(StatusCode::kRuntimeError));
  CHECK_CONTAINS(err, "reports SoC 'Ascend910A', which lmcache-ascend's kernels do not know");
  fake_acl::state().device = 8;
  fake_acl::state().soc = "Ascend310P3";
  CHECK(launch_once() == static_cast<int32_t>(StatusCode::kRuntimeError));
  CHECK_CONTAINS(err, "built for SOC_VERSION=Ascend910B1 (AI core arch 220) but NPU 8 is Ascend310P3");
  fake_acl::state().device = 0;
  fake_acl::state().soc = "Ascend910B1";
  CHECK(lmcache_ascend_npu_transfer_kv(w.groups.data(), 1, nullptr, err, sizeof(err)) ==
        static_cast<int32_t>(StatusCode::kInvalidArgument));
  CHECK_CONTAINS(err, "launch arguments are null");
  // A row wider than UB is refused by the planner before anything is uploaded.
  Config wide;
  wide.layout = Layout::kMla, wide.heads = 1, wide.head_size = 65536, wide.tokens = 1, wide.num_blocks = 1;
  wide.block_size = 1, wide.layers = 1, wide.chunk_tokens = 1;
  World big;
  build(big, wide);
  CHECK(lmcache_ascend_npu_transfer_kv(big.groups.data(), 1, &args, err, sizeof(err)) ==
        static_cast<int32_t>(StatusCode::kInvalidArgument));
  CHECK_CONTAINS(err, "UB");
  // Short error buffers get a truncated, terminated message.
  char tiny[8];
  CHECK(lmcache_ascend_npu_transfer_kv(w.groups.data(), 1, nullptr, tiny, sizeof(tiny)) != 0);
  CHECK(std::strlen(tiny) == sizeof(tiny) - 1);
  CHECK_EQ(lmcache_ascend_npu_abi_version(), kNpuAbiVersion);
}

}  // namespace launcher_test

// The emulated kernel launch: queued on the stream like the real <<<>>> launch.
extern "C" int32_t lmcache_ascend_launch_kv_transfer(uint32_t block_dim, void* stream, uint8_t* descriptor,
                                                     uint8_t* plane_ptrs, uint8_t* slots, int32_t elem_size,
                                                     int32_t slot_bytes) {
  if (elem_size != 1 && elem_size != 2 && elem_size != 4) return -1;
  if (slot_bytes != 4 && slot_bytes != 8) return -1;
  launcher_test::g_block_dims.push_back(block_dim);
  KernelParams params;
  std::memcpy(&params, descriptor, sizeof(params));  // uploaded before the launch
  launcher_test::g_buffer_bytes.push_back(params.buffer_bytes);
  static_cast<fake_acl::Stream*>(stream)->work.push_back([=] {
    launcher_test::run_kernel(block_dim, descriptor, plane_ptrs, slots, elem_size, slot_bytes);
  });
  return 0;
}

int main() {
  launcher_test::test_every_mode_matches_the_cpu_backend();
  launcher_test::test_pipelined_launches_share_the_ring_safely();
  launcher_test::test_staged_gather_is_complete_on_return();
  launcher_test::test_a_failure_after_the_launch_keeps_the_ring_safe();
  launcher_test::test_a_failed_wait_after_a_failed_launch_retires_the_workspace();
  launcher_test::test_the_queried_ub_size_caps_the_table();
  launcher_test::test_core_count_comes_from_the_runtime_and_empty_transfers_do_not_launch();
  launcher_test::test_launcher_errors_say_what_to_do();
  return lmcache_ascend_test::finish("test_npu_launcher");
}
