#include "train_util.h"

#include <gtest/gtest.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include "ds/comm/topology.h"
#include "ds/config/config.h"
#include "ds/zero/init.h"

namespace ds::test {

std::string plain_adamw_config(int stage, int64_t micro, const std::string& zero_keys, const std::string& top_keys,
                               int64_t batch) {
  const PlainAdamW a;
  return ds::str(R"({"train_batch_size": )", batch, R"(, "train_micro_batch_size_per_gpu": )", micro,
                 R"(, "optimizer": {"type": "AdamW", "params": {"lr": )", a.lr, R"(, "weight_decay": )", a.weight_decay,
                 R"(, "eps": )", a.eps, R"(}}, "gradient_clipping": )", a.clip, R"(, "zero_optimization": {"stage": )",
                 stage, stage == 3 ? R"(, "stage3_param_persistence_threshold": 0)" : "", zero_keys, "}", top_keys, "}");
}

std::shared_ptr<comm::Communicator> solo() {
  comm::GlooOptions o;  // world of 1: a HashStore, no port
  return comm::make_gloo(o);
}

namespace {

// The attention key biases of `slots` within their unit's elements (see TrainResult::key_bias).
at::Tensor key_bias_mask(const std::vector<std::pair<std::string, int64_t>>& slots, int64_t numel) {
  at::Tensor mask = at::zeros({numel}, at::kBool);
  int64_t offset = 0;
  for (const auto& [name, n] : slots) {
    if (name.size() >= 8 && name.compare(name.size() - 8, 8, "qkv.bias") == 0)
      mask.slice(0, offset + n / 3, offset + 2 * n / 3).fill_(true);
    offset += n;
  }
  return mask;
}

// The tiny GPT of the tests (seed 7) for a plain loop.
Gpt plain_model(const Dataset& data, const TinyShape& shape) {
  GptConfig mc;
  mc.n_layer = shape.n_layer, mc.n_head = shape.n_head, mc.d_model = shape.d_model;
  mc.seq_len = shape.seq_len > 0 ? shape.seq_len : data.context();
  mc.dropout = shape.dropout, mc.checkpoint_blocks = shape.checkpoint_blocks;
  torch::manual_seed(7);
  return Gpt(mc);
}

// A plain model's weights in the engine's order: unit by unit (zero::find_units), slot by slot.
void record_weights(torch::nn::Module& model, TrainResult& r) {
  std::vector<at::Tensor> parts, masks;
  for (const zero::UnitSpec& unit : zero::find_units(model)) {
    std::vector<std::pair<std::string, int64_t>> slots;
    int64_t numel = 0;
    for (const auto& [name, p] : unit.params) {
      parts.push_back(p.detach().reshape({-1}).clone());
      slots.emplace_back(name, p.numel());
      numel += p.numel();
    }
    masks.push_back(key_bias_mask(slots, numel));
  }
  r.weights = at::cat(parts);
  r.key_bias = at::cat(masks);
}

}  // namespace

TinyRun::TinyRun(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, TinyShape shape)
    : comm_(std::move(comm)), data_(make_task("reverse", 99)) {
  Config config = Config::parse(config_json, "test config");
  config.resolve(comm_->size());
  GptConfig mc;
  mc.n_layer = shape.n_layer, mc.n_head = shape.n_head, mc.d_model = shape.d_model;
  mc.seq_len = shape.seq_len > 0 ? shape.seq_len : data_->context();
  mc.dropout = shape.dropout, mc.checkpoint_blocks = shape.checkpoint_blocks;
  torch::manual_seed(7);
  EngineOptions options;
  options.compute_dtype = shape.compute_dtype;
  options.quantization_group = shape.quantization_group;
  if (shape.optimizer) options.optimizer = shape.optimizer();
  if (shape.tensor > 1 || shape.sequence > 1) {  // the same whole model, split over the tensor / sequence group
    auto groups = comm::ParallelGroups::create(comm_, comm::Topology::for_world(comm_->size(), 1, shape.tensor, shape.sequence));
    data_rank_ = groups.coord.data / shape.sequence, data_size_ = groups.data->size() / shape.sequence;
    if (shape.sequence > 1) sequence_ = groups.sequence;
    if (shape.zero_init) {
      const zero::PrecisionPolicy policy = zero::PrecisionPolicy::from_config(config, shape.compute_dtype);
      zero::Init init(groups.data, config, {policy.working, policy.param});
      model_ = Gpt(mc, groups.tensor, sequence_);
      options.sharded_units = init.take_units();
    } else {
      model_ = Gpt(mc, groups.tensor, sequence_);
    }
    engine_ = std::make_unique<Engine>(model_.ptr(), config, groups, std::move(options));
    return;
  }
  data_rank_ = comm_->rank(), data_size_ = comm_->size();
  if (shape.zero_init) {
    const zero::PrecisionPolicy policy = zero::PrecisionPolicy::from_config(config, shape.compute_dtype);
    zero::Init init(comm_, config, {policy.working, policy.param});
    model_ = Gpt(mc);
    options.sharded_units = init.take_units();
  } else {
    model_ = Gpt(mc);
  }
  engine_ = std::make_unique<Engine>(model_.ptr(), config, comm_, std::move(options));
}

void TinyRun::train_to(int64_t steps, const std::function<void(Engine&, int)>& before_backward) {
  const Config& config = engine_->config();
  const int64_t micro = config.train_micro_batch_size_per_gpu, gas = config.gradient_accumulation_steps;
  for (int64_t step = engine_->global_step(); step < steps; ++step) {
    for (int64_t m = 0; m < gas; ++m) {
      Batch b = data_->batch(step, (m * data_size_ + data_rank_) * micro, micro);
      if (sequence_) b = sequence_slice(std::move(b), sequence_->rank(), sequence_->size());
      at::Tensor loss = engine_->forward([&] { return model_->loss(b.tokens, b.targets); });
      if (before_backward) before_backward(*engine_, int(step));
      engine_->backward(loss);
    }
    auto s = engine_->step();
    EXPECT_TRUE(s.has_value());
    if (!s) return;
    recorded_.losses.push_back(s->loss);
    recorded_.scales.push_back(s->loss_scale);
    recorded_.skipped.push_back(s->skipped);
  }
}

TrainResult TinyRun::result() const {
  TrainResult r = recorded_;
  std::vector<at::Tensor> parts, masks;
  for (size_t u = 0; u < engine_->unit_count(); ++u) {
    const zero::FlatUnit& unit = engine_->unit(u);
    // The full weights, in fp32 (stage 3: gathered for the copy).
    engine_->gathered_parameters({unit.slots()[0].name}, [&] {
      parts.push_back(unit.params().slice(0, 0, unit.numel()).to(at::kFloat, false, /*copy=*/true));
    });
    std::vector<std::pair<std::string, int64_t>> slots;
    for (const zero::ParamSlot& slot : unit.slots()) slots.emplace_back(slot.name, slot.numel);
    masks.push_back(key_bias_mask(slots, unit.numel()));
  }
  r.weights = at::cat(parts).clone();
  r.key_bias = at::cat(masks);
  return r;
}

TrainResult train_tiny(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, int steps,
                       const std::function<void(Engine&, int)>& before_backward) {
  TinyRun run(std::move(comm), config_json);
  run.train_to(steps, before_backward);
  return run.result();
}

TrainResult train_tiny_shape(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, int steps,
                             TinyShape shape) {
  TinyRun run(std::move(comm), config_json, std::move(shape));
  run.train_to(steps);
  return run.result();
}

TrainResult train_plain_loop(const std::function<void(Gpt&, int)>& update, int steps, int64_t batch, TinyShape shape) {
  auto data = make_task("reverse", 99);
  Gpt model = plain_model(*data, shape);
  TrainResult r;
  for (int step = 0; step < steps; ++step) {
    Batch b = data->batch(step, 0, batch);
    for (at::Tensor& p : model->parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();  // as torch::optim's zero_grad() here
    at::Tensor loss = model->loss(b.tokens, b.targets);
    loss.backward();
    {
      at::NoGradGuard no_grad;
      update(model, step);
    }
    r.losses.push_back(loss.item<double>());
    r.scales.push_back(1.0);
    r.skipped.push_back(false);
  }
  record_weights(*model, r);
  return r;
}

TrainResult train_plain_libtorch(const PlainAdamW& o, int steps, TinyShape shape) {
  std::unique_ptr<torch::optim::AdamW> adamw;
  return train_plain_loop(
      [&](Gpt& model, int) {
        if (!adamw)
          adamw = std::make_unique<torch::optim::AdamW>(
              model->parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay).eps(o.eps));
        if (o.clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), o.clip);
        adamw->step();
      },
      steps, o.batch, std::move(shape));
}

