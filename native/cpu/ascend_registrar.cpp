// DeviceRegistrar for Ascend NPUs over the CANN runtime, loaded with dlopen (see ascend_registrar.hpp).
#include "lmcache_ascend/ascend_registrar.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "lmcache_ascend/device_registration.hpp"
#include "lmcache_ascend/dynamic_library.hpp"
#include "lmcache_ascend/host_memory.hpp"

namespace lmcache_ascend {
namespace {

// Values from CANN's public headers (acl_rt.h, rt_error_codes.h, ascend_hal_define.h).
constexpr int kAclHostRegisterMapped = 0;          // ACL_HOST_REGISTER_MAPPED
constexpr uint32_t kHostMemMapDevPcieTh = 3;       // HOST_MEM_MAP_DEV_PCIE_TH
constexpr int kAclErrorInvalidDeviceId = 107001;   // ACL_ERROR_RT_INVALID_DEVICEID
constexpr int kAclErrorContextNull = 107002;       // ACL_ERROR_RT_CONTEXT_NULL
constexpr int kAclErrorMemoryAllocation = 207001;  // ACL_ERROR_RT_MEMORY_ALLOCATION
constexpr int kDrvErrorNotSupport = 0xfffe;        // DRV_ERROR_NOT_SUPPORT (65534)
// Single registrations above about this size (the "~200 GB" of the messages) are reported to fail
// (LMCache-Ascend issue 242).
constexpr size_t kLargeRegistration = size_t{200} * 1000 * 1000 * 1000;

using AclGetDevice = int (*)(int32_t*);
using AclSetDevice = int (*)(int32_t);
using AclResetDevice = int (*)(int32_t);
using AclGetSocName = const char* (*)();
using AclHostRegister = int (*)(void*, uint64_t, int, void**);
using AclHostUnregister = int (*)(void*);
using HalHostRegister = int (*)(void*, uint64_t, uint32_t, uint32_t, void**);
using HalHostUnregister = int (*)(void*, uint32_t);
using DsmiGetVersion = int (*)(int, char*, unsigned int, unsigned int*);

Status runtime_error(const std::string& msg) { return Status::Error(StatusCode::kRuntimeError, msg); }
Status invalid(const std::string& msg) { return Status::Error(StatusCode::kInvalidArgument, msg); }

// First candidate already in the process (e.g. loaded by torch_npu: sharing its runtime state
// matters, a second copy would not know the current device), else the first that loads.
// `tried` collects one "path: why not" per failed attempt.
DynamicLibrary load_first(const std::vector<std::string>& candidates, bool reject_devlib, std::string* tried) {
  for (int pass = 0; pass < 2; ++pass) {
    for (const std::string& candidate : candidates) {
      std::string error;
      DynamicLibrary lib = DynamicLibrary::open(candidate, pass == 0 ? RTLD_NOLOAD : 0, &error);
      if (!lib) {
        if (pass == 1) *tried += "\n  " + error;  // dlerror names the path
        continue;
      }
      if (reject_devlib && lib.path().find("/devlib/") != std::string::npos) {
        if (pass == 1)  // listed once, not again for the already-loaded pass
          *tried += "\n  " + candidate + ": resolved to " + lib.path() +
                    ", the toolkit's link-time stub, not the driver's library (take the toolkit's devlib/ "
                    "out of LD_LIBRARY_PATH)";
        continue;  // closed as `lib` goes
      }
      return lib;
    }
  }
  return {};
}

std::string registration_advice(size_t size) {
  std::string advice =
      "Check that the container has CAP_IPC_LOCK (`--cap-add IPC_LOCK`) or runs `--privileged`, that "
      "RLIMIT_MEMLOCK is unlimited (`ulimit -l unlimited`; docker `--ulimit memlock=-1`), and that one "
      "registration stays below ~200 GB (split a larger pool: several smaller pools, or a lower LMCache "
      "max_local_cpu_size per process)";
  if (size >= kLargeRegistration)
    advice = "This range is " + human_bytes(size) +
             ": single registrations above ~200 GB are known to fail (207001); split the pool. " + advice;
  return advice;
}

std::string explain(const char* call, int rc, size_t size, const std::string& driver_version) {
  std::string what = std::string(call) + " returned " + std::to_string(rc);
  if (rc == kAclErrorContextNull)
    return what + " (ACL_ERROR_RT_CONTEXT_NULL): no NPU is current in this thread; call "
                  "torch.npu.set_device(<n>) (or aclrtSetDevice) in this thread before allocating host memory";
  if (rc == kAclErrorInvalidDeviceId)
    return what + " (ACL_ERROR_RT_INVALID_DEVICEID): the current device id is not valid here; check "
                  "ASCEND_RT_VISIBLE_DEVICES and torch.npu.set_device";
  if (rc == kAclErrorMemoryAllocation)
    return what + " (ACL_ERROR_RT_MEMORY_ALLOCATION): the NPU could not map the range. " + registration_advice(size);
  if (rc == kDrvErrorNotSupport)
    return what + " (DRV_ERROR_NOT_SUPPORT): this driver (" + driver_version +
           ") cannot register host memory; it needs Ascend driver >= 24.1.0 (containers on driver 23.x report "
           "exactly this): upgrade the driver. " + registration_advice(size);
  return what + ". " + registration_advice(size);
}

class AscendRegistrar final : public DeviceRegistrar {
 public:
  AscendRegistrar(DynamicLibrary acl, DynamicLibrary hal, bool use_acl, std::string driver_version,
                  std::vector<int> visible)
      : acl_(std::move(acl)), hal_(std::move(hal)), use_acl_(use_acl),
        driver_version_(std::move(driver_version)), visible_(std::move(visible)) {
    get_device_ = acl_.symbol<AclGetDevice>("aclrtGetDevice");
    set_device_ = acl_.symbol<AclSetDevice>("aclrtSetDevice");
    reset_device_ = acl_.symbol<AclResetDevice>("aclrtResetDevice");
    acl_register_ = acl_.symbol<AclHostRegister>("aclrtHostRegister");
    acl_unregister_ = acl_.symbol<AclHostUnregister>("aclrtHostUnregister");
    hal_register_ = hal_.symbol<HalHostRegister>("halHostRegister");
    hal_unregister_ = hal_.symbol<HalHostUnregister>("halHostUnregister");
  }

