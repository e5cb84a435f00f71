#include "ds/runtime/engine.h"

#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iomanip>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/runtime/optimizer_swapper.h"
#include "ds/runtime/param_swapper.h"
#include "ds/runtime/zero_init.h"

namespace ds {

using Clock = std::chrono::steady_clock;

const char* to_string(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
  }
  return "?";
}

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

Precision precision_of(const Config& c) {
  if (c.fp16.enabled && c.bf16.enabled) throw ConfigError("fp16.enabled and bf16.enabled are both true; choose one");
  return c.fp16.enabled ? Precision::FP16 : c.bf16.enabled ? Precision::BF16 : Precision::FP32;
}

namespace {

at::ScalarType half_dtype(Precision p) { return p == Precision::BF16 ? at::kBFloat16 : at::kHalf; }

at::ScalarType comm_dtype(const Config& c, Precision p) {
  if (c.communication_data_type) {
    switch (*c.communication_data_type) {
      case DataType::kFp32: return at::kFloat;
      case DataType::kFp16: return at::kHalf;
      case DataType::kBf16: return at::kBFloat16;
    }
  }
  return p == Precision::FP32 ? at::kFloat : half_dtype(p);
}

// What the engine cannot honour yet is refused here, in one place, with the key's path.
void check_supported(const Config& c, int world) {
  if (!c.resolved()) throw ConfigError("the engine needs a resolved config: call config.resolve(world_size) first");
  if (c.parallel.data_parallel_size != world)
    throw ConfigError(ds::str("the config was resolved for ", c.parallel.data_parallel_size,
                              " data-parallel ranks but the communicator has ", world));
  const auto& z = c.zero_optimization;
  if (z.offload_optimizer.device != OffloadDevice::kNone && z.stage == 0)
    throw ConfigError("zero_optimization.offload_optimizer needs ZeRO stage 1, 2 or 3 (as in DeepSpeed)");
  // On a CPU build the states already live in host memory; what cpu offload changes is that the
  // step runs on the CPU kernels, which the engine uses anyway unless torch_adam is set.
  if (z.offload_optimizer.device == OffloadDevice::kCpu && c.optimizer.torch_adam)
    throw ConfigError("zero_optimization.offload_optimizer with optimizer.params.torch_adam: offload runs the CPU "
                      "kernels; remove torch_adam");
  if (z.offload_param.device == OffloadDevice::kNvme && z.stage != 3)
    throw ConfigError(ds::str("zero_optimization.offload_param.device \"nvme\" needs ZeRO stage 3, stage is ", z.stage));
  if (z.offload_param.device == OffloadDevice::kNvme && !c.bf16.enabled && !c.fp16.enabled)
    throw ConfigError("zero_optimization.offload_param.device \"nvme\" needs bf16 or fp16: under fp32 the weight shard "
                      "is the optimizer's master and stays in memory; enable bf16");
  if (c.gradient_clipping < 0) throw ConfigError(ds::str("gradient_clipping must be >= 0, got ", c.gradient_clipping));
  if (c.parallel.pipeline_stages > 1 || c.parallel.tensor_parallel_size > 1)
    throw ConfigError("pipeline.stages / tensor_parallel.autotp_size > 1: the engine runs data parallelism only");
  if (c.checkpoint.use_node_local_storage)
    throw ConfigError("checkpoint.use_node_local_storage: the engine saves every rank's part into one shared "
                      "directory (rank 0 checks each file before committing); remove the key");
  if (c.sparse_attention.enabled)
    throw ConfigError("sparse_attention: the engine has no sparse attention kernels yet; remove the section");
}

}  // namespace

