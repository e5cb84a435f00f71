// Topology: the rank grid pipe x data x tensor (DeepSpeed's PipeModelDataParallelTopology:
// axes in that order, tensor varying fastest), and the communicators along each axis.
// Sequence parallelism (Ulysses) subdivides the data axis: its groups are `sequence`
// consecutive data coordinates, which read the same samples and split each sequence; ZeRO
// still shards over the whole data axis (DeepSpeed's sequence-data-parallel group).
//
//   ds::comm::Topology topo(/*pipe=*/2, /*data=*/2, /*tensor=*/2);   // 8 ranks
//   topo.coord_of(5)                       -> {pipe 1, data 0, tensor 1}
//   topo.group_along(Axis::Data, 5)        -> {5, 7}
//   topo.model_group(5)                    -> {1, 3, 5, 7}  (same data coordinate)
//   ds::comm::Topology(1, 4, 1, /*sequence=*/2).sequence_group(3) -> {2, 3}
//   auto groups = ds::comm::ParallelGroups::create(world, topo);
//   groups.data->all_reduce(grad);         // over the data-parallel replicas of this rank
//   groups.model->all_reduce(norm_sq);     // over the pipeline stages and tensor shards of one replica
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"

namespace ds::comm {

enum class Axis { Pipe, Data, Tensor };
const char* to_string(Axis axis);

struct Coord {
  int pipe = 0, data = 0, tensor = 0;
  bool operator==(const Coord& o) const { return pipe == o.pipe && data == o.data && tensor == o.tensor; }
};

class Topology {
 public:
  // `data` counts every rank of the data axis (sequence ranks included); `sequence` divides it.
  Topology(int pipe, int data, int tensor, int sequence = 1);
  // The data axis follows from the world size and the other two.
  static Topology for_world(int world_size, int pipe, int tensor, int sequence = 1);

  int world_size() const { return pipe_ * data_ * tensor_; }
  int size(Axis axis) const;
  Coord coord_of(int rank) const;
  int rank_of(const Coord& c) const;
  // The ranks that differ from `rank` only along `axis`, in increasing order.
  std::vector<int> group_along(Axis axis, int rank) const;
  // Every group along `axis`, each in increasing order; together they cover all ranks once.
  std::vector<std::vector<int>> groups_along(Axis axis) const;
  // The ranks of one model replica: same data coordinate, every pipe and tensor coordinate
  // (Megatron's model-parallel group), in increasing order.
  std::vector<int> model_group(int rank) const;
  // The ranks that split one sequence with `rank` (Ulysses): the same pipe and tensor
  // coordinates and data coordinates [k s, (k + 1) s) for s = sequence(), in increasing order.
  std::vector<int> sequence_group(int rank) const;
  int sequence() const { return sequence_; }
  std::string describe() const;  // "pipe=2 x data=2 x tensor=2", "pipe=1 x data=2 (sequence 2) x tensor=1"

 private:
  int pipe_, data_, tensor_, sequence_;
};

// The communicators a rank needs for 3D parallelism, created once (a group of one rank is a
// local communicator; a group of every rank is the world itself).
//   data   gradient reduction, ZeRO's shards and gathers, the initial broadcast of weights
//   model  one replica's ranks (pipe x tensor): the gradient norm, the overflow flag, the loss
//   pipe, tensor  along one axis
//   sequence  the ranks that split one sequence (Topology::sequence_group; this rank alone
//             without sequence parallelism)
struct ParallelGroups {
  Topology topology{1, 1, 1};
  Coord coord;
  std::shared_ptr<Communicator> world, pipe, data, tensor, model, sequence;

  // Every rank of `world` calls it with the same topology.
  static ParallelGroups create(std::shared_ptr<Communicator> world, const Topology& topology);
  // Data parallelism only: every group but `data` (the world) has this rank alone.
  static ParallelGroups data_parallel(std::shared_ptr<Communicator> world);
  const std::shared_ptr<Communicator>& along(Axis axis) const;
  // This rank's position in the model-parallel group (DeepSpeed's mp_rank in file names).
  int model_rank() const { return model->rank(); }
};

}  // namespace ds::comm
