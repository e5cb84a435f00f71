// Engine: construction from the plan, forward/backward, GatheredParameters and the memory
// count. The optimizer step is in engine_step.cpp, checkpoints in engine_checkpoint.cpp.
#include "ds/runtime/engine.h"
#include "ds/nn/checkpointing.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <sys/resource.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "ds/comm/agreement.h"
#include "ds/common/error.h"
#include "ds/common/progress.h"
#include "ds/nn/sequence_parallel_user.h"
#include "ds/nn/sparse_attention_user.h"
#include "ds/common/strings.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/offload/param_swapper.h"
#include "ds/offload/swap_dir.h"
#include "ds/profiling/flops_profiler.h"
#include "ds/runtime/allocator.h"

namespace ds {

using Clock = std::chrono::steady_clock;

int64_t current_rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

std::string loaded_blas_library() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto pos = line.find('/');
    if (pos != std::string::npos && line.find("blas", pos) != std::string::npos) return line.substr(pos);
  }
  return "";
}

int64_t peak_rss_bytes() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

Engine::Engine(std::shared_ptr<torch::nn::Module> model, const Config& config,
               std::shared_ptr<comm::Communicator> world, EngineOptions options)
    : Engine(std::move(model), config, comm::ParallelGroups::data_parallel(std::move(world)), std::move(options)) {}

