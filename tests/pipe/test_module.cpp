// PipelineModule: each stage builds only its layers, with the weights a 1-stage module (and
// ds::Gpt) has; tied layers on the stages that use them; activation checkpointing that gives
// the gradients of the plain forward.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <map>

#include "ds/common/error.h"
#include "ds/models/gpt.h"
#include "ds/nn/checkpointing.h"
#include "ds/pipe/module.h"
#include "support/errors.h"

namespace ds::pipe {
namespace {

GptConfig tiny_gpt() {
  GptConfig c;
  c.vocab_size = 32, c.n_layer = 4, c.n_head = 2, c.d_model = 16, c.seq_len = 8;
  return c;
}

std::map<std::string, at::Tensor> named(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value();
  return out;
}

TEST(PipelineModule, OneStageIsTheGptWithItsWeightsAndLogits) {
  const GptConfig c = tiny_gpt();
  torch::manual_seed(5);
  Gpt gpt(c);
  const at::Tensor after_gpt = at::rand({4});
  torch::manual_seed(5);
  PipelineModule pm(gpt_layer_specs(c), PipelineLayout{});
  // Both moved the generator by the same one draw: what the program draws next is the same.
  EXPECT_TRUE(at::rand({4}).equal(after_gpt));
  const auto want = named(*gpt);
  const auto got = named(*pm);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, p] : got) {
    ASSERT_TRUE(want.count(gpt_parameter_name(name, c.n_layer))) << name;
    EXPECT_TRUE(p.equal(want.at(gpt_parameter_name(name, c.n_layer)))) << name;
  }
  at::Tensor tokens = at::randint(c.vocab_size, {3, 7}, at::kLong);
  EXPECT_TRUE(pm->forward(tokens).allclose(gpt->forward(tokens), 0, 1e-6));
}

TEST(PipelineModule, EachStageBuildsOnlyItsLayersAndTheTiedCopies) {
  const GptConfig c = tiny_gpt();  // 8 layer specs: wte, wpe, 4 blocks, ln_f, head
  torch::manual_seed(5);
  PipelineModule whole(gpt_layer_specs(c), PipelineLayout{});
  const auto all = named(*whole);
  std::map<std::string, int> holders;
  for (int stage = 0; stage < 3; ++stage) {
    torch::manual_seed(5);
    PipelineLayout l;
    l.stages = 3, l.stage = stage, l.partition = "uniform";  // layers 0-2, 3-5, 6-7
    PipelineModule pm(gpt_layer_specs(c), l);
    EXPECT_EQ(pm->boundaries(), (std::vector<int>{0, 3, 6, 8}));
    for (const auto& [name, p] : named(*pm)) {
      ASSERT_TRUE(all.count(name)) << name;
      EXPECT_TRUE(p.equal(all.at(name))) << "stage " << stage << " " << name;  // the same weights in every layout
      ++holders[name];
      if (name.rfind("tied_modules.", 0) != 0) {
        const int layer = std::stoi(name.substr(0, name.find('.')));
        EXPECT_TRUE(layer >= pm->boundaries()[size_t(stage)] && layer < pm->boundaries()[size_t(stage) + 1]) << name;
      }
    }
    // The tied embedding: on the first stage (the token embedding) and the last (the head).
    ASSERT_EQ(pm->tied().size(), stage == 1 ? 0u : 1u) << stage;
    if (stage != 1) {
      EXPECT_EQ(pm->tied()[0].stages, (std::vector<int>{0, 2}));
    }
  }
  EXPECT_EQ(holders["tied_modules.wte.weight"], 2);
  for (const auto& [name, n] : holders) {
    if (name.rfind("tied_modules.", 0) != 0) {
      EXPECT_EQ(n, 1) << name;
    }
  }
  EXPECT_EQ(holders.size(), all.size());
  // The stages' forwards chained are the whole model's forward.
  at::Tensor tokens = at::randint(c.vocab_size, {2, 8}, at::kLong);
  at::Tensor h = tokens;
  for (int stage = 0; stage < 3; ++stage) {
    torch::manual_seed(5);
    PipelineLayout l;
    l.stages = 3, l.stage = stage, l.partition = "uniform";
    h = PipelineModule(gpt_layer_specs(c), l)->forward(h);
  }
  EXPECT_TRUE(h.allclose(whole->forward(tokens), 0, 1e-6));
}