  std::string name() const override { return use_acl_ ? "ascend-acl" : "ascend-hal"; }

  std::string description() const {
    if (use_acl_)
      return name() + ": aclrtHostRegister (driver " + driver_version_ + "; " + acl_.path() + ")";
    return name() + ": halHostRegister (driver " + driver_version_ + "; " + hal_.path() + ")";
  }

  // Stops this registrar for good when nothing is registered through it; else returns how many
  // ranges still are (and stays in service). Checked under the lock register_host reserves under,
  // so no registration can slip in after the check.
  size_t retire() {
    std::unique_lock<std::shared_mutex> guard(mutex_);
    if (ranges_.empty()) retired_ = true;
    return ranges_.size();
  }

  Status register_host(void* ptr, size_t size) override {
    const auto base = reinterpret_cast<uintptr_t>(ptr);
    const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    if (!ptr || size == 0) return invalid("registering host memory needs a non-null pointer and size > 0");
    if (base % page)
      return invalid("host pointer " + hex_address(base) + " is not page-aligned (" + std::to_string(page) +
                     " B): the NPU maps whole pages; allocate it with HostPool / alloc_pinned_ptr");
    int user_device = -1;
    if (Status st = current_device(&user_device); !st.ok()) return st;
    int hal_device = user_device;
    if (!use_acl_) {
      if (Status st = to_hal_device(user_device, &hal_device); !st.ok()) return st;
    }
    // Reserve the range first (pending), so the slow driver call runs without holding the lock
    // that device_address() readers need, and an overlapping registration cannot race it.
    {
      std::unique_lock<std::shared_mutex> guard(mutex_);
      if (retired_)
        return invalid("device registration was disabled (disable_device_registration) while this pool was being "
                       "created: call enable_device_registration() again, then create the pool");
      if (const Range* hit = overlapping(base, size))
        return invalid("host range " + hex_address(base) + "+" + human_bytes(size) + " overlaps one already registered (" +
                       hex_address(hit->base) + "+" + human_bytes(hit->size) + "); unregister it first");
      ranges_[base] = Range{base, size, 0, user_device, hal_device, true};
    }
    uintptr_t device = 0;
    Status st = use_acl_ ? acl_register(ptr, size, &device) : hal_register(ptr, size, hal_device, &device);
    std::unique_lock<std::shared_mutex> guard(mutex_);
    if (!st.ok()) {
      ranges_.erase(base);  // nothing half-registered stays behind
      return st;
    }
    Range& r = ranges_[base];
    r.device = device;
    r.pending = false;
    return Status::Ok();
  }