Engine::Engine(std::shared_ptr<torch::nn::Module> model, const Config& config, std::shared_ptr<comm::Communicator> comm,
               std::vector<UnitSpec> units)
    : model_(std::move(model)), config_(config), precision_(precision_of(config)), comm_(std::move(comm)),
      schedule_(LrSchedule::from_config(config.scheduler, config.optimizer.lr)),
      scaler_(precision_ == Precision::FP16 ? LossScaler::from_config(config.fp16) : LossScaler::none()) {
  check_supported(config_, comm_->size());
  stage_ = static_cast<int>(config_.zero_optimization.stage);
  comm_->logger().set_enabled(config_.comms_logger.enabled);
  if (units.empty()) units = find_units(*model_);
  if (units.empty()) throw Error("the model has no trainable parameters");
  optimizer_ = make_optimizer(config_.optimizer);
  const int world = comm_->size(), rank = comm_->rank();
  const bool swap = config_.zero_optimization.offload_optimizer.device == OffloadDevice::kNvme;
  std::vector<at::Tensor> initial_masters;  // swapped masters, until they are on disk
  for (auto& spec : units) {
    // Stage 3: a unit ds::Init already sharded (its weights came from rank 0 then).
    std::unique_ptr<FlatUnit> unit = stage_ == 3 ? take_partitioned_unit(spec) : nullptr;
    if (!unit) {
      unit = std::make_unique<FlatUnit>(spec.name, spec.params, kUnitPadding * world, /*persistent_grads=*/stage_ < 2);
      at::Tensor params = unit->params();
      comm_->broadcast(params, 0).wait();  // every rank starts from rank 0's weights
      if (stage_ == 3) unit->shard(world, rank);
    }
    at::Tensor own_params;
    if (stage_ == 3) {
      own_params = unit->shard_data();
    } else {
      comm::Chunk own = stage_ == 0 ? comm::Chunk{0, unit->padded_numel()} : comm::chunk_of(unit->padded_numel(), world, rank);
      own_params = unit->params().slice(0, own.offset, own.offset + own.length);
    }
    if (precision_ != Precision::FP32) {  // the model holds half values
      if (stage_ == 3) own_params.copy_(own_params.to(half_dtype(precision_)));
      else unit->params().copy_(unit->params().to(half_dtype(precision_)));
    }
    // Swapped to disk (below), the states and a separate fp32 master are not kept here.
    const bool swapped_master = swap && precision_ != Precision::FP32;
    masters_.push_back(precision_ == Precision::FP32 ? own_params : swapped_master ? at::Tensor() : own_params.clone());
    if (stage_ == 3) gather_from_.push_back(precision_ == Precision::FP32 ? own_params : own_params.to(half_dtype(precision_)));
    if (stage_ > 0) grad_shards_.push_back(at::zeros({own_params.numel()}));
    states_.push_back(swap ? std::vector<at::Tensor>{} : optimizer_->init_state(own_params.numel()));
    if (swapped_master) initial_masters.push_back(own_params.clone());
    units_.push_back(std::move(unit));
  }
  if (swap) start_swapping(initial_masters);
  std::vector<FlatUnit*> raw;
  for (auto& u : units_) raw.push_back(u.get());
  if (stage_ == 3) {
    const ZeroConfig& z = config_.zero_optimization;
    CoordinatorOptions co;
    co.prefetch_elements = z.stage3_prefetch_bucket_size;
    co.max_live_elements = z.stage3_max_live_parameters;
    co.max_reuse_distance = z.stage3_max_reuse_distance;
    co.persistence_threshold = z.stage3_param_persistence_threshold;
    co.gather_dtype = precision_ == Precision::FP32 ? at::kFloat : half_dtype(precision_);
    if (z.offload_param.device == OffloadDevice::kNvme) {  // the half shards go to disk
      std::vector<int64_t> lengths;
      for (const auto& g : gather_from_) lengths.push_back(g.numel());
      param_swapper_ = std::make_unique<ParamSwapper>(z.offload_param.nvme_path.value_or(""), rank, lengths, co.gather_dtype);
      for (size_t u = 0; u < gather_from_.size(); ++u) {
        param_swapper_->write(u, 0, gather_from_[u]);
        gather_from_[u] = at::Tensor();
      }
      param_swapper_->flush();
      co.load_shard = [this](int u) { return param_swapper_->read(size_t(u)); };
    }
    coordinator_ = std::make_unique<ParamCoordinator>(raw, gather_from_, comm_, co);
    if (precision_ != Precision::FP32)  // the fp32 master and the half copy hold the values
      for (auto& u : units_) u->drop_shard_data();
    unit_aware_ = dynamic_cast<zero::UnitAware*>(model_.get()) != nullptr;
    if (rank == 0 && units_.size() == 1)
      std::fprintf(stderr, "warning: ZeRO stage 3 with a single unit (%s): the whole model is gathered for each "
                           "forward and backward, so parameters are sharded only between steps; make its layers "
                           "submodules (ds::find_units) to shard them during the step too\n", units_[0]->name().c_str());
    else if (rank == 0 && !unit_aware_)
      std::fprintf(stderr, "warning: ZeRO stage 3: the model does not run its units through ds::zero::run_unit "
                           "(ds/zero/zero.h), so all %zu units are gathered before each forward; parameters are "
                           "sharded only between steps\n", units_.size());
  }
  GradReducerOptions ro;
  ro.mode = stage_ == 0 ? GradReducerOptions::Mode::AllReduce : GradReducerOptions::Mode::ReduceScatter;
  ro.every_micro_batch = stage_ >= 2;
  ro.overlap = stage_ == 0 || config_.zero_optimization.overlap_comm;  // stage 0 always overlaps
  ro.bucket_elements = config_.zero_optimization.reduce_bucket_size;
  ro.predivide_factor = config_.gradient_predivide_factor;
  ro.comm_dtype = comm_dtype(config_, precision_);
  if (coordinator_) ro.on_packed = [this](size_t u) { coordinator_->after_reduce(int(u)); };
  reducer_ = std::make_unique<GradReducer>(raw, comm_, ro, grad_shards_);
  if (config_.csv_monitor.enabled) {
    std::string dir = config_.csv_monitor.output_path.empty() ? "." : config_.csv_monitor.output_path;
    set_metrics_csv(dir + "/" + config_.csv_monitor.job_name + "_metrics.csv");
  }
  std::string blas = loaded_blas_library();
  if (comm_->rank() == 0 && blas.find("/blas/libblas") != std::string::npos)
    std::fprintf(stderr, "warning: LibTorch is using the reference BLAS (%s), ~50x slower than OpenBLAS; "
                         "install libopenblas0-pthread (scripts/setup does)\n", blas.c_str());
  last_step_time_ = Clock::now();
}

