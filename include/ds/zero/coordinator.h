// ParamCoordinator: ZeRO stage 3's gather / prefetch / release of sharded units (DeepSpeed's
// PartitionedParameterCoordinator).
//
// Every rank holds its chunk of each unit (FlatUnit::shard). A unit is all-gathered before
// its forward (ds::nn::run_unit) and released after it, gathered again before its backward
// (the pre-backward function run_unit puts on the unit's output) and released once its
// gradients have been reduce-scattered (the GradReducer calls after_reduce).
//
// The first micro-batch records the order in which units are used (forward, then backward);
// later ones replay it: when unit i is needed, the next units of the trace are gathered in the
// background, up to `prefetch_elements` ahead (counting what is gathered for them already)
// and `max_live_elements` gathered in all. A unit used again within `max_reuse_distance`
// elements of the trace stays gathered; a unit of at most `persistence_threshold` elements is
// gathered once and never released. A micro-batch that uses units in another order
// invalidates the trace (prefetch stops) and re-records it.
//
// The all-gather sends each rank's shard in the shard dtype (bf16 under mixed precision) and
// lands in a buffer of that dtype; when the working dtype is the same, that buffer becomes the
// unit's weights directly, otherwise it is widened once.
//
// ZeRO++ (Wang et al., 2023). With `quantize_group` (zero_quantized_weights, qwZ) the gathers
// of units above the persistence threshold send each shard as int8 blocks
// (ds/compress/quantize.h): about a quarter of fp32's bytes, half of bf16's; the weights the
// forward and backward compute with are the dequantized values, the optimizer's master stays
// exact. Persistent units (norms, biases: few bytes, gathered once a step) gather exactly.
// With a `secondary` group (zero_hpz_partition_size, hpZ: the data-parallel ranks of one node)
// the first gather of a unit after an optimizer step also keeps this rank's chunk of the
// gathered weights over the secondary group; until the weights change again (refresh(),
// weights_changed()) the unit is gathered from those chunks, within the node, exactly as the
// first gather delivered it. The price is a copy of the model's non-persistent weights
// divided by the secondary group's size, per rank.
//
// With a ShardStore (offload_param nvme) the shards live on disk. Reads run ahead of the
// gathers along the trace: beyond the prefetch window, the next units' shards are read (at
// most max_reads_ahead at a time) while the forward computes, and a gather, issued at its
// place in the trace like any other (every rank must issue collectives in the same order),
// finds its shard read already or waits for it.
#pragma once

#include <ATen/core/Tensor.h>

#include <set>
#include <memory>
#include <unordered_map>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/common/progress.h"
#include "ds/nn/unit.h"
#include "ds/zero/flat_unit.h"

namespace ds::zero {

// Where shards are read from when they are not in memory (ds::offload::ParamSwapper).
class ShardStore {
 public:
  virtual ~ShardStore() = default;
  // Starts reading unit u's shard (nothing if it is being read or was read already).
  virtual void start_read(int u) = 0;
  // Waits for the read; the shard, valid until give_back(u).
  virtual at::Tensor take(int u) = 0;
  virtual void give_back(int u) = 0;
};

struct CoordinatorOptions {
  int64_t prefetch_elements = 50'000'000;     // stage3_prefetch_bucket_size
  int64_t max_live_elements = 1'000'000'000;  // stage3_max_live_parameters
  int64_t max_reuse_distance = 1'000'000'000; // stage3_max_reuse_distance
  int64_t persistence_threshold = 100'000;    // stage3_param_persistence_threshold (per unit)
  ShardStore* store = nullptr;                // null: shards in memory (FlatUnit::shard_data)
  int max_reads_ahead = 4;                    // with a store: reads started ahead of their gather, at most
  bool report_progress = false;               // say how far the first forward's gathers are when slow (ds::Progress)
  int64_t quantize_group = 0;                 // qwZ: int8 blocks of this many values (0: gathers are exact)
  std::shared_ptr<comm::Communicator> secondary;  // hpZ: a subgroup of the coordinator's (null: none)
};

class ParamCoordinator final : public nn::UnitHooks {
 public:
  // Every unit must be sharded, over `comm` (the data-parallel group).
  ParamCoordinator(std::vector<FlatUnit*> units, std::shared_ptr<comm::Communicator> comm, CoordinatorOptions options);
  ~ParamCoordinator() override;
  ParamCoordinator(const ParamCoordinator&) = delete;
  ParamCoordinator& operator=(const ParamCoordinator&) = delete;

