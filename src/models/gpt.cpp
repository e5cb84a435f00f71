#include "ds/models/gpt.h"
#include "ds/seq/ulysses.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/init.h>

#include <cmath>

#include "ds/common/error.h"
#include "ds/nn/checkpointing.h"
#include "ds/nn/linear.h"
#include "ds/sparse/layout.h"

namespace ds {

namespace {

// LayerNorm's statistics in fp32. LibTorch 1.13's CPU kernel keeps a bf16 input's mean and
// variance in bf16 (measured: normalised values up to 0.84 off for rows of mean 1000), so a
// model computing in bf16 normalises an fp32 copy and rounds the result. fp32 is unchanged.
at::Tensor layer_norm(torch::nn::LayerNormImpl& ln, const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat) return ln.forward(x);
  const auto& o = ln.options;
  return at::layer_norm(x.to(at::kFloat), o.normalized_shape(), ln.weight.to(at::kFloat), ln.bias.to(at::kFloat), o.eps())
      .to(x.scalar_type());
}

at::Tensor scoped_layer_norm(const char* scope, torch::nn::LayerNormImpl& ln, const at::Tensor& x) {
  RECORD_USER_SCOPE(scope);
  return layer_norm(ln, x);
}

// With a sequence group, `tokens` is this rank's slice: the whole sequence is s times longer.
void check_tokens(const at::Tensor& tokens, int64_t seq_len, const seq::Group& sequence) {
  if (tokens.dim() != 2) throw Error(ds::str("GPT input must be [batch, time], got shape ", tokens.sizes()));
  const int64_t s = sequence ? sequence->size() : 1;
  if (tokens.size(1) * s > seq_len)
    throw Error(s > 1 ? ds::str("a slice of ", tokens.size(1), " tokens on each of ", s, " sequence-parallel ranks is a "
                                "sequence of ", tokens.size(1) * s, " tokens, which exceeds the model's context of ", seq_len)
                      : ds::str("sequence of ", tokens.size(1), " tokens exceeds the model's context of ", seq_len));
}

// Ulysses gives each of s ranks a share of the `heads` (a tensor rank's when `tensor_rank`).
void check_sequence_heads(int64_t heads, int64_t s, bool tensor_rank) {
  if (s > 1 && heads % s != 0)
    throw ConfigError(ds::str("sequence_parallel_size ", s, " does not divide the ", heads, " heads",
                              tensor_rank ? " of a tensor-parallel rank" : "",
                              ": Ulysses gives each rank a share of the heads; use a size that divides them"));
}

// Positions of this rank's slice of the sequence.
at::Tensor positions(int64_t local, const seq::Group& sequence) {
  const int64_t first = seq::first_position(local, sequence);
  return at::arange(first, first + local, at::kLong);
}

int64_t block_parameters(int64_t d) {
  return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d);
}

}  // namespace

void GptConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("model: " + m); };
  if (vocab_size < 2) bad(ds::str("vocab_size must be >= 2, got ", vocab_size));
  if (n_layer < 1) bad(ds::str("n_layer must be >= 1, got ", n_layer));
  if (n_head < 1) bad(ds::str("n_head must be >= 1, got ", n_head));
  if (d_model < 1) bad(ds::str("d_model must be >= 1, got ", d_model));
  if (seq_len < 1) bad(ds::str("seq_len must be >= 1, got ", seq_len));
  if (dropout < 0.0 || dropout >= 1.0) bad(ds::str("dropout must be in [0, 1), got ", dropout));
  if (checkpoint_blocks < 0 || checkpoint_blocks > n_layer)
    bad(ds::str("checkpoint_blocks ", checkpoint_blocks, " is not between 0 and the ", n_layer, " layers"));
  if (sparse.enabled) {
    if (dropout > 0.0)
      bad(ds::str("dropout ", dropout, " with sparse_attention: the block-sparse path has no attention-probability "
                  "dropout; use dropout 0"));
    if (dense_attention)
      bad("dense_attention (ds-train --dense-attention) contradicts the sparse_attention section; drop one of them");
    sparse::make_layout(sparse, n_head, seq_len, sparse_seed);  // what the sequence cannot hold, now
  }
  if (activation != "gelu" && activation != "gelu_tanh")
    bad(ds::str("activation must be gelu or gelu_tanh, got '", activation, "'"));
  if (d_model % n_head != 0)
    bad(ds::str("d_model ", d_model, " is not divisible by n_head ", n_head, " (head width would be ",
                double(d_model) / n_head, "); pick a d_model that is a multiple of n_head"));
}

