// PipelineModule: DeepSpeed's pipeline model, a list of layer specs of which each stage builds
// only its own layers.
//
//   std::vector<ds::pipe::LayerSpec> specs = ds::gpt_layer_specs(gpt_config);  // or your own
//   ds::pipe::PipelineModule model(specs, ds::pipe::PipelineLayout::from(config, groups));
//   auto engine = ds::initialize(model.ptr(), config, groups);
//   engine->train_batch(model->stage_model(loss_fn), data);
//
// A LayerSpec is a factory (build) plus how to run the built module (forward). The module
// registers layer i under the name "i" (its parameters "i.weight", ...), as DeepSpeed does, so
// one model has the same parameter names in every layout.
//
// Tied layers: specs with the same tied_key share one module. The first such spec builds it;
// every stage holding one of them builds its own copy under "tied_modules.<key>" (e.g. the
// token embedding on the first stage and the LM head that reuses its weight on the last). The
// engine makes the copies equal at start-up (a broadcast from the first stage holding them),
// sums their gradients over the stages that hold them before each step, and counts them once
// in the gradient norm; the copies then stay equal.
//
// Initial weights do not depend on the layout: layer i (a tied module: its first spec's
// index) is built with the CPU generator seeded from one number drawn at construction plus i
// (with pipeline.seed_layers, DeepSpeed's fixed base 1234 plus i), so a 4-stage model starts
// from the same weights as the 1-stage one. The generator is left as after that one draw.
//
// The module is ZeRO-3 aware (ds/nn/unit.h): each layer is a unit, reported to ds::Init when
// built and run through ds::nn::run_unit. With activation_checkpoint_interval k > 0 the
// stage's layers run in segments of k, each through ds::checkpointing::checkpoint (segments
// holding a tied layer or no parameters run plainly), DeepSpeed's meaning of the key.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ds/comm/topology.h"
#include "ds/config/config.h"
#include "ds/nn/sequence_parallel_user.h"
#include "ds/nn/sparse_attention_user.h"
#include "ds/nn/unit.h"
#include "ds/pipe/executor.h"

namespace ds::pipe {

struct LayerSpec {
  std::string type;  // the layer's kind: matched by partition "type:REGEX", shown in the start-up line
  // Unused (may be empty) for a tied spec that is not its key's first.
  std::function<std::shared_ptr<torch::nn::Module>()> build;
  // The layer's forward: the module built (for a tied spec, the shared one) and the previous
  // layer's output (on the first layer, the micro-batch's inputs).
  std::function<at::Tensor(torch::nn::Module& module, const at::Tensor& x)> forward;
  // Parameters the layer will have, for partition "parameters"; -1: build it once to count.
  int64_t parameters = -1;
  std::string tied_key;  // non-empty: a tied layer (see above)
  // The layer computes block-sparse attention from the config's sparse_attention section
  // (the pipeline then tells the engine it honours the section; ds::nn::SparseAttentionUser).
  bool sparse_attention = false;
  // The layer splits its sequences over this many ranks (Ulysses; the pipeline then tells the
  // engine so; ds::nn::SequenceParallelUser).
  int sequence_parallel = 1;
};

struct PipelineLayout {
  int stages = 1, stage = 0;
  std::string partition = "parameters";  // pipe/partition.h's methods
  int activation_checkpoint_interval = 0;
  bool seed_layers = false;
  // From the config's pipeline section and this rank's pipe coordinate.
  static PipelineLayout from(const Config& config, const comm::ParallelGroups& groups);
};

struct TiedLayer {
  std::string key;
  std::shared_ptr<torch::nn::Module> module;  // this stage's copy
  std::vector<int> stages;                    // every stage holding it, increasing
};

// The seeding above, for models that build the same layers without a PipelineModule (ds::Gpt):
// the base drawn from the CPU generator (or 1234 with seed_layers), and a spec's module built
// with the generator seeded to `seed` and put back afterwards.
uint64_t layer_seed_base(bool seed_layers);
std::shared_ptr<torch::nn::Module> build_layer(const LayerSpec& spec, uint64_t seed);

class PipelineModuleImpl : public torch::nn::Module,
                           public nn::UnitAware,
                           public nn::SparseAttentionUser,
                           public nn::SequenceParallelUser {
 public:
  // Throws ds::ConfigError for more stages than layers, a bad partition method, a stage out
  // of range or a spec without build/forward.
  PipelineModuleImpl(std::vector<LayerSpec> specs, PipelineLayout layout);

  // This stage's layers in order (x: the micro-batch's inputs on the first stage).
  at::Tensor forward(const at::Tensor& x);
  // For Engine::train_batch / eval_batch: this stage's forward and, on the last, `loss`.
  StageModel stage_model(std::function<at::Tensor(const at::Tensor& output, const at::Tensor& labels)> loss);

  const PipelineLayout& layout() const { return layout_; }
  // Stage s holds layers [boundaries()[s], boundaries()[s + 1]).
  const std::vector<int>& boundaries() const { return bounds_; }
  const std::vector<TiedLayer>& tied() const { return tied_; }
  // True when a spec (on any stage: every rank answers alike) says it uses sparse attention.
  bool uses_sparse_attention() const override;
  // The largest sequence split a spec states (every stage answers alike).
  int sequence_parallel_size() const override;
  // What this stage saves as DeepSpeed's per-layer files: each of its layers by global index,
  // a tied module under its first spec's index (on the stage holding that spec; the other
  // specs of the key reuse it and save nothing).
  std::vector<std::pair<int, std::shared_ptr<torch::nn::Module>>> saved_layers() const;
  int64_t layer_count() const { return int64_t(specs_.size()); }
  // "stage 1 of 2: layers 5-9 (3 x GptBlock, LayerNorm, LMHead), 1200 parameters" (default: this stage)
  std::string describe_stage(int stage = -1) const;

 private:
  at::Tensor run_layer(int i, const at::Tensor& x);
  at::Tensor run_range(int begin, int end, const at::Tensor& x);
  bool checkpointable(int begin, int end) const;

  std::vector<LayerSpec> specs_;
  PipelineLayout layout_;
  std::vector<int> bounds_;
  std::vector<std::shared_ptr<torch::nn::Module>> layers_;  // per global layer; null off this stage
  std::vector<TiedLayer> tied_;
  std::map<std::string, int> first_of_key_;  // tied key -> the spec that builds its module
  torch::nn::ModuleDict tied_modules_{nullptr};
};
TORCH_MODULE(PipelineModule);

}  // namespace ds::pipe
