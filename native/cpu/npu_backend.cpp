// Entry to the NPU backend from the always-built CPU library: loads liblmcache_ascend_npu.so on first
// use (it links the CANN runtime, which hosts without CANN lack), validates the transfer on the host
// with the CPU backend's own checks, maps registered host memory to device addresses, and hands
// the launch over.
#include "lmcache_ascend/npu_backend.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#include "lmcache_ascend/ascend_tiling.hpp"
#include "lmcache_ascend/device_registration.hpp"
#include "lmcache_ascend/dynamic_library.hpp"
#include "lmcache_ascend/host_memory.hpp"
#include "lmcache_ascend/transfer_validation.hpp"

namespace lmcache_ascend {
namespace {

constexpr const char* kLibraryName = "liblmcache_ascend_npu.so";

struct NpuLibrary {
  std::string path;
  lmcache_ascend_npu_copy_to_host_fn copy_to_host = nullptr;
  lmcache_ascend_npu_transfer_kv_fn transfer_kv = nullptr;
  lmcache_ascend_npu_synchronize_fn synchronize = nullptr;
  Status status;  // why it could not be used, if it could not
};

std::string library_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&npu_library_path), &info) == 0 || info.dli_fname == nullptr) return ".";
  std::string self = info.dli_fname;
  size_t slash = self.rfind('/');
  return slash == std::string::npos ? "." : self.substr(0, slash);
}

Status unavailable(const std::string& path, const std::string& why) {
  const bool present = access(path.c_str(), F_OK) == 0;
  std::string msg = "the NPU backend is not available: " + path + " could not be loaded (" + why + "). ";
  if (present)
    msg += "The library is installed but its CANN runtime dependencies did not load: run `source "
           "<CANN home>/set_env.sh` (or put ${ASCEND_HOME_PATH}/lib64 on LD_LIBRARY_PATH) before starting Python.";
  else
    msg += "This lmcache-ascend-core wheel was built without the Ascend backend (the CANN toolkit was not "
           "found at build time). To fix: install the CANN toolkit, `source <CANN home>/set_env.sh` so that "
           "ASCEND_HOME_PATH is set, then reinstall lmcache-ascend-core from source (pip install --no-binary "
           "lmcache-ascend-core --force-reinstall lmcache-ascend-core, or pip install packages/lmcache-ascend-core "
           "from a checkout; set SOC_VERSION, e.g. Ascend910B3, where npu-smi is not on PATH, and "
           "LMCACHE_ASCEND_BACKEND=ascend to make the build fail loudly instead of building the CPU backend "
           "only). Until then keep the KV cache and memory objects on the CPU.";
  return Status::Error(StatusCode::kRuntimeError, msg);
}

const NpuLibrary& npu_library() {
  static NpuLibrary lib;
  static std::once_flag once;
  std::call_once(once, [] {
    lib.path = library_directory() + "/" + kLibraryName;
    std::string error;
    DynamicLibrary npu = DynamicLibrary::open(lib.path, 0, &error);
    if (!npu) {
      lib.status = unavailable(lib.path, error);
      return;
    }
    auto version = npu.symbol<lmcache_ascend_npu_abi_version_fn>("lmcache_ascend_npu_abi_version");
    lib.copy_to_host = npu.symbol<lmcache_ascend_npu_copy_to_host_fn>("lmcache_ascend_npu_copy_to_host");
    lib.transfer_kv = npu.symbol<lmcache_ascend_npu_transfer_kv_fn>("lmcache_ascend_npu_transfer_kv");
    lib.synchronize = npu.symbol<lmcache_ascend_npu_synchronize_fn>("lmcache_ascend_npu_synchronize");
    npu.keep_loaded();  // its functions are called until the process ends
    const char* missing = version == nullptr             ? "lmcache_ascend_npu_abi_version"
                          : lib.copy_to_host == nullptr  ? "lmcache_ascend_npu_copy_to_host"
                          : lib.transfer_kv == nullptr   ? "lmcache_ascend_npu_transfer_kv"
                          : lib.synchronize == nullptr   ? "lmcache_ascend_npu_synchronize"
                                                         : nullptr;
    const int32_t found = missing == nullptr ? version() : -1;
    if (missing != nullptr || found != kNpuAbiVersion) {
      const std::string what = missing != nullptr ? std::string("has no symbol ") + missing
                                                  : "has ABI version " + std::to_string(found) + ", expected " +
                                                        std::to_string(kNpuAbiVersion);
      lib.status = Status::Error(StatusCode::kRuntimeError,
                                 lib.path + " does not match this lmcache-ascend-core (it " + what +
                                     "): reinstall lmcache-ascend-core so both libraries come from one build");
      lib.copy_to_host = nullptr;
      lib.transfer_kv = nullptr;
      lib.synchronize = nullptr;
    }
  });
  return lib;
}

