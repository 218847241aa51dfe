#include "lmcache_ascend/host_arena.hpp"

#include <algorithm>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>

namespace lmcache_ascend {
namespace {

std::string hex(uintptr_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

}  // namespace

Status HostArena::create(size_t size, size_t alignment, const HostMemoryOptions& options, HostArena** out) {
  if (alignment < 64 || (alignment & (alignment - 1)))
    return Status::Error(StatusCode::kInvalidArgument,
                         "alignment=" + std::to_string(alignment) + " must be a power of two >= 64 (default 4096)");
  if (size == 0 || size > (std::numeric_limits<size_t>::max() >> 1))
    return Status::Error(StatusCode::kInvalidArgument, "pool size " + std::to_string(size) + " bytes must be > 0");
  HostArena* arena = new HostArena();
  arena->alignment_ = alignment;
  arena->capacity_ = arena->round(size);
  Status st = HostMapping::create(arena->capacity_, options, &arena->mapping_);
  if (!st.ok()) {
    delete arena;
    return st;
  }
  arena->free_by_offset_.emplace(0, arena->capacity_);
  arena->free_by_size_.emplace(arena->capacity_, 0);
  *out = arena;
  return Status::Ok();
}

Status HostArena::validate_size(size_t size, size_t count) const {
  if (size == 0 || count == 0)
    return Status::Error(StatusCode::kInvalidArgument,
                         "allocation size " + std::to_string(size) + " bytes x count " + std::to_string(count) +
                             ": size and count must be > 0");
  if (size > capacity_ || count > capacity_ / round(size))
    return Status::Error(StatusCode::kInvalidArgument,
                         "allocation size " + human_bytes(size) + " x " + std::to_string(count) +
                             " can never fit in this pool of " + human_bytes(capacity_) +
                             "; create a larger pool or allocate less");
  return Status::Ok();
}

bool HostArena::take(size_t size, size_t* offset) {
  auto it = free_by_size_.lower_bound({size, 0});  // best fit, lowest address among equals
  if (it == free_by_size_.end()) return false;
  const size_t block = it->first, off = it->second;
  free_by_size_.erase(it);
  free_by_offset_.erase(off);
  if (block > size) {
    free_by_offset_.emplace(off + size, block - size);
    free_by_size_.emplace(block - size, off + size);
  }
  *offset = off;
  return true;
}

void HostArena::give_back(size_t offset, size_t size) {
  auto next = free_by_offset_.lower_bound(offset);
  if (next != free_by_offset_.end() && next->first == offset + size) {  // merge with the block after
    size += next->second;
    free_by_size_.erase({next->second, next->first});
    next = free_by_offset_.erase(next);
  }
  if (next != free_by_offset_.begin()) {  // merge with the block before
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      size += prev->second;
      free_by_size_.erase({prev->second, prev->first});
      free_by_offset_.erase(prev);
    }
  }
  free_by_offset_.emplace(offset, size);
  free_by_size_.emplace(size, offset);
}

Status HostArena::allocate(size_t size, uintptr_t* out) {
  Status st = validate_size(size, 1);
  if (!st.ok()) return st;
  const size_t need = round(size);
  std::lock_guard<std::mutex> lock(mutex_);
  size_t off;
  if (!take(need, &off))
    return Status::Error(StatusCode::kOutOfMemory, "pool exhausted: " + human_bytes(need) + " asked, largest free block " +
                                                       human_bytes(free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first));
  live_.emplace(off, need);
  used_ += need;
  *out = base() + off;
  return Status::Ok();
}

Status HostArena::allocate_batch(size_t size, size_t count, uintptr_t* out) {
  Status st = validate_size(size, count);
  if (!st.ok()) return st;
  const size_t need = round(size);
  std::lock_guard<std::mutex> lock(mutex_);
  size_t off;
  if (take(need * count, &off)) {  // one contiguous run: best locality, one tree update
    for (size_t i = 0; i < count; ++i) {
      live_.emplace(off + i * need, need);
      out[i] = base() + off + i * need;
    }
    used_ += need * count;
    return Status::Ok();
  }
  size_t i = 0;
  for (; i < count && take(need, &off); ++i) out[i] = base() + off;
  if (i < count) {  // all or nothing
    while (i--) give_back(out[i] - base(), need);
    return Status::Error(StatusCode::kOutOfMemory, "pool exhausted: " + std::to_string(count) + " x " +
                                                       human_bytes(need) + " asked, " + human_bytes(capacity_ - used_) +
                                                       " free");
  }
  for (i = 0; i < count; ++i) live_.emplace(out[i] - base(), need);
  used_ += need * count;
  return Status::Ok();
}

Status HostArena::free(uintptr_t address) { return free_batch(&address, 1); }

Status HostArena::free_batch(const uintptr_t* addresses, size_t count) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Check every address first so a bad one leaves the pool unchanged.
  std::vector<uintptr_t> sorted(addresses, addresses + count);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < count; ++i) {
    uintptr_t a = sorted[i];
    bool live = a >= base() && live_.count(a - base()) && (i == 0 || sorted[i - 1] != a);
    if (!live)
      return Status::Error(StatusCode::kInvalidArgument,
                           "address " + hex(a) + " was not allocated by this pool or is already freed (double free); "
                           "the pool is unchanged");
  }
  for (size_t i = 0; i < count; ++i) {
    auto it = live_.find(addresses[i] - base());
    give_back(it->first, it->second);
    used_ -= it->second;
    live_.erase(it);
  }
  return Status::Ok();
}

bool HostArena::owns(uintptr_t address) const { return allocation_size(address) != 0; }

size_t HostArena::allocation_size(uintptr_t address) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (address < base()) return 0;
  auto it = live_.find(address - base());
  return it == live_.end() ? 0 : it->second;
}

Status HostArena::discard_pages() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!live_.empty())
    return Status::Error(StatusCode::kInvalidArgument,
                         std::to_string(live_.size()) + " allocations are still live; free them first");
  mapping_.discard_pages();
  return Status::Ok();
}

std::vector<std::pair<size_t, size_t>> HostArena::free_extents() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {free_by_offset_.begin(), free_by_offset_.end()};
}

ArenaStats HostArena::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  ArenaStats s;
  s.capacity = capacity_;
  s.used = used_;
  s.free = capacity_ - used_;
  s.largest_free = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  s.free_blocks = free_by_offset_.size();
  s.allocations = live_.size();
  s.fragmentation = s.free ? 1.0 - static_cast<double>(s.largest_free) / static_cast<double>(s.free) : 0.0;
  return s;
}

}  // namespace lmcache_ascend