int64_t GptConfig::parameter_count() const {
  return vocab_size * d_model + seq_len * d_model + n_layer * block_parameters(d_model) + 2 * d_model;
}

double GptConfig::flops_per_token(int64_t context) const {
  return 6.0 * double(parameter_count()) + 12.0 * double(n_layer) * double(context) * double(d_model);
}

double GptConfig::activation_bytes(int64_t batch, int64_t context, int64_t element_bytes) const {
  return activation_bytes(batch, context, element_bytes, RankShare{});
}

double GptConfig::activation_bytes(int64_t batch, int64_t context, int64_t element_bytes, const RankShare& share) const {
  const double T = double(context), d = double(d_model), H = double(n_head), w = double(element_bytes);
  const double t = double(std::max<int64_t>(1, share.tensor));
  // Per token: what a block saves (LayerNorm and linear inputs 2 d + 7 d, q/k/v 3 d, GELU input
  // 4 d; dense attention its softmax output H T, the block kernels contiguous q/k/v, their
  // output and a log-sum-exp per head: 4 d + H), a block's backward (dense ~2 H T + 8 d; block
  // kernels: blockwise-transposed k and v, q/k/v gradients, ~13 d), the head's fp32
  // log-probabilities and their gradient and the logits' gradient (V (8 + w) bytes). Under
  // tensor parallelism the two LayerNorm inputs and the inputs of the qkv and first MLP
  // layers (4 d) stay whole; the rest is this rank's heads or hidden units. Of the backward's,
  // the gradients of the whole activations (~4 d) stay whole.
  const bool dense = attention_path() == AttentionPath::kDense;
  const double block = 4.0 * d + (dense ? 12.0 * d + H * T : 16.0 * d + H) / t;
  const double backward = 4.0 * d + (dense ? 2.0 * H * T + 4.0 * d : 9.0 * d) / t;
  const double head = share.head ? double(vocab_size) / t * (8.0 + w) : 0.0;
  // A checkpointed block keeps its input; one block lives again during its recompute. The
  // head's buffers and the block's add up in RSS: the caching allocator keeps the head's freed
  // blocks, which do not fit the block's sizes (measured on GPT-2 124M, docs/BENCHMARKS.md).
  const double blocks = double(share.blocks < 0 ? n_layer : share.blocks);
  const double k = std::min(double(checkpoint_blocks), blocks);
  const double saved = ((blocks - k) * block + k * d) * w * double(std::max<int64_t>(1, share.in_flight));
  const double per_token = saved + head + (blocks > 0 ? (k > 0 ? block + backward : backward) * w : 0.0);
  return per_token * T * double(batch);
}

GptConfig::AttentionPath GptConfig::attention_path() const {
  if (sparse.enabled) return AttentionPath::kSparse;
  return dense_attention || dropout > 0.0 ? AttentionPath::kDense : AttentionPath::kExactBlocks;
}

namespace {

// The block kernels a block computes its attention with, or null for the dense path.
sparse::SparseSelfAttention block_kernels(const GptConfig& c) {
  switch (c.attention_path()) {
    case GptConfig::AttentionPath::kSparse:
      return sparse::SparseSelfAttention(c.sparse, c.n_head, c.sparse_seed, /*causal=*/true);
    case GptConfig::AttentionPath::kExactBlocks:
      return sparse::SparseSelfAttention(sparse::SparseSelfAttentionImpl::exact(c.n_head, true, GptConfig::kExactBlock));
    case GptConfig::AttentionPath::kDense:
      break;
  }
  return sparse::SparseSelfAttention(nullptr);
}

}  // namespace

