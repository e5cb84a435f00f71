// Hugging Face GPT-2 weights in and out of the reference GPT (ds/models/gpt.h).
//
// Hugging Face names a GPT-2 checkpoint's tensors "wte.weight", "wpe.weight",
// "h.N.ln_1.weight", "h.N.attn.c_attn.weight", "h.N.attn.c_proj.weight", "h.N.ln_2.weight",
// "h.N.mlp.c_fc.weight", "h.N.mlp.c_proj.weight", "ln_f.weight" (and biases), with or without
// a "transformer." prefix (GPT2LMHeadModel's files have it, the hub's gpt2 file does not). Its
// linear layers are Conv1D: their weights are [in, out], the transpose of ours. The tied
// "lm_head.weight", when present, must equal wte; the attention's mask buffers ("attn.bias",
// "attn.masked_bias") are ignored. The model must be GPT-2's architecture: GptConfig with
// activation "gelu_tanh" (LayerNorm epsilon 1e-5 and biases everywhere are what ds::Gpt has).
//
//   ds::Gpt model(c);                                     // c: GPT-2's shapes
//   ds::Engine engine(model.ptr(), config, groups, ...);  // any ZeRO stage
//   ds::load_gpt2_safetensors(engine, *model, "model.safetensors", c);   // collective
//
//   ds-ckpt to-fp32 /ckpt out_dir --hf   ->  out_dir/model.safetensors + out_dir/config.json
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "ds/models/gpt.h"

namespace torch::nn {
class Module;
}

namespace ds {
class Engine;

// One tensor of the mapping: ds::Gpt's name, Hugging Face's name (without the prefix), and
// whether HF stores it transposed (Conv1D).
struct Gpt2Name {
  std::string ours, hf;
  std::vector<int64_t> shape;  // ours
  bool transposed = false;
};
std::vector<Gpt2Name> gpt2_names(const GptConfig& c);

// The shapes a GPT-2 file fixes (from its wte, wpe and block count) and, from a Hugging Face
// config.json beside it, the head count and activation (absent: n_head 0, "gelu_tanh").
// Throws ds::ConfigError for a file without GPT-2's embeddings.
struct Gpt2FileShapes {
  int64_t n_layer = 0, d_model = 0, vocab_size = 0, seq_len = 0, n_head = 0;
  std::string activation = "gelu_tanh";
};
Gpt2FileShapes gpt2_file_shapes(const std::string& path);

// Checks a safetensors file against the model before anything is loaded: every tensor
// present with the right shape (position embeddings may have more rows than c.seq_len: the
// first seq_len are used, as nanoGPT crops GPT-2's 1024), no tensor it does not know. Throws
// ds::ConfigError naming the first mismatch, both shapes and the option that fixes it.
// Returns the "transformer." prefix the file uses ("" or "transformer.").
std::string check_gpt2_safetensors(const std::string& path, const GptConfig& c);

// Loads the file into the engine's model, unit by unit (Engine::gathered_parameters with the
// first data-parallel rank as the modifier: at ZeRO stage 3 one unit is whole at a time, and
// only that rank reads the data). Collective: every rank calls it, after the engine is built
// and before training; every rank checks the header first, so a bad file is the same error
// everywhere. fp32 masters (and bf16/fp16 working copies) take the file's values.
// Tensor and pipeline parallelism are refused (ds::ConfigError): load at tensor = pipeline = 1.
void load_gpt2_safetensors(Engine& engine, torch::nn::Module& model, const std::string& path, const GptConfig& c);

// ds::Gpt's weights (consolidated fp32, ds::Gpt's names) in Hugging Face's names and layout,
// in GPT-2's order, and the config.json that GPT2LMHeadModel.from_pretrained reads.
std::vector<std::pair<std::string, at::Tensor>> to_gpt2_hf(
    const std::vector<std::pair<std::string, at::Tensor>>& weights, const GptConfig& c);
nlohmann::json gpt2_hf_config(const GptConfig& c);

}  // namespace ds
