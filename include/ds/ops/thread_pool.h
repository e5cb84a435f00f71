// A small fixed-size thread pool for the CPU optimizer kernels (no LibTorch, no OpenMP).
//
// The calling thread always takes part, so a pool of `threads` runs work on exactly that many
// threads: ThreadPool(1) starts no thread at all and runs everything on the caller. Tasks are
// handed out one at a time from a shared counter (dynamic scheduling), which keeps both cores
// busy even when one of them is briefly taken by another process.
//
//   ds::ops::ThreadPool pool(2);
//   pool.run(num_tiles, [&](int64_t tile, int thread) { update_tile(tile); });
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ds::ops {

class ThreadPool {
 public:
  // threads >= 1: the caller plus threads-1 workers, started here and kept until destruction.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(task, thread) for every task in [0, tasks) and returns when all are done.
  // `thread` is in [0, threads()): 0 is the caller. The first exception thrown by fn is
  // rethrown here (the remaining tasks are skipped). Not reentrant: one run() at a time
  // (concurrent callers are serialized).
  void run(int64_t tasks, const std::function<void(int64_t task, int thread)>& fn);

 private:
  void worker_main(int thread);
  void work_on_current_job(int thread);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // serializes run()
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  // The current job: set under mutex_ before the generation is bumped; tasks are taken with
  // one atomic increment each.
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  int busy_workers_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace ds::ops