Engine::Engine(std::shared_ptr<torch::nn::Module> model, const Config& config, comm::ParallelGroups groups,
               EngineOptions options)
    : model_(std::move(model)),
      config_(config),
      groups_(std::move(groups)),
      plan_(plan_engine(config_, groups_, options.compute_dtype, options.quantization_group)),
      optimizer_(options.optimizer ? std::move(options.optimizer) : optim::make_optimizer(config_.optimizer)),
      schedule_(optim::LrSchedule::from_config(config_.scheduler, config_.optimizer.lr)),
      scaler_(plan_.precision.loss_scaling ? LossScaler::from_config(config_.fp16) : LossScaler::none()) {
  groups_.world->logger().set_enabled(config_.comms_logger.enabled);
  if (config_.sparse_attention.enabled) {
    const auto* user = dynamic_cast<const nn::SparseAttentionUser*>(model_.get());
    if (!user || !user->uses_sparse_attention())
      throw ConfigError("sparse_attention: this model does not use block-sparse attention (ds::Gpt does when its "
                        "GptConfig::sparse carries the section; a model of your own: ds::sparse::SparseSelfAttention "
                        "and ds::nn::SparseAttentionUser); remove the section or use it in the model");
  }
  // The model must split its sequences over exactly the engine's sequence group: a model that
  // does not would attend within each rank's slice only, one that does without the key would
  // read other samples on the ranks it exchanges with.
  if (const auto* user = dynamic_cast<const nn::SequenceParallelUser*>(model_.get());
      (user ? user->sequence_parallel_size() : 1) != groups_.sequence->size())
    throw ConfigError(ds::str("sequence_parallel_size is ", groups_.sequence->size(), " but the model splits its "
                              "sequences over ", user ? user->sequence_parallel_size() : 1, " ranks (ds::Gpt does with "
                              "the engine's sequence group, groups.sequence; a model of your own: ds/seq/ulysses.h and "
                              "ds::nn::SequenceParallelUser); build the model with that group or change the key"));
  skip_nonfinite_steps_ = options.skip_nonfinite_steps;
  const std::string allocator = install_caching_allocator();
  // The config reader refuses this for a config's Lamb; an optimizer the program passes is checked here.
  if (optimizer_->passes() > 1 && (plan_.swap_optimizer || plan_.swap_params))
    throw ConfigError(ds::str(optimizer_->name(), " makes ", optimizer_->passes(), " passes over the states per step and "
                              "cannot swap to NVMe; use offload device \"cpu\" or \"none\""));
  if (plan_.swap_optimizer)
    for (const optim::StateSpec& s : optimizer_->state_specs())
      if (s.kind != optim::StateSpec::Kind::kElementwise)
        throw ConfigError(ds::str("zero_optimization.offload_optimizer \"nvme\" swaps elementwise states only; ",
                                  optimizer_->name(), " keeps '", s.name, "', which is not"));
  connect_pipeline_module();
  build_units(options);
  find_tied_units();
  plan_tensor_parallel_norm();
  if (plan_.stage == 3) start_stage3();
  std::vector<zero::FlatUnit*> raw;
  std::vector<at::Tensor> shards;
  for (auto& s : units_) {
    raw.push_back(s.unit.get());
    if (s.layout.grad_shard) shards.push_back(s.grad_shard);
  }
  zero::GradReducerOptions ro = plan_.reduce;
  if (coordinator_) ro.on_packed = [this](size_t u) { coordinator_->after_reduce(int(u)); };
  reducer_ = std::make_unique<zero::GradReducer>(raw, groups_.data, ro, shards);
  window_sync_ = plan_.sync;
  configure_activation_checkpointing();
  configure_flops_profiler();
  if (config_.csv_monitor.enabled) {
    std::string dir = config_.csv_monitor.output_path.empty() ? "." : config_.csv_monitor.output_path;
    set_metrics_csv(dir + "/" + config_.csv_monitor.job_name + "_metrics.csv");
  }
  if (groups_.world->rank() == 0) {
    std::fprintf(plan_.compute_slow ? stderr : stdout, "%s[ds] precision %s: compute in %s: %s\n",
                 plan_.compute_slow ? "warning: " : "", plan_.precision.describe().c_str(),
                 zero::dtype_name(plan_.precision.working), plan_.compute_reason.c_str());
    std::printf("[ds] %s\n", allocator.c_str());
    if (!plan_.hpz_note.empty()) std::fprintf(stderr, "warning: %s\n", plan_.hpz_note.c_str());
    if (plan_.gather.quantize_group > 0 || plan_.hpz > 1 || plan_.reduce.quantize_group > 0)
      std::printf("[ds] ZeRO++:%s%s%s\n", plan_.gather.quantize_group > 0 ? " weights gathered as int8 blocks (qwZ);" : "",
                  plan_.hpz > 1 ? ds::str(" a secondary weight copy over ", plan_.hpz, " data-parallel ranks (hpZ);").c_str() : "",
                  plan_.reduce.quantize_group > 0 ? " gradients reduce-scattered as int8 blocks (qgZ)" : "");
    if (groups_.pipe->size() > 1)
      std::printf("[ds] pipeline: %d stages (1F1B, %lld micro-batches per step) x %d data-parallel%s\n",
                  groups_.pipe->size(), (long long)config_.gradient_accumulation_steps, groups_.data->size(),
                  sp_size() > 1 ? ds::str(" (", sample_ranks(), " x sequence ", sp_size(), ")").c_str() : "");
    std::fflush(stdout);
  }
  std::string blas = loaded_blas_library();
  if (groups_.world->rank() == 0 && blas.find("/blas/libblas") != std::string::npos)
    std::fprintf(stderr, "warning: LibTorch is using the reference BLAS (%s), ~50x slower than OpenBLAS; "
                         "install libopenblas0-pthread (scripts/setup does)\n", blas.c_str());
  last_step_time_ = Clock::now();
}

