// The "sparse_attention" section: a mode, then the keys that mode reads (DeepSpeed's
// get_sparse_<mode>_config in runtime/config.py), checked as its SparsityConfig classes check them.
#include <algorithm>

#include "ds/common/error.h"
#include "sections.h"

namespace ds {

const char* sparse_mode_name(SparseMode mode) {
  switch (mode) {
    case SparseMode::kDense:
      return "dense";
    case SparseMode::kFixed:
      return "fixed";
    case SparseMode::kVariable:
      return "variable";
    case SparseMode::kBigBird:
      return "bigbird";
    case SparseMode::kBSLongformer:
      return "bslongformer";
  }
  return "fixed";
}

}  // namespace ds

namespace ds::config_detail {

namespace {

using SA = SparseAttentionConfig;
constexpr const char* kSection = "sparse_attention";

EnumNames<SparseMode> mode_names() {
  return {{"fixed", SparseMode::kFixed},
          {"dense", SparseMode::kDense},
          {"variable", SparseMode::kVariable},
          {"bigbird", SparseMode::kBigBird},
          {"bslongformer", SparseMode::kBSLongformer}};
}

std::vector<std::string> mode_keys(SparseMode mode) {
  switch (mode) {
    case SparseMode::kDense:
      return {"block"};
    case SparseMode::kFixed:
      return {"block",
              "different_layout_per_head",
              "num_local_blocks",
              "num_global_blocks",
              "attention",
              "horizontal_global_attention",
              "num_different_global_patterns"};
    case SparseMode::kVariable:
      return {"block",
              "different_layout_per_head",
              "num_random_blocks",
              "local_window_blocks",
              "global_block_indices",
              "global_block_end_indices",
              "attention",
              "horizontal_global_attention"};
    case SparseMode::kBigBird:
      return {"block", "different_layout_per_head", "num_random_blocks", "num_sliding_window_blocks",
              "num_global_blocks"};
    case SparseMode::kBSLongformer:
      return {"block", "different_layout_per_head", "num_sliding_window_blocks", "global_block_indices",
              "global_block_end_indices"};
  }
  return {};
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  for (const auto& m : mode_names())
    for (const auto& k : mode_keys(m.second))
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  return keys;
}

Schema<SA> build_schema(SparseMode mode) {
  std::vector<std::string> keys = mode_keys(mode);
  auto uses = [&keys](const char* k) { return std::find(keys.begin(), keys.end(), k) != keys.end(); };
  Schema<SA> s;
  // The key's original, misspelt name in DeepSpeed's constants.
  if (mode == SparseMode::kFixed)
    s.alias("num_differnt_global_patterns", "num_different_global_patterns", true);
  s.field("block", &SA::block, at_least(1));
  if (uses("different_layout_per_head")) s.field("different_layout_per_head", &SA::different_layout_per_head);
  if (uses("num_local_blocks")) s.field("num_local_blocks", &SA::num_local_blocks, at_least(1));
  if (uses("num_global_blocks")) s.field("num_global_blocks", &SA::num_global_blocks, at_least(1));
  if (uses("attention")) {
    s.choice("attention", &SA::attention,
             EnumNames<SparseDirection>{{"bidirectional", SparseDirection::kBidirectional},
                                        {"unidirectional", SparseDirection::kUnidirectional}});
  }
  if (uses("horizontal_global_attention"))
    s.field("horizontal_global_attention", &SA::horizontal_global_attention);
  if (uses("num_different_global_patterns")) {
    s.field("num_different_global_patterns", &SA::num_different_global_patterns, at_least(1));
  }
  if (uses("num_random_blocks")) s.field("num_random_blocks", &SA::num_random_blocks, at_least(0));
  if (uses("local_window_blocks")) s.field("local_window_blocks", &SA::local_window_blocks, at_least(1));
  if (uses("global_block_indices")) s.field("global_block_indices", &SA::global_block_indices, at_least(0));
  if (uses("global_block_end_indices"))
    s.field("global_block_end_indices", &SA::global_block_end_indices, at_least(0));
  if (uses("num_sliding_window_blocks"))
    s.field("num_sliding_window_blocks", &SA::num_sliding_window_blocks, at_least(1));
  return s;
}

const Schema<SA>& schema_for(SparseMode mode) {
  static const std::vector<Schema<SA>> schemas = [] {
    std::vector<Schema<SA>> v;
    for (int m = 0; m <= static_cast<int>(SparseMode::kBSLongformer); ++m)
      v.push_back(build_schema(static_cast<SparseMode>(m)));
    return v;
  }();
  return schemas[static_cast<size_t>(mode)];
}

void read_sparse_attention(ObjectReader& root, Config& c) {
  const Json* v = root.find(kSection);
  if (!v || v->is_null()) return;
  ObjectReader in = root.child(kSection);
  SA sa;
  sa.enabled = true;
  in.read_enum("mode", sa.mode, mode_names());
  std::vector<std::string> used = mode_keys(sa.mode);
  for (const std::string& key : all_keys()) {
    if (!in.has(key) || std::find(used.begin(), used.end(), key) != used.end()) continue;
    in.find(key);  // DeepSpeed ignores keys of other modes silently; we say so
    in.ctx().warn(in.path_of(key), str("not used by mode ", quote(sparse_mode_name(sa.mode)), "; ignored"));
  }
  schema_for(sa.mode).read(in, sa);
  in.finish();
  check_sparse_attention(sa, in.ctx());
  c.sparse_attention = sa;
}

void write_sparse_attention(const Config& c, Json& j) {
  const SA& sa = c.sparse_attention;
  if (!sa.enabled) return;
  Json section = schema_for(sa.mode).write(sa);
  section["mode"] = sparse_mode_name(sa.mode);
  j[kSection] = section;
}

void check_end_indices(const SA& sa, ParseContext& ctx) {
  if (!sa.global_block_end_indices) return;
  const auto& ends = *sa.global_block_end_indices;
  const auto& starts = sa.global_block_indices;
  std::string path = join_path(kSection, "global_block_end_indices");
  if (ends.size() != starts.size()) {
    ctx.fail(path, str("has ", ends.size(), " entries, global_block_indices has ", starts.size(),
                       "; they must match"));
  }
  for (size_t i = 0; i < ends.size(); ++i) {
    if (starts[i] >= ends[i]) {
      ctx.fail(str(path, "[", i, "]"), str("end ", ends[i], " must be greater than its start ", starts[i]));
    }
  }
}

}  // namespace

void check_sparse_attention(const SparseAttentionConfig& sa, ParseContext& ctx) {
  bool fixed = sa.mode == SparseMode::kFixed;
  if (fixed && sa.num_local_blocks % sa.num_global_blocks != 0) {
    ctx.fail(join_path(kSection, "num_global_blocks"),
             str("num_local_blocks ", sa.num_local_blocks, " must be divisible by num_global_blocks ",
                 sa.num_global_blocks));
  }
  if ((fixed || sa.mode == SparseMode::kVariable) && sa.horizontal_global_attention &&
      sa.attention != SparseDirection::kBidirectional) {
    ctx.fail(join_path(kSection, "horizontal_global_attention"), "needs \"attention\": \"bidirectional\"");
  }
  if (fixed && sa.num_different_global_patterns > 1 && !sa.different_layout_per_head) {
    ctx.fail(join_path(kSection, "num_different_global_patterns"),
             "more than 1 needs different_layout_per_head=true");
  }
  if (fixed && sa.num_different_global_patterns > sa.num_local_blocks / sa.num_global_blocks) {
    ctx.fail(join_path(kSection, "num_different_global_patterns"),
             str(sa.num_different_global_patterns,
                 " exceeds num_local_blocks / num_global_blocks = ", sa.num_local_blocks, " / ",
                 sa.num_global_blocks, " = ", sa.num_local_blocks / sa.num_global_blocks));
  }
  if (sa.mode == SparseMode::kVariable || sa.mode == SparseMode::kBSLongformer) check_end_indices(sa, ctx);
}

void add_sparse_attention(Schema<Config>& root) {
  root.custom(read_sparse_attention, write_sparse_attention);
}

}  // namespace ds::config_detail
