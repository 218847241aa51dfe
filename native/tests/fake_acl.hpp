// A host-memory stand-in for the part of the ACL runtime (and of CANN's platform library) the NPU
// launcher calls, so test_npu_launcher.cpp can run native/ascend/launch/npu_launcher.cpp without an
// NPU. Device memory is host memory; a stream is a queue of deferred work (kernel launches) that
// runs only when the host waits on the stream or on an event recorded on it, so work the launcher
// forgets to order shows up as wrong data. Freed device memory is poisoned and never reused, so a
// kernel still reading it sees garbage and the emulator reports the access. Only for tests:
// nothing here describes a real device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

typedef int aclError;
typedef void* aclrtStream;
typedef void* aclrtEvent;
#define ACL_SUCCESS 0
typedef enum { ACL_MEM_MALLOC_HUGE_FIRST = 0 } aclrtMemMallocPolicy;
typedef enum {
  ACL_MEMCPY_HOST_TO_HOST = 0,
  ACL_MEMCPY_HOST_TO_DEVICE = 1,
  ACL_MEMCPY_DEVICE_TO_HOST = 2,
  ACL_MEMCPY_DEVICE_TO_DEVICE = 3
} aclrtMemcpyKind;
typedef enum { ACL_DEVICE_INFO_AI_CORE_NUM = 0, ACL_DEVICE_INFO_VECTOR_CORE_NUM = 1 } aclDeviceInfo;

namespace fake_acl {

constexpr aclError kError = 107000;

struct Stream {
  std::vector<std::function<void()>> work;
  size_t done = 0;  // work[0, done) has run
  void run_until(size_t mark) {
    while (done < mark) work[done++]();
  }
};

struct Event {
  Stream* stream = nullptr;
  size_t mark = 0;
};

struct State {
  std::string soc = "Ascend910B1";
  int64_t cores = 48;
  int32_t device = 0;                    // < 0: no device current on this thread
  std::map<void*, size_t> allocations;   // live device buffers
  std::map<void*, size_t> freed;         // poisoned, kept so their addresses are never handed out again
  std::vector<Event*> events;
  int fail_record_event = 0;             // the next n aclrtRecordEvent calls fail
  int fail_synchronize_stream = 0;       // the next n aclrtSynchronizeStream calls fail (and wait for nothing)
  int64_t platform_ub_bytes = 0;         // UB the platform library reports; 0: it cannot answer
  std::string last_error;
};

// Never destroyed: the launcher keeps device buffers until the process ends, and the leak checker
// must still see them referenced.
inline State& state() {
  static State* s = new State;
  return *s;
}

}  // namespace fake_acl

inline const char* aclGetRecentErrMsg() { return fake_acl::state().last_error.c_str(); }
inline const char* aclrtGetSocName() { return fake_acl::state().soc.c_str(); }

inline aclError aclrtGetDevice(int32_t* device) {
  if (fake_acl::state().device < 0) return fake_acl::kError;
  *device = fake_acl::state().device;
  return ACL_SUCCESS;
}

inline aclError aclGetDeviceCapability(uint32_t, aclDeviceInfo, int64_t* value) {
  *value = fake_acl::state().cores;
  return ACL_SUCCESS;
}

inline aclError aclrtMalloc(void** ptr, size_t size, aclrtMemMallocPolicy) {
  const size_t rounded = (size + 4095) / 4096 * 4096;
  *ptr = std::aligned_alloc(4096, rounded);
  if (*ptr == nullptr) return fake_acl::kError;
  std::memset(*ptr, 0xA5, rounded);  // device memory starts with garbage
  fake_acl::state().allocations[*ptr] = rounded;
  return ACL_SUCCESS;
}

inline aclError aclrtFree(void* ptr) {
  auto& allocations = fake_acl::state().allocations;
  auto found = allocations.find(ptr);
  if (found == allocations.end()) return fake_acl::kError;
  std::memset(ptr, 0xDD, found->second);
  fake_acl::state().freed.insert(*found);
  allocations.erase(found);
  return ACL_SUCCESS;
}

inline aclError aclrtMemcpy(void* dst, size_t dst_max, const void* src, size_t count, aclrtMemcpyKind) {
  if (count > dst_max) return fake_acl::kError;
  std::memcpy(dst, src, count);
  return ACL_SUCCESS;
}

inline aclError aclrtSynchronizeStream(aclrtStream stream) {
  if (fake_acl::state().fail_synchronize_stream > 0) {
    --fake_acl::state().fail_synchronize_stream;
    return fake_acl::kError;
  }
  auto* s = static_cast<fake_acl::Stream*>(stream);
  s->run_until(s->work.size());
  return ACL_SUCCESS;
}

inline aclError aclrtCreateEvent(aclrtEvent* event) {
  fake_acl::state().events.push_back(new fake_acl::Event);
  *event = fake_acl::state().events.back();
  return ACL_SUCCESS;
}

inline aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream) {
  if (fake_acl::state().fail_record_event > 0) {
    --fake_acl::state().fail_record_event;
    return fake_acl::kError;
  }
  auto* e = static_cast<fake_acl::Event*>(event);
  e->stream = static_cast<fake_acl::Stream*>(stream);
  e->mark = e->stream->work.size();
  return ACL_SUCCESS;
}

inline aclError aclrtSynchronizeEvent(aclrtEvent event) {
  auto* e = static_cast<fake_acl::Event*>(event);
  if (e->stream != nullptr) e->stream->run_until(e->mark);
  return ACL_SUCCESS;
}

// CANN's tiling/platform/platform_ascendc.h, as far as the launcher uses it.
namespace platform_ascendc {
enum class CoreMemType { UB = 5 };
class PlatformAscendC {
 public:
  void GetCoreMemSize(const CoreMemType&, uint64_t& size) const {
    size = static_cast<uint64_t>(fake_acl::state().platform_ub_bytes);
  }
};
class PlatformAscendCManager {
 public:
  static PlatformAscendC* GetInstance(const char*) {
    static PlatformAscendC platform;
    return fake_acl::state().platform_ub_bytes > 0 ? &platform : nullptr;
  }
};
}  // namespace platform_ascendc