  // nn::UnitHooks (run_unit and its pre-backward function).
  std::vector<int> units_of(torch::nn::Module& module) override;
  void pre_forward(const std::vector<int>& units) override;
  void post_forward(const std::vector<int>& units) override;
  void pre_backward(const std::vector<int>& units) override;

  // The engine's side: a micro-batch's forward begins / its backward and reduction are done.
  void begin_micro_batch();
  void end_micro_batch();
  // For models that are not nn::UnitAware: every unit, gathered before the forward.
  void gather_all();
  // The unit's gradients have left (post-backward): release it unless it is reused soon.
  void after_reduce(int unit);
  // After the optimizer updated the shards: gathered (persistent) units are gathered anew.
  void refresh();
  // Unit u's shard was rewritten outside a step (GatheredParameters): its secondary copy goes.
  void weights_changed(int unit);

  // Explicit use (GatheredParameters, checkpoints): pin() gathers and keeps a unit until the
  // matching unpin(), with its exact weights (under qwZ a unit gathered quantized is gathered
  // again). Collective: every rank pins the same units in the same order.
  void pin(int unit);
  void unpin(int unit);

  bool persistent(int unit) const;
  bool gathered(int unit) const { return slots_[size_t(unit)].state == State::kAvailable; }
  // Elements of gathered (or in-flight) full units right now.
  int64_t live_elements() const { return live_; }
  struct Stats {
    int64_t gathers = 0;     // all-gathers issued
    int64_t prefetched = 0;  // of which issued ahead of use
    int64_t releases = 0;
    int64_t peak_live = 0;   // elements
    double wait_s = 0;       // time spent waiting for a gather to land
    double read_wait_s = 0;  // with a store: time spent waiting for a shard's read
    int64_t quantized = 0;   // of the gathers, sent as int8 blocks (qwZ)
    int64_t secondary = 0;   // of the gathers, from the secondary group's copies (hpZ)
  };
  const Stats& stats() const { return stats_; }
  // Bytes of the secondary copies (hpZ; their buffers stay allocated between steps).
  int64_t secondary_bytes() const;
  const std::vector<int>& trace() const { return trace_; }
  bool trace_valid() const { return trace_valid_; }

 private:
  enum class State { kReleased, kInFlight, kAvailable };
  enum class Source { kPrimary, kQuantized, kSecondary };
  struct Slot {
    State state = State::kReleased;
    Source source = Source::kPrimary;
    at::Tensor wire;  // the gathered buffer while in flight: the shard dtype, or int8 blocks (kQuantized)
    at::Tensor secondary;  // hpZ: this rank's chunk over the secondary group (kept; refilled after a step)
    bool secondary_valid = false;  // it holds the current weights (as the unit's gathers deliver them)
    comm::Work work;
    bool from_store = false;  // the source is a store buffer, given back once the gather landed
    int users = 0;            // forward scopes and pins currently using the unit
  };
  // qwZ gathers unit u as int8 blocks (else exactly).
  bool quantizes(int u) const;
  // exact: the shard's values, neither quantized nor from the secondary copy (pin()).
  void fetch(int u, bool ahead = false, bool exact = false);
  void issue(int u, bool exact);
  void read_ahead(size_t from);
  void drop_reads();
  void wait(int u);
  void release(int u);
  void record(int u);
  void prefetch();
  void maybe_release(int u);
  bool reused_soon(int u) const;
  at::Tensor take_buffer(int64_t numel, at::ScalarType dtype);
  void give_back(at::Tensor t);

  std::vector<FlatUnit*> units_;
  std::shared_ptr<comm::Communicator> comm_;
  CoordinatorOptions options_;
  std::vector<Slot> slots_;
  // The first forward's gathers (from disk at ZeRO-Infinity: minutes for a large model).
  std::unique_ptr<Progress> first_forward_;
  std::vector<bool> gathered_once_;
  size_t gathered_once_count_ = 0;
  std::set<int> reads_ahead_;  // units whose shard read was started before their gather (a store only)
  std::unordered_map<const void*, int> unit_of_param_;
  std::unordered_map<const void*, std::vector<int>> units_of_module_;
  int hooks_id_ = 0;
  int64_t live_ = 0;
  Stats stats_;
  std::vector<int> trace_;
  bool trace_valid_ = false, recording_ = false, in_micro_batch_ = false, diverged_ = false;
  size_t pos_ = 0;  // events of this micro-batch so far
  std::vector<at::Tensor> pool_;  // released gather buffers, reused (at most two of the largest unit)
  int64_t pooled_bytes_ = 0, pool_limit_bytes_ = 0;
};

}  // namespace ds::zero
