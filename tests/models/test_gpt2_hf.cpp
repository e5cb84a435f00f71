// Hugging Face GPT-2 weights against an independent reference: tests/models/gpt2_reference.py
// writes a small GPT-2 in HF's naming and layout (transformer. prefix, Conv1D weights, tied
// lm_head, mask buffers) with its own safetensors writer and computes logits with a plain
// Python torch GPT-2; the reference GPT loaded with ds::load_gpt2_safetensors must give the
// same logits at ZeRO stage 0 (1 rank) and stage 3 (2 ranks, one unit whole at a time), and
// the exported HF files must give them again in Python. Wrong files are one-line errors.
#include "ds/models/gpt2_hf.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "ds/ckpt/safetensors.h"
#include "ds/deepspeed.h"
#include "ds/zero/init.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"

namespace ds {
namespace {

constexpr int64_t kLayers = 2, kHeads = 4, kWidth = 32, kVocab = 97, kPositions = 48;
constexpr int64_t kContext = kPositions - 16;  // the model crops the file's 48 positions to 32

void python(const std::string& args) {
  const std::string cmd = "/usr/bin/python3 " DS_GPT2_REFERENCE " " + args;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

at::Tensor read_floats(const std::string& path, std::vector<int64_t> shape, at::ScalarType type = at::kFloat) {
  std::ifstream in(path, std::ios::binary);
  at::Tensor t = at::empty(shape, type);
  in.read(static_cast<char*>(t.data_ptr()), std::streamsize(t.nbytes()));
  EXPECT_TRUE(in.good()) << path;
  return t;
}

GptConfig gpt2_small() {
  GptConfig c;
  c.n_layer = kLayers, c.n_head = kHeads, c.d_model = kWidth, c.vocab_size = kVocab, c.seq_len = kContext;
  c.activation = "gelu_tanh";
  return c;
}

std::string config_json(int stage) {
  return ds::str(R"({"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 0.001}},
                    "zero_optimization": {"stage": )", stage, "}}");
}

// A directory with the reference's files, made once per test.
struct Reference {
  test::TempDir dir{"ds_gpt2_hf"};
  at::Tensor tokens, logits;
  Reference() {
    python(ds::str("make ", dir.path(), " ", kLayers, " ", kHeads, " ", kWidth, " ", kVocab, " ", kPositions, " 3"));
    tokens = read_floats(dir / "tokens.bin", {2, kContext}, at::kLong);
    logits = read_floats(dir / "logits.bin", {2, kContext, kVocab});
  }
};

// The model at `stage` over `comm`, loaded from the file; returns its logits on the tokens.
at::Tensor loaded_logits(comm::Communicator& comm, int stage, const std::string& file, const at::Tensor& tokens,
                         std::vector<std::pair<std::string, at::Tensor>>* weights = nullptr) {
  Config cfg = Config::parse(config_json(stage), "test config");
  cfg.resolve(comm.size());
  auto groups = parallel_groups(comm.shared_from_this(), cfg);
  torch::manual_seed(11);
  zero::Init init(groups.data, cfg);
  Gpt gpt(gpt2_small());
  EngineOptions options;
  options.sharded_units = init.take_units();
  Engine engine(gpt.ptr(), cfg, groups, std::move(options));
  load_gpt2_safetensors(engine, *gpt, file, gpt2_small());
  torch::NoGradGuard no_grad;
  if (weights)
    engine.gathered_parameters({}, [&] {
      for (const auto& p : gpt->named_parameters()) weights->emplace_back(p.key(), p.value().clone());
    });
  return gpt->forward(tokens);
}

TEST(Gpt2Hf, LoadedWeightsGiveThePythonReferenceLogits) {
  Reference ref;
  test::run_ranks(1, [&](comm::Communicator& world) {
    std::vector<std::pair<std::string, at::Tensor>> weights;
    at::Tensor logits = loaded_logits(world, 0, ref.dir / "model.safetensors", ref.tokens, &weights);
    EXPECT_LT((logits - ref.logits).abs().max().item<double>(), 1e-4);
    // Export: HF's names and layout, exactly the file's tensors (positions cropped to the context).
    ckpt::SafetensorsReader file(ref.dir / "model.safetensors");
    const auto hf = to_gpt2_hf(weights, gpt2_small());
    EXPECT_EQ(hf.size(), size_t(2 + 12 * kLayers + 2));
    for (const auto& [name, t] : hf) {
      at::Tensor expected = file.read("transformer." + name);
      if (name == "wpe.weight") expected = expected.narrow(0, 0, kContext);
      EXPECT_TRUE(at::equal(t, expected)) << name;
    }
    // Exported, the Python reference reads it back (no prefix, no lm_head) to the same logits.
    test::TempDir out("ds_gpt2_out");
    ckpt::write_safetensors(out / "model.safetensors", hf, {{"format", "pt"}});
    std::ofstream(out / "config.json") << gpt2_hf_config(gpt2_small()).dump();
    std::ifstream src(ref.dir / "tokens.bin", std::ios::binary);
    std::ofstream(out / "tokens.bin", std::ios::binary) << src.rdbuf();
    python(ds::str("forward ", out.path(), " ", kContext));
    at::Tensor again = read_floats(out / "logits_check.bin", {2, kContext, kVocab});
    EXPECT_LT((again - logits).abs().max().item<double>(), 1e-4);
  });
}

