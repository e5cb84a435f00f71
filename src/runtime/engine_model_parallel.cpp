// The engine's side of model parallelism:
// * tied layers of a pipe::PipelineModule (the token embedding on the first stage and the LM
//   head on the last): one copy per stage holding it, kept equal by starting equal and adding
//   the copies' gradients before every step (DeepSpeed's tied-module all-reduce);
// * tensor parallelism: which parts of each unit this rank counts in the gradient norm.
#include <ATen/ATen.h>

#include <set>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/pipe/module.h"
#include "ds/runtime/engine.h"
#include "ds/tp/layers.h"

namespace ds {

void Engine::connect_pipeline_module() {
  auto* module = dynamic_cast<pipe::PipelineModuleImpl*>(model_.get());
  if (!module) {
    if (config_.pipeline.activation_checkpoint_interval > 0)
      throw ConfigError("pipeline.activation_checkpoint_interval > 0 needs a ds::pipe::PipelineModule (the engine "
                        "cannot recompute layers of a model it only calls); build the model as one or set it to 0");
    return;
  }
  const pipe::PipelineLayout& l = module->layout();
  if (l.activation_checkpoint_interval != config_.pipeline.activation_checkpoint_interval)
    throw ConfigError(ds::str("the pipeline module checkpoints every ", l.activation_checkpoint_interval,
                              " layers but the config's pipeline.activation_checkpoint_interval is ",
                              config_.pipeline.activation_checkpoint_interval,
                              "; build it with ds::pipe::PipelineLayout::from(config, groups)"));
  if (l.stages != groups_.pipe->size() || l.stage != groups_.coord.pipe)
    throw ConfigError(ds::str("the pipeline module was built as stage ", l.stage, " of ", l.stages, " but this rank is stage ",
                              groups_.coord.pipe, " of ", groups_.pipe->size(),
                              "; build it with ds::pipe::PipelineLayout::from(config, groups)"));
  for (const pipe::TiedLayer& t : module->tied()) {
    if (t.stages.size() < 2) continue;
    std::vector<int> ranks;
    std::string name = "tied/" + t.key;
    for (int stage : t.stages) {
      comm::Coord c = groups_.coord;
      c.pipe = stage;
      ranks.push_back(groups_.topology.rank_of(c));
      name += ds::str("/", ranks.back());
    }
    TiedUnit tied{"tied_modules." + t.key, 0, groups_.world->new_group(ranks, name), groups_.coord.pipe == t.stages[0]};
    // Equal copies from the start, whatever each stage's factory did: the first stage's.
    torch::NoGradGuard no_grad;
    for (at::Tensor p : t.module->parameters()) tied.group->broadcast(p, 0).wait();
    tied_.push_back(std::move(tied));
  }
}

void Engine::find_tied_units() {
  for (TiedUnit& t : tied_) {
    size_t u = 0;
    while (u < units_.size() && units_[u].unit->name() != t.name) ++u;
    if (u == units_.size())
      throw Error(ds::str("the tied layer '", t.name, "' is not a unit of its own; pass the units of "
                          "zero::find_units(pipeline_module) (each layer and each tied module is one)"));
    t.unit = u;
  }
}

// At the step, after the data-parallel reduction: each copy's gradient (or this rank's shard
// of it: the copies have the same layout) becomes the sum over the stages holding one.
void Engine::reduce_tied_grads() {
  for (TiedUnit& t : tied_) {
    at::Tensor g = grad_of(t.unit);
    t.group->all_reduce(g, comm::ReduceOp::Sum).wait();
  }
}

bool Engine::is_primary_copy(size_t u) const {
  for (const TiedUnit& t : tied_)
    if (t.unit == u) return t.primary;
  return true;
}

// A replicated parameter (a LayerNorm, a row-parallel bias) has the same gradient on every
// rank of the tensor group: it counts once, on the group's first rank. A split one counts on
// every rank (each holds another slice). On the other ranks `norm_ranges_` keeps, per unit,
// the flat ranges of the split parameters (none: the unit counts nothing there).
void Engine::plan_tensor_parallel_norm() {
  if (groups_.tensor->size() == 1) return;
  std::set<std::string> split;
  for (const tp::Split& s : tp::find_sharded_parameters(*model_)) split.insert(s.name);
  // DeepSpeed's AutoTP splits an arbitrary model's linear layers; this engine splits only
  // models built from tensor-parallel layers (ds::Gpt, ds::tp::*): otherwise every rank of
  // the group would silently train the whole model.
  if (split.empty())
    throw ConfigError(ds::str("tensor_parallel.autotp_size is ", groups_.tensor->size(),
                              " but the model has no tensor-parallel layers (ds::tp::ColumnParallelLinear, "
                              "RowParallelLinear, VocabParallelEmbedding, or ds::Gpt built with the tensor group); "
                              "automatic splitting of other modules is not implemented"));
  tensor_split_.assign(units_.size(), {});
  for (size_t u = 0; u < units_.size(); ++u)
    for (const zero::ParamSlot& slot : units_[u].unit->slots()) tensor_split_[u].push_back(split.count(slot.name) > 0);
  if (groups_.tensor->rank() == 0) return;
  norm_ranges_.assign(units_.size(), {});
  for (size_t u = 0; u < units_.size(); ++u) {
    for (const zero::ParamSlot& slot : units_[u].unit->slots())
      if (split.count(slot.name)) norm_ranges_[u].emplace_back(slot.offset, slot.numel);
  }
}

}  // namespace ds
