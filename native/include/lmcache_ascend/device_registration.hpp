// Registration of host memory with an accelerator, so the device can read and write it directly
// (Ascend: aclrtHostRegister on driver >= 25, halHostRegister before). The Ascend backend installs
// its implementation at load time; on hosts without one, registration reports "not registered"
// and host memory still works for every CPU path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "lmcache_ascend/status.hpp"

namespace lmcache_ascend {

class DeviceRegistrar {
 public:
  virtual ~DeviceRegistrar() = default;
  // Short name for messages and stats, e.g. "ascend-acl".
  virtual std::string name() const = 0;
  virtual Status register_host(void* ptr, size_t size) = 0;
  virtual Status unregister_host(void* ptr) = 0;
  // Address the device uses for a registered host pointer.
  virtual Status device_address(void* host_ptr, uintptr_t* out) const = 0;
};

// The registrar in effect: the one installed by a device backend, or nullptr (no device).
DeviceRegistrar* device_registrar();
// Installed by a device backend when it loads; nullptr uninstalls. Not owned.
void install_device_registrar(DeviceRegistrar* registrar);

}  // namespace lmcache_ascend