TEST(Gpt2Hf, StageThreeOnTwoRanksLoadsUnitByUnitToTheSameLogits) {
  Reference ref;
  test::run_ranks(2, [&](comm::Communicator& world) {
    at::Tensor logits = loaded_logits(world, 3, ref.dir / "model.safetensors", ref.tokens);
    EXPECT_LT((logits - ref.logits).abs().max().item<double>(), 1e-4) << "rank " << world.rank();
  });
}

TEST(Gpt2Hf, TheFileFixesTheShapesAndAConfigJsonTheHeads) {
  Reference ref;
  const Gpt2FileShapes s = gpt2_file_shapes(ref.dir / "model.safetensors");
  EXPECT_EQ(s.n_layer, kLayers);
  EXPECT_EQ(s.d_model, kWidth);
  EXPECT_EQ(s.vocab_size, kVocab);
  EXPECT_EQ(s.seq_len, kPositions);
  EXPECT_EQ(s.n_head, kHeads);
  EXPECT_EQ(s.activation, "gelu_tanh");
  std::remove((ref.dir / "config.json").c_str());
  EXPECT_EQ(gpt2_file_shapes(ref.dir / "model.safetensors").n_head, 0);
}

TEST(Gpt2Hf, AFileThatDoesNotMatchTheModelIsOneLineNamingTheTensor) {
  Reference ref;
  const std::string file = ref.dir / "model.safetensors";
  GptConfig c = gpt2_small();
  EXPECT_NO_THROW(check_gpt2_safetensors(file, c));
  c.d_model = 64;
  EXPECT_ERROR_HAS(check_gpt2_safetensors(file, c),
                   "tensor 'transformer.wte.weight' is [97, 32] but the model's wte.weight needs [97, 64]; give "
                   "--vocab-size 97 --d-model 32");
  c = gpt2_small();
  c.n_layer = 3;
  EXPECT_ERROR_HAS(check_gpt2_safetensors(file, c), "the file has 2 blocks (h.0 .. h.1), the model 3; give --n-layer 2");
  c = gpt2_small();
  c.seq_len = kPositions + 1;
  EXPECT_ERROR_HAS(check_gpt2_safetensors(file, c), "give --seq-len 48 or less");

  // Edited files: a renamed tensor, a transposed Conv1D weight, an untied head, not GPT-2 at all.
  auto edited = [&](const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
    auto tensors = ckpt::read_safetensors(file).tensors;
    edit(tensors);
    const std::string path = ref.dir / "edited.safetensors";
    ckpt::write_safetensors(path, tensors);
    return path;
  };
  const std::string renamed = edited([](auto& t) {
    for (auto& [name, v] : t)
      if (name == "transformer.h.1.mlp.c_fc.bias") name = "transformer.h.1.mlp.fc.bias";
  });
  EXPECT_ERROR_HAS(check_gpt2_safetensors(renamed, gpt2_small()),
                   "tensor 'transformer.h.1.mlp.fc.bias' [128] is not part of GPT-2 in Hugging Face's naming");
  const std::string transposed = edited([](auto& t) {
    for (auto& [name, v] : t)
      if (name == "transformer.h.0.attn.c_attn.weight") v = v.t().contiguous();
  });
  EXPECT_ERROR_HAS(check_gpt2_safetensors(transposed, gpt2_small()),
                   "tensor 'transformer.h.0.attn.c_attn.weight' is [96, 32] but the model's blocks.0.qkv.weight needs "
                   "[32, 96] (Conv1D: [in, out])");
  const std::string untied = edited([](auto& t) {
    for (auto& [name, v] : t)
      if (name == "lm_head.weight") v = v + 1;
  });
  EXPECT_ERROR_HAS(check_gpt2_safetensors(untied, gpt2_small()), "lm_head.weight differs from the token embedding");
  const std::string other = edited([](auto& t) { t = {{"model.embed_tokens.weight", at::zeros({4, 4})}}; });
  EXPECT_ERROR_HAS(gpt2_file_shapes(other), "not GPT-2 weights in Hugging Face's naming (first tensor: "
                                           "'model.embed_tokens.weight')");
  EXPECT_ERROR_HAS(check_gpt2_safetensors(ref.dir / "missing.safetensors", gpt2_small()), "cannot open");
}

TEST(Gpt2Hf, TheConfigRoundTripsThroughJson) {
  GptConfig c = gpt2_small();
  const GptConfig back = GptConfig::from_json(c.to_json());
  EXPECT_EQ(back.describe(), c.describe());
  EXPECT_EQ(back.activation, "gelu_tanh");
  EXPECT_ERROR_HAS(GptConfig::from_json({{"n_layer", 2}}), "has no integer 'n_head'");
  const nlohmann::json hf = gpt2_hf_config(c);
  EXPECT_EQ(hf["activation_function"], "gelu_new");
  EXPECT_EQ(hf["n_positions"], kContext);
}

}  // namespace
}  // namespace ds
