// Communicator: collectives and point-to-point messages between the ranks of a job.
//
//   auto comm = ds::comm::init_from_env();      // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   at::Tensor g = ...;                          // contiguous CPU tensor
//   comm->all_reduce(g, ds::comm::ReduceOp::Avg).wait();
//   at::Tensor shard = at::empty({ds::comm::chunk_of(g.numel(), comm->size(), comm->rank()).length});
//   comm->reduce_scatter(shard, g).wait();      // true reduce-scatter: (N-1)/N of g on the wire
//
// Every operation returns a Work at once. Collectives run in the order they were issued, on
// one worker thread per communicator; every rank must issue the same collectives in the same
// order (as with NCCL or c10d). send/recv do not queue behind collectives.
//
// Buffers: contiguous CPU tensors of fp32, fp64, bf16, fp16, int8, uint8, int32 or int64.
// reduce_scatter / all_gather split a buffer of n elements into world-size chunks as
// torch.tensor_split does: chunk r has n/N elements, plus one for r < n % N (see chunk_of).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "ds/comm/logger.h"
#include "ds/comm/work.h"

namespace ds::comm {

enum class ReduceOp { Sum, Avg, Max, Min };
const char* to_string(ReduceOp op);

struct Chunk {
  int64_t offset = 0;
  int64_t length = 0;
};
// The part of an n-element buffer that rank `rank` of `world` owns (tensor_split layout).
Chunk chunk_of(int64_t n, int world, int rank);

struct CommOptions {
  Millis timeout{std::chrono::seconds(300)};  // per operation and for the rendezvous
};

// Always owned by a shared_ptr (the factories return one), so shared_from_this() works.
class Communicator : public std::enable_shared_from_this<Communicator> {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // In place; Avg divides by size() (floating types only).
  virtual Work all_reduce(at::Tensor& buffer, ReduceOp op = ReduceOp::Sum) = 0;
  // output.numel() == chunk_of(input.numel(), size(), rank()).length; input is not modified.
  virtual Work reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op = ReduceOp::Sum) = 0;
  // input.numel() == chunk_of(output.numel(), size(), rank()).length.
  virtual Work all_gather(at::Tensor& output, const at::Tensor& input) = 0;
  virtual Work broadcast(at::Tensor& buffer, int root) = 0;
  // Rank i's input split j goes to rank j's output split i. Empty split lists mean equal
  // splits (numel divisible by size()). Split sizes are in elements.
  virtual Work all_to_all(at::Tensor& output, const at::Tensor& input,
                          const std::vector<int64_t>& output_splits = {},
                          const std::vector<int64_t>& input_splits = {}) = 0;
  virtual Work barrier() = 0;
  virtual Work send(const at::Tensor& buffer, int dst, int tag = 0) = 0;
  virtual Work recv(at::Tensor& buffer, int src, int tag = 0) = 0;

  // A communicator over `ranks` (sorted, distinct, in this communicator's numbering). Only
  // the members call it, each with the same list and name; `name` must be unique per group.
  virtual std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks, const std::string& name) = 0;

  // Per-operation counts, bytes and times; shared with the groups made from this one.
  CommsLogger& logger() { return *logger_; }
  std::shared_ptr<CommsLogger> logger_ptr() const { return logger_; }

 protected:
  explicit Communicator(std::shared_ptr<CommsLogger> logger) : logger_(std::move(logger)) {}
  std::shared_ptr<CommsLogger> logger_;
};

// Which backend init_from_env picks: DS_COMM_BACKEND=gloo|mpi, else MPI when started by
// mpirun (OMPI_COMM_WORLD_SIZE or PMI_SIZE set) and built with MPI, else Gloo.
std::string default_backend();

// Creates the world communicator from the environment the launcher (ds-launch, torchrun,
// mpirun) sets. Gloo: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE (LOCAL_RANK optional).
// Timeout from options, or DS_COMM_TIMEOUT (seconds) when set.
std::shared_ptr<Communicator> init_from_env(CommOptions options = {});

// Gloo over TCP with a TCPStore rendezvous at master_addr:master_port (rank 0 serves it).
struct GlooOptions : CommOptions {
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int rank = 0;
  int world_size = 1;
  std::string interface;  // network interface for Gloo; "" = the one that reaches master_addr
};
std::shared_ptr<Communicator> make_gloo(const GlooOptions& options);

// MPI_COMM_WORLD (initialises MPI if needed). Throws when built without MPI.
std::shared_ptr<Communicator> make_mpi(const CommOptions& options);

}  // namespace ds::comm