// Every unit as its layout says: flat (or taken from a zero::Init), the same weights on every
// data-parallel rank, rounded to the param dtype, sharded at stage 3, with its master, gradient
// shard and optimizer states. What can fail on one rank alone (the swap directories) is checked
// on every rank before any weight moves.
void Engine::build_units(EngineOptions& options) {
  std::vector<zero::UnitSpec> specs = std::move(options.units);
  if (specs.empty()) specs = zero::find_units(*model_);
  if (specs.empty()) throw Error("the model has no trainable parameters");
  // Before the first collective: ranks with another config, model or engine would issue other
  // collectives (and abort inside the transport).
  // Every rank runs the same config and engine; the ranks of one data-parallel group (the
  // same pipeline stage and tensor shard) hold the same parameters.
  comm::check_ranks_agree(*groups_.world, "the config", config_.fingerprint() + "(engine) " + plan_.precision.describe());
  std::string fingerprint;
  for (const auto& spec : specs)
    for (const auto& [name, p] : spec.params) fingerprint += ds::str(spec.name, ": ", name, " ", p.sizes(), "\n");
  comm::check_ranks_agree(*groups_.data, "the model", fingerprint);
  std::vector<std::unique_ptr<zero::FlatUnit>> sharded(specs.size());  // units a zero::Init built
  std::vector<zero::UnitLayout> layouts;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (plan_.stage == 3) sharded[i] = zero::take_matching_unit(options.sharded_units, specs[i]);
    int64_t numel = 0;  // an Init unit's parameters are empty placeholders now
    for (const auto& [name, p] : specs[i].params) numel += p.numel();
    layouts.push_back(zero::plan_unit(sharded[i] ? sharded[i]->numel() : numel, plan_.shard));
  }
  if (!options.sharded_units.empty())
    throw Error(ds::str("ds::zero::Init sharded ", options.sharded_units.size(), " unit(s) the engine does not train ",
                        "(the first: ", options.sharded_units.front()->name(), "); build the engine with the model ",
                        "the Init built"));
  comm::all_or_nothing(*groups_.world, [&] { preflight_swap(layouts); });
  std::vector<at::Tensor> initial_masters;  // swapped masters, until they are on disk
  for (size_t i = 0; i < specs.size(); ++i) add_unit(specs[i], layouts[i], std::move(sharded[i]), initial_masters);
  // Local disk work that can fail on one rank (the space taken between the check and now):
  // every rank learns which, instead of the others failing later on a closed connection.
  if (plan_.swap_optimizer) comm::all_or_nothing(*groups_.world, [&] { start_offload(initial_masters); });
}

// The swap directories can hold what this rank will put there (stale directories of killed
// runs removed first).
void Engine::preflight_swap(const std::vector<zero::UnitLayout>& layouts) const {
  std::vector<int64_t> lengths;
  for (const auto& l : layouts) lengths.push_back(l.own.length);
  uint64_t optimizer_bytes = 0, param_bytes = 0;
  if (plan_.swap_optimizer) {
    const size_t tensors = optimizer_->state_specs().size() + (plan_.precision.master_is_working() ? 0 : 1);
    optimizer_bytes = offload::OptimizerSwapper::bytes_needed(lengths, tensors, plan_.swap_optimizer->sub_group_size);
    offload::remove_stale_swap_dirs(plan_.swap_optimizer->nvme_path);
  }
  if (plan_.swap_params) {
    param_bytes = offload::ParamSwapper::bytes_needed(lengths, plan_.precision.param);
    offload::remove_stale_swap_dirs(plan_.swap_params->nvme_path);
  }
  if (plan_.swap_optimizer && plan_.swap_params && plan_.swap_optimizer->nvme_path == plan_.swap_params->nvme_path) {
    aio::check_swap_path(plan_.swap_optimizer->nvme_path, optimizer_bytes + param_bytes);
    return;
  }
  if (plan_.swap_optimizer) aio::check_swap_path(plan_.swap_optimizer->nvme_path, optimizer_bytes);
  if (plan_.swap_params) aio::check_swap_path(plan_.swap_params->nvme_path, param_bytes);
}