void Engine::set_metrics_csv(const std::string& path) {
  if (comm_->rank() != 0) return;
  csv_.close();
  csv_.open(path);
  if (!csv_) throw Error(ds::str("cannot write the metrics file ", path, " (does its directory exist?)"));
  csv_ << "step,loss,lr,grad_norm,loss_scale,skipped,ms_per_step,tokens_per_s,rss_bytes\n";
}

Engine::~Engine() = default;

bool Engine::is_gradient_accumulation_boundary() const {
  return micro_step_ % config_.gradient_accumulation_steps == 0 && micro_step_ > 0;
}

double Engine::current_lr() const { return schedule_.lr(schedule_iteration_); }

int64_t Engine::parameter_count() const {
  int64_t n = 0;
  for (const auto& u : units_) n += u->numel();
  return n;
}

void Engine::backward(const at::Tensor& loss) {
  if (loss.numel() != 1) throw Error(ds::str("backward() takes a scalar loss, got shape ", loss.sizes()));
  auto start = Clock::now();
  double value = loss.item<double>();
  loss_sum_ += value;
  bool boundary = (micro_step_ + 1) % config_.gradient_accumulation_steps == 0;
  for (auto& u : units_) u->check_grad_views();
  reducer_->begin_backward(boundary);
  at::Tensor scaled = loss * (scaler_.scale() / double(config_.gradient_accumulation_steps));
  scaled.backward();
  if (stage_ >= 2) reducer_->finish();  // this micro-batch's gradients go to the shards now
  if (coordinator_) coordinator_->end_micro_batch();
  ++micro_step_;
  backward_s_ += std::chrono::duration<double>(Clock::now() - start).count();
}