std::string GptConfig::describe_attention() const {
  if (const sparse::SparseSelfAttention k = block_kernels(*this)) return k->describe(seq_len);
  return ds::str("dense attention (", seq_len, " x ", seq_len, " scores per head; ",
                 dropout > 0.0 ? "dropout on attention probabilities needs it" : "asked for", ")");
}

std::string GptConfig::describe() const {
  return ds::str("GPT ", n_layer, " layers x ", n_head, " heads x ", d_model, " wide, context ", seq_len, ", vocab ",
                 vocab_size, activation == "gelu" ? "" : ", GELU tanh",
                 sparse.enabled ? ds::str(", ", sparse_mode_name(sparse.mode), " sparse attention in blocks of ", sparse.block)
                                : std::string(),
                 " (", parameter_count(), " parameters)");
}

nlohmann::json GptConfig::to_json() const {
  return {{"n_layer", n_layer}, {"n_head", n_head},         {"d_model", d_model},
          {"seq_len", seq_len}, {"vocab_size", vocab_size}, {"activation", activation}};
}

GptConfig GptConfig::from_json(const nlohmann::json& j) {
  GptConfig c;
  auto field = [&](const char* key, int64_t& out) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer())
      throw Error(ds::str("the GPT description ", j.dump(), " has no integer '", key, "'"));
    out = j[key].get<int64_t>();
  };
  field("n_layer", c.n_layer), field("n_head", c.n_head), field("d_model", c.d_model);
  field("seq_len", c.seq_len), field("vocab_size", c.vocab_size);
  if (j.contains("activation") && j["activation"].is_string()) c.activation = j["activation"].get<std::string>();
  c.validate();
  return c;
}


GptBlockImpl::GptBlockImpl(const GptConfig& c, int64_t layer)
    : dropout_(c.dropout), blocks_attn_(block_kernels(c)), gelu_tanh_(c.activation == "gelu_tanh"), n_head_(c.n_head), local_heads_(c.n_head) {
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

// User scopes (RECORD_USER_SCOPE) name the parts for the flops profiler and LibTorch's
// profiler: ln1, attn, ln2, mlp; inactive they cost a thread-local check.
at::Tensor GptBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = x + attention(scoped_layer_norm("ln1", *ln1_, x));
  return h + mlp(scoped_layer_norm("ln2", *ln2_, h));
}

// With tensor parallelism: this rank's heads; copy_to before the column-parallel qkv,
// reduce_from after the row-parallel projection. With a sequence group (Ulysses): x holds this
// rank's T tokens; one all-to-all gives it all s T tokens of 1/s of those heads for attention,
// another gives its tokens back with every head.
at::Tensor GptBlockImpl::attention(const at::Tensor& x) {
  RECORD_USER_SCOPE("attn");
  const int64_t B = x.size(0), T = x.size(1), H = local_heads_, hd = x.size(2) / n_head_, C = H * hd;
  at::Tensor qkv = nn::linear(tp::copy_to(x, tensor_), qkv_->weight, qkv_->bias).view({B, T, 3, H, hd});
  qkv = seq::all_to_all(qkv, sequence_, 3, 1).permute({2, 0, 3, 1, 4});  // [3, B, H/s, s T, hd]
  at::Tensor y = causal_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2);  // [B, s T, H/s, hd]
  y = seq::all_to_all(y, sequence_, 1, 2).reshape({B, T, C});
  return dropout(tp::reduce_from(nn::linear(y, attn_proj_->weight), tensor_) + attn_proj_->bias);
}

at::Tensor GptBlockImpl::causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (blocks_attn_) return blocks_attn_->forward(q, k, v);
  const int64_t T = q.size(2);
  at::Tensor att = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(q.size(3))));
  at::Tensor causal = at::ones({T, T}, at::kBool).triu(1);
  att = at::softmax(att.masked_fill(causal, -std::numeric_limits<float>::infinity()), -1);
  return at::matmul(dropout(att), v);
}

