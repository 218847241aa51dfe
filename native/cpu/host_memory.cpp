#include "lmcache_ascend/host_memory.hpp"

#include <dirent.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "lmcache_ascend/device_registration.hpp"

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

namespace lmcache_ascend {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr int kMpolBind = 2;          // MPOL_BIND
constexpr unsigned kMpolMfStrict = 1; // MPOL_MF_STRICT
constexpr unsigned kMpolMfMove = 2;   // MPOL_MF_MOVE

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

Status fail(StatusCode code, const std::string& msg) { return Status::Error(code, msg); }

}  // namespace

std::string hex_address(uintptr_t address) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(address));
  return buf;
}

std::string human_bytes(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof(buf), u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::string memlock_limit_description() {
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return "RLIMIT_MEMLOCK unknown";
  auto text = [](rlim_t v) { return v == RLIM_INFINITY ? std::string("unlimited") : human_bytes(v); };
  return "RLIMIT_MEMLOCK = " + text(rl.rlim_cur) + " (soft) / " + text(rl.rlim_max) + " (hard)";
}

bool has_cap_ipc_lock() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      unsigned long long caps = std::stoull(line.substr(7), nullptr, 16);
      return (caps >> 14) & 1;  // CAP_IPC_LOCK = 14
    }
  }
  return false;
}

long huge_pages_free() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long value;
  while (meminfo >> key >> value) {
    if (key == "HugePages_Free:") return value;
    meminfo.ignore(256, '\n');
  }
  return -1;
}

int numa_node_count() {
  DIR* dir = opendir("/sys/devices/system/node");
  if (!dir) return 1;
  int count = 0;
  while (dirent* e = readdir(dir))
    if (std::strncmp(e->d_name, "node", 4) == 0 && e->d_name[4] >= '0' && e->d_name[4] <= '9') ++count;
  closedir(dir);
  return count > 0 ? count : 1;
}

Status HostMapping::create(size_t size, const HostMemoryOptions& opt, HostMapping* out) {
  if (size == 0) return fail(StatusCode::kInvalidArgument, "size must be > 0 bytes");
  const size_t page = opt.huge_pages ? kHugePage : static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (size + page - 1) / page * page;
  const size_t ram = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (mapped > ram)
    return fail(StatusCode::kOutOfMemory, "asked for " + human_bytes(size) + " of host memory but this host has " +
                                              human_bytes(ram) + " of RAM in all; lower the pool size " +
                                              "(e.g. LMCache's max_local_cpu_size)");
  if (opt.numa_node >= 0 && opt.numa_node >= numa_node_count())
    return fail(StatusCode::kInvalidArgument, "numa_node=" + std::to_string(opt.numa_node) + " does not exist: this host has " +
                                                  std::to_string(numa_node_count()) + " NUMA node(s)");

  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
  if (opt.huge_pages) flags |= MAP_HUGETLB | (21 << MAP_HUGE_SHIFT);
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    if (opt.huge_pages)
      return fail(StatusCode::kOutOfMemory,
                  "mmap of " + human_bytes(size) + " in 2 MiB huge pages failed: " + errno_text(err) + "; " +
                      std::to_string(huge_pages_free()) + " huge pages are free and " + std::to_string(mapped / page) +
                      " are needed. Reserve them (sysctl -w vm.nr_hugepages=N) or pass huge_pages=False");
    return fail(StatusCode::kOutOfMemory, "mmap of " + human_bytes(size) + " failed: " + errno_text(err));
  }
  HostMapping m;
  m.data_ = static_cast<char*>(p);
  m.size_ = size;
  m.mapped_ = mapped;

  if (opt.numa_node >= 0) {
    unsigned long mask[16] = {};
    mask[opt.numa_node / 64] = 1UL << (opt.numa_node % 64);
    if (syscall(SYS_mbind, p, mapped, kMpolBind, mask, sizeof(mask) * 8, kMpolMfStrict | kMpolMfMove) != 0) {
      int err = errno;
      return fail(StatusCode::kRuntimeError, "binding " + human_bytes(size) + " to NUMA node " +
                                                 std::to_string(opt.numa_node) + " failed: " + errno_text(err) +
                                                 "; pass numa_node=None to skip binding");
    }
  }
  if (opt.populate)
    for (size_t off = 0; off < mapped; off += page) m.data_[off] = 0;
  if (opt.lock) {
    if (mlock(p, mapped) != 0) {
      int err = errno;
      return fail(StatusCode::kOutOfMemory,
                  "mlock of " + human_bytes(size) + " failed: " + errno_text(err) + ". " + memlock_limit_description() +
                      "; CAP_IPC_LOCK: " + (has_cap_ipc_lock() ? "yes" : "no") +
                      ". Fix: raise the limit (`ulimit -l unlimited`; in a container `--ulimit memlock=-1` and "
                      "`--cap-add IPC_LOCK`), or use a smaller pool");
    }
    m.locked_ = true;
  }
  if (opt.register_with_device) {
    if (DeviceRegistrar* reg = device_registrar()) {
      Status st = reg->register_host(p, mapped);
      if (!st.ok())
        return fail(st.code, "registering " + human_bytes(size) + " of host memory with the device (" + reg->name() +
                                 ") failed: " + st.message + ". " + memlock_limit_description() + "; CAP_IPC_LOCK: " +
                                 (has_cap_ipc_lock() ? "yes" : "no"));
      m.registered_ = true;
    }
  }
  *out = std::move(m);
  return Status::Ok();
}

void HostMapping::discard_pages() {
  if (!data_) return;
  if (registered_)
    if (DeviceRegistrar* reg = device_registrar()) reg->unregister_host(data_);
  if (locked_) munlock(data_, mapped_);
  registered_ = locked_ = false;
  madvise(data_, mapped_, MADV_DONTNEED);
}

void HostMapping::release() {
  if (!data_) return;
  if (registered_)
    if (DeviceRegistrar* reg = device_registrar()) reg->unregister_host(data_);
  if (locked_) munlock(data_, mapped_);
  munmap(data_, mapped_);
  data_ = nullptr;
  size_ = mapped_ = 0;
  locked_ = registered_ = false;
}

}  // namespace lmcache_ascend
