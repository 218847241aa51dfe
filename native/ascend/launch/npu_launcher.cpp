// Host launcher of the Ascend KV transfer kernel (C ABI of liblmcache_ascend_npu.so, declared in
// lmcache_ascend/npu_backend.hpp). The CPU library validated the request on a host copy of the
// slots; here the plan is computed with the shared tiling header, the tables are uploaded to
// device buffers reused across launches, and the kernel is queued on the caller's stream.
//
// Device buffers come in a ring of launch slots, each guarded by an event recorded after its
// launch, so consecutive transfers pipeline on the stream and a slot is rewritten only after the
// kernel that read it has finished. Once a kernel is queued its slot is marked pending at once, so
// an error later in the call cannot let the slot's buffers be reused under a running kernel. The
// paged pointer tables are cached by content: an engine's KV cache pointers stay the same for the
// life of the process. The kernel always reads the validated host copy of the slots, uploaded here.
// Never compiled or run against the real runtime here: see native/ascend/README.md.
// native/tests builds this file against a host-memory stand-in of the ACL runtime.
#ifdef LMCACHE_ASCEND_ACL_HEADER
#include LMCACHE_ASCEND_ACL_HEADER
#else
#include <acl/acl.h>
#if LMCACHE_ASCEND_HAVE_PLATFORM
#include "tiling/platform/platform_ascendc.h"
#endif
#endif

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernel_entry.h"
#include "lmcache_ascend/ascend_tiling.hpp"
#include "lmcache_ascend/npu_backend.hpp"

#ifndef LMCACHE_ASCEND_AICORE_ARCH
#error "LMCACHE_ASCEND_AICORE_ARCH (220 or 200) must come from the build (native/ascend/CMakeLists.txt)"
#endif
#ifndef LMCACHE_ASCEND_SOC_VERSION
#define LMCACHE_ASCEND_SOC_VERSION "unknown"
#endif

namespace {

using lmcache_ascend::Status;
using lmcache_ascend::StatusCode;
using lmcache_ascend::TransferRequest;
using namespace lmcache_ascend::npu;

constexpr size_t kRingSize = 4;         // launches in flight before the host waits for the oldest
constexpr size_t kMaxPointerTables = 16;

Status acl_failure(const std::string& what, aclError code) {
  const char* recent = aclGetRecentErrMsg();
  return Status::Error(StatusCode::kRuntimeError,
                       what + " failed with ACL error " + std::to_string(static_cast<int>(code)) +
                           (recent && *recent ? std::string(": ") + recent : std::string()));
}

#define ACL_TRY(call)                                         \
  do {                                                        \
    aclError acl_try_code = (call);                           \
    if (acl_try_code != ACL_SUCCESS) return acl_failure(#call, acl_try_code); \
  } while (0)

// Device memory that only grows. Never freed at exit: the ACL runtime may already be torn down
// when static destructors run.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t size = 0;
  Status reserve(size_t bytes) {
    if (bytes <= size) return Status::Ok();
    if (ptr != nullptr) aclrtFree(ptr);
    ptr = nullptr;
    size = 0;
    const size_t rounded = (bytes + 4095) / 4096 * 4096;
    aclError code = aclrtMalloc(&ptr, rounded, ACL_MEM_MALLOC_HUGE_FIRST);
    if (code != ACL_SUCCESS)
      return Status::Error(StatusCode::kOutOfMemory, "NPU memory for the KV transfer tables (" +
                                                         std::to_string(rounded) + " bytes) could not be allocated: "
                                                         "ACL error " + std::to_string(static_cast<int>(code)));
    size = rounded;
    return Status::Ok();
  }
  void release() {
    if (ptr != nullptr) aclrtFree(ptr);
    ptr = nullptr;
    size = 0;
  }
};

struct LaunchSlot {
  DeviceBuffer descriptor, slots, staging;
  aclrtEvent done = nullptr;
  bool pending = false;