// This rank's MLP columns (column-parallel fc, row-parallel projection).
at::Tensor GptBlockImpl::mlp(const at::Tensor& x) {
  RECORD_USER_SCOPE("mlp");
  at::Tensor m = at::gelu(nn::linear(tp::copy_to(x, tensor_), fc_->weight, fc_->bias), gelu_tanh_ ? "tanh" : "none");
  return dropout(tp::reduce_from(nn::linear(m, mlp_proj_->weight), tensor_) + mlp_proj_->bias);
}

at::Tensor GptBlockImpl::dropout(const at::Tensor& x) const {
  return dropout_ > 0.0 && is_training() ? at::dropout(x, dropout_, true) : x;
}

void GptBlockImpl::split_over(tp::Group group) {
  if (!group || group->size() == 1) return;
  const int64_t d = qkv_->weight.size(1);
  const tp::Slice heads = tp::slice_of(n_head_, group, "the heads n_head");
  const int64_t hd = d / n_head_, begin = heads.begin * hd, width = heads.length * hd;
  torch::NoGradGuard no_grad;
  // q, k and v rows of this rank's heads, in the [3, H, hd] order the forward views them in.
  auto qkv_rows = [&](const at::Tensor& t) {
    return at::cat({t.narrow(0, begin, width), t.narrow(0, d + begin, width), t.narrow(0, 2 * d + begin, width)}).clone();
  };
  qkv_->weight.set_data(qkv_rows(qkv_->weight));
  qkv_->bias.set_data(qkv_rows(qkv_->bias));
  attn_proj_->weight.set_data(attn_proj_->weight.narrow(1, begin, width).clone());
  const tp::Slice cols = tp::slice_of(fc_->weight.size(0), group, "the MLP width 4 x d_model");
  fc_->weight.set_data(fc_->weight.narrow(0, cols.begin, cols.length).clone());
  fc_->bias.set_data(fc_->bias.narrow(0, cols.begin, cols.length).clone());
  mlp_proj_->weight.set_data(mlp_proj_->weight.narrow(1, cols.begin, cols.length).clone());
  local_heads_ = heads.length;
  first_head_ = heads.begin;
  if (blocks_attn_) blocks_attn_->keep_heads(heads.begin, heads.length);
  tensor_ = std::move(group);
}

void GptBlockImpl::split_sequence(seq::Group group) {
  if (!group || group->size() == 1) return;
  if (sequence_) throw Error("GptBlock::split_sequence: the block is split over a sequence group already");
  const int64_t s = group->size();
  check_sequence_heads(local_heads_, s, local_heads_ != n_head_);
  if (blocks_attn_) blocks_attn_->keep_heads(first_head_ + group->rank() * (local_heads_ / s), local_heads_ / s);
  sequence_ = std::move(group);
}

std::vector<tp::Split> GptBlockImpl::sharded_parameters() const {
  if (!tensor_ || tensor_->size() == 1) return {};
  // qkv's rows are this rank's heads of q, then of k, then of v: dimension 0 in three groups.
  return {{"qkv.weight", 0, 3}, {"qkv.bias", 0, 3}, {"attn_proj.weight", 1}, {"fc.weight", 0}, {"fc.bias", 0},
          {"mlp_proj.weight", 1}};
}

GptImpl::GptImpl(const GptConfig& c, tp::Group tensor, seq::Group sequence)
    : config_(c), tensor_(std::move(tensor)), sequence_(std::move(sequence)) {
  c.validate();
  // The layers of gpt_layer_specs, seeded as a PipelineModule seeds them. Each unit is
  // finished (initialised) before the next is built: under ds::Init, unit_built shards it at
  // once, so the whole model never exists on one rank.
  const std::vector<pipe::LayerSpec> specs = gpt_layer_specs(c, tensor_, sequence_);
  const uint64_t base = pipe::layer_seed_base(false);
  auto build = [&](size_t i) { return pipe::build_layer(specs[i], base + i); };
  wte_ = register_module("wte", std::dynamic_pointer_cast<tp::VocabParallelEmbeddingImpl>(build(0)));
  nn::unit_built(*wte_);
  wpe_ = register_module("wpe", torch::nn::Embedding(std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(build(1))));
  nn::unit_built(*wpe_);
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    blocks_->push_back(GptBlock(std::dynamic_pointer_cast<GptBlockImpl>(build(size_t(2 + l)))));
    nn::unit_built(*blocks_[l]);
  }
  ln_f_ = register_module(
      "ln_f", torch::nn::LayerNorm(std::dynamic_pointer_cast<torch::nn::LayerNormImpl>(build(size_t(c.n_layer + 2)))));
  nn::unit_built(*ln_f_);
}