double parted_fraction(const TrainResult& a, const TrainResult& b) {
  at::Tensor d = (a.weights - b.weights).abs().masked_fill(b.key_bias, 0.0);
  return (d > 1e-4).sum().item<double>() / double(d.numel());
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace ds::test

namespace ds::test {

namespace {

at::Tensor sign_of(const at::Tensor& x) { return at::where(x >= 0, 1.0f, -1.0f); }
double rms(const at::Tensor& x) { return x.numel() == 0 ? 0.0 : x.norm().item<double>() / std::sqrt(double(x.numel())); }

// The 1-bit compressed mean over simulated ranks of xs[r] (n elements each), with the error
// feedback of compress::OneBitAllReduce written out: worker_error[r] (n), server_error[c]
// (chunk). Chunks of the length padded to 8 x world.
at::Tensor plain_compressed_mean(const std::vector<at::Tensor>& xs, std::vector<at::Tensor>& worker_error,
                                 std::vector<at::Tensor>& server_error) {
  const int world = int(xs.size());
  const int64_t n = xs[0].numel(), chunk = server_error[0].numel(), padded = chunk * world;
  at::Tensor sum = at::zeros({padded});
  for (int r = 0; r < world; ++r) {
    at::Tensor x = xs[size_t(r)] + worker_error[size_t(r)];
    const double s = rms(x);
    at::Tensor sent = at::full({padded}, float(s));  // the padding's values reach no result
    sent.narrow(0, 0, n).copy_(sign_of(x) * float(s));
    worker_error[size_t(r)] = x - sent.narrow(0, 0, n);
    sum += sent;
  }
  at::Tensor out = at::zeros({n});
  for (int c = 0; c < world; ++c) {
    at::Tensor mean = sum.narrow(0, c * chunk, chunk) / double(world) + server_error[size_t(c)];
    const int64_t real = std::clamp<int64_t>(n - c * chunk, 0, chunk);
    if (real == 0) continue;
    at::Tensor mine = mean.narrow(0, 0, real);
    at::Tensor compressed = sign_of(mine) * float(rms(mine));
    server_error[size_t(c)].zero_();
    server_error[size_t(c)].narrow(0, 0, real).copy_(mine - compressed);
    out.narrow(0, c * chunk, real).copy_(compressed);
  }
  return out;
}

// Step `step`'s flat gradient of every unit on each simulated rank (grads[unit][rank]), with
// the batch split as the engine splits it: micro-batch m of rank r holds examples
// [(m world + r) micro, ... + micro). `before(rank)` runs first (to load that rank's weights).
// Returns the ranks' mean loss.
double rank_gradients(Gpt& model, Dataset& data, const std::vector<zero::UnitSpec>& units, int step, int world,
                      int64_t batch, int64_t gas, std::vector<std::vector<at::Tensor>>& grads,
                      const std::function<void(int)>& before = {}) {
  const int64_t micro = batch / (world * gas);
  grads.assign(units.size(), {});
  double loss_sum = 0;
  for (int rank = 0; rank < world; ++rank) {
    if (before) before(rank);
    model->zero_grad();
    for (int64_t m = 0; m < gas; ++m) {
      Batch b = data.batch(step, (m * world + rank) * micro, micro);
      at::Tensor loss = model->loss(b.tokens, b.targets) / double(gas);
      loss.backward();
      loss_sum += loss.item<double>();
    }
    for (size_t k = 0; k < units.size(); ++k) {
      std::vector<at::Tensor> g;
      for (const auto& [name, p] : units[k].params) g.push_back(p.grad().reshape({-1}));
      grads[k].push_back(at::cat(g));
    }
  }
  return loss_sum / world;
}

// The error feedback of a unit of n elements on `world` simulated ranks: per rank n elements,
// per server chunk (n padded to 8 x world, over world) its chunk.
void add_error_feedback(int64_t n, int world, std::vector<at::Tensor>& worker_error,
                        std::vector<at::Tensor>& server_error) {
  const int64_t padded = (n + 8 * world - 1) / (8 * world) * (8 * world), chunk = padded / world;
  for (int r = 0; r < world; ++r) worker_error.push_back(at::zeros({n})), server_error.push_back(at::zeros({chunk}));
}

// One unit's 1-bit Adam state across the simulated ranks.
struct PlainUnit {
  std::vector<at::Tensor> params;
  int64_t n = 0;
  at::Tensor m, v;                          // the same on every rank
  std::vector<at::Tensor> worker_error;     // per rank, n elements
  std::vector<at::Tensor> server_error;     // per chunk (its server rank), chunk elements
};

}  // namespace

TrainResult train_plain_onebit_adam(const PlainOneBitAdam& o, int world, int steps, TinyShape shape) {
  auto data = make_task("reverse", 99);
  Gpt model = plain_model(*data, shape);
  const std::vector<zero::UnitSpec> specs = zero::find_units(*model);
  std::vector<PlainUnit> units;
  for (const zero::UnitSpec& spec : specs) {
    PlainUnit u;
    for (const auto& [name, p] : spec.params) u.params.push_back(p), u.n += p.numel();
    u.m = at::zeros({u.n}), u.v = at::zeros({u.n});
    add_error_feedback(u.n, world, u.worker_error, u.server_error);
    units.push_back(std::move(u));
  }
  TrainResult r;
  for (int step = 0; step < steps; ++step) {
    const int64_t t = step + 1;
    std::vector<std::vector<at::Tensor>> grads;  // [unit][rank]
    const double loss = rank_gradients(model, *data, specs, step, world, o.batch, o.accumulation, grads);
    at::NoGradGuard no_grad;
    const bool compressed = t > o.freeze_step;
    const double bc1 = 1.0 - std::pow(o.beta1, double(t));
    const double bc2 = 1.0 - std::pow(o.beta2, double(compressed ? o.freeze_step : t));
    for (size_t k = 0; k < units.size(); ++k) {
      PlainUnit& u = units[k];
      if (!compressed) {  // AdamW on the averaged gradient
        at::Tensor g = at::zeros({u.n});
        for (const auto& gr : grads[k]) g += gr;
        g /= double(world);
        u.m.mul_(o.beta1).add_(g, 1.0 - o.beta1);
        u.v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
      } else if (world == 1) {
        u.m.mul_(o.beta1).add_(grads[k][0], 1.0 - o.beta1);
      } else {
        std::vector<at::Tensor> local;  // each rank's momentum with its own gradient
        for (int rank = 0; rank < world; ++rank) local.push_back(u.m * o.beta1 + grads[k][size_t(rank)] * (1.0 - o.beta1));
        u.m = plain_compressed_mean(local, u.worker_error, u.server_error);
      }
      if (compressed) u.m.mul_(u.v.ne(0).to(at::kFloat));  // no momentum where no gradient ever was
      at::Tensor update = u.m / ((u.v.sqrt() / std::sqrt(bc2)) + o.eps);
      int64_t offset = 0;
      for (auto& p : u.params) {
        at::Tensor flat = p.view({-1});
        flat.mul_(1.0 - o.lr * o.weight_decay).add_(update.narrow(0, offset, p.numel()), -o.lr / bc1);
        offset += p.numel();
      }
    }
    r.losses.push_back(loss);
    r.scales.push_back(1.0);
    r.skipped.push_back(false);
  }
  record_weights(*model, r);
  return r;
}

std::string PlainOneBitLamb::json() const {
  return ds::str(R"({"type": "OneBitLamb", "params": {"lr": )", lr, R"(, "weight_decay": )", weight_decay,
                 R"(, "eps": )", eps, R"(, "betas": [)", beta1, ", ", beta2, R"(], "max_coeff": )", max_coeff,
                 R"(, "min_coeff": )", min_coeff, R"(, "coeff_beta": )", coeff_beta, R"(, "factor_max": )", factor_max,
                 R"(, "factor_min": )", factor_min, R"(, "factor_threshold": )", factor_threshold,
                 R"(, "freeze_step": )", freeze_step, "}}");
}

TrainResult train_plain_onebit_lamb(const PlainOneBitLamb& o, int world, int steps, TinyShape shape) {
  auto data = make_task("reverse", 99);
  Gpt model = plain_model(*data, shape);
  const std::vector<zero::UnitSpec> specs = zero::find_units(*model);
  struct Tensor {
    at::Tensor p;
    int64_t offset, n;
    double coeff = 0.0, factor = 1.0, scale = 0.0;
  };
  struct Unit {
    std::vector<Tensor> tensors;
    int64_t n = 0;
    at::Tensor m, v, fresh;
    std::vector<at::Tensor> worker_error, server_error;
  };
  std::vector<Unit> units;
  for (const zero::UnitSpec& spec : specs) {
    Unit u;
    for (const auto& [name, p] : spec.params) u.tensors.push_back({p, u.n, p.numel()}), u.n += p.numel();
    u.m = at::zeros({u.n}), u.v = at::zeros({u.n}), u.fresh = at::zeros({u.n});
    add_error_feedback(u.n, world, u.worker_error, u.server_error);
    units.push_back(std::move(u));
  }
  auto ratio = [&](const at::Tensor& w, const at::Tensor& u) {
    const double wn = w.norm().item<double>(), un = u.norm().item<double>();
    return wn == 0 || un == 0 ? 1.0 : std::clamp(wn / un, o.min_coeff, o.max_coeff);
  };
  TrainResult r;
  for (int step = 0; step < steps; ++step) {
    const int64_t t = step + 1;
    std::vector<std::vector<at::Tensor>> grads;  // [unit][rank]
    const double loss = rank_gradients(model, *data, specs, step, world, o.batch, o.accumulation, grads);
    at::NoGradGuard no_grad;
    if (t == o.freeze_step + 1) {  // the scales, from the warm-up's momentum
      std::vector<double> rms;
      for (Unit& u : units)
        for (Tensor& x : u.tensors) rms.push_back(u.m.narrow(0, x.offset, x.n).norm().item<double>() / std::sqrt(double(x.n)));
      double united = 0;
      for (double v : rms) united += v / double(rms.size());
      size_t i = 0;
      for (Unit& u : units)
        for (Tensor& x : u.tensors) x.scale = rms[i] > 0 ? united / rms[i] : 1.0, ++i;
    }
    for (size_t k = 0; k < units.size(); ++k) {
      Unit& u = units[k];
      if (t <= o.freeze_step) {  // Lamb on the averaged gradient
        at::Tensor g = at::zeros({u.n});
        for (const auto& gr : grads[k]) g += gr;
        g /= double(world);
        u.m.mul_(o.beta1).add_(g, 1.0 - o.beta1);
        u.v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
        for (Tensor& x : u.tensors) {
          at::Tensor w = x.p.view({-1});
          const at::Tensor upd = u.m.narrow(0, x.offset, x.n) / (u.v.narrow(0, x.offset, x.n).sqrt() + o.eps) + o.weight_decay * w;
          const double c = ratio(w, upd);
          if (c != 1.0) x.coeff = o.coeff_beta * x.coeff + (1 - o.coeff_beta) * c;
          w.sub_(o.lr * c * upd);
        }
        if (t == o.freeze_step) u.fresh = u.v.clone();
        continue;
      }
      const at::Tensor last = u.m.clone();
      at::Tensor scale = at::empty({u.n});
      for (Tensor& x : u.tensors) scale.narrow(0, x.offset, x.n).fill_(x.scale);
      std::vector<at::Tensor> local;  // each rank's scaled momentum with its own gradient
      for (int rank = 0; rank < world; ++rank) local.push_back((u.m * o.beta1 + grads[k][size_t(rank)] * (1.0 - o.beta1)) * scale);
      u.m = (world == 1 ? local[0] : plain_compressed_mean(local, u.worker_error, u.server_error)) / scale;
      u.m.mul_(u.v.ne(0).to(at::kFloat));  // no momentum where no gradient ever was
      for (Tensor& x : u.tensors) {
        at::Tensor w = x.p.view({-1});
        const at::Tensor m = u.m.narrow(0, x.offset, x.n), v = u.v.narrow(0, x.offset, x.n);
        at::Tensor fresh = u.fresh.narrow(0, x.offset, x.n);
        const at::Tensor g = (m - last.narrow(0, x.offset, x.n) * o.beta1) / (1 - o.beta1);
        fresh.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
        const at::Tensor denom = v.sqrt() + o.eps, prelim = m / denom, upd = prelim + o.weight_decay * w;
        double f = (denom / (fresh.sqrt() + o.eps)).max().item<double>();
        if (o.weight_decay > 0) {
          const double q = std::min(1.0, prelim.norm().item<double>() / upd.norm().item<double>());
          f = f * q + (1 - q);
        }
        f = std::clamp(f, o.factor_min, o.factor_max);
        f = std::clamp(f, x.factor * (1 - o.factor_threshold), x.factor * (1 + o.factor_threshold));
        x.factor = f;
        w.sub_(o.lr * x.coeff * f * upd);
      }
    }
    r.losses.push_back(loss);
    r.scales.push_back(1.0);
    r.skipped.push_back(false);
  }
  record_weights(*model, r);
  return r;
}

}  // namespace ds::test

namespace ds::test {

TrainResult train_plain_zero_one_adam(const PlainZeroOneAdam& o, int world, int steps, TinyShape shape) {
  auto data = make_task("reverse", 99);
  Gpt model = plain_model(*data, shape);
  struct Unit {
    std::vector<at::Tensor> params;  // the model's (loaded with a rank's weights before its backward)
    int64_t n = 0;
    std::vector<at::Tensor> p, m, u;  // per simulated rank
    at::Tensor v;                     // the same on every rank
    std::vector<at::Tensor> worker_error, server_error;
  };
  const std::vector<zero::UnitSpec> specs = zero::find_units(*model);
  std::vector<Unit> units;
  for (const zero::UnitSpec& spec : specs) {
    Unit u;
    std::vector<at::Tensor> flat;
    for (const auto& [name, p] : spec.params) u.params.push_back(p), u.n += p.numel(), flat.push_back(p.detach().reshape({-1}));
    const at::Tensor p0 = at::cat(flat);
    for (int r = 0; r < world; ++r) u.p.push_back(p0.clone()), u.m.push_back(at::zeros({u.n})), u.u.push_back(at::zeros({u.n}));
    add_error_feedback(u.n, world, u.worker_error, u.server_error);
    u.v = at::zeros({u.n});
    units.push_back(std::move(u));
  }
  auto load_rank = [&](int r) {
    at::NoGradGuard no_grad;
    for (Unit& u : units) {
      int64_t offset = 0;
      for (auto& p : u.params) {
        p.view({-1}).copy_(u.p[size_t(r)].narrow(0, offset, p.numel()));
        offset += p.numel();
      }
    }
  };
  int64_t var_interval = 1, var_counter = 0, local_interval = 1, local_counter = 0;
  double lrs = 0;
  TrainResult r;
  for (int step = 0; step < steps; ++step) {
    const int64_t t = step + 1;
    std::vector<std::vector<at::Tensor>> grads;  // [unit][rank]
    const double loss = rank_gradients(model, *data, specs, step, world, o.batch, o.accumulation, grads, load_rank);
    at::NoGradGuard no_grad;
    const bool phase_b = t > o.var_freeze_step;
    const bool exact = !phase_b && t % var_interval == 0;
    const bool sync = phase_b && t % local_interval == 0;
    if (t == o.var_freeze_step + 1)
      for (Unit& u : units) {
        for (auto& e : u.worker_error) e.zero_();
        for (auto& e : u.server_error) e.zero_();
      }
    if (phase_b) lrs += o.lr;
    for (Unit& u : units) {
      const size_t k = size_t(&u - units.data());
      const at::Tensor keep = u.v.ne(0).to(at::kFloat), denom = u.v.sqrt() + o.eps;
      if (!phase_b) {
        at::Tensor g;
        if (exact) {
          g = at::zeros({u.n});
          for (const auto& gr : grads[k]) g += gr;
          g /= double(world);
          u.v.mul_(o.beta2).addcmul_(g, g, 1.0 - o.beta2);
        } else {
          g = world > 1 ? plain_compressed_mean(grads[k], u.worker_error, u.server_error) * keep : grads[k][0];
        }
        for (int rank = 0; rank < world; ++rank) {
          u.m[size_t(rank)].mul_(o.beta1).add_(g, 1.0 - o.beta1);
          at::Tensor update = u.m[size_t(rank)] / (u.v.sqrt() + o.eps) + u.p[size_t(rank)] * o.weight_decay;
          u.p[size_t(rank)].add_(update, -o.lr);
        }
        continue;
      }
      std::vector<at::Tensor> sent;
      for (int rank = 0; rank < world; ++rank) {
        const size_t i = size_t(rank);
        u.m[i].mul_(o.beta1).add_(grads[k][i], 1.0 - o.beta1);
        at::Tensor update = u.m[i] / denom + u.p[i] * o.weight_decay;
        u.p[i].add_(update, -o.lr);
        u.u[i].add_(update, -o.lr);
        if (sync) {
          u.p[i].sub_(u.u[i]);
          sent.push_back(u.u[i] * denom);
        }
      }
      if (!sync) continue;
      at::Tensor mean = world > 1 ? plain_compressed_mean(sent, u.worker_error, u.server_error) * keep : sent[0];
      for (int rank = 0; rank < world; ++rank) {
        const size_t i = size_t(rank);
        u.m[i] = mean / -lrs;
        u.p[i].add_(mean / denom);
        u.u[i].zero_();
      }
    }
    if (!phase_b && exact && ++var_counter == o.var_update_scaler) var_counter = 0, var_interval *= 2;
    if (phase_b) {
      if (sync) lrs = 0;
      if (++local_counter == o.local_step_scaler) local_counter = 0, local_interval = std::min(o.local_step_clipper, local_interval * 2);
    }
    r.losses.push_back(loss);
    r.scales.push_back(1.0);
    r.skipped.push_back(false);
  }
  load_rank(0);
  record_weights(*model, r);
  return r;
}

}  // namespace ds::test
