// The reference GPT: a GPT-2 style decoder (token + position embeddings, pre-LayerNorm
// blocks of causal self-attention and a GELU MLP, final LayerNorm, LM head tied to the
// token embedding). Each block is a natural ZeRO unit (ds::find_units picks them up), and the
// model is ZeRO-3 aware (ds/nn/unit.h): its forward runs every unit through ds::nn::run_unit,
// its linear layers are ds::nn::linear (which saves the weight itself for ZeRO-3), and its
// constructor reports each finished unit to ds::nn::unit_built (sharded at once under
// ds::zero::Init).
//
//   ds::GptConfig c;  c.n_layer = 12; c.n_head = 12; c.d_model = 768; c.seq_len = 1024;  // GPT-2 124M
//   c.vocab_size = 50257;
//   ds::Gpt model(c);
//   at::Tensor logits = model->forward(tokens);                  // [B, T, vocab]
//   at::Tensor loss = model->loss(tokens, targets);              // mean over targets != -1
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <nlohmann/json.hpp>
#include <string>

#include "ds/config/sections.h"
#include "ds/nn/sequence_parallel_user.h"
#include "ds/nn/sparse_attention_user.h"
#include "ds/seq/ulysses.h"
#include "ds/sparse/self_attention.h"
#include "ds/nn/unit.h"
#include "ds/pipe/module.h"
#include "ds/tp/layers.h"

namespace ds {

struct GptConfig {
  int64_t vocab_size = 256;  // byte-level tokens
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t d_model = 128;
  int64_t seq_len = 64;  // maximum context
  // GPT-2's dropout (0.1 there) on the embeddings' sum, the attention probabilities and each
  // residual branch, in training mode only; 0 = none.
  double dropout = 0.0;
  // The MLP's GELU: "gelu" (exact, erf) or "gelu_tanh" (GPT-2's tanh approximation, Hugging
  // Face's "gelu_new"; what pretrained GPT-2 weights need).
  std::string activation = "gelu";
  // Block-sparse attention (the config's sparse_attention section, ds/sparse/layout.h) when
  // sparse.enabled: every block computes causal attention over the layout's kept blocks only
  // (ds::sparse::SparseSelfAttention); random blocks come from sparse_seed. Needs dropout 0
  // (no attention-probability dropout on that path) and seq_len a multiple of sparse.block.
  SparseAttentionConfig sparse;
  uint64_t sparse_seed = 0;
  // Without sparse attention, causal attention is exact either way; how it is computed:
  // through the fused block kernels (full causal layout in blocks of kExactBlock, memory
  // ∝ T x head width; measured 2-7x faster than the dense path at contexts 128-2048,
  // docs/BENCHMARKS.md) unless dense_attention is set or dropout > 0 (the dense path drops
  // attention probabilities; the block kernels have no such dropout). The dense path is
  // LibTorch's matmul, causal mask, softmax, matmul: T x T scores per head.
  bool dense_attention = false;
  static constexpr int64_t kExactBlock = 64;
  enum class AttentionPath { kSparse, kExactBlocks, kDense };
  AttentionPath attention_path() const;
  std::string describe_attention() const;  // which path, and why (the start-up line)
  // Activation checkpointing: the first checkpoint_blocks blocks run through
  // ds::checkpointing::checkpoint (their activations recomputed in the backward); 0 = none.
  int64_t checkpoint_blocks = 0;
  // Throws ds::ConfigError naming the offending field (heads must divide the width, ...).
  void validate() const;
  // Parameters of this shape (tied head counted once).
  int64_t parameter_count() const;
  // Training FLOPs per token (forward + backward), as in the PaLM / nanoGPT estimate:
  // 6 N + 12 L T d.
  double flops_per_token(int64_t context) const;
  // The peak bytes of activations one training micro-batch of `batch` sequences of `context`
  // tokens adds to a rank's RSS, computing in `element_bytes` floats: every block's saved
  // tensors (16 d + H T per token with dense attention, 20 d + H with the block kernels; a
  // checkpointed block its input, and one block while it is recomputed), a block's backward
  // and the head's log-probabilities (see gpt.cpp). Checked
  // against measured peaks within 10% (bench/estimate_validation.sh); ds-estimate uses it.
  double activation_bytes(int64_t batch, int64_t context, int64_t element_bytes = 4) const;
  // The same for one rank of a pipeline x tensor layout: `blocks` of the blocks (-1: all),
  // whose saved tensors are kept for `in_flight` micro-batches (1F1B: stage s of p keeps
  // p - s), the head's buffers only where `head` is; under tensor parallelism the split
  // activations (q/k/v, attention, the MLP's hidden layer, the logits) are 1/`tensor` of their
  // size, the LayerNorm and residual ones whole (4 d per token of a block).
  struct RankShare {
    int64_t blocks = -1, in_flight = 1, tensor = 1;
    bool head = true;
  };
  double activation_bytes(int64_t batch, int64_t context, int64_t element_bytes, const RankShare& share) const;
  std::string describe() const;  // the architecture (not dropout or checkpointing)
  // The architecture as JSON ({"n_layer", "n_head", "d_model", "seq_len", "vocab_size",
  // "activation"}) and back: ds-train keeps it in its checkpoints' client state, from which
  // `ds-ckpt to-fp32 --hf` writes Hugging Face's config.json. from_json throws ds::Error
  // naming a missing or wrong field.
  nlohmann::json to_json() const;
  static GptConfig from_json(const nlohmann::json& j);
};

// Tensor parallelism (Megatron's split of a transformer layer): split_over(group) keeps this
// rank's heads of qkv (column-parallel: rows of q, k and v of heads [r H/t, (r+1) H/t)) and of
// the MLP's first layer, and the matching input columns of attn_proj and mlp_proj
// (row-parallel, their biases whole); LayerNorms stay whole. The forward then needs one
// all-reduce after attention and one after the MLP (and two in the backward).
class GptBlockImpl : public torch::nn::Module, public tp::ShardedParameters {
 public:
  GptBlockImpl(const GptConfig& c, int64_t layer);
  at::Tensor forward(const at::Tensor& x);
  // Throws ds::ConfigError when the group's size does not divide the heads.
  void split_over(tp::Group group);
  // Ulysses sequence parallelism over `group` (after split_over): the block then takes this
  // rank's slice of every sequence and computes attention over the whole sequence for 1/s of
  // its heads (ds/seq/ulysses.h); its parameters stay whole. Throws ds::ConfigError when the
  // group's size does not divide the (tensor rank's) heads.
  void split_sequence(seq::Group group);
  std::vector<tp::Split> sharded_parameters() const override;

