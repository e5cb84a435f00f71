#include "ds/comm/topology.h"

#include <algorithm>

#include "ds/common/error.h"

namespace ds::comm {

const char* to_string(Axis axis) {
  switch (axis) {
    case Axis::Pipe: return "pipe";
    case Axis::Data: return "data";
    case Axis::Tensor: return "tensor";
  }
  return "?";
}

Topology::Topology(int pipe, int data, int tensor, int sequence)
    : pipe_(pipe), data_(data), tensor_(tensor), sequence_(sequence) {
  if (pipe < 1 || data < 1 || tensor < 1 || sequence < 1)
    throw ConfigError(ds::str("topology sizes must be >= 1, got pipe=", pipe, " data=", data, " tensor=", tensor,
                              " sequence=", sequence));
  if (data % sequence != 0)
    throw ConfigError(ds::str("sequence_parallel_size ", sequence, " does not divide the ", data,
                              " ranks of the data axis: use a size that divides it"));
}

Topology Topology::for_world(int world_size, int pipe, int tensor, int sequence) {
  if (pipe < 1 || tensor < 1 || sequence < 1 || world_size % (pipe * tensor * sequence) != 0)
    throw ConfigError(ds::str("world size ", world_size, " is not divisible by pipeline stages ", pipe, " x tensor parallel ",
                          tensor, sequence > 1 ? ds::str(" x sequence parallel ", sequence) : std::string(), " = ",
                          pipe * tensor * sequence));
  return Topology(pipe, world_size / (pipe * tensor), tensor, sequence);
}

int Topology::size(Axis axis) const {
  switch (axis) {
    case Axis::Pipe: return pipe_;
    case Axis::Data: return data_;
    case Axis::Tensor: return tensor_;
  }
  return 1;
}

Coord Topology::coord_of(int rank) const {
  if (rank < 0 || rank >= world_size()) throw CommError(ds::str("rank ", rank, " is not in topology ", describe()));
  Coord c;
  c.tensor = rank % tensor_;
  c.data = (rank / tensor_) % data_;
  c.pipe = rank / (tensor_ * data_);
  return c;
}

int Topology::rank_of(const Coord& c) const {
  if (c.pipe < 0 || c.pipe >= pipe_ || c.data < 0 || c.data >= data_ || c.tensor < 0 || c.tensor >= tensor_)
    throw CommError(ds::str("coordinate (pipe ", c.pipe, ", data ", c.data, ", tensor ", c.tensor, ") is outside ", describe()));
  return (c.pipe * data_ + c.data) * tensor_ + c.tensor;
}

std::vector<int> Topology::group_along(Axis axis, int rank) const {
  Coord c = coord_of(rank);
  std::vector<int> out;
  for (int i = 0; i < size(axis); ++i) {
    Coord k = c;
    (axis == Axis::Pipe ? k.pipe : axis == Axis::Data ? k.data : k.tensor) = i;
    out.push_back(rank_of(k));
  }
  return out;
}

std::vector<std::vector<int>> Topology::groups_along(Axis axis) const {
  std::vector<std::vector<int>> out;
  for (int r = 0; r < world_size(); ++r) {
    auto g = group_along(axis, r);
    if (g.front() == r) out.push_back(std::move(g));  // each group once, by its lowest rank
  }
  return out;
}

std::vector<int> Topology::model_group(int rank) const {
  const Coord c = coord_of(rank);
  std::vector<int> out;
  for (int p = 0; p < pipe_; ++p)
    for (int t = 0; t < tensor_; ++t) out.push_back(rank_of({p, c.data, t}));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int> Topology::sequence_group(int rank) const {
  const Coord c = coord_of(rank);
  std::vector<int> out;
  const int first = c.data - c.data % sequence_;
  for (int d = first; d < first + sequence_; ++d) out.push_back(rank_of({c.pipe, d, c.tensor}));
  return out;
}

std::string Topology::describe() const {
  return ds::str("pipe=", pipe_, " x data=", data_, sequence_ > 1 ? ds::str(" (sequence ", sequence_, ")") : std::string(),
                 " x tensor=", tensor_);
}

ParallelGroups ParallelGroups::create(std::shared_ptr<Communicator> world, const Topology& topology) {
  if (topology.world_size() != world->size())
    throw ConfigError(ds::str("topology ", topology.describe(), " needs ", topology.world_size(), " ranks but the job has ",
                          world->size()));
  ParallelGroups g;
  g.topology = topology;
  g.coord = topology.coord_of(world->rank());
  g.world = world;
  auto make = [&](const std::vector<int>& ranks, const char* kind) {
    if (ranks.size() == static_cast<size_t>(world->size())) return world;
    return world->new_group(ranks, ds::str(kind, "/", ranks.front()));
  };
  for (Axis axis : {Axis::Pipe, Axis::Data, Axis::Tensor})
    (axis == Axis::Pipe ? g.pipe : axis == Axis::Data ? g.data : g.tensor) =
        make(topology.group_along(axis, world->rank()), to_string(axis));
  g.model = make(topology.model_group(world->rank()), "model");
  g.sequence = make(topology.sequence_group(world->rank()), "sequence");
  return g;
}

ParallelGroups ParallelGroups::data_parallel(std::shared_ptr<Communicator> world) {
  const int n = world->size();
  return create(std::move(world), Topology(1, n, 1));
}

const std::shared_ptr<Communicator>& ParallelGroups::along(Axis axis) const {
  return axis == Axis::Pipe ? pipe : axis == Axis::Data ? data : tensor;
}

}  // namespace ds::comm
