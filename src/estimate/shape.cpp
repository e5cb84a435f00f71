// The model's shape: parameters, units, FLOPs, and how a pipeline x tensor layout cuts it.
#include <algorithm>

#include "ds/common/error.h"
#include "ds/estimate/estimate.h"
#include "ds/pipe/partition.h"

namespace ds::estimate {

void ModelShape::validate() const {
  auto positive = [](int64_t v, const char* name) {
    if (v < 1) throw ConfigError(ds::str(name, " must be at least 1, got ", v));
  };
  positive(n_layer, "the layers"), positive(d_model, "the width"), positive(n_head, "the heads");
  positive(seq_len, "the context"), positive(vocab_size, "the vocabulary");
  if (d_model % n_head != 0)
    throw ConfigError(ds::str("the heads (", n_head, ") must divide the width (", d_model, ")"));
}

int64_t ModelShape::parameters() const {
  int64_t n = 0;
  for (int64_t u : unit_sizes()) n += u;
  return n;
}

std::vector<int64_t> ModelShape::unit_sizes() const {
  std::vector<int64_t> units = {vocab_size * d_model, seq_len * d_model};
  for (int64_t l = 0; l < n_layer; ++l) units.push_back(12 * d_model * d_model + 13 * d_model);
  units.push_back(2 * d_model);
  return units;
}

ModelShape ModelShape::from_parameters(int64_t parameters, int64_t n_layer, int64_t d_model, int64_t n_head,
                                       int64_t seq_len, int64_t vocab_multiple) {
  ModelShape s;
  s.n_layer = n_layer, s.d_model = d_model, s.n_head = n_head, s.seq_len = seq_len, s.vocab_size = 1;
  s.validate();
  const int64_t rest = parameters - (s.parameters() - d_model);
  vocab_multiple = std::max<int64_t>(1, vocab_multiple);
  if (rest < d_model * vocab_multiple)
    throw ConfigError(ds::str(n_layer, " blocks of width ", d_model, " and context ", seq_len, " already hold ",
                              s.parameters() - d_model, " parameters, more than the ", parameters,
                              " given: give fewer layers or a smaller width"));
  s.vocab_size = rest / d_model / vocab_multiple * vocab_multiple;
  return s;
}

double ModelShape::flops_per_token(int64_t context) const {
  return 6.0 * double(parameters()) + 12.0 * double(n_layer) * double(context) * double(d_model);
}

double ModelShape::block_forward_flops_per_token(int64_t context) const {
  const double d = double(d_model);
  return double(n_layer) * (2.0 * (12 * d * d + 13 * d) + 4.0 * double(context) * d);
}

std::vector<StageShare> ModelShape::stage_shares(int pipeline, int tensor, const std::string& partition,
                                                 int64_t context) const {
  validate();
  const int64_t t = std::max(1, tensor), d = d_model;
  if (n_head % t != 0 || vocab_size % t != 0)
    throw ConfigError(ds::str("tensor_parallel.autotp_size ", t, " does not divide the heads (", n_head,
                              ") and the vocabulary (", vocab_size, "): use a size that divides both"));
  // ds-train's pipeline GPT (gpt_layer_specs): the layers and their whole parameter counts.
  enum Kind { kToken, kPosition, kBlock, kNorm, kHead };
  std::vector<Kind> kinds = {kToken, kPosition};
  kinds.insert(kinds.end(), size_t(n_layer), kBlock);
  kinds.push_back(kNorm), kinds.push_back(kHead);
  const int64_t block = 12 * d * d + 13 * d;
  auto whole = [&](Kind k) {
    switch (k) {
      case kToken: case kHead: return vocab_size * d;
      case kPosition: return seq_len * d;
      case kBlock: return block;
      case kNorm: return 2 * d;
    }
    return int64_t(0);
  };
  std::vector<pipe::LayerInfo> infos;
  for (Kind k : kinds)
    infos.push_back({k == kToken ? "TokenEmbedding" : k == kPosition ? "PositionEmbedding" : k == kBlock ? "GptBlock"
                     : k == kNorm ? "LayerNorm" : "LMHead", whole(k)});
  const std::string method = partition == "best" ? "parameters" : partition;
  // One stage: the whole model (ds-train builds a plain ds::Gpt; the partition is not used).
  const std::vector<int> bounds =
      pipeline <= 1 ? std::vector<int>{0, int(kinds.size())} : pipe::partition_layers(infos, pipeline, method);
  std::vector<StageShare> out;
  for (size_t s = 0; s + 1 < bounds.size(); ++s) {
    StageShare share;
    share.stage = int(s);
    share.first = share.last = false;
    bool has_token = false;
    for (int i = bounds[s]; i < bounds[s + 1]; ++i) {
      const Kind k = kinds[size_t(i)];
      const double T = double(context);
      switch (k) {
        case kToken:
          has_token = share.first = true;
          share.units.push_back(vocab_size * d / t);
          break;
        case kPosition:  // the stage after one holding the token embedding alone receives its output
          share.units.push_back(seq_len * d);
          share.flops_per_token += 6.0 * double(seq_len * d);
          break;
        case kBlock:
          ++share.blocks;
          share.units.push_back(12 * d * d / t + 7 * d / t + 6 * d);
          share.flops_per_token += 6.0 * double(block) + 12.0 * T * double(d);
          break;
        case kNorm:
          share.units.push_back(2 * d);
          share.flops_per_token += 6.0 * double(2 * d);
          break;
        case kHead:
          share.last = true;
          share.flops_per_token += 6.0 * double(vocab_size * d);
          if (!has_token) share.units.push_back(vocab_size * d / t);  // the tied copy
          break;
      }
    }
    out.push_back(std::move(share));
  }
  return out;
}

}  // namespace ds::estimate