const at::Tensor& Engine::grad_of(size_t u) const { return stage_ == 0 ? units_[u]->grads() : grad_shards_[u]; }

void Engine::forward_begin() {
  if (!coordinator_) return;
  coordinator_->begin_micro_batch();
  if (!unit_aware_) coordinator_->gather_all();
}

void Engine::forward_end() {
  if (coordinator_ && !at::GradMode::is_enabled()) coordinator_->end_micro_batch();  // no backward follows
}

std::vector<size_t> Engine::units_holding(const std::vector<std::string>& names) const {
  std::vector<size_t> out;
  std::vector<bool> found(names.size(), false);
  for (size_t u = 0; u < units_.size(); ++u) {
    bool wanted = names.empty();
    for (size_t i = 0; i < names.size(); ++i)
      for (const ParamSlot& s : units_[u]->slots())
        if (s.name == names[i]) wanted = found[i] = true;
    if (wanted) out.push_back(u);
  }
  for (size_t i = 0; i < names.size(); ++i)
    if (!found[i]) throw Error(ds::str("gathered_parameters: the engine trains no parameter named '", names[i], "'"));
  return out;
}

// The weights of unit u as they are on `modifier_rank` become everyone's: its full buffer is
// broadcast and each rank takes its master (and half-precision shard) from it.
void Engine::write_back(size_t u, int modifier_rank) {
  at::Tensor full = units_[u]->params();
  comm_->broadcast(full, modifier_rank).wait();
  if (precision_ != Precision::FP32) full.copy_(full.to(half_dtype(precision_)));
  if (stage_ == 0) {
    if (precision_ != Precision::FP32) masters_[u].copy_(full);
    return;
  }
  comm::Chunk own = comm::chunk_of(full.numel(), comm_->size(), comm_->rank());
  at::Tensor mine = full.slice(0, own.offset, own.offset + own.length);
  if (masters_[u].defined()) {
    masters_[u].copy_(mine);
  } else {  // the master is on disk, next to the states (which stay as they are)
    swapper_->write_unit(u, mine, {});
  }
  if (stage_ == 3) {
    if (units_[u]->shard_data().defined()) units_[u]->shard_data().copy_(mine);  // fp32: the master itself
    store_shard(u, 0, mine);
    if (param_swapper_) param_swapper_->flush();
  }
}

// Stage 3: elements [offset, offset + n) of unit u's gather source (the half-precision shard,
// in memory or on disk) take `values`.
void Engine::store_shard(size_t u, int64_t offset, const at::Tensor& values) {
  if (!param_swapper_) {
    gather_from_[u].slice(0, offset, offset + values.numel()).copy_(values);
    return;
  }
  param_swapper_->write(u, offset, values.to(half_dtype(precision_)).contiguous());
}