 private:
  at::Tensor attention(const at::Tensor& x);  // x: the normalised input; without the residual
  // q, k, v: [B, heads, T, hd] -> [B, heads, T, hd], causal.
  at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
  at::Tensor mlp(const at::Tensor& x);
  at::Tensor dropout(const at::Tensor& x) const;  // in training mode, with GptConfig::dropout
  double dropout_;
  // The block kernels (sparse or exact causal attention; null on the dense path). Not a
  // registered submodule: it has no parameters, and the module tree stays the same.
  sparse::SparseSelfAttention blocks_attn_{nullptr};
  bool gelu_tanh_;
  int64_t n_head_, local_heads_;  // local: this rank's heads (all without tensor parallelism)
  int64_t first_head_ = 0;        // the first of them
  tp::Group tensor_;
  seq::Group sequence_;
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  torch::nn::Linear qkv_{nullptr}, attn_proj_{nullptr}, fc_{nullptr}, mlp_proj_{nullptr};
};
TORCH_MODULE(GptBlock);

// The same model as pipeline layer specs (ds/pipe/module.h), DeepSpeed's GPT2ModelPipe:
//   0 token embedding (tied "wte")   1 position embedding (adds to its input)
//   2 .. n_layer + 1 the blocks       n_layer + 2 final LayerNorm     n_layer + 3 LM head (tied "wte")
// The first layer takes tokens [B, T]; the last returns logits. Built with the same seeds as
// ds::Gpt (layer i from the drawn base + i), so both start from the same weights.
// With a tensor group the layers are split as ds::Gpt splits them, and the head returns this
// rank's vocabulary slice of the logits (give gpt_loss the same group).
// With a sequence group, every layer takes this rank's slice of the sequence (as ds::Gpt).
std::vector<pipe::LayerSpec> gpt_layer_specs(const GptConfig& c, tp::Group tensor = nullptr,
                                             seq::Group sequence = nullptr);
// ds::Gpt's name for a parameter of the pipeline GPT: "tied_modules.wte.weight" -> "wte.weight",
// "1.weight" -> "wpe.weight", "3.fc.bias" -> "blocks.1.fc.bias", "<n_layer + 2>.weight" ->
// "ln_f.weight". Throws ds::Error for a name that is not one of them.
std::string gpt_parameter_name(const std::string& pipeline_name, int64_t n_layer);
// The GPT's loss from logits and targets: mean cross-entropy in fp32 over targets != -1. With
// a tensor group, `logits` is this rank's vocabulary slice (vocab-parallel cross-entropy).
// With a sequence group, logits and targets are this rank's slice of the sequences, and the
// loss is scaled so that its mean over the group is the mean over the whole sequences' counted
// targets (one all-reduce of the count; the slices may count different numbers).
at::Tensor gpt_loss(const at::Tensor& logits, const at::Tensor& targets, const tp::Group& tensor = nullptr,
                    const seq::Group& sequence = nullptr);

class GptImpl : public torch::nn::Module,
                public nn::UnitAware,
                public nn::SparseAttentionUser,
                public nn::SequenceParallelUser {
 public:
  // With a tensor group of t > 1 ranks, each rank holds 1/t of the heads, the MLP width and
  // the vocabulary (the embedding and the tied head are vocab-parallel); the weights are
  // slices of those the unsplit model has with the same seed.
  // With a sequence group of s > 1 ranks (Ulysses; the engine's groups.sequence), each rank
  // takes its slice of every sequence (tokens [B, T / s], positions [r T / s, (r + 1) T / s))
  // and holds every weight; the blocks exchange heads for tokens around attention.
  explicit GptImpl(const GptConfig& c, tp::Group tensor = nullptr, seq::Group sequence = nullptr);
  // tokens: [B, T] int64 with T <= seq_len (T x s <= seq_len for this rank's slice). Returns
  // logits [B, T, vocab] (gathered over the tensor group; this rank's slice of the sequence).
  at::Tensor forward(const at::Tensor& tokens);
  // Mean cross-entropy over positions whose target is not -1. With a sequence group: this
  // rank's slice's part, weighted by its count (gpt_loss), so that the engine's average over
  // the data-parallel group, sequence ranks included, is the mean over the whole sequences.
  at::Tensor loss(const at::Tensor& tokens, const at::Tensor& targets);
  const GptConfig& config() const { return config_; }
  bool uses_sparse_attention() const override { return config_.sparse.enabled; }
  int sequence_parallel_size() const override { return sequence_ ? sequence_->size() : 1; }

 private:
  at::Tensor logits_part(const at::Tensor& tokens);  // this rank's vocabulary slice
  GptConfig config_;
  tp::Group tensor_;
  seq::Group sequence_;
  std::shared_ptr<tp::VocabParallelEmbeddingImpl> wte_;
  torch::nn::Embedding wpe_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};
};
TORCH_MODULE(Gpt);

}  // namespace ds