void Engine::add_unit(const zero::UnitSpec& spec, const zero::UnitLayout& l, std::unique_ptr<zero::FlatUnit> sharded,
                      std::vector<at::Tensor>& initial_masters) {
  const zero::PrecisionPolicy& pp = plan_.precision;
  comm::Communicator& data = *groups_.data;
  UnitState s;
  s.layout = l;
  s.unit = std::move(sharded);
  if (s.unit) {  // a zero::Init sharded it already (its weights came from the group's first rank)
    if (s.unit->dtype() != pp.working || s.unit->shard_dtype() != pp.param || s.unit->padded_numel() != l.padded_numel)
      throw Error(ds::str("unit ", spec.name, " was sharded by ds::zero::Init as ", zero::dtype_name(s.unit->dtype()),
                          " weights with ", zero::dtype_name(s.unit->shard_dtype()), " shards of a ",
                          s.unit->padded_numel(), "-element buffer, but the engine needs ", pp.describe(), " over ",
                          data.size(), " data-parallel ranks; build the Init with the same config, data-parallel "
                          "group and dtypes"));
  } else {
    zero::FlatUnitOptions o;
    o.pad_to = plan_.shard.pad * data.size();
    o.dtype = pp.working;
    o.persistent_grads = l.persistent_grads;
    o.shard_dtype = pp.param;
    s.unit = std::make_unique<zero::FlatUnit>(spec.name, spec.params, o);
    at::Tensor params = s.unit->params();
    data.broadcast(params, 0).wait();  // every replica starts from the first one's weights
    if (pp.rounds_working()) params.copy_(params.to(pp.param));  // the weights hold param-dtype values
    if (l.shard_params) s.unit->shard(data.size(), data.rank());
  }
  DS_CHECK(s.unit->padded_numel() == l.padded_numel, "unit ", spec.name, ": padded to ", s.unit->padded_numel(),
           " but its layout says ", l.padded_numel);
  const at::Tensor weights =
      l.shard_params ? s.unit->shard_data() : s.unit->params().slice(0, l.own.offset, l.own.offset + l.own.length);
  if (l.master_is_weights) s.master = weights;
  else if (plan_.swap_optimizer) initial_masters.push_back(weights.to(at::kFloat, false, /*copy=*/true));
  else s.master = weights.to(at::kFloat, false, /*copy=*/true);
  if (l.grad_shard) s.grad_shard = at::zeros({l.own.length}, at::TensorOptions().dtype(pp.grad));
  if (!plan_.swap_optimizer) s.states = optimizer_->init_state(l.own.length);
  units_.push_back(std::move(s));
}

void Engine::start_offload(std::vector<at::Tensor>& initial_masters) {
  std::vector<int64_t> lengths;
  for (const auto& s : units_) lengths.push_back(s.layout.own.length);
  const bool swap_master = !plan_.precision.master_is_working();
  int64_t elements = 0;
  for (int64_t n : lengths) elements += n;
  const double element_bytes = double(sizeof(float) * (optimizer_->state_specs().size() + (swap_master ? 1 : 0)));
  Progress progress(groups_.world->rank() == 0, "offload_optimizer nvme: writing the initial states to the swap file",
                    double(elements) * element_bytes, Progress::Unit::kBytes);
  swapper_ = std::make_unique<offload::OptimizerSwapper>(*plan_.swap_optimizer, lengths,
                                                          optimizer_->state_specs().size(), swap_master,
                                                          [&](int64_t n) {
                                                            progress.advance(double(n) * element_bytes);
                                                            return optimizer_->init_state(n);
                                                          });
  progress.finish();
  if (swap_master)
    swapper_->for_each([&](const offload::SwapSegment& s, at::Tensor master, std::vector<at::Tensor>&) {
      master.copy_(initial_masters[s.unit].slice(0, s.offset, s.offset + s.length));
    });
  initial_masters.clear();
  if (groups_.world->rank() == 0)
    std::printf("[ds] offload_optimizer nvme: %s per rank on disk under %s in %zu sub-groups, %s of I/O buffers\n",
                format_bytes(double(swapper_->file_bytes())).c_str(), plan_.swap_optimizer->nvme_path.c_str(),
                swapper_->sub_groups(), format_bytes(double(swapper_->buffer_bytes())).c_str());
}