void Engine::start_swapping(std::vector<at::Tensor>& initial_masters) {
  const ZeroConfig& z = config_.zero_optimization;
  SwapOptions so;
  so.nvme_path = z.offload_optimizer.nvme_path.value_or("");
  so.rank = comm_->rank();
  so.sub_group_size = z.sub_group_size;
  so.buffer_count = z.offload_optimizer.buffer_count;
  so.pin_memory = z.offload_optimizer.pin_memory;
  so.aio.block_size = size_t(config_.aio.block_size);
  so.aio.queue_depth = unsigned(config_.aio.queue_depth);
  so.aio.intra_op_parallelism = unsigned(config_.aio.intra_op_parallelism);
  so.aio.single_submit = config_.aio.single_submit;
  so.aio.overlap_events = config_.aio.overlap_events;
  std::vector<int64_t> lengths;
  for (size_t u = 0; u < units_.size(); ++u) lengths.push_back(grad_shards_[u].numel());
  const bool swap_master = precision_ != Precision::FP32;
  swapper_ = std::make_unique<OptimizerSwapper>(so, lengths, optimizer_->state_names().size(), swap_master,
                                                [&](int64_t n) { return optimizer_->init_state(n); });
  if (swap_master)
    swapper_->for_each([&](const SwapSegment& s, at::Tensor master, std::vector<at::Tensor>&) {
      master.copy_(initial_masters[s.unit].slice(0, s.offset, s.offset + s.length));
    });
  initial_masters.clear();
  if (comm_->rank() == 0)
    std::printf("[ds] offload_optimizer nvme: %s per rank on disk under %s in %zu sub-groups, %s of I/O buffers\n",
                format_bytes(double(swapper_->file_bytes())).c_str(), so.nvme_path.c_str(), swapper_->sub_groups(),
                format_bytes(double(swapper_->buffer_bytes())).c_str());
}

// Under bf16/fp16 the weights the model computes with are the masters rounded: elements
// [offset, offset + n) of unit u's chunk take `master`'s values.
void Engine::set_working_copy(size_t u, int64_t offset, const at::Tensor& master) {
  const int64_t n = master.numel();
  if (stage_ == 3) {
    store_shard(u, offset, master);
    return;
  }
  const int64_t base = stage_ == 0 ? 0 : comm::chunk_of(units_[u]->padded_numel(), comm_->size(), comm_->rank()).offset;
  units_[u]->params().slice(0, base + offset, base + offset + n).copy_(master.to(half_dtype(precision_)));
}

