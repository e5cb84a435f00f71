#include "train_util.h"

#include <gtest/gtest.h>
#include <torch/utils.h>

#include "ds/config/config.h"
#include "ds/zero/init.h"

namespace ds::test {

std::shared_ptr<comm::Communicator> solo() {
  comm::GlooOptions o;  // world of 1: a HashStore, no port
  return comm::make_gloo(o);
}

TinyRun::TinyRun(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, TinyShape shape)
    : comm_(std::move(comm)), data_(make_task("reverse", 99)) {
  Config config = Config::parse(config_json, "test config");
  config.resolve(comm_->size());
  GptConfig mc;
  mc.n_layer = shape.n_layer, mc.n_head = 2, mc.d_model = shape.d_model, mc.seq_len = data_->context();
  torch::manual_seed(7);
  EngineOptions options;
  options.compute_dtype = shape.compute_dtype;
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
    at::Tensor mask = at::zeros({unit.numel()}, at::kBool);
    for (const zero::ParamSlot& slot : unit.slots())
      if (slot.name.size() >= 8 && slot.name.compare(slot.name.size() - 8, 8, "qkv.bias") == 0)
        mask.slice(0, slot.offset + slot.numel / 3, slot.offset + 2 * slot.numel / 3).fill_(true);
    masks.push_back(mask);
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

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace ds::test