void Engine::start_stage3() {
  zero::CoordinatorOptions co = plan_.gather;
  if (plan_.swap_params) {  // the weight shards go to disk
    std::vector<int64_t> lengths;
    for (const auto& s : units_) lengths.push_back(s.layout.own.length);
    comm::all_or_nothing(*groups_.world, [&] {
      param_swapper_ = std::make_unique<offload::ParamSwapper>(*plan_.swap_params, lengths, plan_.precision.param);
      Progress progress(groups_.world->rank() == 0, "offload_param nvme: writing the weight shards to the swap file",
                        double(units_.size()), Progress::Unit::kCount, "units");
      for (size_t u = 0; u < units_.size(); ++u) {
        param_swapper_->write(u, units_[u].unit->shard_data());
        progress.advance();
      }
      param_swapper_->flush();
      progress.finish();
    });
    for (auto& s : units_) s.unit->drop_shard_data();
    co.store = param_swapper_.get();
  }
  std::vector<zero::FlatUnit*> raw;
  for (auto& s : units_) raw.push_back(s.unit.get());
  co.report_progress = groups_.world->rank() == 0;
  if (plan_.hpz > 1) {  // hpZ: consecutive data-parallel ranks (those of a node) hold the secondary copy
    const int first = groups_.data->rank() / plan_.hpz * plan_.hpz;
    std::vector<int> members;
    for (int r = first; r < first + plan_.hpz; ++r) members.push_back(r);
    co.secondary = groups_.data->new_group(members, "hpz");
    warn_hpz_across_hosts();
  }
  coordinator_ = std::make_unique<zero::ParamCoordinator>(raw, groups_.data, co);
  unit_aware_ = dynamic_cast<nn::UnitAware*>(model_.get()) != nullptr;
  if (groups_.world->rank() != 0) return;
  if (units_.size() == 1)
    std::fprintf(stderr, "warning: ZeRO stage 3 with a single unit (%s): the whole model is gathered for each "
                         "forward and backward, so parameters are sharded only between steps; make its layers "
                         "submodules (ds::zero::find_units) to shard them during the step too\n",
                 units_[0].unit->name().c_str());
  else if (!unit_aware_)
    std::fprintf(stderr, "warning: ZeRO stage 3: the model does not run its units through ds::nn::run_unit "
                         "(ds/nn/unit.h), so all %zu units are gathered before each forward; parameters are "
                         "sharded only between steps\n", units_.size());
}

// hpZ's groups are consecutive data-parallel ranks; where placement or the tensor size puts a
// group on several hosts, its gathers cross the network. Said once, at start-up.
void Engine::warn_hpz_across_hosts() {
  const std::vector<uint64_t> hosts = comm::host_keys(*groups_.data);
  std::vector<std::string> spanning;
  for (size_t first = 0; first < hosts.size(); first += size_t(plan_.hpz))
    for (size_t r = first + 1; r < first + size_t(plan_.hpz); ++r)
      if (hosts[r] != hosts[first]) {
        spanning.push_back(ds::str(first, "-", first + size_t(plan_.hpz) - 1));
        break;
      }
  if (spanning.empty() || groups_.world->rank() != 0) return;
  std::string list;
  for (size_t i = 0; i < spanning.size() && i < 4; ++i) list += (i ? ", " : "") + spanning[i];
  std::fprintf(stderr, "warning: zero_optimization.zero_hpz_partition_size %d: %zu of %zu secondary groups span "
                       "hosts (data-parallel ranks %s%s), so their gathers cross the network; set it to the "
                       "data-parallel ranks per host\n",
               plan_.hpz, spanning.size(), hosts.size() / size_t(plan_.hpz), list.c_str(),
               spanning.size() > 4 ? ", ..." : "");
}

void Engine::set_metrics_csv(const std::string& path) {
  if (groups_.world->rank() != 0) return;
  csv_.close();
  csv_.open(path);
  if (!csv_) throw Error(ds::str("cannot write the metrics file ", path, " (does its directory exist?)"));
  csv_ << "step,loss,lr,grad_norm,loss_scale,skipped,ms_per_step,tokens_per_s,rss_bytes,forward_ms,backward_ms,"
          "backward_comm_wait_ms,gather_wait_ms,reduce_ms,optimizer_ms,disk_wait_ms\n";
}

// The checkpointing options (their partition group holds this engine's tensor group) go with
// the engine, unless a newer engine set its own.
Engine::~Engine() {
  checkpointing::unconfigure(checkpointing_token_);
  warn_flops_profile_missed();
}

bool Engine::is_gradient_accumulation_boundary() const {
  return micro_step_ % config_.gradient_accumulation_steps == 0 && micro_step_ > 0;
}

double Engine::current_lr() const { return schedule_.lr(schedule_iteration_); }

int64_t Engine::parameter_count() const {
  int64_t n = 0;
  for (const auto& s : units_) n += s.unit->numel();
  return n;
}

void Engine::backward(const at::Tensor& loss) {
  if (loss.numel() != 1) throw Error(ds::str("backward() takes a scalar loss, got shape ", loss.sizes()));
  loss_sum_ += loss.item<double>();
  run_backward([&] {
    at::Tensor scaled = loss * (scaler_.scale() / double(config_.gradient_accumulation_steps));
    scaled.backward();
  });
}

