// Engine::step: the end of an accumulation window — reduction, overflow check, clipping, the
// optimizer over this rank's segments, and the weights rebuilt for the next forward.
#include <ATen/ATen.h>

#include <cstdio>
#include <cstring>
#include <iomanip>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/offload/param_swapper.h"
#include "ds/runtime/engine.h"

namespace ds {

using Clock = std::chrono::steady_clock;

at::Tensor Engine::part_grad_of(size_t u, int64_t offset, int64_t n) const {
  const at::Tensor g = grad_of(u);
  const int64_t base = window_sync_ == zero::GradSync::kNone ? units_[u].layout.own.offset + offset : offset;
  return g.slice(0, base, base + n);
}

std::optional<optim::WorkingCopy> Engine::working_copy(size_t u, int64_t offset, int64_t n) {
  UnitState& s = units_[u];
  if (!s.layout.writes_working_copy) return std::nullopt;
  at::Tensor dst;
  if (!s.layout.shard_params) {  // the own chunk of the weights, in the working dtype
    const int64_t base = s.layout.own.offset + offset;
    dst = s.unit->params().slice(0, base, base + n);
  } else {  // stage 3: the shard, in the param dtype (in memory, or staged for the disk)
    dst = (param_swapper_ ? param_swapper_->staging(u) : s.unit->shard_data()).slice(0, offset, offset + n);
  }
  return optim::WorkingCopy{dst, plan_.precision.param};
}

void Engine::working_copy_done(size_t u, int64_t n) {
  if (param_swapper_ && units_[u].layout.shard_params) param_swapper_->staged(u, n);
}

void Engine::set_working(size_t u, const at::Tensor& values) {
  if (auto copy = working_copy(u, 0, values.numel())) {
    if (copy->dst.scalar_type() == at::kFloat && copy->round_to != at::kFloat) copy->dst.copy_(values.to(copy->round_to));
    else copy->dst.copy_(values);
    working_copy_done(u, values.numel());
  }
}

// Every segment of this rank's part: a whole unit in memory, or the pieces of the swapper's
// sub-groups (read ahead and written behind).
void Engine::for_each_segment(const std::function<void(optim::Segment&)>& fn) {
  auto visit = [&](size_t u, int64_t offset, const at::Tensor& master, std::vector<at::Tensor>& states) {
    const int64_t n = master.numel();
    std::optional<optim::WorkingCopy> copy = working_copy(u, offset, n);
    optim::Segment seg;
    seg.unit = u, seg.offset = offset, seg.master = master, seg.grad = part_grad_of(u, offset, n);
    seg.states = &states, seg.copy = copy ? &*copy : nullptr;
    const UnitState& s = units_[u];
    seg.unit_offset = s.layout.own.offset + offset;
    seg.unit_numel = s.unit->numel();
    seg.unit_padded_numel = s.unit->padded_numel();
    if (window_sync_ != zero::GradSync::kReduceScatter) seg.unit_grad = s.unit->grads();
    fn(seg);
    if (copy) working_copy_done(u, n);
  };
  if (!swapper_) {
    for (size_t u = 0; u < units_.size(); ++u) visit(u, 0, units_[u].master, units_[u].states);
    return;
  }
  swapper_->for_each([&](const offload::SwapSegment& s, at::Tensor master, std::vector<at::Tensor>& states) {
    if (!master.defined()) master = units_[s.unit].master.slice(0, s.offset, s.offset + s.length);
    visit(s.unit, s.offset, master, states);
  });
}

bool Engine::unscale_and_check_overflow() {
  if (!scaler_.enabled()) return false;  // only fp16 overflows (DeepSpeed checks only there too)
  bool overflow = false;
  for (size_t u = 0; u < units_.size(); ++u) {
    const at::Tensor g = grad_of(u);
    if (scaler_.scale() != 1.0) g.div_(scaler_.scale());
    if (!overflow && !at::isfinite(g).all().item<bool>()) overflow = true;
  }
  // After an all-reduce every replica holds the same gradient; otherwise any rank's part
  // overflowing skips the step everywhere.
  at::Tensor flag = at::full({1}, overflow ? 1 : 0, at::kInt);
  if (window_sync_ != zero::GradSync::kAllReduce && dp_size() > 1)
    groups_.data->all_reduce(flag, comm::ReduceOp::Max).wait();
  if (groups_.model->size() > 1) groups_.model->all_reduce(flag, comm::ReduceOp::Max).wait();
  return flag.item<int>() != 0;
}

// Unit u's part of the squared norm: its gradient (this rank's chunk of it), restricted to
// the ranges plan_tensor_parallel_norm left when there are any. Accumulated in fp32 (a bf16
// sum of squares would lose most of its digits).
double Engine::grad_sq_norm(size_t u) const {
  auto sq_of = [](const at::Tensor& g) {
    const double n = g.scalar_type() == at::kFloat ? g.norm().item<double>()
                                                   : at::linalg_vector_norm(g, 2, c10::nullopt, false, at::kFloat).item<double>();
    return n * n;
  };
  const at::Tensor g = grad_of(u);
  if (norm_ranges_.empty()) return sq_of(g);
  // g holds elements [base, base + g.numel()) of the unit.
  const int64_t base = window_sync_ == zero::GradSync::kNone ? 0 : units_[u].layout.own.offset;
  double sq = 0;
  for (const auto& [offset, length] : norm_ranges_[u]) {
    const int64_t b = std::max(offset, base), e = std::min(offset + length, base + g.numel());
    if (b < e) sq += sq_of(g.slice(0, b - base, e - base));
  }
  return sq;
}

// The norm of the averaged gradient over every parameter. Under kReduceScatter each
// data-parallel rank holds a disjoint chunk; under kNone each rank clips its own gradient.
double Engine::global_grad_norm() {
  double sq = 0.0;
  for (size_t u = 0; u < units_.size(); ++u) {
    if (!is_primary_copy(u)) continue;  // a tied layer's other copies
    sq += grad_sq_norm(u);
  }
  at::Tensor t = at::full({1}, sq, at::kDouble);
  bool reduced = false;
  if (window_sync_ == zero::GradSync::kReduceScatter && dp_size() > 1) {
    groups_.data->all_reduce(t, comm::ReduceOp::Sum).wait();
    reduced = true;
  }
  if (groups_.model->size() > 1) {
    groups_.model->all_reduce(t, comm::ReduceOp::Sum).wait();
    reduced = true;
  }
  return std::sqrt(reduced ? t.item<double>() : sq);
}

void Engine::apply_update(double lr) {
  ++optimizer_steps_;
  optim::StepContext ctx;
  ctx.args = {optimizer_steps_, lr, schedule_.momentum(schedule_iteration_)};
  ctx.data_group = groups_.data.get();
  ctx.sync = window_sync_;
  ctx.for_each_segment = [this](const std::function<void(optim::Segment&)>& fn) { for_each_segment(fn); };
  for (const UnitState& s : units_) ctx.unit_tensors.push_back(&s.unit->slots());
  ctx.partitioned = plan_.stage > 0 && dp_size() > 1;
  if (groups_.tensor->size() > 1) ctx.tensor_group = groups_.tensor.get(), ctx.tensor_split = &tensor_split_;
  if (groups_.pipe->size() > 1) ctx.pipe_group = groups_.pipe.get();
  optimizer_->step_all(ctx);
  if (param_swapper_) param_swapper_->flush();
  if (coordinator_) coordinator_->refresh();  // persistent units gathered anew; the rest on use
  else if (plan_.stage > 0) gather_parameters();
}

// Stages 1-2: every rank updated its chunk; an all-gather per unit (all in flight at once)
// rebuilds the full weights, in the param dtype (half the bytes under bf16/fp16). In place
// when the weights have that dtype; else gathered into a buffer and widened. At most
// allgather_bucket_size elements are in flight (a unit larger than that goes alone).
void Engine::gather_parameters() {
  std::vector<comm::Work> works(units_.size());
  std::vector<at::Tensor> gathered(units_.size());
  size_t done = 0;
  int64_t in_flight = 0;
  auto land = [&](size_t u) {
    works[u].wait();
    if (gathered[u].defined()) units_[u].unit->params().copy_(gathered[u]);
    gathered[u] = at::Tensor();
    in_flight -= units_[u].unit->padded_numel();
  };
  for (size_t u = 0; u < units_.size(); ++u) {
    at::Tensor full = units_[u].unit->params();
    const comm::Chunk own = units_[u].layout.own;
    while (done < u && in_flight + full.numel() > plan_.allgather_bucket_elements) land(done++);
    at::Tensor mine = full.slice(0, own.offset, own.offset + own.length);
    if (full.scalar_type() == plan_.precision.param) {
      works[u] = groups_.data->all_gather(full, mine);  // this rank's chunk is already in place
    } else {
      gathered[u] = at::empty({full.numel()}, full.options().dtype(plan_.precision.param));
      works[u] = groups_.data->all_gather(gathered[u], mine.to(plan_.precision.param));  // the rounded weights
    }
    in_flight += full.numel();
  }
  while (done < units_.size()) land(done++);
}

std::optional<StepStats> Engine::step() {
  if (micro_step_ == 0 || micro_step_ % config_.gradient_accumulation_steps != 0 ||
      global_step_ * config_.gradient_accumulation_steps == micro_step_)
    return std::nullopt;  // not at a boundary, or this boundary was already stepped
  StepStats s;
  auto reduce_start = Clock::now();
  if (!plan_.reduce.every_micro_batch) reducer_->finish();  // stages 2-3 reduced every micro-batch already
  reduce_tied_grads();
  // The logged loss: mean over micro-batches here, then over the data-parallel replicas.
  at::Tensor loss = at::full({1}, loss_sum_ / double(config_.gradient_accumulation_steps), at::kDouble);
  if (dp_size() > 1) groups_.data->all_reduce(loss, comm::ReduceOp::Avg).wait();
  // A pipeline: only the last stage computes the loss; the others take its value.
  if (groups_.pipe->size() > 1) groups_.pipe->broadcast(loss, groups_.pipe->size() - 1).wait();
  s.loss = loss.item<double>();
  s.reduce_s = std::chrono::duration<double>(Clock::now() - reduce_start).count();

  auto opt_start = Clock::now();
  const double disk_waited = swapper_ ? swapper_->stats().io_wait_s : 0.0;
  mark_gather_waits();  // the update's regathering of persistent units
  s.loss_scale = scaler_.scale();
  bool overflow = unscale_and_check_overflow();
  s.lr = current_lr();
  s.skipped = scaler_.update(overflow);
  if (s.skipped) s.skip_reason = "fp16 overflow";
  if (!s.skipped) {
    s.grad_norm = global_grad_norm();
    if (!scaler_.enabled() && nonfinite_step(s)) {  // fp32/bf16: no loss scaler absorbs it
      s.skipped = true;
      s.skip_reason = "non-finite loss or gradient";
    }
  }
  if (!s.skipped) {
    if (plan_.gradient_clipping > 0) {
      double coef = plan_.gradient_clipping / (s.grad_norm + 1e-6);
      if (coef < 1.0)
        for (size_t u = 0; u < units_.size(); ++u) grad_of(u).mul_(coef);
    }
    apply_update(s.lr);
    ++schedule_iteration_;
  } else if (std::strcmp(s.skip_reason, "fp16 overflow") == 0) {
    s.grad_norm = NAN;
  }
  for (auto& unit : units_) {
    unit.unit->zero_grad();
    if (unit.grad_shard.defined()) unit.grad_shard.zero_();
  }
  ++global_step_;
  global_samples_ += config_.train_batch_size;
  loss_sum_ = 0.0;
  s.step = global_step_;
  add_gather_waits();
  auto now = Clock::now();
  s.optimizer_s = std::chrono::duration<double>(now - opt_start).count();
  s.seconds = std::chrono::duration<double>(now - last_step_time_).count();
  if (++steps_timed_ > 1) recent_step_s_ = recent_step_s_ > 0 ? 0.8 * recent_step_s_ + 0.2 * s.seconds : s.seconds;
  last_step_time_ = now;
  s.forward_s = forward_s_, s.backward_s = backward_s_, s.backward_comm_s = backward_comm_s_;
  forward_s_ = backward_s_ = backward_comm_s_ = 0.0;
  if (swapper_) s.disk_wait_s = std::max(0.0, swapper_->stats().io_wait_s - disk_waited);
  s.gather_wait_s = gather_wait_s_, s.disk_wait_s += read_wait_s_;
  gather_wait_s_ = read_wait_s_ = 0;
  s.rss_bytes = current_rss_bytes();
  log_step(s);
  report_activation_checkpointing(s.step);
  finish_flops_profile(s);
  return s;
}

// Whether this step's loss or gradient norm is NaN/inf (the same on every rank: both are
// reduced). Throws unless the engine was told to skip such steps.
bool Engine::nonfinite_step(const StepStats& s) {
  bool bad = !std::isfinite(s.loss) || !std::isfinite(s.grad_norm);
  if (window_sync_ == zero::GradSync::kNone && dp_size() > 1) {  // each rank's own norm: agree
    at::Tensor flag = at::full({1}, bad ? 1 : 0, at::kInt);
    groups_.data->all_reduce(flag, comm::ReduceOp::Max).wait();
    bad = flag.item<int>() != 0;
  }
  if (!bad || skip_nonfinite_steps_) return bad;
  throw Error(ds::str("step ", global_step_ + 1, ": the loss is ", s.loss, " and the gradient norm ", s.grad_norm,
                      " (", plan_.precision.name, " training has no loss scaling to absorb a non-finite value); "
                      "nothing was updated. Lower the learning rate, set gradient_clipping, check the data, or "
                      "skip such steps (ds-train --skip-nonfinite, EngineOptions::skip_nonfinite_steps)"));
}

void Engine::mark_gather_waits() {
  if (!coordinator_) return;
  gather_wait_mark_ = coordinator_->stats().wait_s, read_wait_mark_ = coordinator_->stats().read_wait_s;
}

void Engine::add_gather_waits() {
  if (!coordinator_) return;
  gather_wait_s_ += std::max(0.0, coordinator_->stats().wait_s - gather_wait_mark_);
  read_wait_s_ += std::max(0.0, coordinator_->stats().read_wait_s - read_wait_mark_);
}

namespace {

// "45s", "3m05s", "2h07m".
std::string duration_text(double seconds) {
  const int64_t t = int64_t(seconds + 0.5);
  char buf[32];
  if (t < 60) std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(t));
  else if (t < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t / 60 % 60));
  return buf;
}