  Status unregister_host(void* ptr) override {
    const auto base = reinterpret_cast<uintptr_t>(ptr);
    Range range;
    {
      std::unique_lock<std::shared_mutex> guard(mutex_);
      auto it = ranges_.find(base);
      if (it == ranges_.end() || it->second.pending)
        return invalid("host pointer " + hex_address(base) + " is not the start of a range registered with the NPU");
      range = it->second;
      ranges_.erase(it);  // the caller is releasing the memory: forget it whatever the driver says
    }
    if (use_acl_) {
      DeviceScope scope(this, range.user_device);
      int rc = acl_unregister_(ptr);
      if (rc != 0)
        return runtime_error("aclrtHostUnregister(" + hex_address(base) + ") returned " + std::to_string(rc) + ": " +
                             kStillRegistered);
      return Status::Ok();
    }
    int rc = hal_unregister_(ptr, static_cast<uint32_t>(range.hal_device));
    munlock(ptr, range.size);
    if (rc != 0)
      return runtime_error("halHostUnregister(" + hex_address(base) + ", device " + std::to_string(range.hal_device) +
                           ") returned " + std::to_string(rc) + ": " + kStillRegistered);
    return Status::Ok();
  }

  Status device_address(void* host_ptr, uintptr_t* out) const override {
    const auto addr = reinterpret_cast<uintptr_t>(host_ptr);
    std::shared_lock<std::shared_mutex> guard(mutex_);
    auto it = ranges_.upper_bound(addr);
    if (it != ranges_.begin()) {
      const Range& r = std::prev(it)->second;
      if (!r.pending && addr - r.base < r.size) {
        *out = r.device + (addr - r.base);
        return Status::Ok();
      }
    }
    return invalid("host address " + hex_address(addr) + " is not inside host memory registered with the NPU (" +
                   std::to_string(ranges_.size()) + " range(s) registered); allocate it from a HostPool created "
                   "after enable_device_registration()");
  }

 private:
  static constexpr const char* kStillRegistered =
      "the pages may stay registered with the NPU (mapped and pinned) until the process exits; lmcache-ascend "
      "no longer tracks the range, so its memory is released, but that device mapping leaks";

  struct Range {
    uintptr_t base = 0;
    size_t size = 0;
    uintptr_t device = 0;
    int user_device = -1;
    int hal_device = -1;
    bool pending = false;
  };

  // Makes `device` current for one call on a thread where another (or none) is, then restores it:
  // the previous device, or (none was current) releases the reference aclrtSetDevice took.
  class DeviceScope {
   public:
    DeviceScope(const AscendRegistrar* reg, int device) : reg_(reg), device_(device) {
      if (!reg_->set_device_ || device < 0) return;
      int32_t current = -1;
      const bool has_current = reg_->get_device_(&current) == 0;
      if (has_current && current == device) return;
      previous_ = has_current ? current : -1;
      switched_ = reg_->set_device_(device) == 0;
    }
    ~DeviceScope() {
      if (!switched_) return;
      if (previous_ >= 0)
        reg_->set_device_(previous_);
      else if (reg_->reset_device_)
        reg_->reset_device_(device_);
    }

   private:
    const AscendRegistrar* reg_;
    int device_;
    int previous_ = -1;
    bool switched_ = false;
  };

  const Range* overlapping(uintptr_t base, size_t size) const {
    auto it = ranges_.lower_bound(base);
    if (it != ranges_.end() && it->first < base + size) return &it->second;
    if (it != ranges_.begin()) {
      const Range& prev = std::prev(it)->second;
      if (prev.base + prev.size > base) return &prev;
    }
    return nullptr;
  }

  Status current_device(int* out) const {
    int32_t device = -1;
    int rc = get_device_(&device);
    if (rc != 0) return runtime_error(explain("aclrtGetDevice", rc, 0, driver_version_));
    *out = device;
    return Status::Ok();
  }

  Status to_hal_device(int user_device, int* out) const {
    if (visible_.empty()) {
      *out = user_device;
      return Status::Ok();
    }
    if (user_device < 0 || static_cast<size_t>(user_device) >= visible_.size())
      return invalid("the current NPU is device " + std::to_string(user_device) + " but ASCEND_RT_VISIBLE_DEVICES "
                     "lists " + std::to_string(visible_.size()) + " device(s); fix ASCEND_RT_VISIBLE_DEVICES or "
                     "torch.npu.set_device");
    *out = visible_[user_device];
    return Status::Ok();
  }

  Status acl_register(void* ptr, size_t size, uintptr_t* device) const {
    void* dev = nullptr;
    int rc = acl_register_(ptr, size, kAclHostRegisterMapped, &dev);
    if (rc != 0)
      return runtime_error(explain(("aclrtHostRegister(" + hex_address(reinterpret_cast<uintptr_t>(ptr)) + ", " +
                                    human_bytes(size) + ", ACL_HOST_REGISTER_MAPPED)").c_str(),
                                   rc, size, driver_version_));
    *device = reinterpret_cast<uintptr_t>(dev);
    return Status::Ok();
  }

