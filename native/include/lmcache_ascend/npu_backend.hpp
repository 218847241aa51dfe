// The NPU (Ascend) backend of the KV transfer kernel family.
//
// The kernels and their launchers live in liblmcache_ascend_npu.so, built only where the CANN
// toolkit is found (native/ascend). The always-built CPU library reaches it through
// npu_transfer_kv, which loads it on first use from its own directory, so the wheel imports and
// the CPU backend works on hosts without CANN.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "lmcache_ascend/status.hpp"
#include "lmcache_ascend/transfer.hpp"

namespace lmcache_ascend {

struct NpuTransferOptions {
  void* stream = nullptr;        // aclrtStream to launch on: torch.npu.current_stream().npu_stream
  bool slots_on_device = true;   // slots.data is device memory (an npu tensor); else host memory
  bool chunks_on_host = false;   // chunk bases are host addresses (LMCache memory objects in host RAM)
  // Host chunks only: gather into a device staging buffer and copy it to the host with as few
  // memcpys as the touched bytes allow (and the reverse for scatter), instead of letting the kernel
  // address registered host memory directly. Needed where host registration is unavailable (310P).
  bool fused = false;
  // Host chunks without `fused`: stage the call anyway when a chunk is not registered with the
  // device (instead of failing), so unregistered host memory still works, only slower.
  bool stage_unregistered = false;
};

// Moves KV between a paged cache in device memory and LMCache chunks on the NPU. `groups` are plane
// groups sharing layers, chunks and slots (one for K/V or MLA; latent + rope or DSA's three planes
// as separate groups because their widths differ). Validates everything on the host (copying a
// device slot mapping back first) before the launch; on error nothing was written. The kernel
// always reads the validated host copy of the slots (uploaded by the launcher), never the
// caller's slot tensor, so a slot mapping rewritten after the check cannot reach the kernel.
// Returns after the launch is queued on `options.stream` when every chunk is device memory. When
// the chunks are host memory (`chunks_on_host`, zero-copy or staged, either direction) it returns
// only once the device has finished with them: the caller may read, reuse or free them right after
// (LMCache frees memory objects as soon as a retrieve returns).
Status npu_transfer_kv(const TransferRequest* groups, int32_t num_groups, const NpuTransferOptions& options);

// Absolute path liblmcache_ascend_npu.so is loaded from (next to the CPU library).
const char* npu_library_path();

// Wait until the work queued on `stream` (an aclrtStream) has finished: LMCache's stream-ordered
// completion records on the NPU. Fails with the fix when the wheel has no Ascend backend.
Status npu_synchronize_stream(void* stream);

// The host-side half of npu_transfer_kv, before anything reaches the NPU library: every group
// validated against `host_slots` (a host copy of the shared slot mapping, or null when
// groups[0].slots is already host memory), registered host chunks mapped to device addresses, and
// whether the call must stage host chunks (`fused`). On error nothing was launched.
struct PreparedNpuTransfer {
  std::vector<TransferRequest> groups;        // what the launcher gets
  std::vector<std::vector<ChunkRef>> chunks;  // per group: the mapped chunk tables groups point into
  bool fused = false;
};
Status prepare_npu_transfer(const TransferRequest* groups, int32_t num_groups, const void* host_slots,
                            const NpuTransferOptions& options, PreparedNpuTransfer* out);

// ---- C ABI of liblmcache_ascend_npu.so (looked up with dlsym; no C++ types cross by value) ----

// Bumped whenever a struct below or a TransferRequest field changes.
constexpr int32_t kNpuAbiVersion = 2;

struct NpuLaunchArgs {
  void* stream;   // aclrtStream
  int32_t fused;  // 1: chunk bases are host addresses, staged through a device buffer
};

}  // namespace lmcache_ascend

extern "C" {
typedef int32_t (*lmcache_ascend_npu_abi_version_fn)(void);
// Waits for `stream`, then copies `bytes` of device memory to the host. Returns a StatusCode.
typedef int32_t (*lmcache_ascend_npu_copy_to_host_fn)(void* host_dst, const void* device_src, size_t bytes,
                                                      void* stream, char* err, size_t err_len);
// Waits until everything queued on `stream` has run. Returns a StatusCode.
typedef int32_t (*lmcache_ascend_npu_synchronize_fn)(void* stream, char* err, size_t err_len);
// Launches one validated transfer: groups[*].slots.data is the validated host copy of the slot
// mapping, which the launcher uploads for the kernel. A fused gather returns once the host chunks
// hold the data. Returns a StatusCode; on error `err` holds the message.
typedef int32_t (*lmcache_ascend_npu_transfer_kv_fn)(const lmcache_ascend::TransferRequest* groups,
                                                     int32_t num_groups, const lmcache_ascend::NpuLaunchArgs* args,
                                                     char* err, size_t err_len);

// Defined by liblmcache_ascend_npu.so only (the CPU library looks them up with dlsym).
int32_t lmcache_ascend_npu_abi_version(void);
int32_t lmcache_ascend_npu_copy_to_host(void* host_dst, const void* device_src, size_t bytes, void* stream, char* err,
                                        size_t err_len);
int32_t lmcache_ascend_npu_synchronize(void* stream, char* err, size_t err_len);
int32_t lmcache_ascend_npu_transfer_kv(const lmcache_ascend::TransferRequest* groups, int32_t num_groups,
                                       const lmcache_ascend::NpuLaunchArgs* args, char* err, size_t err_len);
}
