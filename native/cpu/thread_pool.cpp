#include "lmcache_ascend/thread_pool.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace lmcache_ascend {

int usable_cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

namespace {

constexpr int kSpinMicros = 200;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class ThreadPool {
 public:
  ThreadPool() : wanted_(usable_cpu_count()) {}

  ~ThreadPool() {
    // Worker threads are detached on purpose: joining them from a static destructor during
    // interpreter shutdown can deadlock. They only ever touch this object, which is leaked.
  }

  int num_threads() const { return wanted_.load(); }
  void set_num_threads(int n) { wanted_.store(n < 1 ? usable_cpu_count() : n); }

  void run(int64_t total, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    if (total <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    int participants = static_cast<int>(std::min<int64_t>(num_threads(), (total + grain - 1) / grain));
    if (participants <= 1) {
      body(0, total);
      return;
    }
    std::lock_guard<std::mutex> serial(submit_mutex_);
    ensure_workers(participants - 1);
    // Split in ~4 pieces per participant so a slow thread does not hold the others up.
    int64_t piece = std::max<int64_t>(grain, total / (static_cast<int64_t>(participants) * 4));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &body;
      job_total_ = total;
      job_piece_ = piece;
      next_.store(0);
      active_workers_ = participants - 1;
      pending_ = participants - 1;
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    wake_.notify_all();
    work_on_job(body, total, piece);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void ensure_workers(int n) {
    while (static_cast<int>(workers_) < n) {
      int index = static_cast<int>(workers_++);
      std::thread([this, index] { worker_loop(index); }).detach();
    }
  }

  void work_on_job(const std::function<void(int64_t, int64_t)>& body, int64_t total, int64_t piece) {
    for (;;) {
      int64_t begin = next_.fetch_add(piece);
      if (begin >= total) return;
      body(begin, std::min(total, begin + piece));
    }
  }

  void worker_loop(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      // Spin briefly before sleeping: back-to-back transfers (one per layer or chunk) then start
      // on every thread at once instead of paying a futex wake-up each.
      lock.unlock();
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      while (published_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
        cpu_relax();
      lock.lock();
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_workers_) continue;  // not needed for this job
      const auto* body = job_;
      int64_t total = job_total_, piece = job_piece_;
      lock.unlock();
      work_on_job(*body, total, piece);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::atomic<int> wanted_;
  std::mutex submit_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  size_t workers_ = 0;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> published_{0};  // generation_, readable without the mutex (spinning)
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_total_ = 0, job_piece_ = 1;
  int active_workers_ = 0, pending_ = 0;
  std::atomic<int64_t> next_{0};
};

// Leaked on purpose (see ~ThreadPool). A forked child has none of the parent's worker threads, so
// it gets a fresh pool; otherwise its first parallel call would wait forever (vLLM forks workers).
std::atomic<ThreadPool*> g_pool{nullptr};
std::once_flag g_pool_once;

void reset_pool_in_child() {
  ThreadPool* fresh = new ThreadPool();
  if (ThreadPool* old = g_pool.load()) fresh->set_num_threads(old->num_threads());
  g_pool.store(fresh);
}

ThreadPool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool.store(new ThreadPool());
    pthread_atfork(nullptr, nullptr, reset_pool_in_child);
  });
  return *g_pool.load();
}

}  // namespace

int get_num_threads() { return pool().num_threads(); }
void set_num_threads(int n) { pool().set_num_threads(n); }
void parallel_for(int64_t total, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  pool().run(total, grain, body);
}

}  // namespace lmcache_ascend
