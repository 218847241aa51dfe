// A persistent pool of worker threads shared by every CPU kernel. Threads are created once and
// parked between calls, so a transfer pays a wake-up, not a thread start.
#pragma once

#include <cstdint>
#include <functional>

namespace lmcache_ascend {

// Number of CPUs this process may run on (sched_getaffinity), at least 1.
int usable_cpu_count();

// Total threads taking part in parallel_for, the calling thread included. Default: usable cores.
int get_num_threads();
// n < 1 restores the default. Safe to call at any time; takes effect for the next call.
void set_num_threads(int n);

// Runs body(begin, end) over contiguous ranges covering [0, total). Ranges are at least `grain`
// long (except the last). The calling thread takes part; returns when every range is done.
// Concurrent callers are serialised.
void parallel_for(int64_t total, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

}  // namespace lmcache_ascend
