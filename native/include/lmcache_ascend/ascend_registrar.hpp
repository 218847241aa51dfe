// Registration of host memory with an Ascend NPU, so AscendC kernels read and write it directly.
//
// The CANN runtime is loaded with dlopen/dlsym only: this code is part of the CPU library, which
// must load and work on hosts without CANN. enable_ascend_registration() loads the libraries and
// installs the registrar (install_device_registrar); on failure nothing is installed and the
// Status says which library or call failed, the paths tried, and the fix.
//
// Driver major >= 25: aclrtHostRegister(ptr, size, ACL_HOST_REGISTER_MAPPED, &devPtr).
// Older (>= 24.1): halHostRegister(ptr, size, HOST_MEM_MAP_DEV_PCIE_TH, devId, &devPtr) on the
// range mlocked for as long as it stays registered (munlocked again on unregister).
// The device address of any byte inside a registered range is devPtr + offset (kept in our own
// table: older ACL has no aclrtHostGetDevicePointer).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "lmcache_ascend/status.hpp"

namespace lmcache_ascend {

struct AscendRuntimePaths {
  std::vector<std::string> acl;   // libascendcl.so candidates, tried in order
  std::vector<std::string> hal;   // libascend_hal.so candidates (never the toolkit's devlib stub)
  std::vector<std::string> dsmi;  // libdrvdsmi_host.so candidates (driver version)
  std::string visible_devices;    // ASCEND_RT_VISIBLE_DEVICES ("" when unset)
  std::string driver_version_fallback;  // driver/version.info's Version, used when dsmi cannot answer
};

// Idempotent: a second call while enabled returns Ok and keeps the first registrar. Refused (with a
// kRuntimeError that says so) on Ascend310P, where the NPU cannot map host memory.
Status enable_ascend_registration(const AscendRuntimePaths& paths);
// Uninstalls the registrar; kInvalidArgument (and it stays installed) while any range is still
// registered through it. The registrar object and its libraries stay loaded until the process exits,
// because other threads may still hold the pointer device_registrar() returned; it registers nothing
// more. A later enable installs a new one.
Status disable_ascend_registration();
// "ascend-acl: aclrtHostRegister (driver 25.0.rc1; /usr/local/.../libascendcl.so)", "" when not enabled.
std::string ascend_registration_description();

// "24.1.rc2" -> {24, 1}; {-1, -1} when it does not start with two dot-separated numbers.
std::pair<int, int> parse_driver_version(const std::string& version);
// ASCEND_RT_VISIBLE_DEVICES semantics: comma-separated device ids, read up to the first entry that
// is not a non-negative integer ("1,2,-1,3" -> {1, 2}); user device i is the i-th entry.
std::vector<int> parse_visible_devices(const std::string& value);

}  // namespace lmcache_ascend
