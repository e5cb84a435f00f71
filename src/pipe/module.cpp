#include "ds/pipe/module.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/utils.h>

#include <algorithm>
#include <map>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/nn/checkpointing.h"
#include "ds/nn/rng.h"
#include "ds/pipe/partition.h"

namespace ds::pipe {

namespace {

int64_t count_parameters(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

}  // namespace

uint64_t layer_seed_base(bool seed_layers) {
  return seed_layers ? 1234 : nn::draw_cpu_random64();  // 1234: DeepSpeed's PipelineModule base_seed
}

std::shared_ptr<torch::nn::Module> build_layer(const LayerSpec& spec, uint64_t seed) {
  struct Restore {  // the generator as it was, also when build() throws
    at::Tensor state = nn::cpu_rng_state();
    ~Restore() { nn::set_cpu_rng_state(state); }
  } restore;
  nn::seed_cpu_rng(seed);
  torch::NoGradGuard no_grad;
  return spec.build();
}

PipelineLayout PipelineLayout::from(const Config& config, const comm::ParallelGroups& groups) {
  PipelineLayout l;
  l.stages = groups.pipe->size();
  l.stage = groups.coord.pipe;
  l.partition = config.pipeline.partition;
  l.activation_checkpoint_interval = int(config.pipeline.activation_checkpoint_interval);
  l.seed_layers = config.pipeline.seed_layers;
  return l;
}

PipelineModuleImpl::PipelineModuleImpl(std::vector<LayerSpec> specs, PipelineLayout layout)
    : specs_(std::move(specs)), layout_(std::move(layout)) {
  if (layout_.stages < 1 || layout_.stage < 0 || layout_.stage >= layout_.stages)
    throw ConfigError(ds::str("pipeline stage ", layout_.stage, " is outside 0..", layout_.stages - 1));
  if (layout_.activation_checkpoint_interval < 0)
    throw ConfigError(ds::str("pipeline.activation_checkpoint_interval must be >= 0, got ",
                              layout_.activation_checkpoint_interval));
  if (specs_.empty()) throw ConfigError("a pipeline module needs at least one layer spec");
  // Which spec builds (and seeds) each tied module: the key's first.
  for (size_t i = 0; i < specs_.size(); ++i)
    if (!specs_[i].tied_key.empty()) first_of_key_.emplace(specs_[i].tied_key, int(i));
  for (size_t i = 0; i < specs_.size(); ++i) {
    const bool builds = specs_[i].tied_key.empty() || first_of_key_.at(specs_[i].tied_key) == int(i);
    if ((builds && !specs_[i].build) || !specs_[i].forward)
      throw ConfigError(ds::str("pipeline layer ", i, " (", specs_[i].type, ") has no ", specs_[i].forward ? "build" : "forward",
                                " function"));
  }
  const uint64_t base = layer_seed_base(layout_.seed_layers);

  std::vector<LayerInfo> infos;
  for (size_t i = 0; i < specs_.size(); ++i) {
    LayerSpec& s = specs_[i];
    if (s.parameters < 0) {  // count by building (the tied module as its first spec builds it)
      const LayerSpec& builder = s.tied_key.empty() ? s : specs_[size_t(first_of_key_.at(s.tied_key))];
      s.parameters = count_parameters(*build_layer(builder, 0));
    }
    infos.push_back({s.type, s.parameters});
  }
  bounds_ = partition_layers(infos, layout_.stages, layout_.partition);

  // The tied keys and the stages holding each.
  std::map<std::string, std::vector<int>> holders;
  for (int st = 0; st < layout_.stages; ++st)
    for (int i = bounds_[size_t(st)]; i < bounds_[size_t(st) + 1]; ++i) {
      const std::string& key = specs_[size_t(i)].tied_key;
      if (!key.empty() && (holders[key].empty() || holders[key].back() != st)) holders[key].push_back(st);
    }

  // Build this stage's layers in order; each finished one is a unit (sharded at once under ds::Init).
  layers_.resize(specs_.size());
  tied_modules_ = register_module("tied_modules", torch::nn::ModuleDict());
  for (int i = bounds_[size_t(layout_.stage)]; i < bounds_[size_t(layout_.stage) + 1]; ++i) {
    const LayerSpec& s = specs_[size_t(i)];
    if (s.tied_key.empty()) {
      layers_[size_t(i)] = build_layer(s, base + uint64_t(i));
      register_module(std::to_string(i), layers_[size_t(i)]);
      nn::unit_built(*layers_[size_t(i)]);
      continue;
    }
    auto found = std::find_if(tied_.begin(), tied_.end(), [&](const TiedLayer& t) { return t.key == s.tied_key; });
    if (found == tied_.end()) {
      const int first = first_of_key_.at(s.tied_key);
      TiedLayer t{s.tied_key, build_layer(specs_[size_t(first)], base + uint64_t(first)), holders[s.tied_key]};
      tied_modules_->update({{s.tied_key, t.module}});
      nn::unit_built(*t.module);
      tied_.push_back(std::move(t));
      found = tied_.end() - 1;
    }
    layers_[size_t(i)] = found->module;
  }
}

std::vector<std::pair<int, std::shared_ptr<torch::nn::Module>>> PipelineModuleImpl::saved_layers() const {
  std::vector<std::pair<int, std::shared_ptr<torch::nn::Module>>> out;
  for (int i = bounds_[size_t(layout_.stage)]; i < bounds_[size_t(layout_.stage) + 1]; ++i) {
    const std::string& key = specs_[size_t(i)].tied_key;
    if (key.empty() || first_of_key_.at(key) == i) out.emplace_back(i, layers_[size_t(i)]);
  }
  return out;
}

at::Tensor PipelineModuleImpl::run_layer(int i, const at::Tensor& x) {
  torch::nn::Module& m = *layers_[size_t(i)];
  const LayerSpec& s = specs_[size_t(i)];
  RECORD_USER_SCOPE(ds::str(i, ":", s.type));  // the layer, for the flops profiler
  return nn::run_unit(m, [&] { return s.forward(m, x); });
}

at::Tensor PipelineModuleImpl::run_range(int begin, int end, const at::Tensor& x) {
  at::Tensor h = x;
  for (int i = begin; i < end; ++i) h = run_layer(i, h);
  return h;
}

bool PipelineModuleImpl::checkpointable(int begin, int end) const {
  bool has_parameters = false;
  for (int i = begin; i < end; ++i) {
    if (!specs_[size_t(i)].tied_key.empty()) return false;
    has_parameters |= specs_[size_t(i)].parameters > 0;
  }
  return has_parameters;
}

at::Tensor PipelineModuleImpl::forward(const at::Tensor& x) {
  const int begin = bounds_[size_t(layout_.stage)], end = bounds_[size_t(layout_.stage) + 1];
  const int k = layout_.activation_checkpoint_interval;
  if (k == 0) return run_range(begin, end, x);
  at::Tensor h = x;
  for (int s = begin; s < end; s += k) {
    const int e = std::min(end, s + k);
    if (checkpointable(s, e))
      h = checkpointing::checkpoint([this, s, e](const std::vector<at::Tensor>& in) { return run_range(s, e, in[0]); }, {h});
    else
      h = run_range(s, e, h);
  }
  return h;
}

StageModel PipelineModuleImpl::stage_model(
    std::function<at::Tensor(const at::Tensor& output, const at::Tensor& labels)> loss) {
  return StageModel{[this](int, const at::Tensor& x) { return forward(x); }, std::move(loss)};
}

bool PipelineModuleImpl::uses_sparse_attention() const {
  return std::any_of(specs_.begin(), specs_.end(), [](const LayerSpec& s) { return s.sparse_attention; });
}

int PipelineModuleImpl::sequence_parallel_size() const {
  int out = 1;
  for (const LayerSpec& s : specs_) out = std::max(out, s.sequence_parallel);
  return out;
}

std::string PipelineModuleImpl::describe_stage(int stage) const {
  if (stage < 0) stage = layout_.stage;
  const int begin = bounds_[size_t(stage)], end = bounds_[size_t(stage) + 1];
  std::string kinds;
  int64_t params = 0;
  for (int i = begin; i < end;) {
    int j = i;
    while (j < end && specs_[size_t(j)].type == specs_[size_t(i)].type) ++j;
    if (!kinds.empty()) kinds += ", ";
    kinds += j - i > 1 ? ds::str(j - i, " x ", specs_[size_t(i)].type) : specs_[size_t(i)].type;
    for (int l = i; l < j; ++l) params += specs_[size_t(l)].parameters;
    i = j;
  }
  return ds::str("stage ", stage, " of ", layout_.stages, ": layers ", begin, "-", end - 1, " (", kinds, "), ",
                 params, " parameters");
}

}  // namespace ds::pipe
