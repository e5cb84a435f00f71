#include "queued.h"

#include <ATen/ATen.h>

#include <chrono>

#include "ds/common/error.h"

namespace ds::comm {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

Chunk chunk_of(int64_t n, int world, int rank) {
  DS_CHECK(world > 0 && rank >= 0 && rank < world, "rank ", rank, " is not in a world of ", world);
  DS_CHECK(n >= 0, "negative element count ", n);
  int64_t base = n / world, extra = n % world;
  Chunk c;
  c.length = base + (rank < extra ? 1 : 0);
  c.offset = rank * base + std::min<int64_t>(rank, extra);
  return c;
}

int64_t nbytes(const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

void check_buffer(const at::Tensor& t, const char* what) {
  if (!t.defined()) throw CommError(ds::str(what, ": undefined tensor"));
  if (!t.device().is_cpu()) throw CommError(ds::str(what, ": tensor is on ", t.device(), "; this build communicates CPU tensors"));
  if (!t.is_contiguous())
    throw CommError(ds::str(what, ": tensor of shape ", t.sizes(), " is not contiguous; call .contiguous() and copy back"));
  switch (t.scalar_type()) {
    case at::kFloat: case at::kDouble: case at::kBFloat16: case at::kHalf:
    case at::kChar: case at::kByte: case at::kInt: case at::kLong:
      return;
    default:
      throw CommError(ds::str(what, ": unsupported dtype ", t.scalar_type(),
                          " (use float32/64, bfloat16, float16, int8, uint8, int32 or int64)"));
  }
}

namespace {
void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* what) {
  if (a.scalar_type() != b.scalar_type())
    throw CommError(ds::str(what, ": output dtype ", a.scalar_type(), " differs from input dtype ", b.scalar_type()));
}
void check_reduce_op(const at::Tensor& t, ReduceOp op, const char* what) {
  if (op == ReduceOp::Avg && !at::isFloatingType(t.scalar_type()))
    throw CommError(ds::str(what, ": ReduceOp::Avg needs a floating-point buffer, got ", t.scalar_type()));
}
void check_splits(const std::vector<int64_t>& splits, int64_t numel, int world, const char* which) {
  if (splits.empty()) {
    if (numel % world != 0)
      throw CommError(ds::str("all_to_all: ", which, " has ", numel, " elements, not divisible by ", world,
                          " ranks; pass explicit split sizes"));
    return;
  }
  if (static_cast<int>(splits.size()) != world)
    throw CommError(ds::str("all_to_all: ", splits.size(), " ", which, " splits for ", world, " ranks"));
  int64_t sum = 0;
  for (int64_t s : splits) {
    if (s < 0) throw CommError(ds::str("all_to_all: negative ", which, " split ", s));
    sum += s;
  }
  if (sum != numel) throw CommError(ds::str("all_to_all: ", which, " splits sum to ", sum, " but the tensor has ", numel, " elements"));
}
std::vector<int64_t> equal_splits(const std::vector<int64_t>& splits, int64_t numel, int world) {
  return splits.empty() ? std::vector<int64_t>(world, numel / world) : splits;
}
}  // namespace

QueuedCommunicator::QueuedCommunicator(int rank, int size, CommOptions options, std::shared_ptr<CommsLogger> logger)
    : Communicator(std::move(logger)), rank_(rank), size_(size), options_(options) {
  DS_CHECK(size > 0 && rank >= 0 && rank < size, "rank ", rank, " is not in a world of ", size);
  worker_ = std::thread([this] { worker_loop(); });
}

QueuedCommunicator::~QueuedCommunicator() { stop_worker(); }

void QueuedCommunicator::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::string QueuedCommunicator::describe(const std::string& op) const {
  return ds::str(op, " on rank ", rank_, " of ", size_, " (", backend(), ")");
}

Work QueuedCommunicator::enqueue(std::string op, int64_t message_bytes, std::function<int64_t()> run) {
  op = LogLabel::apply(op);
  // The caller's wait outlasts the collective's own timeout by the time the worker takes to
  // find out which ranks did not answer (diagnose_timeout), so that answer reaches the caller.
  auto state = std::make_shared<Work::State>(describe(op), options_.timeout + kDiagnosisGrace);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.empty())
      return Work::failed(std::make_exception_ptr(CommError(ds::str(describe(op), ": communicator unusable after an earlier failure: ", broken_))),
                          describe(op));
    DS_CHECK(!stopping_, "communicator is shutting down");
    queue_.push_back(Job{std::move(op), message_bytes, std::move(run), state});
  }
  cv_.notify_one();
  return Work(state);
}

void QueuedCommunicator::worker_loop() {
  while (true) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything issued has run
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_.empty())
        error = std::make_exception_ptr(CommError(ds::str(job.state->description(), ": communicator unusable after an earlier failure: ", broken_)));
    }
    if (!error) {
      auto start = std::chrono::steady_clock::now();
      try {
        int64_t sent = job.run();
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        logger_->record(job.op, job.message_bytes, sent, secs);
      } catch (const TimeoutError& e) {
        std::string why = e.what();
        const std::string who = diagnose_timeout();
        error = std::make_exception_ptr(TimeoutError(ds::str(job.state->description(), " failed: ",
                                                             why.substr(0, why.find('\n')), who.empty() ? "" : "; ", who)));
        std::lock_guard<std::mutex> lock(mu_);
        broken_ = ds::str(job.op, " timed out");
      } catch (const std::exception& e) {
        std::string why = e.what();
        announce_failure();
        error = std::make_exception_ptr(CommError(ds::str(job.state->description(), " failed: ", why.substr(0, why.find('\n')))));
        std::lock_guard<std::mutex> lock(mu_);
        broken_ = ds::str(job.op, " failed");
      }
    }
    job.state->complete(error);
  }
}

