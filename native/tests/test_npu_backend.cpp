// The NPU entry of the CPU library without an NPU: on a host without liblmcache_ascend_npu.so every
// call returns a clear error that says why and how to fix it, and nothing is written; the host-side
// preparation (validation on a host copy of the slots, mapping of registered host chunks, the
// choice to stage) is checked with a DeviceRegistrar test double that maps host ranges to offsets.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "check.hpp"
#include "kv_test_support.hpp"
#include "lmcache_ascend/device_registration.hpp"
#include "lmcache_ascend/npu_backend.hpp"
#include "lmcache_ascend/transfer.hpp"
#include "lmcache_ascend/transfer_validation.hpp"

using namespace lmcache_ascend;

namespace {

// A valid little transfer: 1 layer, flash layout [2, 2 blocks, 2 tokens, 1 head, 16], one chunk
// [2, 1, 2, 16] in host memory.
struct Little {
  std::vector<uint16_t> paged = std::vector<uint16_t>(2 * 2 * 2 * 16, 7);
  std::vector<uint16_t> chunk = std::vector<uint16_t>(2 * 1 * 2 * 16, 9);
  uintptr_t bases[2] = {reinterpret_cast<uintptr_t>(paged.data()), reinterpret_cast<uintptr_t>(paged.data() + 2 * 2 * 16)};
  int64_t slots[2] = {0, 3};
  ChunkRef ref;
  int64_t extent = static_cast<int64_t>(chunk.size() * 2);
  TransferRequest r;