void Engine::backward(const at::Tensor& output, const at::Tensor& grad) {
  if (!grad.defined() || !output.sizes().equals(grad.sizes()))
    throw Error(ds::str("backward(output, grad): the gradient's shape ", grad.defined() ? grad.sizes() : at::IntArrayRef{},
                        " is not the output's ", output.sizes()));
  run_backward([&] { torch::autograd::backward({output}, {grad.to(output.scalar_type())}); });
}

// One micro-batch's backward with the engine's bookkeeping around it: the window's gradient
// synchronisation, the grad-view check, the reducer, stage 3's coordinator, the counters.
void Engine::run_backward(const std::function<void()>& autograd) {
  if (groups_.pipe->size() > 1 && !in_train_batch_)
    throw Error("pipeline.stages > 1: train with engine.train_batch(stage, data); backward() alone would treat this "
                "stage's layers as the whole model");
  auto start = Clock::now();
  const int64_t gas = config_.gradient_accumulation_steps;
  if (micro_step_ % gas == 0) window_sync_ = optimizer_->grad_sync(plan_.sync, optimizer_steps_ + 1);
  const bool boundary = (micro_step_ + 1) % gas == 0;
  for (auto& s : units_) s.unit->check_grad_views();
  reducer_->begin_backward(boundary, window_sync_);
  const double waited = reducer_->wait_seconds();
  mark_gather_waits();
  resume_flops_profile();
  autograd();
  pause_flops_profile();
  if (plan_.reduce.every_micro_batch) reducer_->finish();  // this micro-batch's gradients go to the shards now
  if (coordinator_) coordinator_->end_micro_batch();
  add_gather_waits();
  ++micro_step_;
  backward_comm_s_ += reducer_->wait_seconds() - waited;
  backward_s_ += std::chrono::duration<double>(Clock::now() - start).count();
}

// The stage's forward run as the engine's forward (timed; stage 3 gathers around it).
pipe::StageModel Engine::as_engine_forward(const pipe::StageModel& stage) {
  pipe::StageModel wrapped = stage;
  wrapped.forward = [this, f = stage.forward](int chunk, const at::Tensor& x) {
    return forward([&] { return f(chunk, x); });
  };
  return wrapped;
}

namespace {

// Activations and gradients between stages split over the tensor group, as the config says.
pipe::SplitMessages split_messages(const Config& c, const comm::ParallelGroups& g) {
  if (g.tensor->size() == 1) return {};
  return {g.tensor, c.pipeline.pipe_partitioned, c.pipeline.grad_partitioned};
}

}  // namespace

StepStats Engine::train_batch(const pipe::StageModel& stage, const pipe::DataSource& data) {
  if (micro_step_ % config_.gradient_accumulation_steps != 0)
    throw Error("train_batch() inside an accumulation window started by backward(): finish it with step() first");
  const int stages = groups_.pipe->size();
  pipe::Executor executor({pipe::Kind::kOneFOneB, stages, int(config_.gradient_accumulation_steps)}, groups_.pipe,
                          split_messages(config_, groups_));
  std::optional<StepStats> stats;
  pipe::BatchHooks hooks;
  hooks.backward_loss = [this](const at::Tensor& loss) { backward(loss); };
  hooks.backward_output = [this](const at::Tensor& out, const at::Tensor& grad) { backward(out, grad); };
  hooks.optimizer_step = [&] { stats = step(); };
  struct InBatch {  // backward() is allowed while the schedule runs, whichever way it ends
    bool& flag;
    explicit InBatch(bool& f) : flag(f) { flag = true; }
    ~InBatch() { flag = false; }
  } in_batch(in_train_batch_);
  executor.run(as_engine_forward(stage), data, hooks);
  if (!stats) throw Error("train_batch(): the schedule ended without an optimizer step");
  return *stats;
}

double Engine::eval_batch(const pipe::StageModel& stage, const pipe::DataSource& data, int micro_batches) {
  const int m = micro_batches > 0 ? micro_batches : int(config_.gradient_accumulation_steps);
  pipe::Executor executor({pipe::Kind::kInference, groups_.pipe->size(), m}, groups_.pipe, split_messages(config_, groups_));
  at::Tensor loss = at::full({1}, executor.run(as_engine_forward(stage), data), at::kDouble);
  if (dp_size() > 1) groups_.data->all_reduce(loss, comm::ReduceOp::Avg).wait();
  return loss.item<double>();
}

