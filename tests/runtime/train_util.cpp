#include "train_util.h"

#include <gtest/gtest.h>
#include <torch/utils.h>

#include "ds/config/config.h"
#include "ds/data/dataset.h"
#include "ds/models/gpt.h"

namespace ds::test {

std::shared_ptr<comm::Communicator> solo() {
  comm::GlooOptions o;  // world of 1: a HashStore, no port
  return comm::make_gloo(o);
}

TrainResult train_tiny(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, int steps,
                       const std::function<void(Engine&, int)>& before_backward) {
  Config config = Config::parse(config_json, "test config");
  config.resolve(comm->size());
  auto data = make_task("reverse", 99);
  GptConfig mc;
  mc.n_layer = 2, mc.n_head = 2, mc.d_model = 32, mc.seq_len = data->context();
  torch::manual_seed(7);
  Gpt model(mc);
  Engine engine(model.ptr(), config, comm);
  const int64_t micro = config.train_micro_batch_size_per_gpu, gas = config.gradient_accumulation_steps;
  TrainResult r;
  for (int step = 0; step < steps; ++step) {
    for (int64_t m = 0; m < gas; ++m) {
      Batch b = data->batch(step, (m * comm->size() + comm->rank()) * micro, micro);
      at::Tensor loss = engine.forward([&] { return model->loss(b.tokens, b.targets); });
      if (before_backward) before_backward(engine, step);
      engine.backward(loss);
    }
    auto s = engine.step();
    EXPECT_TRUE(s.has_value());
    r.losses.push_back(s->loss);
    r.scales.push_back(s->loss_scale);
    r.skipped.push_back(s->skipped);
  }
  std::vector<at::Tensor> parts, masks;
  for (size_t u = 0; u < engine.units().size(); ++u) {
    const FlatUnit& unit = *engine.units()[u];
    parts.push_back(unit.params().slice(0, 0, unit.numel()));  // the full (gathered) weights
    at::Tensor mask = at::zeros({unit.numel()}, at::kBool);
    for (const ParamSlot& slot : unit.slots())
      if (slot.name.size() >= 8 && slot.name.compare(slot.name.size() - 8, 8, "qkv.bias") == 0)
        mask.slice(0, slot.offset + slot.numel / 3, slot.offset + 2 * slot.numel / 3).fill_(true);
    masks.push_back(mask);
  }
  r.weights = at::cat(parts).clone();
  r.key_bias = at::cat(masks);
  return r;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace ds::test