  Status hal_register(void* ptr, size_t size, int hal_device, uintptr_t* device) const {
    // The driver maps the pages as they are now: they must stay resident (and in place).
    if (mlock(ptr, size) != 0) {
      int err = errno;
      return Status::Error(StatusCode::kOutOfMemory,
                           "mlock of " + human_bytes(size) + " before halHostRegister failed: " + std::strerror(err) +
                               " (errno " + std::to_string(err) + "). " + registration_advice(size));
    }
    void* dev = nullptr;
    int rc = hal_register_(ptr, size, kHostMemMapDevPcieTh, static_cast<uint32_t>(hal_device), &dev);
    if (rc != 0) {
      munlock(ptr, size);
      return runtime_error(explain(("halHostRegister(" + hex_address(reinterpret_cast<uintptr_t>(ptr)) + ", " +
                                    human_bytes(size) + ", HOST_MEM_MAP_DEV_PCIE_TH, device " +
                                    std::to_string(hal_device) + ")").c_str(),
                                   rc, size, driver_version_));
    }
    *device = reinterpret_cast<uintptr_t>(dev);
    return Status::Ok();
  }

  DynamicLibrary acl_, hal_;
  bool use_acl_;
  std::string driver_version_;
  std::vector<int> visible_;
  AclGetDevice get_device_ = nullptr;
  AclSetDevice set_device_ = nullptr;
  AclResetDevice reset_device_ = nullptr;
  AclHostRegister acl_register_ = nullptr;
  AclHostUnregister acl_unregister_ = nullptr;
  HalHostRegister hal_register_ = nullptr;
  HalHostUnregister hal_unregister_ = nullptr;
  mutable std::shared_mutex mutex_;
  std::map<uintptr_t, Range> ranges_;  // by host base address
  bool retired_ = false;               // disabled: registers nothing more
};

std::mutex g_enable_mutex;
// The registrar in service, if any. Registrars are never deleted: device_registrar() hands out raw
// pointers that other threads may still hold after a disable, so a retired one stays (empty and
// refusing new ranges, its libraries loaded) until the process exits.
AscendRegistrar* g_ascend = nullptr;

// The driver's version string from dsmi (device `device`), or "" with the reason in `why`.
std::string dsmi_driver_version(const std::vector<std::string>& candidates, int device, std::string* why) {
  std::string tried;
  DynamicLibrary dsmi = load_first(candidates, false, &tried);
  if (!dsmi) {
    *why = "libdrvdsmi_host.so could not be loaded:" + tried;
    return "";
  }
  auto get_version = dsmi.symbol<DsmiGetVersion>("dsmi_get_version");
  if (!get_version) {
    *why = dsmi.path() + " has no dsmi_get_version";
    return "";
  }
  char buf[256] = {};
  unsigned int len = 0;
  int rc = get_version(device, buf, sizeof(buf) - 1, &len);
  if (rc != 0) {
    *why = "dsmi_get_version(device " + std::to_string(device) + ") returned " + std::to_string(rc);
    return "";
  }
  buf[len < sizeof(buf) ? len : sizeof(buf) - 1] = '\0';
  return buf;
}

}  // namespace

std::pair<int, int> parse_driver_version(const std::string& version) {
  int major = -1, minor = -1;
  if (std::sscanf(version.c_str(), " %d.%d", &major, &minor) != 2 || major < 0 || minor < 0)
    return {-1, -1};
  return {major, minor};
}

std::vector<int> parse_visible_devices(const std::string& value) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < value.size()) {
    size_t end = value.find(',', pos);
    if (end == std::string::npos) end = value.size();
    std::string item = value.substr(pos, end - pos);
    if (item.empty() || item.size() > 6 || item.find_first_not_of("0123456789") != std::string::npos) break;
    out.push_back(std::stoi(item));
    pos = end + 1;
  }
  return out;
}