Work QueuedCommunicator::all_reduce(at::Tensor& buffer, ReduceOp op) {
  check_buffer(buffer, "all_reduce");
  check_reduce_op(buffer, op, "all_reduce");
  at::Tensor b = buffer;
  return enqueue("all_reduce", nbytes(b), [this, b, op]() mutable { return run_all_reduce(b, op); });
}

Work QueuedCommunicator::reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  check_buffer(output, "reduce_scatter output");
  check_buffer(input, "reduce_scatter input");
  check_same_dtype(output, input, "reduce_scatter");
  check_reduce_op(input, op, "reduce_scatter");
  Chunk mine = chunk_of(input.numel(), size_, rank_);
  if (output.numel() != mine.length)
    throw CommError(ds::str("reduce_scatter: output has ", output.numel(), " elements but rank ", rank_, "'s chunk of ",
                        input.numel(), " over ", size_, " ranks has ", mine.length, " (see ds::comm::chunk_of)"));
  at::Tensor out = output, in = input;
  return enqueue("reduce_scatter", nbytes(in), [this, out, in, op]() mutable { return run_reduce_scatter(out, in, op); });
}

Work QueuedCommunicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  check_buffer(output, "all_gather output");
  check_buffer(input, "all_gather input");
  check_same_dtype(output, input, "all_gather");
  Chunk mine = chunk_of(output.numel(), size_, rank_);
  if (input.numel() != mine.length)
    throw CommError(ds::str("all_gather: input has ", input.numel(), " elements but rank ", rank_, "'s chunk of ",
                        output.numel(), " over ", size_, " ranks has ", mine.length, " (see ds::comm::chunk_of)"));
  at::Tensor out = output, in = input;
  return enqueue("all_gather", nbytes(out), [this, out, in]() mutable { return run_all_gather(out, in); });
}

Work QueuedCommunicator::broadcast(at::Tensor& buffer, int root) {
  check_buffer(buffer, "broadcast");
  if (root < 0 || root >= size_) throw CommError(ds::str("broadcast: root ", root, " is not a rank of ", size_));
  at::Tensor b = buffer;
  return enqueue("broadcast", nbytes(b), [this, b, root]() mutable { return run_broadcast(b, root); });
}

Work QueuedCommunicator::all_to_all(at::Tensor& output, const at::Tensor& input,
                                    const std::vector<int64_t>& output_splits,
                                    const std::vector<int64_t>& input_splits) {
  check_buffer(output, "all_to_all output");
  check_buffer(input, "all_to_all input");
  check_same_dtype(output, input, "all_to_all");
  check_splits(output_splits, output.numel(), size_, "output");
  check_splits(input_splits, input.numel(), size_, "input");
  at::Tensor out = output, in = input;
  auto os = equal_splits(output_splits, output.numel(), size_);
  auto is = equal_splits(input_splits, input.numel(), size_);
  return enqueue("all_to_all", nbytes(in), [this, out, in, os, is]() mutable { return run_all_to_all(out, in, os, is); });
}

Work QueuedCommunicator::barrier() {
  return enqueue("barrier", 0, [this] { return run_barrier(); });
}

Work QueuedCommunicator::start_p2p(const std::string& op, const at::Tensor& buffer, const std::function<Waiter()>& issue) {
  auto start = std::chrono::steady_clock::now();
  int64_t bytes = nbytes(buffer);
  std::string what = describe(op);
  Waiter waiter;
  try {
    waiter = issue();
  } catch (const std::exception& e) {  // e.g. the peer's connection is closed already
    std::string why = e.what();
    throw CommError(ds::str(what, " failed: ", why.substr(0, why.find('\n'))));
  }
  auto wait_and_log = [waiter = std::move(waiter), logger = logger_, op, bytes, start, what](Millis timeout) {
    try {
      waiter(timeout);
    } catch (const TimeoutError&) {
      throw;
    } catch (const std::exception& e) {
      std::string why = e.what();
      throw CommError(ds::str(what, " failed: ", why.substr(0, why.find('\n'))));
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    logger->record(op, bytes, op == "send" ? bytes : 0, secs);
  };
  return Work(std::make_shared<Work::State>(what, options_.timeout, std::move(wait_and_log), nullptr));
}

Work QueuedCommunicator::send(const at::Tensor& buffer, int dst, int tag) {
  check_buffer(buffer, "send");
  if (dst < 0 || dst >= size_ || dst == rank_) throw CommError(ds::str("send: destination ", dst, " is not another rank of ", size_));
  if (tag < 0 || tag >= (1 << 24)) throw CommError(ds::str("send: tag ", tag, " must be in [0, 2^24)"));
  return start_p2p("send", buffer, [&] { return start_send(buffer, dst, tag); });
}

Work QueuedCommunicator::recv(at::Tensor& buffer, int src, int tag) {
  check_buffer(buffer, "recv");
  if (src < 0 || src >= size_ || src == rank_) throw CommError(ds::str("recv: source ", src, " is not another rank of ", size_));
  if (tag < 0 || tag >= (1 << 24)) throw CommError(ds::str("recv: tag ", tag, " must be in [0, 2^24)"));
  return start_p2p("recv", buffer, [&] { return start_recv(buffer, src, tag); });
}

}  // namespace ds::comm