  Little() {
    ref.base = reinterpret_cast<uintptr_t>(chunk.data());
    ref.token_begin = 0;
    ref.token_end = 2;
    ref.strides = {2 * 16, 2 * 16, 16};
    r.page.elem_size = 2;
    r.page.num_layers = 1;
    r.page.num_planes = 2;
    r.page.plane_bases = bases;
    r.page.num_blocks = 2;
    r.page.block_size = 2;
    r.page.num_heads = 1;
    r.page.head_size = 16;
    r.page.block_stride = 32;
    r.page.head_stride = 16;
    r.page.token_stride = 16;
    r.page_extent_elems = 2 * 2 * 16;
    r.chunks = &ref;
    r.num_chunks = 1;
    r.chunk_extent_bytes = &extent;
    r.slots = {slots, 2, 8};
    r.direction = Direction::kPagedToChunk;
  }
  uintptr_t chunk_address() const { return reinterpret_cast<uintptr_t>(chunk.data()); }
  size_t chunk_bytes() const { return chunk.size() * sizeof(uint16_t); }
};

// Each registered host range gets its own device window: range i at kDeviceBase + i * kWindow.
constexpr uintptr_t kDeviceBase = 0x100000000000ULL;
constexpr uintptr_t kWindow = 0x10000000ULL;

void test_missing_library() {
  Little l;
  TransferRequest& r = l.r;
  std::vector<uint16_t>& chunk = l.chunk;
  CHECK(transfer_kv(r).ok());  // the CPU backend takes it

  std::vector<uint16_t> before = chunk;
  NpuTransferOptions options;
  options.stream = reinterpret_cast<void*>(0x1);  // never used: the library is absent
  options.slots_on_device = false;
  for (bool fused : {false, true}) {
    options.fused = fused;
    Status st = npu_transfer_kv(&r, 1, options);
    CHECK(st.code == StatusCode::kRuntimeError);
    CHECK_CONTAINS(st.message, "liblmcache_ascend_npu.so");
    CHECK_CONTAINS(st.message, "built without the Ascend backend");
    CHECK_CONTAINS(st.message, "ASCEND_HOME_PATH");
    CHECK_CONTAINS(st.message, "reinstall lmcache-ascend-core from source");
  }
  CHECK(chunk == before);
  // The library is looked up next to the library holding npu_transfer_kv (here: this program).
  const std::string path = npu_library_path();
  CHECK(path.size() > std::strlen("/liblmcache_ascend_npu.so"));
  CHECK_CONTAINS(path, "/liblmcache_ascend_npu.so");
  CHECK(npu_transfer_kv(nullptr, 0, options).code == StatusCode::kInvalidArgument);
  // LMCache's stream-ordered records wait for the stream through the same library.
  Status sync = npu_synchronize_stream(reinterpret_cast<void*>(0x1));
  CHECK(sync.code == StatusCode::kRuntimeError);
  CHECK_CONTAINS(sync.message, "built without the Ascend backend");
}

void test_prepare_maps_registered_host_chunks() {
  NpuTransferOptions host;
  host.chunks_on_host = true;
  {  // No registrar: a clear error, or staging when allowed.
    Little l;
    install_device_registrar(nullptr);
    PreparedNpuTransfer p;
    Status st = prepare_npu_transfer(&l.r, 1, nullptr, host, &p);
    CHECK(st.code == StatusCode::kInvalidArgument);
    CHECK_CONTAINS(st.message, "memory object 0 is in host memory, but no device registrar is installed");
    CHECK_CONTAINS(st.message, "fused=True");
    NpuTransferOptions auto_stage = host;
    auto_stage.stage_unregistered = true;
    CHECK(prepare_npu_transfer(&l.r, 1, nullptr, auto_stage, &p).ok());
    CHECK(p.fused);
    CHECK(p.groups[0].chunks[0].base == l.chunk_address());  // staged chunks keep host addresses
    NpuTransferOptions fused = host;
    fused.fused = true;
    CHECK(prepare_npu_transfer(&l.r, 1, nullptr, fused, &p).ok() && p.fused);
  }
  kvtest::RangeRegistrar registrar(kDeviceBase, kWindow);
  install_device_registrar(&registrar);
  {  // Registered: mapped to the device window, zero-copy.
    Little l;
    registrar.ranges = {{l.chunk_address(), l.chunk_bytes()}};
    PreparedNpuTransfer p;
    CHECK(prepare_npu_transfer(&l.r, 1, nullptr, host, &p).ok());
    CHECK(!p.fused);
    CHECK(p.groups[0].chunks[0].base == kDeviceBase);
    CHECK(l.r.chunks[0].base == l.chunk_address());  // the caller's request is left alone
    NpuTransferOptions device = host;
    device.chunks_on_host = false;  // chunks in NPU memory are used as they are
    CHECK(prepare_npu_transfer(&l.r, 1, nullptr, device, &p).ok());
    CHECK(p.groups[0].chunks[0].base == l.chunk_address());
  }
  {  // Only the first half registered: the chunk's last byte has no device address.
    Little l;
    registrar.ranges = {{l.chunk_address(), l.chunk_bytes() / 2}};
    PreparedNpuTransfer p;
    Status st = prepare_npu_transfer(&l.r, 1, nullptr, host, &p);
    CHECK_CONTAINS(st.message, "is not registered with the NPU (address not in any registered range)");
    NpuTransferOptions auto_stage = host;
    auto_stage.stage_unregistered = true;
    CHECK(prepare_npu_transfer(&l.r, 1, nullptr, auto_stage, &p).ok() && p.fused);
  }
  {  // Two registrations side by side in host memory, apart on the device: not one range.
    Little l;
    const size_t half = l.chunk_bytes() / 2;
    registrar.ranges = {{l.chunk_address(), half}, {l.chunk_address() + half, half}};
    PreparedNpuTransfer p;
    Status st = prepare_npu_transfer(&l.r, 1, nullptr, host, &p);
    CHECK_CONTAINS(st.message, "spans host memory that is not one registered range");
  }
  install_device_registrar(nullptr);
}

void test_prepare_validates_the_host_copy_of_the_slots() {
  Little l;
  // The request's slots stand for device memory (never read here); the host copy is what counts.
  l.r.slots.data = reinterpret_cast<const void*>(0x10);
  int64_t host_copy[2] = {0, 4};  // 4 = one past the last of 2 blocks x 2 slots
  NpuTransferOptions device;
  PreparedNpuTransfer p;
  Status st = prepare_npu_transfer(&l.r, 1, host_copy, device, &p);
  CHECK(st.code == StatusCode::kOutOfRange);
  CHECK_CONTAINS(st.message, "slot_mapping[1] = 4 is out of range");
  host_copy[1] = -1;  // padding: skipped
  CHECK(prepare_npu_transfer(&l.r, 1, host_copy, device, &p).ok());
  CHECK(p.groups[0].slots.data == host_copy);

  TransferRequest groups[2] = {l.r, l.r};
  int64_t other[2] = {0, 1};
  groups[1].slots.data = other;
  st = prepare_npu_transfer(groups, 2, host_copy, device, &p);
  CHECK_CONTAINS(st.message, "plane group 1 differs from group 0 in layers, chunks, slot mapping");
  CHECK(prepare_npu_transfer(nullptr, 0, nullptr, device, &p).code == StatusCode::kInvalidArgument);
}

// Shapes and strides come from Python unchecked: products that wrap around int64 must be refused
// (naming the field), not pass as small extents. The NPU path validates with the same code.
void test_huge_dimensions_do_not_wrap() {
  const int64_t huge = INT64_MAX / 2 + 1;
  {
    Little l;
    l.r.page.block_stride = INT64_MAX;  // (num_blocks - 1) * block_stride + the rest wraps negative
    Status st = transfer_kv(l.r);
    CHECK(st.code == StatusCode::kOutOfRange);
    CHECK_CONTAINS(st.message, "paged KV cache layout is too large");
    CHECK_CONTAINS(st.message, "block_stride=" + std::to_string(INT64_MAX));
  }
  {
    Little l;
    l.r.page.num_blocks = huge;  // num_blocks * block_size wraps
    l.r.page.block_stride = 0;
    Status st = transfer_kv(l.r);
    CHECK(st.code == StatusCode::kOutOfRange);
    CHECK_CONTAINS(st.message, "num_blocks is too large");
  }
  {
    Little l;
    l.ref.strides.token_stride = huge;  // fits in elements, wraps once multiplied by 2-byte elements
    Status st = transfer_kv(l.r);
    CHECK(st.code == StatusCode::kOutOfRange);
    CHECK_CONTAINS(st.message, "chunk 0 is too large");
    CHECK_CONTAINS(st.message, "token_stride=");
    l.ref.strides.token_stride = INT64_MAX;  // wraps in elements already
    CHECK(validate_transfer_request(l.r).code == StatusCode::kOutOfRange);
    int64_t bytes = 0;
    CHECK(chunk_bytes_touched(l.r, 0, &bytes).code == StatusCode::kOutOfRange);
    l.ref.strides.token_stride = 16;
    CHECK(chunk_bytes_touched(l.r, 0, &bytes).ok());
    CHECK_EQ(bytes, static_cast<int64_t>(l.chunk_bytes()));
  }
}

}  // namespace

int main() {
  test_missing_library();
  test_prepare_maps_registered_host_chunks();
  test_prepare_validates_the_host_copy_of_the_slots();
  test_huge_dimensions_do_not_wrap();
  return lmcache_ascend_test::finish("test_npu_backend");
}