Status enable_ascend_registration(const AscendRuntimePaths& paths) {
  std::lock_guard<std::mutex> guard(g_enable_mutex);
  if (g_ascend) return Status::Ok();
  if (DeviceRegistrar* other = device_registrar())
    return invalid("another device registrar (" + other->name() + ") is installed; uninstall it first");

  std::string tried;
  DynamicLibrary acl = load_first(paths.acl, false, &tried);
  if (!acl)
    return runtime_error("the Ascend runtime libascendcl.so could not be loaded:" + tried +
                         "\nInstall the CANN toolkit and `source <toolkit>/set_env.sh`, or point "
                         "LMCACHE_ASCEND_ACL_LIB at libascendcl.so");
  if (!acl.symbol<AclGetDevice>("aclrtGetDevice"))
    return runtime_error(acl.path() + " has no aclrtGetDevice: it is not a CANN runtime library");
  // Host registration exists on Atlas A2/A3 only; a runtime that cannot name its chip is let through.
  if (auto soc_name = acl.symbol<AclGetSocName>("aclrtGetSocName")) {
    const char* soc = soc_name();
    if (soc != nullptr && std::strncmp(soc, "Ascend310P", 10) == 0)
      return runtime_error(std::string("host-memory registration is not available on ") + soc +
                           ": the NPU cannot map host memory there (Atlas A2/A3, Ascend910B/Ascend910_93, only). "
                           "LMCache's pools stay unregistered and NPU transfers stage through device memory; "
                           "nothing to fix, but do not call enable_device_registration() on this chip");
  }

  std::vector<int> visible = parse_visible_devices(paths.visible_devices);
  std::string why;
  std::string version = dsmi_driver_version(paths.dsmi, visible.empty() ? 0 : visible[0], &why);
  if (version.empty()) version = paths.driver_version_fallback;
  auto [major, minor] = parse_driver_version(version);
  if (version.empty())
    return runtime_error("the Ascend driver version is unknown (" + why +
                         "; no driver/version.info either): is the driver installed, and mounted into the "
                         "container (/usr/local/Ascend/driver)? Or point LMCACHE_ASCEND_DSMI_LIB at "
                         "libdrvdsmi_host.so");
  if (major < 0)
    return runtime_error("the Ascend driver reports version '" + version + "', which is not <major>.<minor>...");

  DynamicLibrary hal;
  // Which driver uses which call (25: ACL, 24.1: HAL, older: none) is decided here, the source of truth.
  // The doctor predicts it from DRIVER_REGISTRATION_CALLS in lmcache_ascend/_cann.py; update both
  // together (test_device_registration.py checks they agree).
  const bool use_acl = major >= 25;
  if (use_acl) {
    if (!acl.symbol<AclHostRegister>("aclrtHostRegister") || !acl.symbol<AclHostUnregister>("aclrtHostUnregister"))
      return runtime_error(acl.path() + " has no aclrtHostRegister/aclrtHostUnregister, which driver " + version +
                           " needs for host-memory registration: install a CANN toolkit >= 8.1 matching the driver");
  } else {
    if (major < 24 || (major == 24 && minor < 1))
      return runtime_error("Ascend driver " + version + " is older than 24.1.0, the first that can register "
                           "host memory with the NPU (halHostRegister): upgrade the driver");
    tried.clear();
    hal = load_first(paths.hal, true, &tried);
    if (!hal)
      return runtime_error("the driver library libascend_hal.so could not be loaded:" + tried +
                           "\nIt ships with the Ascend driver in /usr/local/Ascend/driver/lib64/driver/ (mount "
                           "that directory into the container), or point LMCACHE_ASCEND_HAL_LIB at it");
    if (!hal.symbol<HalHostRegister>("halHostRegister") || !hal.symbol<HalHostUnregister>("halHostUnregister"))
      return runtime_error(hal.path() + " has no halHostRegister/halHostUnregister: driver " + version +
                           " is too old for host-memory registration; upgrade to 24.1 or newer");
  }
  g_ascend = new AscendRegistrar(std::move(acl), std::move(hal), use_acl, version, std::move(visible));
  install_device_registrar(g_ascend);
  return Status::Ok();
}

Status disable_ascend_registration() {
  std::lock_guard<std::mutex> guard(g_enable_mutex);
  if (!g_ascend) return Status::Ok();
  // Uninstall first, so no new pool picks this registrar up, then retire it under its own lock.
  const bool installed = device_registrar() == g_ascend;
  if (installed) install_device_registrar(nullptr);
  if (size_t n = g_ascend->retire()) {
    if (installed) install_device_registrar(g_ascend);
    return invalid(std::to_string(n) + " host range(s) are still registered with the NPU; close (and drop) "
                   "the pools using them before disabling device registration");
  }
  static std::vector<AscendRegistrar*>* retired = new std::vector<AscendRegistrar*>;  // kept until exit
  retired->push_back(g_ascend);
  g_ascend = nullptr;
  return Status::Ok();
}

std::string ascend_registration_description() {
  std::lock_guard<std::mutex> guard(g_enable_mutex);
  return g_ascend != nullptr ? g_ascend->description() : "";
}

}  // namespace lmcache_ascend
