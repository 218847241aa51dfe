#include "lmcache_ascend/device_registration.hpp"

#include <atomic>

namespace lmcache_ascend {
namespace {
std::atomic<DeviceRegistrar*> g_registrar{nullptr};
}  // namespace

DeviceRegistrar* device_registrar() { return g_registrar.load(); }
void install_device_registrar(DeviceRegistrar* registrar) { g_registrar.store(registrar); }

}  // namespace lmcache_ascend
