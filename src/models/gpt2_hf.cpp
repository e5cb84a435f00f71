#include "ds/models/gpt2_hf.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "ds/ckpt/safetensors.h"
#include "ds/common/error.h"
#include "ds/runtime/engine.h"

namespace ds {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::vector<int64_t> hf_shape(const Gpt2Name& n) {
  return n.transposed ? std::vector<int64_t>{n.shape[1], n.shape[0]} : n.shape;
}

bool ignored(const std::string& name) {  // the attention's causal-mask buffers
  auto ends_with = [&](const std::string& tail) {
    return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  return ends_with(".attn.bias") || ends_with(".attn.masked_bias");
}

// "h.12.attn..." -> 12; -1 for other names.
int64_t block_of(const std::string& name) {
  if (name.rfind("h.", 0) != 0) return -1;
  const size_t dot = name.find('.', 2);
  if (dot == std::string::npos || dot == 2 || name.find_first_not_of("0123456789", 2) != dot) return -1;
  return std::stoll(name.substr(2, dot - 2));
}

// What to change on the command line when `n`'s shape differs from the file's.
std::string hint(const Gpt2Name& n, const std::vector<int64_t>& file, const GptConfig& c) {
  if (n.ours == "wte.weight" && file.size() == 2) return ds::str("; give --vocab-size ", file[0], " --d-model ", file[1]);
  if (n.ours == "wpe.weight" && file.size() == 2 && file[1] == c.d_model)
    return ds::str("; give --seq-len ", file[0], " or less");
  return "";
}

}  // namespace

std::vector<Gpt2Name> gpt2_names(const GptConfig& c) {
  const int64_t d = c.d_model;
  std::vector<Gpt2Name> out{{"wte.weight", "wte.weight", {c.vocab_size, d}, false},
                            {"wpe.weight", "wpe.weight", {c.seq_len, d}, false}};
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string o = ds::str("blocks.", l, "."), h = ds::str("h.", l, ".");
    auto add = [&](const std::string& ours, const std::string& hf, std::vector<int64_t> shape, bool t = false) {
      out.push_back({o + ours, h + hf, std::move(shape), t});
    };
    add("ln1.weight", "ln_1.weight", {d});
    add("ln1.bias", "ln_1.bias", {d});
    add("qkv.weight", "attn.c_attn.weight", {3 * d, d}, true);
    add("qkv.bias", "attn.c_attn.bias", {3 * d});
    add("attn_proj.weight", "attn.c_proj.weight", {d, d}, true);
    add("attn_proj.bias", "attn.c_proj.bias", {d});
    add("ln2.weight", "ln_2.weight", {d});
    add("ln2.bias", "ln_2.bias", {d});
    add("fc.weight", "mlp.c_fc.weight", {4 * d, d}, true);
    add("fc.bias", "mlp.c_fc.bias", {4 * d});
    add("mlp_proj.weight", "mlp.c_proj.weight", {d, 4 * d}, true);
    add("mlp_proj.bias", "mlp.c_proj.bias", {d});
  }
  out.push_back({"ln_f.weight", "ln_f.weight", {d}, false});
  out.push_back({"ln_f.bias", "ln_f.bias", {d}, false});
  return out;
}

namespace {

// "transformer." or "", from where the token embedding is.
std::string prefix_of(const ckpt::SafetensorsReader& file) {
  if (file.find("transformer.wte.weight")) return "transformer.";
  if (file.find("wte.weight")) return "";
  throw ConfigError(ds::str(file.path(), ": no wte.weight or transformer.wte.weight: not GPT-2 weights in Hugging ",
                            "Face's naming (first tensor: '",
                            file.entries().empty() ? std::string("none") : file.entries().front().name, "')"));
}

int64_t block_count(const ckpt::SafetensorsReader& file, const std::string& prefix) {
  int64_t blocks = 0;
  for (const auto& e : file.entries())
    if (e.name.rfind(prefix, 0) == 0) blocks = std::max(blocks, block_of(e.name.substr(prefix.size())) + 1);
  return blocks;
}

}  // namespace

