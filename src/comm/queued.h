// QueuedCommunicator: the part every backend shares. It validates arguments (one clear
// message per misuse), runs collectives in issue order on one worker thread, times them and
// records them in the comms logger. A backend supplies synchronous implementations.
#pragma once

#include <deque>
#include <functional>
#include <thread>

#include "ds/comm/communicator.h"

namespace ds::comm {

class QueuedCommunicator : public Communicator {
 public:
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Work all_reduce(at::Tensor& buffer, ReduceOp op) override;
  Work reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) override;
  Work all_gather(at::Tensor& output, const at::Tensor& input) override;
  Work broadcast(at::Tensor& buffer, int root) override;
  Work all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& output_splits,
                  const std::vector<int64_t>& input_splits) override;
  Work barrier() override;
  Work send(const at::Tensor& buffer, int dst, int tag) override;
  Work recv(at::Tensor& buffer, int src, int tag) override;

 protected:
  QueuedCommunicator(int rank, int size, CommOptions options, std::shared_ptr<CommsLogger> logger);
  // Derived destructors must call stop_worker() first, while their members are alive.
  ~QueuedCommunicator() override;
  void stop_worker();

  // Synchronous implementations, called on the worker thread with validated arguments.
  // Each returns the bytes this rank sent.
  virtual int64_t run_all_reduce(at::Tensor& buffer, ReduceOp op) = 0;
  virtual int64_t run_reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) = 0;
  virtual int64_t run_all_gather(at::Tensor& output, const at::Tensor& input) = 0;
  virtual int64_t run_broadcast(at::Tensor& buffer, int root) = 0;
  virtual int64_t run_all_to_all(at::Tensor& output, const at::Tensor& input,
                                 const std::vector<int64_t>& output_splits,
                                 const std::vector<int64_t>& input_splits) = 0;
  virtual int64_t run_barrier() = 0;
  // Point-to-point: started at once on the caller's thread; `wait` blocks until done.
  using Waiter = std::function<void(Millis)>;
  virtual Waiter start_send(const at::Tensor& buffer, int dst, int tag) = 0;
  virtual Waiter start_recv(at::Tensor& buffer, int src, int tag) = 0;

  const CommOptions& options() const { return options_; }
  std::string describe(const std::string& op) const;
  // Called on the worker thread when a collective timed out: which ranks did not answer, as a
  // phrase for the error ("" when the backend cannot tell). At most kDiagnosisGrace.
  virtual std::string diagnose_timeout() { return ""; }
  // Called on the worker thread when a collective failed otherwise (e.g. a peer closed its
  // connection): this rank is alive and reached the collective, so that the ranks diagnosing a
  // timeout in it do not count it among those that did not answer. Returns within a second.
  virtual void announce_failure() {}
  static constexpr Millis kDiagnosisGrace{std::chrono::seconds(20)};

 private:
  struct Job {
    std::string op;
    int64_t message_bytes;
    std::function<int64_t()> run;
    std::shared_ptr<Work::State> state;
  };
  Work enqueue(std::string op, int64_t message_bytes, std::function<int64_t()> run);
  // `start` issues the message; its errors, at issue or at the wait, name the operation.
  Work start_p2p(const std::string& op, const at::Tensor& buffer, const std::function<Waiter()>& start);
  void worker_loop();

  int rank_;
  int size_;
  CommOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::string broken_;  // set when an operation failed: later ones fail fast with this reason
  std::thread worker_;
};

// Argument checks shared by the backends.
void check_buffer(const at::Tensor& t, const char* what);
int64_t nbytes(const at::Tensor& t);

}  // namespace ds::comm