TEST(PipelineModule, PartitionByParametersAndByType) {
  const GptConfig c = tiny_gpt();
  PipelineLayout l;
  l.stages = 2, l.stage = 0, l.partition = "type:GptBlock";
  PipelineModule by_type(gpt_layer_specs(c), l);
  EXPECT_EQ(by_type->boundaries(), (std::vector<int>{0, 4, 8}));  // two blocks per stage
  EXPECT_NE(by_type->describe_stage().find("stage 0 of 2: layers 0-3 (TokenEmbedding, PositionEmbedding, 2 x GptBlock)"),
            std::string::npos)
      << by_type->describe_stage();
  l.partition = "parameters";
  PipelineModule by_params(gpt_layer_specs(c), l);
  const std::vector<int>& b = by_params->boundaries();
  // Counted parameters agree with the built layers' (a spec without a count is built to count).
  std::vector<LayerSpec> specs = gpt_layer_specs(c);
  for (auto& s : specs) s.parameters = -1;
  PipelineModule counted(specs, l);
  EXPECT_EQ(counted->boundaries(), b);
}

TEST(PipelineModule, BadSpecsAndLayoutsAreRefused) {
  const GptConfig c = tiny_gpt();
  PipelineLayout l;
  l.stages = 9, l.stage = 0, l.partition = "uniform";
  EXPECT_ERROR_HAS(PipelineModule(gpt_layer_specs(c), l), "pipeline.stages is 9 but the model has 8 layers: use at most 8 stages");
  l.stages = 2, l.stage = 2;
  EXPECT_ERROR_HAS(PipelineModule(gpt_layer_specs(c), l), "pipeline stage 2 is outside 0..1");
  std::vector<LayerSpec> specs = gpt_layer_specs(c);
  specs[3].forward = nullptr;
  EXPECT_ERROR_HAS(PipelineModule(specs, PipelineLayout{}), "pipeline layer 3 (GptBlock) has no forward function");
  // The head reuses the embedding's module: it needs no build of its own; the embedding does.
  specs = gpt_layer_specs(c);
  EXPECT_FALSE(specs.back().build);
  specs.front().build = nullptr;
  EXPECT_ERROR_HAS(PipelineModule(specs, PipelineLayout{}), "pipeline layer 0 (TokenEmbedding) has no build function");
}

// A function with dropout: the recompute must draw the same mask.
at::Tensor noisy(const at::Tensor& x, const at::Tensor& w) { return at::dropout(at::tanh(x.matmul(w)), 0.5, true).matmul(w); }

TEST(Checkpointing, GradientsEqualThePlainForwardWithDropoutRepeated) {
  torch::manual_seed(3);
  at::Tensor w0 = at::randn({6, 6}), x0 = at::randn({4, 6});
  auto run = [&](bool checkpointed) {
    at::Tensor w = w0.clone().requires_grad_(true), x = x0.clone().requires_grad_(true);
    torch::manual_seed(11);
    at::Tensor y = checkpointed ? checkpointing::checkpoint([&](const std::vector<at::Tensor>& in) { return noisy(in[0], w); }, {x})
                                : noisy(x, w);
    at::Tensor after = at::rand({3});  // the generator continues as without checkpointing
    y.pow(2).sum().backward();
    return std::vector<at::Tensor>{y.detach(), x.grad(), w.grad(), after};
  };
  const int64_t before = checkpointing::recomputations();
  auto plain = run(false), ckpt = run(true);
  EXPECT_EQ(checkpointing::recomputations(), before + 1);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(ckpt[i].allclose(plain[i], 0, 1e-6)) << "tensor " << i;
  // No grad mode: a plain call, nothing saved or recomputed.
  torch::NoGradGuard no_grad;
  at::Tensor y = checkpointing::checkpoint([&](const std::vector<at::Tensor>& in) { return in[0] * 2; }, {x0});
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(checkpointing::recomputations(), before + 1);
}

TEST(Checkpointing, AModuleCheckpointedEveryTwoLayersHasThePlainGradients) {
  const GptConfig c = tiny_gpt();
  at::Tensor tokens = at::randint(c.vocab_size, {2, 8}, at::kLong), targets = at::randint(c.vocab_size, {2, 8}, at::kLong);
  std::map<std::string, at::Tensor> grads[2];
  for (int interval : {0, 2}) {
    torch::manual_seed(5);
    PipelineLayout l;
    l.activation_checkpoint_interval = interval;
    PipelineModule pm(gpt_layer_specs(c), l);
    const int64_t before = checkpointing::recomputations();
    gpt_loss(pm->forward(tokens), targets).backward();
    // Segments [0,2) and [6,8) hold the tied layer and run plainly: the blocks' two recompute.
    EXPECT_EQ(checkpointing::recomputations() - before, interval ? 2 : 0);
    for (const auto& [name, p] : named(*pm)) grads[interval ? 1 : 0][name] = p.grad().clone();
  }
  for (const auto& [name, g] : grads[0]) EXPECT_TRUE(grads[1][name].allclose(g, 0, 1e-6)) << name;
}

}  // namespace
}  // namespace ds::pipe