namespace {

// `t` (meaningful on `root` only) on every rank: its shape and dtype first, then the data.
// Collective; a tensor that cannot travel throws on every rank.
at::Tensor broadcast_any(comm::Communicator& comm, const at::Tensor& t, int root) {
  constexpr int kMaxDims = 8;
  at::Tensor meta = at::zeros({kMaxDims + 2}, at::kLong);
  const bool mine = comm.rank() == root;
  if (mine) {
    meta[0] = t.dim() > kMaxDims ? -1 : t.dim(), meta[1] = int64_t(t.scalar_type());
    for (int64_t d = 0; d < t.dim() && d < kMaxDims; ++d) meta[d + 2] = t.size(d);
  }
  comm.broadcast(meta, root).wait();
  if (meta[0].item<int64_t>() < 0)
    throw Error(ds::str("forward_pipeline: the last stage's output has more than ", kMaxDims, " dimensions"));
  std::vector<int64_t> sizes;
  for (int64_t d = 0; d < meta[0].item<int64_t>(); ++d) sizes.push_back(meta[d + 2].item<int64_t>());
  at::Tensor out = mine ? t.contiguous() : at::empty(sizes, at::TensorOptions().dtype(at::ScalarType(meta[1].item<int64_t>())));
  comm.broadcast(out, root).wait();
  return out;
}

}  // namespace

at::Tensor Engine::forward_pipeline(const pipe::StageModel& stage, const at::Tensor& inputs) {
  torch::NoGradGuard no_grad;
  // This forward is not the training step's: its time and gather waits are not the step's.
  const double training_forward_s = forward_s_, training_gather_s = gather_wait_s_, training_read_s = read_wait_s_;
  auto to_fp32 = [](const at::Tensor& o) { return at::isFloatingType(o.scalar_type()) ? o.to(at::kFloat) : o; };
  const int stages = groups_.pipe->size();
  at::Tensor out;
  if (stages == 1) {
    out = to_fp32(forward([&] { return stage.forward(0, inputs); }));
  } else {
    pipe::StageModel capture = stage;
    capture.loss = [&](const at::Tensor& o, const at::Tensor&) {
      out = to_fp32(o);
      return at::zeros({}, at::kDouble);
    };
    pipe::Executor executor({pipe::Kind::kInference, stages, 1}, groups_.pipe, split_messages(config_, groups_));
    executor.run(as_engine_forward(capture), [&](int) { return pipe::MicroBatch{inputs, inputs}; });
    out = broadcast_any(*groups_.pipe, out, stages - 1);
  }
  forward_s_ = training_forward_s, gather_wait_s_ = training_gather_s, read_wait_s_ = training_read_s;
  return out;
}

at::Tensor Engine::grad_of(size_t u) const {
  const UnitState& s = units_[u];
  if (window_sync_ == zero::GradSync::kReduceScatter) return s.grad_shard;
  if (window_sync_ == zero::GradSync::kNone) return s.unit->grads();  // this rank's own, whole
  const zero::UnitLayout& l = s.layout;
  return s.unit->grads().slice(0, l.own.offset, l.own.offset + l.own.length);
}

void Engine::forward_begin() {
  resume_flops_profile();
  if (!coordinator_) return;
  mark_gather_waits();
  coordinator_->begin_micro_batch();
  if (!unit_aware_) coordinator_->gather_all();
}

void Engine::forward_end() {
  if (coordinator_ && !at::GradMode::is_enabled()) coordinator_->end_micro_batch();  // no backward follows
  add_gather_waits();
  pause_flops_profile();
}

std::vector<size_t> Engine::units_holding(const std::vector<std::string>& names) const {
  std::vector<size_t> out;
  std::vector<bool> found(names.size(), false);
  for (size_t u = 0; u < units_.size(); ++u) {
    bool wanted = names.empty();
    for (size_t i = 0; i < names.size(); ++i)
      for (const zero::ParamSlot& s : units_[u].unit->slots())
        if (s.name == names[i]) wanted = found[i] = true;
    if (wanted) out.push_back(u);
  }
  for (size_t i = 0; i < names.size(); ++i)
    if (!found[i]) throw Error(ds::str("gathered_parameters: the engine trains no parameter named '", names[i], "'"));
  return out;
}