Status from_abi(int32_t code, const char* err) {
  if (code == static_cast<int32_t>(StatusCode::kOk)) return Status::Ok();
  if (code < 0 || code > static_cast<int32_t>(StatusCode::kRuntimeError)) code = static_cast<int32_t>(StatusCode::kRuntimeError);
  return Status::Error(static_cast<StatusCode>(code), err[0] ? err : "NPU transfer failed without a message");
}

Status map_host_chunk(const TransferRequest& r, int64_t c, int32_t group, ChunkRef* out) {
  const std::string which = "memory object " + std::to_string(c) + (group ? " of plane group " + std::to_string(group) : "");
  DeviceRegistrar* registrar = device_registrar();
  if (registrar == nullptr)
    return Status::Error(StatusCode::kInvalidArgument,
                         which + " is in host memory, but no device registrar is installed, so the NPU cannot "
                                 "address it: allocate LMCache memory with lmcache_ascend's pinned allocator on an "
                                 "Ascend host (it registers the pages), or pass fused=True to stage through device memory");
  uintptr_t first = 0, last = 0;
  int64_t touched = 0;
  Status st = chunk_bytes_touched(r, c, &touched);
  if (!st.ok()) return st;
  st = registrar->device_address(reinterpret_cast<void*>(out->base), &first);
  if (st.ok() && touched > 0)
    st = registrar->device_address(reinterpret_cast<void*>(out->base + static_cast<uintptr_t>(touched - 1)), &last);
  if (!st.ok())
    return Status::Error(st.code, which + " (host address " + hex_address(out->base) +
                                      ") is not registered with the NPU (" + st.message +
                                      "): allocate it with lmcache_ascend's pinned allocator, or pass fused=True");
  if (touched > 0 && last != first + static_cast<uintptr_t>(touched - 1))
    return Status::Error(StatusCode::kInvalidArgument,
                         which + " spans host memory that is not one registered range: allocate each memory "
                                 "object inside one pinned pool, or pass fused=True");
  out->base = first;
  return Status::Ok();
}

}  // namespace

const char* npu_library_path() { return npu_library().path.c_str(); }

Status npu_synchronize_stream(void* stream) {
  const NpuLibrary& lib = npu_library();
  if (!lib.status.ok()) return lib.status;
  char err[2048] = {0};
  return from_abi(lib.synchronize(stream, err, sizeof(err)), err);
}