at::Tensor GptImpl::forward(const at::Tensor& tokens) { return tp::gather_from(logits_part(tokens), tensor_); }

at::Tensor GptImpl::logits_part(const at::Tensor& tokens) {
  check_tokens(tokens, config_.seq_len, sequence_);
  const int64_t T = tokens.size(1);
  at::Tensor x = nn::run_unit(*wte_, [&] {
    RECORD_USER_SCOPE("wte");
    return wte_->forward(tokens);
  });
  x = x + nn::run_unit(*wpe_, [&] {
    RECORD_USER_SCOPE("wpe");
    return wpe_(positions(T, sequence_));
  });
  if (config_.dropout > 0.0 && is_training()) x = at::dropout(x, config_.dropout, true);
  int64_t l = 0;
  for (const auto& block : *blocks_) {
    // By value: a checkpointed call keeps `run` until its backward.
    auto run = [b = std::dynamic_pointer_cast<GptBlockImpl>(block), l](const at::Tensor& in) {
      RECORD_USER_SCOPE(ds::str("blocks.", l));
      return nn::run_unit(*b, [&] { return b->forward(in); });
    };
    if (l++ < config_.checkpoint_blocks)
      x = checkpointing::checkpoint([run](const std::vector<at::Tensor>& in) { return run(in[0]); }, {x});
    else
      x = run(x);
  }
  x = nn::run_unit(*ln_f_, [&] { return scoped_layer_norm("ln_f", *ln_f_, x); });
  return nn::run_unit(*wte_, [&] {  // the LM head, tied to the token embedding
    RECORD_USER_SCOPE("lm_head");
    return nn::linear(tp::copy_to(x, tensor_), wte_->weight);
  });
}

at::Tensor GptImpl::loss(const at::Tensor& tokens, const at::Tensor& targets) {
  return gpt_loss(logits_part(tokens), targets, tensor_, sequence_);
}

at::Tensor gpt_loss(const at::Tensor& logits, const at::Tensor& targets, const tp::Group& tensor,
                    const seq::Group& sequence) {
  RECORD_USER_SCOPE("loss");
  const bool split = sequence && sequence->size() > 1;
  // Ulysses: the engine averages over the group, so each rank returns its slice's sum x s / the
  // group's count, whose mean is the whole sequences' mean (one all-reduce of the count).
  const int64_t mine = split ? (targets != -1).sum().item<int64_t>() : 0;
  double scale = 1.0;
  if (split) {
    at::Tensor total = at::full({1}, double(mine), at::kDouble);
    sequence->all_reduce(total).wait();
    scale = double(sequence->size()) / std::max(1.0, total.item<double>());
  }
  if (tensor && tensor->size() > 1)  // the mean over max(1, count) targets
    return split ? tp::vocab_parallel_cross_entropy(logits, targets, tensor) * (double(std::max<int64_t>(1, mine)) * scale)
                 : tp::vocab_parallel_cross_entropy(logits, targets, tensor);
  // The loss in fp32 whatever the model computes in (log-softmax over the vocabulary).
  const at::Tensor l = logits.scalar_type() == at::kFloat ? logits : logits.to(at::kFloat);
  namespace F = torch::nn::functional;
  auto options = F::CrossEntropyFuncOptions().ignore_index(-1);
  if (split) options.reduction(torch::kSum);
  const at::Tensor loss = F::cross_entropy(l.reshape({-1, l.size(-1)}), targets.reshape({-1}), options);
  return split ? loss * scale : loss;
}