// The weights of unit u as they are on data-parallel rank `modifier_rank` become everyone's:
// its full buffer is broadcast and each rank takes its master (and shard) from it.
void Engine::write_back(size_t u, int modifier_rank) {
  UnitState& s = units_[u];
  at::Tensor full = s.unit->params();
  groups_.data->broadcast(full, modifier_rank).wait();
  if (plan_.precision.rounds_working()) full.copy_(full.to(plan_.precision.param));
  const at::Tensor mine = full.slice(0, s.layout.own.offset, s.layout.own.offset + s.layout.own.length);
  if (s.layout.master_is_weights) {
    if (s.layout.shard_params) s.master.copy_(mine);  // stage 3: the master is the shard
  } else if (s.master.defined()) {
    s.master.copy_(mine);
  } else {  // the master is on disk, next to the states (which stay as they are)
    swapper_->write_unit(u, mine.to(at::kFloat), {});
  }
  if (s.layout.shard_params && !s.layout.master_is_weights) {
    if (param_swapper_) {
      param_swapper_->write(u, mine);
      param_swapper_->flush();
    } else {
      s.unit->shard_data().copy_(mine);
    }
  }
  if (coordinator_) coordinator_->weights_changed(int(u));
}

void Engine::gathered_parameters(const std::vector<std::string>& names, const std::function<void()>& f,
                                 int modifier_rank) {
  if (modifier_rank >= dp_size())
    throw Error(ds::str("gathered_parameters: modifier_rank ", modifier_rank, " but there are ", dp_size(),
                        " data-parallel ranks"));
  const std::vector<size_t> units = units_holding(names);
  if (coordinator_) {
    size_t pinned = 0;
    try {
      for (; pinned < units.size(); ++pinned) coordinator_->pin(int(units[pinned]));
    } catch (...) {  // (every rank fails at the same unit) the earlier ones are not left pinned
      for (size_t i = 0; i < pinned; ++i) coordinator_->unpin(int(units[i]));
      throw;
    }
  }
  std::exception_ptr failed;
  try {
    at::NoGradGuard no_grad;
    f();
  } catch (...) {
    failed = std::current_exception();
  }
  // Every rank takes part in the write-back (a collective) even if f() threw on this one.
  if (modifier_rank >= 0)
    for (size_t u : units) write_back(u, modifier_rank);
  if (coordinator_)
    for (size_t u : units) coordinator_->unpin(int(u));
  if (failed) std::rethrow_exception(failed);
}

Engine::MemoryBreakdown Engine::memory_breakdown() const {
  MemoryBreakdown m;
  for (const UnitState& s : units_) {
    const zero::FlatUnit& unit = *s.unit;
    if (s.layout.shard_params) {
      // The shard (under fp32 also the master), and the unit while gathered.
      if (unit.shard_data().defined()) m.params += int64_t(unit.shard_data().nbytes());
      else m.on_disk += s.layout.own.length * int64_t(c10::elementSize(unit.shard_dtype()));  // offload_param nvme
      if (unit.gathered()) m.params += int64_t(unit.params().nbytes());
    } else {
      m.params += int64_t(unit.params().nbytes());
    }
    if (unit.persistent_grads()) m.grads += int64_t(unit.grads().nbytes());
    if (s.grad_shard.defined()) m.grads += int64_t(s.grad_shard.nbytes());
    if (s.master.defined() && !s.layout.master_is_weights) m.masters += int64_t(s.master.nbytes());
    for (const auto& t : s.states) m.optimizer_state += int64_t(t.nbytes());
  }
  if (coordinator_) m.params += coordinator_->secondary_bytes();  // hpZ's copies
  m.optimizer_state += optimizer_->held_bytes();
  if (swapper_) {
    m.optimizer_state += swapper_->buffer_bytes();  // the I/O buffers; the rest is on disk
    m.on_disk += int64_t(swapper_->file_bytes());
  }
  return m;
}

}  // namespace ds
