// Work: the handle every communicator operation returns.
//
//   ds::comm::Work w = comm.all_reduce(grad);   // queued, returns at once
//   ... compute ...
//   w.wait();                                    // throws ds::CommError / ds::TimeoutError
//
// A Work is shared (copies refer to the same operation). wait() without an argument uses
// the timeout the operation was issued with. After a timeout the operation may still be in
// flight; the communicator that issued it is then unusable (as NCCL's watchdog would abort it).
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace ds::comm {

using Millis = std::chrono::milliseconds;

class Work {
 public:
  // Shared completion state; backends complete it from any thread.
  class State {
   public:
    explicit State(std::string description, Millis timeout);
    // For operations a backend completes only when asked (point-to-point): `waiter` blocks
    // until the operation is done (throws on failure) and runs on the first waiting thread;
    // `poller` says whether it is done without blocking.
    State(std::string description, Millis timeout, std::function<void(Millis)> waiter,
          std::function<bool()> poller);
    void complete(std::exception_ptr error = nullptr);
    // Waits up to `timeout`; returns false on timeout.
    bool wait_for(Millis timeout);
    bool done() const;
    std::exception_ptr error() const;
    const std::string& description() const { return description_; }
    Millis timeout() const { return timeout_; }

   private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool done_ = false;
    std::exception_ptr error_;
    std::mutex waiter_mu_;  // one thread runs the waiter
    std::function<void(Millis)> waiter_;
    std::function<bool()> poller_;
    std::string description_;
    Millis timeout_;
  };

  Work() = default;  // an already completed no-op
  explicit Work(std::shared_ptr<State> state) : state_(std::move(state)) {}

  // Blocks until the operation finished; rethrows its error. Throws ds::TimeoutError
  // naming the operation when it does not finish in time.
  void wait() const;
  void wait(Millis timeout) const;
  bool is_completed() const;
  // The operation's error, or nullptr (also while it is still running).
  std::exception_ptr exception() const;

  static Work completed() { return Work(); }
  static Work failed(std::exception_ptr error, std::string description);

 private:
  std::shared_ptr<State> state_;
};

}  // namespace ds::comm