std::string gpt_parameter_name(const std::string& pipeline_name, int64_t n_layer) {
  const std::string tied = "tied_modules.wte.";
  if (pipeline_name.rfind(tied, 0) == 0) return "wte." + pipeline_name.substr(tied.size());
  const size_t dot = pipeline_name.find('.');
  int64_t i = -1;
  if (dot != std::string::npos && dot > 0 && pipeline_name.find_first_not_of("0123456789") == dot)
    i = std::stoll(pipeline_name.substr(0, dot));
  const std::string rest = dot == std::string::npos ? "" : pipeline_name.substr(dot);
  if (i == 1) return "wpe" + rest;
  if (i >= 2 && i < n_layer + 2) return ds::str("blocks.", i - 2, rest);
  if (i == n_layer + 2) return "ln_f" + rest;
  throw Error(ds::str("'", pipeline_name, "' is not a parameter of the pipeline GPT with ", n_layer, " blocks"));
}

std::vector<pipe::LayerSpec> gpt_layer_specs(const GptConfig& c, tp::Group tensor, seq::Group sequence) {
  c.validate();
  if (tensor && tensor->size() > 1) {  // what cannot split, named before any layer is built
    tp::slice_of(c.n_head, tensor, "the heads n_head");
    tp::slice_of(c.vocab_size, tensor, "the vocabulary vocab_size");
  }
  const int64_t s = sequence ? sequence->size() : 1;
  const int64_t t = tensor ? tensor->size() : 1;
  check_sequence_heads(c.n_head / t, s, t > 1);
  const int64_t d = c.d_model, seq = c.seq_len;
  auto embedding = [](int64_t n, int64_t d) {
    return [n, d]() -> std::shared_ptr<torch::nn::Module> {
      auto e = std::make_shared<torch::nn::EmbeddingImpl>(n, d);
      torch::nn::init::normal_(e->weight, 0.0, 0.02);
      return e;
    };
  };
  using M = torch::nn::Module;
  std::vector<pipe::LayerSpec> specs;
  auto token_embedding = [full = embedding(c.vocab_size, d), tensor]() -> std::shared_ptr<M> {
    auto whole = std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(full());
    return std::make_shared<tp::VocabParallelEmbeddingImpl>(whole->weight, tensor);
  };
  specs.push_back({"TokenEmbedding", token_embedding,
                   [seq, sequence](M& m, const at::Tensor& tokens) {
                     check_tokens(tokens, seq, sequence);
                     return dynamic_cast<tp::VocabParallelEmbeddingImpl&>(m).forward(tokens);
                   },
                   c.vocab_size * d, "wte"});
  specs.push_back({"PositionEmbedding", embedding(seq, d),
                   [p = c.dropout, sequence](M& m, const at::Tensor& x) {
                     at::Tensor h = x + dynamic_cast<torch::nn::EmbeddingImpl&>(m).forward(positions(x.size(1), sequence));
                     return p > 0.0 && m.is_training() ? at::dropout(h, p, true) : h;
                   },
                   seq * d, ""});
  const int64_t block_params = block_parameters(d);
  for (int64_t l = 0; l < c.n_layer; ++l)
    specs.push_back({"GptBlock",
                     [c, l, tensor, sequence]() -> std::shared_ptr<M> {
                       auto block = std::make_shared<GptBlockImpl>(c, l);
                       block->split_over(tensor);
                       block->split_sequence(sequence);
                       return block;
                     },
                     [](M& m, const at::Tensor& x) { return dynamic_cast<GptBlockImpl&>(m).forward(x); }, block_params, "",
                     c.sparse.enabled, int(s)});
  specs.push_back({"LayerNorm",
                   [d]() -> std::shared_ptr<M> {
                     return std::make_shared<torch::nn::LayerNormImpl>(torch::nn::LayerNormOptions({d}));
                   },
                   [](M& m, const at::Tensor& x) { return layer_norm(dynamic_cast<torch::nn::LayerNormImpl&>(m), x); },
                   2 * d, ""});
  specs.push_back({"LMHead", nullptr,
                   [tensor](M& m, const at::Tensor& x) {
                     return nn::linear(tp::copy_to(x, tensor), dynamic_cast<tp::VocabParallelEmbeddingImpl&>(m).weight);
                   },
                   c.vocab_size * d, "wte"});
  return specs;
}

}  // namespace ds