  Status wait() {
    if (pending) ACL_TRY(aclrtSynchronizeEvent(done));
    pending = false;
    return Status::Ok();
  }
};

struct Workspace {
  bool ready = false;
  std::string broken;  // why launches are refused: a kernel may still use buffers we could not wait for
  ChipInfo chip;
  int32_t cores = 0;
  LaunchSlot ring[kRingSize];
  size_t next = 0;
  std::map<std::vector<uint64_t>, DeviceBuffer> pointer_tables;
};

std::mutex g_mutex;
std::map<int32_t, Workspace> g_workspaces;  // by device id

// UB per core as the platform library reports it, 0 when it cannot answer (or is not linked).
int64_t queried_ub_bytes(const char* soc) {
#if LMCACHE_ASCEND_HAVE_PLATFORM
  platform_ascendc::PlatformAscendC* platform = platform_ascendc::PlatformAscendCManager::GetInstance(soc);
  if (platform == nullptr) return 0;
  uint64_t ub = 0;
  platform->GetCoreMemSize(platform_ascendc::CoreMemType::UB, ub);
  return static_cast<int64_t>(ub);
#else
  (void)soc;
  return 0;
#endif
}

Status init_workspace(int32_t device, Workspace* ws) {
  const char* soc = aclrtGetSocName();
  if (!chip_info_for_soc(soc, &ws->chip))
    return Status::Error(StatusCode::kRuntimeError,
                         std::string("NPU ") + std::to_string(device) + " reports SoC '" + (soc ? soc : "(none)") +
                             "', which lmcache-ascend's kernels do not know (supported: Ascend910B1-B4, "
                             "Ascend910_93xx, Ascend310P); keep the KV cache on the CPU backend");
  if (ws->chip.aicore_arch != LMCACHE_ASCEND_AICORE_ARCH)
    return Status::Error(StatusCode::kRuntimeError,
                         std::string("liblmcache_ascend_npu.so was built for SOC_VERSION=") + LMCACHE_ASCEND_SOC_VERSION +
                             " (AI core arch " + std::to_string(LMCACHE_ASCEND_AICORE_ARCH) + ") but NPU " +
                             std::to_string(device) + " is " + soc + " (arch " + std::to_string(ws->chip.aicore_arch) +
                             "): reinstall lmcache-ascend-core from source on this machine so the kernels are built for it");
  // Virtual NPU partitions may expose fewer cores than the chip has: ask the runtime.
  int64_t cores = 0;
  const aclDeviceInfo kind = ws->chip.aicore_arch >= 220 ? ACL_DEVICE_INFO_VECTOR_CORE_NUM : ACL_DEVICE_INFO_AI_CORE_NUM;
  if (aclGetDeviceCapability(static_cast<uint32_t>(device), kind, &cores) == ACL_SUCCESS && cores > 0)
    ws->chip.vector_cores = static_cast<int32_t>(std::min<int64_t>(cores, ws->chip.vector_cores));
  ws->cores = ws->chip.vector_cores;
  apply_queried_ub(&ws->chip, queried_ub_bytes(soc));
  for (LaunchSlot& slot : ws->ring) ACL_TRY(aclrtCreateEvent(&slot.done));
  ws->ready = true;
  return Status::Ok();
}

Status pointer_table(Workspace* ws, const std::vector<uint64_t>& pointers, void** out) {
  auto found = ws->pointer_tables.find(pointers);
  if (found != ws->pointer_tables.end()) {
    *out = found->second.ptr;
    return Status::Ok();
  }
  if (ws->pointer_tables.size() >= kMaxPointerTables) {
    // Rare (an engine has a handful of layouts): wait for every launch that may read a table.
    for (LaunchSlot& slot : ws->ring) {
      Status st = slot.wait();
      if (!st.ok()) return st;
    }
    for (auto& entry : ws->pointer_tables) entry.second.release();
    ws->pointer_tables.clear();
  }
  DeviceBuffer table;
  const size_t bytes = pointers.size() * sizeof(uint64_t);
  Status st = table.reserve(bytes);
  if (!st.ok()) return st;
  ACL_TRY(aclrtMemcpy(table.ptr, table.size, pointers.data(), bytes, ACL_MEMCPY_HOST_TO_DEVICE));
  *out = table.ptr;
  ws->pointer_tables.emplace(pointers, table);
  return Status::Ok();
}

Status launch(const TransferRequest* groups, int32_t num_groups, const lmcache_ascend::NpuLaunchArgs& args) {
  std::lock_guard<std::mutex> lock(g_mutex);
  int32_t device = -1;
  aclError code = aclrtGetDevice(&device);
  if (code != ACL_SUCCESS)
    return Status::Error(StatusCode::kRuntimeError,
                         "no NPU is current on this thread (aclrtGetDevice failed with ACL error " +
                             std::to_string(static_cast<int>(code)) + "): call torch.npu.set_device(...) first");
  Workspace& ws = g_workspaces[device];
  if (!ws.broken.empty()) return Status::Error(StatusCode::kRuntimeError, ws.broken);
  if (!ws.ready) {
    Status st = init_workspace(device, &ws);
    if (!st.ok()) return st;
  }

  PlanOptions options;
  options.chip = ws.chip;
  options.cores = ws.cores;
  options.stage_chunks = args.fused != 0;
  LaunchPlan plan;
  Status st = plan_launch(groups, num_groups, options, &plan);
  if (!st.ok()) return st;
  // Nothing moves (no tokens, all in the skipped prefix, or all slots < 0): no launch at all.
  if (plan.params.num_items == 0 || !any_token_moves(groups[0])) return Status::Ok();

  LaunchSlot& slot = ws.ring[ws.next];
  ws.next = (ws.next + 1) % kRingSize;
  st = slot.wait();
  if (!st.ok()) return st;

  void* table = nullptr;
  st = pointer_table(&ws, plan.plane_ptrs, &table);
  if (!st.ok()) return st;

  const bool gather = plan.params.direction == kGather;
  if (plan.staged) {
    st = slot.staging.reserve(static_cast<size_t>(plan.staging_bytes));
    if (!st.ok()) return st;
    relocate_staging(&plan, reinterpret_cast<uint64_t>(slot.staging.ptr));
  }
  auto host_address = [&](const StagingCopy& copy) {
    return reinterpret_cast<uint8_t*>(groups[copy.group].chunks[copy.chunk].base) + copy.host_offset;
  };
  auto device_address = [&](const StagingCopy& copy) {
    return static_cast<uint8_t*>(slot.staging.ptr) + copy.staging_offset;
  };
  // Scatter from host chunks: the touched bytes go to the staging buffer before the kernel runs.
  // The slot is idle, so a synchronous copy is safe and needs no pinned source.
  if (plan.staged && !gather)
    for (const StagingCopy& copy : plan.staging_copies)
      ACL_TRY(aclrtMemcpy(device_address(copy), slot.staging.size - static_cast<size_t>(copy.staging_offset),
                          host_address(copy), static_cast<size_t>(copy.bytes), ACL_MEMCPY_HOST_TO_DEVICE));

  const std::vector<uint8_t> descriptor = plan.descriptor();
  st = slot.descriptor.reserve(descriptor.size());
  if (!st.ok()) return st;
  ACL_TRY(aclrtMemcpy(slot.descriptor.ptr, slot.descriptor.size, descriptor.data(), descriptor.size(),
                      ACL_MEMCPY_HOST_TO_DEVICE));

  // Always the validated host copy: the caller's slot tensor may change after the check.
  const size_t slot_bytes = static_cast<size_t>(groups[0].slots.length * groups[0].slots.index_bytes);
  st = slot.slots.reserve(slot_bytes);
  if (!st.ok()) return st;
  ACL_TRY(aclrtMemcpy(slot.slots.ptr, slot.slots.size, groups[0].slots.data, slot_bytes, ACL_MEMCPY_HOST_TO_DEVICE));

  aclrtStream stream = static_cast<aclrtStream>(args.stream);
  if (lmcache_ascend_launch_kv_transfer(plan.block_dim(), stream, static_cast<uint8_t*>(slot.descriptor.ptr),
                                        static_cast<uint8_t*>(table), static_cast<uint8_t*>(slot.slots.ptr),
                                        plan.params.elem_size, plan.params.slot_bytes) != 0)
    return Status::Error(StatusCode::kInvalidArgument,
                         "no kernel for " + std::to_string(plan.params.elem_size) + "-byte elements with " +
                             std::to_string(plan.params.slot_bytes) + "-byte slots");

  // The kernel is queued: from here on an error must not leave its buffers unguarded.
  code = aclrtRecordEvent(slot.done, stream);
  if (code == ACL_SUCCESS) slot.pending = true;
  st = code == ACL_SUCCESS ? Status::Ok() : acl_failure("aclrtRecordEvent", code);
  // Gather into host chunks: once the kernel has run, the staging buffer goes back to the host with
  // synchronous copies (the host memory need not be registered or pinned for ACL).
  if (st.ok() && plan.staged && gather) {
    code = aclrtSynchronizeStream(stream);
    st = code == ACL_SUCCESS ? Status::Ok() : acl_failure("aclrtSynchronizeStream", code);
    for (size_t i = 0; st.ok() && i < plan.staging_copies.size(); ++i) {
      const StagingCopy& copy = plan.staging_copies[i];
      code = aclrtMemcpy(host_address(copy), static_cast<size_t>(copy.bytes), device_address(copy),
                         static_cast<size_t>(copy.bytes), ACL_MEMCPY_DEVICE_TO_HOST);
      if (code != ACL_SUCCESS) st = acl_failure("aclrtMemcpy of the staging buffer to host memory", code);
    }
  }
  if (st.ok()) return st;
  // Failed after the launch: wait for the kernel so nothing it reads is reused or freed under it.
  code = aclrtSynchronizeStream(stream);
  if (code == ACL_SUCCESS) {
    slot.pending = false;
    return st;
  }
  ws.broken = "the NPU transfer workspace of device " + std::to_string(device) +
              " is unusable: a launch failed (" + st.message + ") and waiting for its kernel failed too (ACL error " +
              std::to_string(static_cast<int>(code)) + "); restart the process";
  return Status::Error(StatusCode::kRuntimeError, ws.broken);
}

int32_t report(const Status& st, char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", st.message.c_str());
  return static_cast<int32_t>(st.code);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int32_t lmcache_ascend_npu_abi_version(void) {
  return lmcache_ascend::kNpuAbiVersion;
}

__attribute__((visibility("default"))) int32_t lmcache_ascend_npu_copy_to_host(void* host_dst, const void* device_src,
                                                                               size_t bytes, void* stream, char* err,
                                                                               size_t err_len) {
  auto run = [&]() -> Status {
    ACL_TRY(aclrtSynchronizeStream(static_cast<aclrtStream>(stream)));
    if (bytes > 0) ACL_TRY(aclrtMemcpy(host_dst, bytes, device_src, bytes, ACL_MEMCPY_DEVICE_TO_HOST));
    return Status::Ok();
  };
  return report(run(), err, err_len);
}

__attribute__((visibility("default"))) int32_t lmcache_ascend_npu_synchronize(void* stream, char* err, size_t err_len) {
  auto run = [&]() -> Status {
    ACL_TRY(aclrtSynchronizeStream(static_cast<aclrtStream>(stream)));
    return Status::Ok();
  };
  return report(run(), err, err_len);
}

__attribute__((visibility("default"))) int32_t lmcache_ascend_npu_transfer_kv(
    const lmcache_ascend::TransferRequest* groups, int32_t num_groups, const lmcache_ascend::NpuLaunchArgs* args,
    char* err, size_t err_len) {
  if (args == nullptr)
    return report(Status::Error(StatusCode::kInvalidArgument, "launch arguments are null"), err, err_len);
  return report(launch(groups, num_groups, *args), err, err_len);
}

}  // extern "C"