Status prepare_npu_transfer(const TransferRequest* groups, int32_t num_groups, const void* host_slots,
                            const NpuTransferOptions& options, PreparedNpuTransfer* out) {
  Status st = npu::check_plane_groups(groups, num_groups);
  if (!st.ok()) return st;
  out->groups.assign(groups, groups + num_groups);
  out->chunks.assign(static_cast<size_t>(num_groups), {});
  out->fused = options.chunks_on_host && options.fused;
  for (int32_t g = 0; g < num_groups; ++g) {
    TransferRequest& r = out->groups[static_cast<size_t>(g)];
    if (host_slots != nullptr) r.slots.data = host_slots;
    st = validate_transfer_request(r);
    if (!st.ok()) return num_groups > 1 ? Status::Error(st.code, "plane group " + std::to_string(g) + ": " + st.message) : st;
  }
  if (!options.chunks_on_host || out->fused) return Status::Ok();
  // Registered host chunks are addressed by the kernel directly; otherwise the call stages them
  // (when allowed) or fails before anything moves.
  for (int32_t g = 0; g < num_groups; ++g) {
    const TransferRequest& r = out->groups[static_cast<size_t>(g)];
    std::vector<ChunkRef>& mapped = out->chunks[static_cast<size_t>(g)];
    mapped.assign(r.chunks, r.chunks + r.num_chunks);
    for (int64_t c = 0; c < r.num_chunks; ++c) {
      if (r.chunks[c].token_end == r.chunks[c].token_begin) continue;
      Status st = map_host_chunk(r, c, g, &mapped[static_cast<size_t>(c)]);
      if (st.ok()) continue;
      if (!options.stage_unregistered) return st;
      out->fused = true;
      return Status::Ok();
    }
  }
  for (int32_t g = 0; g < num_groups; ++g)
    out->groups[static_cast<size_t>(g)].chunks = out->chunks[static_cast<size_t>(g)].data();
  return Status::Ok();
}

Status npu_transfer_kv(const TransferRequest* groups, int32_t num_groups, const NpuTransferOptions& options) {
  if (groups == nullptr || num_groups < 1)
    return Status::Error(StatusCode::kInvalidArgument, "no transfer given: pass at least one TransferRequest");
  const NpuLibrary& lib = npu_library();
  if (!lib.status.ok()) return lib.status;
  if (options.stream == nullptr)
    return Status::Error(StatusCode::kInvalidArgument,
                         "stream is null: pass the current NPU stream (torch.npu.current_stream().npu_stream)");
  const SlotMapping& slots = groups[0].slots;
  if ((slots.index_bytes != 4 && slots.index_bytes != 8) || slots.length < 0 || (slots.length > 0 && !slots.data))
    return Status::Error(StatusCode::kInvalidArgument,
                         "slot_mapping must be a non-null int32 or int64 array, got " +
                             std::to_string(slots.index_bytes) + "-byte integers x " + std::to_string(slots.length));

  // The checks need the slots on the host: copy a device slot mapping back (this waits for the
  // stream, so the slots the engine just wrote are the ones checked). The kernel reads this
  // validated copy (the launcher uploads it), never the device tensor, which may change later.
  std::vector<unsigned char> host_slots;
  if (options.slots_on_device && slots.length > 0) {
    host_slots.resize(static_cast<size_t>(slots.length * slots.index_bytes));
    char err[2048] = {0};
    int32_t code = lib.copy_to_host(host_slots.data(), slots.data, host_slots.size(), options.stream, err, sizeof(err));
    if (code != 0) return from_abi(code, err);
  }

  PreparedNpuTransfer prepared;
  Status st = prepare_npu_transfer(groups, num_groups, host_slots.empty() ? nullptr : host_slots.data(), options,
                                   &prepared);
  if (!st.ok()) return st;

  NpuLaunchArgs args{options.stream, prepared.fused ? 1 : 0};
  char err[2048] = {0};
  int32_t code = lib.transfer_kv(prepared.groups.data(), num_groups, &args, err, sizeof(err));
  if (code != 0) return from_abi(code, err);
  // Host chunks: the caller reads them right after a gather and may free them right after a
  // scatter (LMCache releases memory objects once a retrieve returns), so the device must be done
  // with them before this returns.
  if (options.chunks_on_host) return from_abi(lib.synchronize(options.stream, err, sizeof(err)), err);
  return Status::Ok();
}

}  // namespace lmcache_ascend