Gpt2FileShapes gpt2_file_shapes(const std::string& path) {
  ckpt::SafetensorsReader file(path);
  const std::string prefix = prefix_of(file);
  Gpt2FileShapes s;
  const auto* wte = file.find(prefix + "wte.weight");
  const auto* wpe = file.find(prefix + "wpe.weight");
  if (wte->shape.size() != 2) throw ConfigError(ds::str(path, ": ", wte->name, " is ", shape_str(wte->shape), ", not a matrix"));
  if (!wpe || wpe->shape.size() != 2)
    throw ConfigError(ds::str(path, ": no position embedding ", prefix, "wpe.weight [positions, width]"));
  s.vocab_size = wte->shape[0], s.d_model = wte->shape[1], s.seq_len = wpe->shape[0];
  s.n_layer = block_count(file, prefix);
  const std::filesystem::path config = std::filesystem::path(path).parent_path() / "config.json";
  std::ifstream in(config);
  if (!in) return s;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("n_head") && j["n_head"].is_number_integer()) s.n_head = j["n_head"].get<int64_t>();
  if (j.is_object() && j.contains("activation_function") && j["activation_function"] == "gelu") s.activation = "gelu";
  return s;
}

std::string check_gpt2_safetensors(const std::string& path, const GptConfig& c) {
  ckpt::SafetensorsReader file(path);
  auto fail = [&](const std::string& m) { throw ConfigError(ds::str(path, ": ", m)); };
  const std::string prefix = prefix_of(file);
  // Blocks first: a wrong --n-layer would otherwise show as a missing or unknown tensor.
  const int64_t blocks = block_count(file, prefix);
  if (blocks != c.n_layer) fail(ds::str("the file has ", blocks, " blocks (h.0 .. h.", blocks - 1, "), the model ",
                                        c.n_layer, "; give --n-layer ", blocks));
  std::map<std::string, const Gpt2Name*> known;
  const std::vector<Gpt2Name> names = gpt2_names(c);
  for (const auto& n : names) known[prefix + n.hf] = &n;
  for (const auto& e : file.entries()) {
    if (known.count(e.name) || ignored(e.name) || e.name == "lm_head.weight") continue;
    fail(ds::str("tensor '", e.name, "' ", shape_str(e.shape), " is not part of GPT-2 in Hugging Face's naming",
                 prefix.empty() ? "" : " (with the transformer. prefix)"));
  }
  for (const auto& n : names) {
    const ckpt::SafetensorsReader::Entry* e = file.find(prefix + n.hf);
    if (!e) fail(ds::str("no tensor '", prefix + n.hf, "' (the model's ", n.ours, " ", shape_str(n.shape), ")"));
    if (!at::isFloatingType(e->dtype)) fail(ds::str("tensor '", e->name, "' is ", e->dtype, ", not floating point"));
    const std::vector<int64_t> want = hf_shape(n);
    const bool cropped = n.ours == "wpe.weight" && e->shape.size() == 2 && e->shape[1] == want[1] && e->shape[0] >= want[0];
    if (e->shape != want && !cropped)
      fail(ds::str("tensor '", e->name, "' is ", shape_str(e->shape), " but the model's ", n.ours, " needs ",
                   shape_str(want), n.transposed ? " (Conv1D: [in, out])" : "", hint(n, e->shape, c)));
  }
  if (const auto* head = file.find("lm_head.weight")) {
    if (head->shape != names[0].shape)
      fail(ds::str("lm_head.weight is ", shape_str(head->shape), ", not the token embedding's ", shape_str(names[0].shape)));
    if (!at::equal(file.read("lm_head.weight").to(at::kFloat), file.read(prefix + "wte.weight").to(at::kFloat)))
      fail("lm_head.weight differs from the token embedding; the reference GPT ties them (GPT-2 does)");
  }
  return prefix;
}

