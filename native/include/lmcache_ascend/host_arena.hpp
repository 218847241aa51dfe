// A thread-safe allocator over one HostMapping: best-fit in O(log n) over a size-ordered free
// set, coalescing through an address-ordered free map, O(1) ownership checks on free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "lmcache_ascend/host_memory.hpp"
#include "lmcache_ascend/status.hpp"

namespace lmcache_ascend {

struct ArenaStats {
  size_t capacity = 0;       // bytes managed
  size_t used = 0;           // bytes in live allocations (after alignment rounding)
  size_t free = 0;
  size_t largest_free = 0;   // largest single allocation that can succeed now
  size_t free_blocks = 0;
  size_t allocations = 0;    // live allocations
  double fragmentation = 0;  // 1 - largest_free / free (0 = one free block)
};

class HostArena {
 public:
  // size is rounded up to `alignment` (a power of two, >= 64).
  static Status create(size_t size, size_t alignment, const HostMemoryOptions& options, HostArena** out);
  ~HostArena() = default;

  // kOutOfMemory when no free block fits (the caller decides whether that is an error); the
  // arena is unchanged on any error.
  Status allocate(size_t size, uintptr_t* out);
  // `count` objects of `size` bytes each, all or nothing. Prefers one contiguous run.
  Status allocate_batch(size_t size, size_t count, uintptr_t* out);
  // kInvalidArgument for a pointer this arena did not hand out or already took back.
  Status free(uintptr_t address);
  Status free_batch(const uintptr_t* addresses, size_t count);
  bool owns(uintptr_t address) const;
  size_t allocation_size(uintptr_t address) const;  // 0 if not a live allocation

  ArenaStats stats() const;
  // (offset, size) of every free block in address order (adjacent blocks are always merged).
  std::vector<std::pair<size_t, size_t>> free_extents() const;
  // Returns the pages to the OS; only when no allocation is live (else kInvalidArgument).
  Status discard_pages();
  uintptr_t base() const { return reinterpret_cast<uintptr_t>(mapping_.data()); }
  size_t capacity() const { return capacity_; }
  size_t alignment() const { return alignment_; }
  bool locked() const { return mapping_.locked(); }
  bool registered() const { return mapping_.registered(); }

 private:
  HostArena() = default;
  size_t round(size_t size) const { return (size + alignment_ - 1) & ~(alignment_ - 1); }
  // All below assume mutex_ is held.
  bool take(size_t size, size_t* offset);
  void give_back(size_t offset, size_t size);
  Status validate_size(size_t size, size_t count) const;

  HostMapping mapping_;
  size_t capacity_ = 0;
  size_t alignment_ = 4096;
  size_t used_ = 0;
  mutable std::mutex mutex_;
  std::map<size_t, size_t> free_by_offset_;           // offset -> size
  std::set<std::pair<size_t, size_t>> free_by_size_;  // (size, offset)
  std::unordered_map<size_t, size_t> live_;            // offset -> size
};

}  // namespace lmcache_ascend
