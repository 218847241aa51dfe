// Large host mappings with the options a KV-cache pool needs (huge pages, NUMA binding, mlock,
// device registration), and diagnostics that turn a failure into its likely cause and fix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "lmcache_ascend/status.hpp"

namespace lmcache_ascend {

struct HostMemoryOptions {
  bool huge_pages = false;  // back with 2 MiB huge pages (MAP_HUGETLB)
  int numa_node = -1;       // bind pages to this node (mbind MPOL_BIND); -1 = no binding
  bool lock = false;        // mlock the whole range (required for device registration)
  bool populate = false;    // fault every page in now rather than on first touch
  bool register_with_device = false;  // register with the installed DeviceRegistrar, if any
};

// One mapping. Owns its pages; unmaps (and unregisters) on release().
class HostMapping {
 public:
  HostMapping() = default;
  HostMapping(const HostMapping&) = delete;
  HostMapping& operator=(const HostMapping&) = delete;
  HostMapping(HostMapping&& other) noexcept { *this = std::move(other); }
  HostMapping& operator=(HostMapping&& other) noexcept {
    if (this != &other) {
      release();
      std::swap(data_, other.data_);
      std::swap(size_, other.size_);
      std::swap(mapped_, other.mapped_);
      std::swap(locked_, other.locked_);
      std::swap(registered_, other.registered_);
    }
    return *this;
  }
  ~HostMapping() { release(); }

  static Status create(size_t size, const HostMemoryOptions& options, HostMapping* out);
  void release();
  // Give the pages back to the OS but keep the range mapped (reads see zeros), so a view that
  // outlives its pool can never fault. Also unregisters and unlocks.
  void discard_pages();

  char* data() const { return data_; }
  size_t size() const { return size_; }
  bool locked() const { return locked_; }
  bool registered() const { return registered_; }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;         // bytes asked for
  size_t mapped_ = 0;       // bytes mapped (rounded to the page size)
  bool locked_ = false;
  bool registered_ = false;
};

// Diagnostics used in error messages (and by `lmcache-ascend doctor`).
std::string memlock_limit_description();  // "RLIMIT_MEMLOCK = 64.0 KiB (soft) / 64.0 KiB (hard)"
bool has_cap_ipc_lock();
long huge_pages_free();                     // free 2 MiB huge pages, -1 if unknown
int numa_node_count();                      // nodes under /sys/devices/system/node, >= 1
std::string human_bytes(size_t bytes);
std::string hex_address(uintptr_t address);  // "0x7f12a0000000"

}  // namespace lmcache_ascend