void load_gpt2_safetensors(Engine& engine, torch::nn::Module& model, const std::string& path, const GptConfig& c) {
  const comm::ParallelGroups& g = engine.groups();
  if (g.tensor->size() > 1 || g.pipe->size() > 1)
    throw ConfigError(ds::str("loading GPT-2 weights under tensor or pipeline parallelism is not supported (tensor ",
                              g.tensor->size(), ", pipeline ", g.pipe->size(),
                              "): load them with data parallelism (any ZeRO stage), save, and resume that checkpoint"));
  const std::string prefix = check_gpt2_safetensors(path, c);
  const bool reader = engine.dp_rank() == 0;
  std::unique_ptr<ckpt::SafetensorsReader> file;
  if (reader) file = std::make_unique<ckpt::SafetensorsReader>(path);
  // Unit by unit, in the engine's unit order: ZeRO-3 then holds one whole unit at a time.
  std::map<std::string, const Gpt2Name*> by_ours;
  const std::vector<Gpt2Name> names = gpt2_names(c);
  for (const auto& n : names) by_ours[n.ours] = &n;
  const auto params = model.named_parameters(/*recurse=*/true);  // in registration order
  for (const auto& item : params)
    if (!by_ours.count(item.key())) throw Error(ds::str("the model has a parameter '", item.key(), "' that GPT-2 does not"));
  std::vector<std::string> group;
  auto flush = [&] {
    if (group.empty()) return;
    engine.gathered_parameters(group, [&] {
      if (!reader) return;
      for (const std::string& name : group) {
        const Gpt2Name& n = *by_ours[name];
        at::Tensor t = file->read(prefix + n.hf).to(at::kFloat);
        if (n.transposed) t = t.t();
        if (n.ours == "wpe.weight") t = t.narrow(0, 0, n.shape[0]);
        params[name].copy_(t);
      }
    }, /*modifier_rank=*/0);
    group.clear();
  };
  std::string unit;
  for (const auto& item : params) {  // wte, wpe, blocks.N, ln_f: the GPT's units
    const std::string& name = item.key();
    const size_t dot = name.find('.'), second = name.find('.', dot + 1);
    const std::string u = name.rfind("blocks.", 0) == 0 ? name.substr(0, second) : name.substr(0, dot);
    if (u != unit) flush();
    unit = u;
    group.push_back(name);
  }
  flush();
}

std::vector<std::pair<std::string, at::Tensor>> to_gpt2_hf(
    const std::vector<std::pair<std::string, at::Tensor>>& weights, const GptConfig& c) {
  std::map<std::string, at::Tensor> ours(weights.begin(), weights.end());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& n : gpt2_names(c)) {
    auto it = ours.find(n.ours);
    if (it == ours.end()) throw Error(ds::str("the checkpoint has no ", n.ours, " (is it the reference GPT's?)"));
    if (it->second.sizes().vec() != n.shape)
      throw Error(ds::str("the checkpoint's ", n.ours, " is ", shape_str(it->second.sizes().vec()), ", the model ",
                          c.describe(), " has ", shape_str(n.shape)));
    at::Tensor t = it->second.to(at::kFloat);
    out.emplace_back(n.hf, (n.transposed ? t.t() : t).contiguous());
    ours.erase(it);
  }
  if (!ours.empty()) throw Error(ds::str("the checkpoint has ", ours.begin()->first, ", which GPT-2 does not"));
  return out;
}

nlohmann::json gpt2_hf_config(const GptConfig& c) {
  return {{"architectures", {"GPT2LMHeadModel"}},
          {"model_type", "gpt2"},
          {"vocab_size", c.vocab_size},
          {"n_positions", c.seq_len},
          {"n_ctx", c.seq_len},
          {"n_embd", c.d_model},
          {"n_layer", c.n_layer},
          {"n_head", c.n_head},
          {"activation_function", c.activation == "gelu_tanh" ? "gelu_new" : "gelu"},
          {"layer_norm_epsilon", 1e-5},
          {"resid_pdrop", 0.0},
          {"embd_pdrop", 0.0},
          {"attn_pdrop", 0.0},
          {"tie_word_embeddings", true},
          {"torch_dtype", "float32"}};
}

}  // namespace ds
