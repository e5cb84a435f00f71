// MPI backend: MPI's own collectives (shared memory between ranks on one host, the network
// between hosts), with user-defined reductions for bf16 and fp16, which MPI lacks.
#include <mpi.h>

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <climits>
#include <thread>

#include "ds/common/error.h"
#include "queued.h"
#include "ring.h"

namespace ds::comm {
namespace {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw CommError(ds::str(what, " failed: ", std::string(msg, len)));
}

// MPI_Init_thread on first use, MPI_Finalize when the last communicator is gone.
class MpiRuntime {
 public:
  static std::shared_ptr<MpiRuntime> get() {
    static std::mutex mu;
    static std::weak_ptr<MpiRuntime> current;
    std::lock_guard<std::mutex> lock(mu);
    auto rt = current.lock();
    if (!rt) current = rt = std::shared_ptr<MpiRuntime>(new MpiRuntime());
    return rt;
  }
  ~MpiRuntime() {
    if (half_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&half_type_);
    if (bf16_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&bf16_type_);
    for (MPI_Op* op : {&sum_, &max_, &min_})
      if (*op != MPI_OP_NULL) MPI_Op_free(op);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  MPI_Datatype type_of(at::ScalarType t) const {
    switch (t) {
      case at::kFloat: return MPI_FLOAT;
      case at::kDouble: return MPI_DOUBLE;
      case at::kChar: return MPI_INT8_T;
      case at::kByte: return MPI_UINT8_T;
      case at::kInt: return MPI_INT32_T;
      case at::kLong: return MPI_INT64_T;
      case at::kBFloat16: return bf16_type_;
      case at::kHalf: return half_type_;
      default: throw CommError(ds::str("MPI backend: unsupported dtype ", t));
    }
  }
  MPI_Op op_of(ReduceOp op, at::ScalarType t) const {
    bool custom = (t == at::kBFloat16 || t == at::kHalf);
    switch (op) {
      case ReduceOp::Sum:
      case ReduceOp::Avg: return custom ? sum_ : MPI_SUM;
      case ReduceOp::Max: return custom ? max_ : MPI_MAX;
      case ReduceOp::Min: return custom ? min_ : MPI_MIN;
    }
    return MPI_SUM;
  }

 private:
  MpiRuntime() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = 0;
    if (!initialized) {
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
      owns_ = true;
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_MULTIPLE)
      throw CommError("the MPI library does not provide MPI_THREAD_MULTIPLE, which the MPI backend needs");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check_mpi(MPI_Type_contiguous(2, MPI_BYTE, &bf16_type_), "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&bf16_type_), "MPI_Type_commit");
    check_mpi(MPI_Type_contiguous(2, MPI_BYTE, &half_type_), "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&half_type_), "MPI_Type_commit");
    instance_bf16_ = bf16_type_;
    check_mpi(MPI_Op_create(&reduce16<Sum>, 1, &sum_), "MPI_Op_create");
    check_mpi(MPI_Op_create(&reduce16<Max>, 1, &max_), "MPI_Op_create");
    check_mpi(MPI_Op_create(&reduce16<Min>, 1, &min_), "MPI_Op_create");
  }
  struct Sum { static float f(float a, float b) { return a + b; } };
  struct Max { static float f(float a, float b) { return a > b ? a : b; } };
  struct Min { static float f(float a, float b) { return a < b ? a : b; } };
  template <typename T, typename F>
  static void apply(const void* in, void* inout, int n) {
    const T* a = static_cast<const T*>(in);
    T* b = static_cast<T*>(inout);
    for (int i = 0; i < n; ++i) b[i] = T(F::f(float(a[i]), float(b[i])));
  }
  template <typename F>
  static void reduce16(void* in, void* inout, int* len, MPI_Datatype* type) {
    if (*type == instance_bf16_) apply<c10::BFloat16, F>(in, inout, *len);
    else apply<c10::Half, F>(in, inout, *len);
  }

  bool owns_ = false;
  MPI_Datatype bf16_type_ = MPI_DATATYPE_NULL, half_type_ = MPI_DATATYPE_NULL;
  MPI_Op sum_ = MPI_OP_NULL, max_ = MPI_OP_NULL, min_ = MPI_OP_NULL;
  static inline MPI_Datatype instance_bf16_ = MPI_DATATYPE_NULL;
};

int count_of(int64_t n, const char* what) {
  if (n > INT_MAX) throw CommError(ds::str(what, ": ", n, " elements exceed MPI's per-call limit of ", INT_MAX, "; split the buffer"));
  return static_cast<int>(n);
}

class MpiCommunicator final : public QueuedCommunicator {
 public:
  MpiCommunicator(std::shared_ptr<MpiRuntime> rt, MPI_Comm comm, int rank, int size, CommOptions options,
                  std::shared_ptr<CommsLogger> logger)
      : QueuedCommunicator(rank, size, options, std::move(logger)), rt_(std::move(rt)), comm_(comm) {}
  ~MpiCommunicator() override {
    stop_worker();
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }
  std::string backend() const override { return "mpi"; }

  std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks, const std::string& name) override {
    int me = -1;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] < 0 || ranks[i] >= size()) throw CommError(ds::str("new_group '", name, "': rank ", ranks[i], " is not in a world of ", size()));
      if (i > 0 && ranks[i] <= ranks[i - 1]) throw CommError(ds::str("new_group '", name, "': ranks must be sorted and distinct"));
      if (ranks[i] == rank()) me = static_cast<int>(i);
    }
    if (me < 0) throw CommError(ds::str("new_group '", name, "': rank ", rank(), " called it but is not a member"));
    MPI_Group parent, group;
    MPI_Comm out;
    check_mpi(MPI_Comm_group(comm_, &parent), "MPI_Comm_group");
    check_mpi(MPI_Group_incl(parent, static_cast<int>(ranks.size()), ranks.data(), &group), "MPI_Group_incl");
    int tag = static_cast<int>(std::hash<std::string>{}(name) & 0x7fff);
    check_mpi(MPI_Comm_create_group(comm_, group, tag, &out), "MPI_Comm_create_group");
    MPI_Group_free(&group);
    MPI_Group_free(&parent);
    MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
    return std::make_shared<MpiCommunicator>(rt_, out, me, static_cast<int>(ranks.size()), options(), logger_ptr());
  }

 protected:
  int64_t run_all_reduce(at::Tensor& b, ReduceOp op) override {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, b.data_ptr(), count_of(b.numel(), "all_reduce"), rt_->type_of(b.scalar_type()),
                            rt_->op_of(op, b.scalar_type()), comm_), "MPI_Allreduce");
    if (op == ReduceOp::Avg) b.div_(size());
    // What a ring would send (MPI does not tell): reduce-scatter + all-gather volumes.
    return size() > 1 ? 2 * nbytes(b) - chunk_bytes(b, rank()) - chunk_bytes(b, (rank() + 1) % size()) : 0;
  }
  int64_t run_reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) override {
    std::vector<int> counts(size());
    for (int r = 0; r < size(); ++r) counts[r] = count_of(chunk_of(in.numel(), size(), r).length, "reduce_scatter");
    check_mpi(MPI_Reduce_scatter(in.data_ptr(), out.data_ptr(), counts.data(), rt_->type_of(in.scalar_type()),
                                 rt_->op_of(op, in.scalar_type()), comm_), "MPI_Reduce_scatter");
    if (op == ReduceOp::Avg) out.div_(size());
    return size() > 1 ? nbytes(in) - chunk_bytes(in, rank()) : 0;
  }
  int64_t run_all_gather(at::Tensor& out, const at::Tensor& in) override {
    std::vector<int> counts(size()), displs(size());
    for (int r = 0; r < size(); ++r) {
      Chunk c = chunk_of(out.numel(), size(), r);
      counts[r] = count_of(c.length, "all_gather");
      displs[r] = count_of(c.offset, "all_gather");
    }
    MPI_Datatype t = rt_->type_of(out.scalar_type());
    // MPI forbids aliased buffers: when the input is already the output's own chunk, say so.
    const void* own = static_cast<const char*>(out.data_ptr()) + int64_t(displs[rank()]) * out.element_size();
    const void* send = in.data_ptr() == own ? MPI_IN_PLACE : in.data_ptr();
    check_mpi(MPI_Allgatherv(send, counts[rank()], t, out.data_ptr(), counts.data(), displs.data(), t, comm_),
              "MPI_Allgatherv");
    return size() > 1 ? nbytes(out) - chunk_bytes(out, (rank() + 1) % size()) : 0;
  }
  int64_t run_broadcast(at::Tensor& b, int root) override {
    check_mpi(MPI_Bcast(b.data_ptr(), count_of(b.numel(), "broadcast"), rt_->type_of(b.scalar_type()), root, comm_), "MPI_Bcast");
    return rank() == root ? nbytes(b) : 0;
  }
  int64_t run_all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& os,
                         const std::vector<int64_t>& is) override {
    auto ooff = split_offsets(os), ioff = split_offsets(is);
    std::vector<int> sc(size()), sd(size()), rc(size()), rd(size());
    int64_t sent = 0;
    for (int r = 0; r < size(); ++r) {
      sc[r] = count_of(is[r], "all_to_all"), sd[r] = count_of(ioff[r], "all_to_all");
      rc[r] = count_of(os[r], "all_to_all"), rd[r] = count_of(ooff[r], "all_to_all");
      if (r != rank()) sent += is[r] * in.element_size();
    }
    MPI_Datatype t = rt_->type_of(in.scalar_type());
    check_mpi(MPI_Alltoallv(in.data_ptr(), sc.data(), sd.data(), t, out.data_ptr(), rc.data(), rd.data(), t, comm_),
              "MPI_Alltoallv");
    return sent;
  }
  int64_t run_barrier() override {
    check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
    return 0;
  }
  Waiter start_send(const at::Tensor& b, int dst, int tag) override {
    auto req = std::make_shared<MPI_Request>();
    check_mpi(MPI_Isend(b.data_ptr(), count_of(b.numel(), "send"), rt_->type_of(b.scalar_type()), dst, tag, comm_, req.get()), "MPI_Isend");
    return poll_until_done(req, b);
  }
  Waiter start_recv(at::Tensor& b, int src, int tag) override {
    auto req = std::make_shared<MPI_Request>();
    check_mpi(MPI_Irecv(b.data_ptr(), count_of(b.numel(), "recv"), rt_->type_of(b.scalar_type()), src, tag, comm_, req.get()), "MPI_Irecv");
    return poll_until_done(req, b);
  }

 private:
  int64_t chunk_bytes(const at::Tensor& t, int r) const { return chunk_of(t.numel(), size(), r).length * t.element_size(); }
  // MPI has no timeouts: poll the request until it completes or the time is up.
  static Waiter poll_until_done(std::shared_ptr<MPI_Request> req, at::Tensor keep_alive) {
    return [req, keep_alive](Millis timeout) {
      auto deadline = std::chrono::steady_clock::now() + timeout;
      int done = 0;
      while (true) {
        check_mpi(MPI_Test(req.get(), &done, MPI_STATUS_IGNORE), "MPI_Test");
        if (done) return;
        if (std::chrono::steady_clock::now() >= deadline)
          throw TimeoutError(ds::str("MPI request not complete after ", timeout.count() / 1000.0, " s"));
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    };
  }

  std::shared_ptr<MpiRuntime> rt_;
  MPI_Comm comm_;
};

}  // namespace

std::shared_ptr<Communicator> make_mpi(const CommOptions& options) {
  auto rt = MpiRuntime::get();
  int rank = 0, size = 1;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  return std::make_shared<MpiCommunicator>(rt, MPI_COMM_WORLD, rank, size, options, std::make_shared<CommsLogger>());
}

}  // namespace ds::comm
