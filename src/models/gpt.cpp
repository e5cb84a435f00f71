#include "ds/models/gpt.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/init.h>

#include <cmath>

#include "ds/common/error.h"
#include "ds/nn/linear.h"

namespace ds {

void GptConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("model: " + m); };
  if (vocab_size < 2) bad(ds::str("vocab_size must be >= 2, got ", vocab_size));
  if (n_layer < 1) bad(ds::str("n_layer must be >= 1, got ", n_layer));
  if (n_head < 1) bad(ds::str("n_head must be >= 1, got ", n_head));
  if (d_model < 1) bad(ds::str("d_model must be >= 1, got ", d_model));
  if (seq_len < 1) bad(ds::str("seq_len must be >= 1, got ", seq_len));
  if (d_model % n_head != 0)
    bad(ds::str("d_model ", d_model, " is not divisible by n_head ", n_head, " (head width would be ",
                double(d_model) / n_head, "); pick a d_model that is a multiple of n_head"));
}

int64_t GptConfig::parameter_count() const {
  int64_t d = d_model;
  int64_t block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d);
  return vocab_size * d + seq_len * d + n_layer * block + 2 * d;
}

double GptConfig::flops_per_token(int64_t context) const {
  return 6.0 * double(parameter_count()) + 12.0 * double(n_layer) * double(context) * double(d_model);
}

double GptConfig::activation_bytes(int64_t batch, int64_t context) const {
  const double T = double(context), B = double(batch), d = double(d_model), H = double(n_head);
  const double per_layer = (34.0 * d + 5.0 * H * T) * T * B;
  return 4.0 * (double(n_layer) * per_layer + 3.0 * T * B * double(vocab_size));
}

std::string GptConfig::describe() const {
  return ds::str("GPT ", n_layer, " layers x ", n_head, " heads x ", d_model, " wide, context ", seq_len, ", vocab ",
                 vocab_size, " (", parameter_count(), " parameters)");
}

namespace {

// LayerNorm's statistics in fp32. LibTorch 1.13's CPU kernel keeps a bf16 input's mean and
// variance in bf16 (measured: normalised values up to 0.84 off for rows of mean 1000), so a
// model computing in bf16 normalises an fp32 copy and rounds the result. fp32 is unchanged.
at::Tensor layer_norm(torch::nn::LayerNorm& ln, const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat) return ln(x);
  const auto& o = ln->options;
  return at::layer_norm(x.to(at::kFloat), o.normalized_shape(), ln->weight.to(at::kFloat), ln->bias.to(at::kFloat),
                        o.eps())
      .to(x.scalar_type());
}

}  // namespace

GptBlockImpl::GptBlockImpl(const GptConfig& c, int64_t layer) : n_head_(c.n_head) {
  const int64_t d = c.d_model;
  ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  qkv_ = register_module("qkv", torch::nn::Linear(d, 3 * d));
  attn_proj_ = register_module("attn_proj", torch::nn::Linear(d, d));
  ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  fc_ = register_module("fc", torch::nn::Linear(d, 4 * d));
  mlp_proj_ = register_module("mlp_proj", torch::nn::Linear(4 * d, d));
  // GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer).
  torch::NoGradGuard no_grad;
  const double resid_std = 0.02 / std::sqrt(2.0 * c.n_layer);
  for (auto* lin : {&qkv_, &fc_}) {
    torch::nn::init::normal_((*lin)->weight, 0.0, 0.02);
    (*lin)->bias.zero_();
  }
  for (auto* lin : {&attn_proj_, &mlp_proj_}) {
    torch::nn::init::normal_((*lin)->weight, 0.0, resid_std);
    (*lin)->bias.zero_();
  }
  (void)layer;
}

at::Tensor GptBlockImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), hd = C / n_head_;
  at::Tensor qkv = nn::linear(layer_norm(ln1_, x), qkv_->weight, qkv_->bias).view({B, T, 3, n_head_, hd}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, hd]
  at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  at::Tensor att = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(hd)));
  at::Tensor causal = at::ones({T, T}, at::kBool).triu(1);
  att = at::softmax(att.masked_fill(causal, -std::numeric_limits<float>::infinity()), -1);
  at::Tensor y = at::matmul(att, v).transpose(1, 2).reshape({B, T, C});
  at::Tensor h = x + nn::linear(y, attn_proj_->weight, attn_proj_->bias);
  at::Tensor m = at::gelu(nn::linear(layer_norm(ln2_, h), fc_->weight, fc_->bias));
  return h + nn::linear(m, mlp_proj_->weight, mlp_proj_->bias);
}

GptImpl::GptImpl(const GptConfig& c) : config_(c) {
  c.validate();
  // Each unit is finished (initialised) before the next is built: under ds::Init,
  // unit_built shards it at once, so the whole model never exists on one rank.
  torch::NoGradGuard no_grad;
  wte_ = register_module("wte", torch::nn::Embedding(c.vocab_size, c.d_model));
  torch::nn::init::normal_(wte_->weight, 0.0, 0.02);
  nn::unit_built(*wte_);
  wpe_ = register_module("wpe", torch::nn::Embedding(c.seq_len, c.d_model));
  torch::nn::init::normal_(wpe_->weight, 0.0, 0.02);
  nn::unit_built(*wpe_);
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    blocks_->push_back(GptBlock(c, l));
    nn::unit_built(*blocks_[l]);
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})));
  nn::unit_built(*ln_f_);
}

at::Tensor GptImpl::forward(const at::Tensor& tokens) {
  if (tokens.dim() != 2) throw Error(ds::str("GPT input must be [batch, time], got shape ", tokens.sizes()));
  const int64_t T = tokens.size(1);
  if (T > config_.seq_len)
    throw Error(ds::str("sequence of ", T, " tokens exceeds the model's context of ", config_.seq_len));
  at::Tensor x = nn::run_unit(*wte_, [&] { return wte_(tokens); });
  x = x + nn::run_unit(*wpe_, [&] { return wpe_(at::arange(T, at::kLong)); });
  for (const auto& block : *blocks_) x = nn::run_unit(*block, [&] { return block->as<GptBlock>()->forward(x); });
  x = nn::run_unit(*ln_f_, [&] { return layer_norm(ln_f_, x); });
  return nn::run_unit(*wte_, [&] { return nn::linear(x, wte_->weight); });  // tied LM head
}

at::Tensor GptImpl::loss(const at::Tensor& tokens, const at::Tensor& targets) {
  at::Tensor logits = forward(tokens);
  // The loss in fp32 whatever the model computes in (log-softmax over the vocabulary).
  if (logits.scalar_type() != at::kFloat) logits = logits.to(at::kFloat);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
}

}  // namespace ds
