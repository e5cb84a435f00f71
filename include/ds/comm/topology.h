// Topology: the rank grid pipe x data x tensor (DeepSpeed's PipeModelDataParallelTopology:
// axes in that order, tensor varying fastest), and the communicators along each axis.
//
//   ds::comm::Topology topo(/*pipe=*/2, /*data=*/2, /*tensor=*/2);   // 8 ranks
//   topo.coord_of(5)                       -> {pipe 1, data 0, tensor 1}
//   topo.group_along(Axis::Data, 5)        -> {5, 7}
//   auto groups = ds::comm::ParallelGroups::create(world, topo);
//   groups.data->all_reduce(grad);         // over the data-parallel replicas of this rank
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
  Topology(int pipe, int data, int tensor);
  // The data-parallel size follows from the world size and the other two.
  static Topology for_world(int world_size, int pipe, int tensor);

  int world_size() const { return pipe_ * data_ * tensor_; }
  int size(Axis axis) const;
  Coord coord_of(int rank) const;
  int rank_of(const Coord& c) const;
  // The ranks that differ from `rank` only along `axis`, in increasing order.
  std::vector<int> group_along(Axis axis, int rank) const;
  // Every group along `axis`, each in increasing order; together they cover all ranks once.
  std::vector<std::vector<int>> groups_along(Axis axis) const;
  std::string describe() const;  // "pipe=2 x data=2 x tensor=2"

 private:
  int pipe_, data_, tensor_;
};

// The communicators a rank needs for 3D parallelism.
struct ParallelGroups {
  Topology topology{1, 1, 1};
  Coord coord;
  std::shared_ptr<Communicator> world, pipe, data, tensor;

  // Every rank of `world` calls it with the same topology.
  static ParallelGroups create(std::shared_ptr<Communicator> world, const Topology& topology);
  const std::shared_ptr<Communicator>& along(Axis axis) const;
};

}  // namespace ds::comm
