// Native allocate+free cost of the host arena, without Python: the floor under every binding.
// Built and run by benchmarks/bench_allocator.py; prints one JSON object.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "lmcache_ascend/host_arena.hpp"

using namespace lmcache_ascend;

int main(int argc, char** argv) {
  const size_t object = size_t{32} << 20;  // [2, 32, 256, 1024] fp16
  const size_t live_max = 200;
  const long ops = argc > 1 ? std::atol(argv[1]) : 2000000;
  HostArena* arena = nullptr;
  Status st = HostArena::create(object * live_max, 4096, HostMemoryOptions{}, &arena);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.message.c_str());
    return 1;
  }
  // Pair cost: allocate then free immediately, with 100 other objects live around it.
  std::vector<uintptr_t> live(100);
  for (auto& a : live) arena->allocate(object, &a);
  auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < ops; ++i) {
    uintptr_t a;
    arena->allocate(object, &a);
    arena->free(a);
  }
  auto t1 = std::chrono::steady_clock::now();
  // Random trace: up to 200 live objects, allocate or free with equal odds.
  for (auto a : live) arena->free(a);
  live.clear();
  std::mt19937 rng(0);
  long trace_ops = 0;
  auto t2 = std::chrono::steady_clock::now();
  for (long i = 0; i < ops; ++i, ++trace_ops) {
    if (!live.empty() && (live.size() == live_max || rng() % 2)) {
      size_t k = rng() % live.size();
      arena->free(live[k]);
      live[k] = live.back();
      live.pop_back();
    } else {
      uintptr_t a;
      arena->allocate(object, &a);
      live.push_back(a);
    }
  }
  auto t3 = std::chrono::steady_clock::now();
  auto ns = [](auto a, auto b) { return std::chrono::duration<double, std::nano>(b - a).count(); };
  std::printf("{\"pair_ns\": %.1f, \"trace_op_ns\": %.1f, \"ops\": %ld}\n", ns(t0, t1) / ops, ns(t2, t3) / trace_ops,
              ops);
  delete arena;
  return 0;
}
