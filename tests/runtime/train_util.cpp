#include "train_util.h"

#include <gtest/gtest.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include "ds/config/config.h"
#include "ds/zero/init.h"

namespace ds::test {

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
  mc.n_layer = shape.n_layer, mc.n_head = 2, mc.d_model = shape.d_model, mc.seq_len = data_->context();
  torch::manual_seed(7);
  EngineOptions options;
  options.compute_dtype = shape.compute_dtype;
  if (shape.optimizer) options.optimizer = shape.optimizer();
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
      Batch b = data_->batch(step, (m * comm_->size() + comm_->rank()) * micro, micro);
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

TrainResult train_plain_libtorch(const PlainAdamW& o, int steps, TinyShape shape) {
  auto data = make_task("reverse", 99);
  GptConfig mc;
  mc.n_layer = shape.n_layer, mc.n_head = 2, mc.d_model = shape.d_model, mc.seq_len = data->context();
  torch::manual_seed(7);
  Gpt model(mc);
  torch::optim::AdamW adamw(model->parameters(),
                            torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay).eps(o.eps));
  TrainResult r;
  for (int step = 0; step < steps; ++step) {
    Batch b = data->batch(step, 0, o.batch);
    adamw.zero_grad();
    at::Tensor loss = model->loss(b.tokens, b.targets);
    loss.backward();
    if (o.clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), o.clip);
    adamw.step();
    r.losses.push_back(loss.item<double>());
    r.scales.push_back(1.0);
    r.skipped.push_back(false);
  }
  record_weights(*model, r);
  return r;
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
  GptConfig mc;
  mc.n_layer = shape.n_layer, mc.n_head = 2, mc.d_model = shape.d_model, mc.seq_len = data->context();
  torch::manual_seed(7);
  Gpt model(mc);
  std::vector<PlainUnit> units;
  for (const zero::UnitSpec& spec : zero::find_units(*model)) {
    PlainUnit u;
    for (const auto& [name, p] : spec.params) u.params.push_back(p), u.n += p.numel();
    u.m = at::zeros({u.n}), u.v = at::zeros({u.n});
    const int64_t padded = (u.n + 8 * world - 1) / (8 * world) * (8 * world), chunk = padded / world;
    for (int r = 0; r < world; ++r) u.worker_error.push_back(at::zeros({u.n})), u.server_error.push_back(at::zeros({chunk}));
    units.push_back(std::move(u));
  }
  auto flat_grad = [](const PlainUnit& u) {
    std::vector<at::Tensor> g;
    for (const auto& p : u.params) g.push_back(p.grad().reshape({-1}));
    return at::cat(g);
  };
  TrainResult r;
  const int64_t gas = o.accumulation, micro = o.batch / (world * gas);
  for (int step = 0; step < steps; ++step) {
    const int64_t t = step + 1;
    std::vector<std::vector<at::Tensor>> grads(units.size());  // [unit][rank]
    double loss_sum = 0;
    for (int rank = 0; rank < world; ++rank) {
      model->zero_grad();
      for (int64_t m = 0; m < gas; ++m) {
        Batch b = data->batch(step, (m * world + rank) * micro, micro);
        at::Tensor loss = model->loss(b.tokens, b.targets) / double(gas);
        loss.backward();
        loss_sum += loss.item<double>();
      }
      for (size_t k = 0; k < units.size(); ++k) grads[k].push_back(flat_grad(units[k]).clone());
    }
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
        // Workers: local momentum plus the error left last time, compressed to sign x RMS.
        const int64_t chunk = u.server_error[0].numel(), padded = chunk * world;
        at::Tensor sum = at::zeros({padded});
        for (int rank = 0; rank < world; ++rank) {
          at::Tensor x = u.m * o.beta1 + grads[k][size_t(rank)] * (1.0 - o.beta1) + u.worker_error[size_t(rank)];
          const double s = rms(x);
          at::Tensor sent = at::full({padded}, float(s));  // the padding's sign is +1
          sent.narrow(0, 0, u.n).copy_(sign_of(x) * float(s));
          u.worker_error[size_t(rank)] = x - sent.narrow(0, 0, u.n);
          sum += sent;
        }
        // Servers: chunk c's mean plus its error, compressed again.
        for (int c = 0; c < world; ++c) {
          at::Tensor mean = sum.narrow(0, c * chunk, chunk) / double(world) + u.server_error[size_t(c)];
          const int64_t real = std::clamp<int64_t>(u.n - c * chunk, 0, chunk);
          if (real == 0) continue;
          at::Tensor mine = mean.narrow(0, 0, real);
          const double s = rms(mine);
          at::Tensor out = sign_of(mine) * float(s);
          u.server_error[size_t(c)].zero_();
          u.server_error[size_t(c)].narrow(0, 0, real).copy_(mine - out);
          u.m.narrow(0, c * chunk, real).copy_(out);
        }
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
    r.losses.push_back(loss_sum / world);
    r.scales.push_back(1.0);
    r.skipped.push_back(false);
  }
  record_weights(*model, r);
  return r;
}

}  // namespace ds::test