void Engine::gathered_parameters(const std::vector<std::string>& names, const std::function<void()>& f,
                                 int modifier_rank) {
  if (modifier_rank >= comm_->size())
    throw Error(ds::str("gathered_parameters: modifier_rank ", modifier_rank, " but there are ", comm_->size(), " ranks"));
  const std::vector<size_t> units = units_holding(names);
  if (coordinator_)
    for (size_t u : units) coordinator_->pin(int(u));
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

bool Engine::unscale_and_check_overflow() {
  if (!scaler_.enabled()) return false;  // only fp16 overflows (DeepSpeed checks only there too)
  bool overflow = false;
  for (size_t u = 0; u < units_.size(); ++u) {
    const at::Tensor& g = grad_of(u);
    if (scaler_.scale() != 1.0) g.div_(scaler_.scale());
    if (!overflow && !at::isfinite(g).all().item<bool>()) overflow = true;
  }
  if (stage_ == 0 || comm_->size() == 1) return overflow;  // all-reduced: the same on every rank
  at::Tensor flag = at::full({1}, overflow ? 1 : 0, at::kInt);
  comm_->all_reduce(flag, comm::ReduceOp::Max).wait();  // any rank's shard overflowing skips all
  return flag.item<int>() != 0;
}

double Engine::global_grad_norm() {
  double sq = 0.0;
  for (size_t u = 0; u < units_.size(); ++u) {
    double n = grad_of(u).norm().item<double>();
    sq += n * n;
  }
  if (stage_ > 0 && comm_->size() > 1) {  // each rank holds a disjoint chunk of every unit
    at::Tensor t = at::full({1}, sq, at::kDouble);
    comm_->all_reduce(t, comm::ReduceOp::Sum).wait();
    sq = t.item<double>();
  }
  return std::sqrt(sq);
}

void Engine::apply_update(double lr) {
  ++optimizer_steps_;
  auto beta1 = schedule_.momentum(schedule_iteration_);
  auto update = [&](size_t u, int64_t offset, at::Tensor& master, std::vector<at::Tensor>& states) {
    at::Tensor grad = grad_of(u).slice(0, offset, offset + master.numel());
    optimizer_->step(master, grad, states, optimizer_steps_, lr, beta1);
    if (precision_ != Precision::FP32) set_working_copy(u, offset, master);
  };
  if (swapper_) {  // sub-group by sub-group, reading ahead and writing behind
    swapper_->for_each([&](const SwapSegment& s, at::Tensor master, std::vector<at::Tensor>& states) {
      if (!master.defined()) master = masters_[s.unit].slice(0, s.offset, s.offset + s.length);
      update(s.unit, s.offset, master, states);
    });
  } else {
    for (size_t u = 0; u < units_.size(); ++u) update(u, 0, masters_[u], states_[u]);
  }
  if (param_swapper_) param_swapper_->flush();
  if (stage_ == 3) coordinator_->refresh();  // persistent units gathered anew; the rest on use
  else if (stage_ > 0) gather_parameters();
}

// Stages 1-2: every rank updated its chunk; an all-gather per unit (all in flight at once)
// rebuilds the full weights, in the half dtype under bf16/fp16 (half the bytes).
// At most allgather_bucket_size elements are in flight (a unit larger than that goes alone).
void Engine::gather_parameters() {
  std::vector<comm::Work> works(units_.size());
  std::vector<at::Tensor> gathered(units_.size());
  size_t done = 0;
  int64_t in_flight = 0;
  auto land = [&](size_t u) {
    works[u].wait();
    if (gathered[u].defined()) units_[u]->params().copy_(gathered[u]);
    gathered[u] = at::Tensor();
    in_flight -= units_[u]->padded_numel();
  };
  for (size_t u = 0; u < units_.size(); ++u) {
    at::Tensor full = units_[u]->params();
    while (done < u && in_flight + full.numel() > config_.zero_optimization.allgather_bucket_size) land(done++);
    if (precision_ == Precision::FP32) {
      works[u] = comm_->all_gather(full, masters_[u]);  // the master is full's own chunk
    } else {
      gathered[u] = at::empty({full.numel()}, full.options().dtype(half_dtype(precision_)));
      const comm::Chunk own = comm::chunk_of(full.numel(), comm_->size(), comm_->rank());
      at::Tensor mine = full.slice(0, own.offset, own.offset + own.length).to(half_dtype(precision_));  // rounded masters
      works[u] = comm_->all_gather(gathered[u], mine);
    }
    in_flight += full.numel();
  }
  while (done < units_.size()) land(done++);
}

Engine::MemoryBreakdown Engine::memory_breakdown() const {
  MemoryBreakdown m;
  for (size_t u = 0; u < units_.size(); ++u) {
    if (stage_ == 3) {
      // The shard (under fp32 also the master), its half copy, and the unit while gathered.
      if (precision_ == Precision::FP32) m.params += masters_[u].nbytes();
      else if (gather_from_[u].defined()) m.params += gather_from_[u].nbytes();
      else m.on_disk += gather_from_bytes(u);  // offload_param nvme
      if (units_[u]->gathered()) m.params += units_[u]->params().nbytes();
    } else {
      m.params += units_[u]->params().nbytes();
    }
    if (units_[u]->persistent_grads()) m.grads += units_[u]->grads().nbytes();
    if (stage_ > 0) m.grads += grad_shards_[u].nbytes();
    if (masters_[u].defined() && precision_ != Precision::FP32) m.masters += masters_[u].nbytes();  // fp32: views of params
    for (const auto& s : states_[u]) m.optimizer_state += s.nbytes();
  }
  if (swapper_) {
    m.optimizer_state += swapper_->buffer_bytes();  // the I/O buffers; the rest is on disk
    m.on_disk += int64_t(swapper_->file_bytes());
  }
  return m;
}

std::optional<StepStats> Engine::step() {
  if (micro_step_ == 0 || micro_step_ % config_.gradient_accumulation_steps != 0 ||
      global_step_ * config_.gradient_accumulation_steps == micro_step_)
    return std::nullopt;  // not at a boundary, or this boundary was already stepped
  StepStats s;
  auto reduce_start = Clock::now();
  if (stage_ < 2) reducer_->finish();  // stage 2 reduced every micro-batch already
  // The logged loss: mean over micro-batches here, then over ranks.
  at::Tensor loss = at::full({1}, loss_sum_ / double(config_.gradient_accumulation_steps), at::kDouble);
  if (comm_->size() > 1) comm_->all_reduce(loss, comm::ReduceOp::Avg).wait();
  s.loss = loss.item<double>();
  s.reduce_s = std::chrono::duration<double>(Clock::now() - reduce_start).count();

  auto opt_start = Clock::now();
  s.loss_scale = scaler_.scale();
  bool overflow = unscale_and_check_overflow();
  s.lr = current_lr();
  s.skipped = scaler_.update(overflow);
  if (!s.skipped) {
    s.grad_norm = global_grad_norm();
    if (config_.gradient_clipping > 0) {
      double coef = config_.gradient_clipping / (s.grad_norm + 1e-6);
      if (coef < 1.0)
        for (size_t u = 0; u < units_.size(); ++u) grad_of(u).mul_(coef);
    }
    apply_update(s.lr);
    ++schedule_iteration_;
  } else {
    s.grad_norm = NAN;
  }
  for (auto& u : units_) u->zero_grad();
  for (auto& g : grad_shards_) g.zero_();
  ++global_step_;
  global_samples_ += config_.train_batch_size;
  loss_sum_ = 0.0;
  s.step = global_step_;
  auto now = Clock::now();
  s.optimizer_s = std::chrono::duration<double>(now - opt_start).count();
  s.seconds = std::chrono::duration<double>(now - last_step_time_).count();
  last_step_time_ = now;
  s.forward_s = forward_s_, s.backward_s = backward_s_;
  forward_s_ = backward_s_ = 0.0;
  s.rss_bytes = current_rss_bytes();
  log_step(s);
  return s;
}

std::string Engine::progress_line(const StepStats& s) const {
  char buf[512];
  double tps = s.seconds > 0 ? tokens_per_step_ / s.seconds : 0.0;
  int n = std::snprintf(buf, sizeof buf, "step %lld | loss %.4f | lr %.3e | grad_norm %.4f | scale %g | %.0f tok/s | %.1f ms/step | rss %s%s",
                        static_cast<long long>(s.step), s.loss, s.lr, s.grad_norm, s.loss_scale, tps, s.seconds * 1e3,
                        format_bytes(double(s.rss_bytes)).c_str(), s.skipped ? " | SKIPPED (fp16 overflow)" : "");
  std::string line(buf, std::min<size_t>(n, sizeof buf - 1));
  if (config_.wall_clock_breakdown) {
    std::snprintf(buf, sizeof buf, " | fwd %.1f bwd %.1f reduce %.1f step %.1f ms", s.forward_s * 1e3,
                  s.backward_s * 1e3, s.reduce_s * 1e3, s.optimizer_s * 1e3);
    line += buf;
  }
  return line;
}

void Engine::log_step(const StepStats& s) {
  if (comm_->rank() != 0) return;
  if (config_.steps_per_print.value_or(0) > 0 && (s.step % *config_.steps_per_print == 0 || s.skipped)) {
    std::printf("[ds] %s\n", progress_line(s).c_str());
    std::fflush(stdout);
  }
  if (csv_.is_open()) {
    double tps = s.seconds > 0 ? tokens_per_step_ / s.seconds : 0.0;
    // The loss and the norm with every digit (17): runs compare exactly, e.g. resumed ones.
    csv_ << s.step << ',' << std::setprecision(17) << s.loss << ',' << std::setprecision(6) << s.lr << ','
         << std::setprecision(17) << s.grad_norm << ',' << std::setprecision(6) << s.loss_scale << ','
         << (s.skipped ? 1 : 0) << ',' << s.seconds * 1e3 << ',' << tps << ',' << s.rss_bytes << '\n';
    csv_.flush();
  }
}

}  // namespace ds