std::string fixed1(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}
}  // namespace

std::string Engine::progress_line(const StepStats& s) const {
  char buf[512];
  double tps = s.seconds > 0 ? tokens_per_step_ / s.seconds : 0.0;
  const std::string step = total_steps_ > 0 ? ds::str(s.step, "/", total_steps_) : std::to_string(s.step);
  int n = std::snprintf(buf, sizeof buf, "step %s | loss %.4f | lr %.3e | grad_norm %.4f | scale %g | %.0f tok/s | %.1f ms/step | rss %s%s",
                        step.c_str(), s.loss, s.lr, s.grad_norm, s.loss_scale, tps, s.seconds * 1e3,
                        format_bytes(double(s.rss_bytes)).c_str(),
                        s.skipped ? ds::str(" | SKIPPED (", s.skip_reason, ")").c_str() : "");
  std::string line(buf, std::min<size_t>(n, sizeof buf - 1));
  if (total_steps_ > s.step && recent_step_s_ > 0) line += " | ETA " + duration_text(double(total_steps_ - s.step) * recent_step_s_);
  const std::string phase = optimizer_->phase(optimizer_steps_);  // e.g. 1-bit Adam's
  if (!phase.empty()) line += " | " + phase;
  if (config_.wall_clock_breakdown) {
    std::snprintf(buf, sizeof buf, " | fwd %.1f bwd %.1f (comm wait %.1f) reduce %.1f step %.1f ms", s.forward_s * 1e3,
                  s.backward_s * 1e3, s.backward_comm_s * 1e3, s.reduce_s * 1e3, s.optimizer_s * 1e3);
    line += buf;
    if (coordinator_) line += ds::str(" | gather wait ", fixed1(s.gather_wait_s * 1e3), " ms");
    if (swapper_ || param_swapper_) line += ds::str(" | disk wait ", fixed1(s.disk_wait_s * 1e3), " ms");
  }
  return line;
}

void Engine::log_step(const StepStats& s) {
  if (groups_.world->rank() != 0) return;
  if (config_.steps_per_print.value_or(0) > 0 && (s.step % *config_.steps_per_print == 0 || s.skipped)) {
    std::printf("[ds] %s\n", progress_line(s).c_str());
    std::fflush(stdout);
  }
  if (csv_.is_open()) {
    double tps = s.seconds > 0 ? tokens_per_step_ / s.seconds : 0.0;
    // The loss and the norm with every digit (17): runs compare exactly, e.g. resumed ones.
    csv_ << s.step << ',' << std::setprecision(17) << s.loss << ',' << std::setprecision(6) << s.lr << ','
         << std::setprecision(17) << s.grad_norm << ',' << std::setprecision(6) << s.loss_scale << ','
         << (s.skipped ? 1 : 0) << ',' << s.seconds * 1e3 << ',' << tps << ',' << s.rss_bytes;
    for (double t : {s.forward_s, s.backward_s, s.backward_comm_s, s.gather_wait_s, s.reduce_s, s.optimizer_s, s.disk_wait_s})
      csv_ << ',' << t * 1e3;
    csv_ << '\n';
    csv_.flush();
  }
}

}  // namespace ds
