#include "ds/sparse/layout.h"

#include <ATen/ATen.h>

#include <numeric>
#include <random>

#include "ds/common/error.h"

namespace ds::sparse {

namespace {

using Dir = SparseDirection;

[[noreturn]] void bad(const std::string& what) { throw ConfigError("sparse_attention: " + what); }

// Layout of one head: an accessor over a [nb, nb] bool tensor.
struct Head {
  at::TensorAccessor<bool, 2> a;
  int64_t nb;
  void set(int64_t r, int64_t c) { a[r][c] = true; }
  void rows(int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < nb; ++c) a[r][c] = true;
  }
  void cols(int64_t first_row, int64_t c0, int64_t c1) {
    for (int64_t r = first_row; r < nb; ++r)
      for (int64_t c = c0; c < c1; ++c) a[r][c] = true;
  }
  // A local window [begin, end): all of it, or its lower triangle.
  void window(int64_t begin, int64_t end, Dir dir) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c = begin; c < (dir == Dir::kUnidirectional ? r + 1 : end); ++c) a[r][c] = true;
  }
  void sliding(int64_t width) {
    const int64_t w = width / 2;
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t c = std::max<int64_t>(0, r - w); c < std::min(r + w + 1, nb); ++c) a[r][c] = true;
  }
  // `count` distinct random columns per row, among [0, nb) or [0, r] when unidirectional.
  void random(int64_t count, bool causal, std::mt19937_64& rng) {
    std::vector<int64_t> cols(static_cast<size_t>(nb));
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t range = causal ? r + 1 : nb;
      std::iota(cols.begin(), cols.begin() + range, 0);
      for (int64_t i = 0; i < std::min(count, range); ++i) {  // partial Fisher-Yates
        std::uniform_int_distribution<int64_t> pick(i, range - 1);
        std::swap(cols[size_t(i)], cols[size_t(pick(rng))]);
        a[r][cols[size_t(i)]] = true;
      }
    }
  }
};

void check_globals(const SparseAttentionConfig& c, int64_t nb) {
  for (size_t i = 0; i < c.global_block_indices.size(); ++i)
    if (c.global_block_indices[i] >= nb)
      bad(ds::str("global_block_indices[", i, "] is ", c.global_block_indices[i], " but the sequence has only ", nb,
                  " blocks (indices 0 to ", nb - 1, ")"));
  if (c.global_block_end_indices && c.global_block_end_indices->size() != c.global_block_indices.size())
    bad(ds::str("global_block_end_indices has ", c.global_block_end_indices->size(),
                " entries but global_block_indices has ", c.global_block_indices.size()));
}

// Global blocks of variable / bslongformer: columns (from the block itself when
// unidirectional), and rows when `rows`.
void globals(Head& h, const SparseAttentionConfig& c, bool rows, Dir dir) {
  for (size_t i = 0; i < c.global_block_indices.size(); ++i) {
    const int64_t begin = c.global_block_indices[i];
    const int64_t end = c.global_block_end_indices ? std::min((*c.global_block_end_indices)[i], h.nb) : begin + 1;
    if (rows) h.rows(begin, end);
    h.cols(dir == Dir::kBidirectional ? 0 : begin, begin, end);
  }
}

void fixed(Head& h, const SparseAttentionConfig& c, int64_t head) {
  const int64_t L = c.num_local_blocks, G = c.num_global_blocks, nb = h.nb;
  for (int64_t i = 0; i < nb; i += L) h.window(i, std::min(i + L, nb), c.attention);
  const int64_t first = L - (1 + head % c.num_different_global_patterns) * G;
  const int64_t whole = nb - nb % L;  // the end of the last full window
  auto global = [&](int64_t begin, int64_t end) {
    h.cols(c.attention == Dir::kBidirectional ? 0 : begin, begin, end);
    if (c.horizontal_global_attention) h.rows(begin, end);
  };
  for (int64_t i = first; i < whole; i += L) global(i, i + G);
  if (whole < nb) {  // a short last window still gets its global blocks
    const int64_t begin = std::min(whole + first, nb - G);
    global(begin, begin + G);
  }
}

}  // namespace

at::Tensor make_layout(const SparseAttentionConfig& c, int64_t heads, int64_t seq_len, uint64_t seed) {
  if (c.block < 1) bad(ds::str("block must be at least 1, got ", c.block));
  if (heads < 1) bad(ds::str("the attention needs at least 1 head, got ", heads));
  if (seq_len < 1 || seq_len % c.block != 0)
    bad(ds::str("the sequence length ", seq_len, " is not a multiple of block ", c.block, "; pad the sequence to ",
                (seq_len + c.block - 1) / c.block * c.block, " tokens or choose a block that divides it"));
  const int64_t nb = seq_len / c.block;
  const bool unidirectional = c.attention == Dir::kUnidirectional;
  switch (c.mode) {
    case SparseMode::kFixed:
      if (c.num_local_blocks % c.num_global_blocks != 0)
        bad(ds::str("num_local_blocks ", c.num_local_blocks, " is not a multiple of num_global_blocks ", c.num_global_blocks));
      if (c.num_global_blocks > nb)
        bad(ds::str("num_global_blocks is ", c.num_global_blocks, " but the sequence has only ", nb, " blocks"));
      if (c.num_different_global_patterns > c.num_local_blocks / c.num_global_blocks)
        bad(ds::str("num_different_global_patterns is ", c.num_different_global_patterns, " but num_local_blocks / ",
                    "num_global_blocks allows at most ", c.num_local_blocks / c.num_global_blocks));
      if (c.horizontal_global_attention && unidirectional)
        bad("horizontal_global_attention needs \"attention\": \"bidirectional\"");
      break;
    case SparseMode::kVariable:
      if (c.horizontal_global_attention && unidirectional)
        bad("horizontal_global_attention needs \"attention\": \"bidirectional\"");
      [[fallthrough]];
    case SparseMode::kBSLongformer:
      check_globals(c, nb);
      break;
    case SparseMode::kBigBird:
      if (c.num_global_blocks > nb)
        bad(ds::str("num_global_blocks is ", c.num_global_blocks, " but the sequence has only ", nb, " blocks"));
      break;
    case SparseMode::kDense:
      break;
  }
  if ((c.mode == SparseMode::kVariable || c.mode == SparseMode::kBigBird) && c.num_random_blocks > nb)
    bad(ds::str("num_random_blocks is ", c.num_random_blocks, " but a row of the sequence has only ", nb, " blocks"));
  if ((c.mode == SparseMode::kBigBird || c.mode == SparseMode::kBSLongformer) && c.num_sliding_window_blocks > nb)
    bad(ds::str("num_sliding_window_blocks is ", c.num_sliding_window_blocks, " but the sequence has only ", nb, " blocks"));

  at::Tensor layout = at::zeros({heads, nb, nb}, at::kBool);
  const int64_t distinct = c.different_layout_per_head ? heads : 1;
  std::mt19937_64 rng(seed);
  for (int64_t head = 0; head < distinct; ++head) {
    at::Tensor one = layout[head];
    Head h{one.accessor<bool, 2>(), nb};
    switch (c.mode) {
      case SparseMode::kDense:
        one.fill_(true);
        break;
      case SparseMode::kFixed:
        fixed(h, c, head);
        break;
      case SparseMode::kVariable: {
        h.random(c.num_random_blocks, unidirectional, rng);  // DeepSpeed also draws above the diagonal
        int64_t begin = 0, size = c.local_window_blocks.back();
        for (int64_t s : c.local_window_blocks) {
          h.window(begin, std::min(begin + s, nb), c.attention);
          begin += s;
        }
        for (; begin < nb; begin += size) h.window(begin, std::min(begin + size, nb), c.attention);
        globals(h, c, c.horizontal_global_attention, c.attention);
        break;
      }
      case SparseMode::kBigBird:
        h.random(c.num_random_blocks, unidirectional, rng);
        h.sliding(c.num_sliding_window_blocks);
        h.rows(0, c.num_global_blocks);
        h.cols(0, 0, c.num_global_blocks);
        break;
      case SparseMode::kBSLongformer:
        h.sliding(c.num_sliding_window_blocks);
        globals(h, c, true, Dir::kBidirectional);
        break;
    }
  }
  if (distinct == 1 && heads > 1) layout.copy_(layout[0].unsqueeze(0).expand_as(layout));
  if (unidirectional && (c.mode == SparseMode::kBigBird || c.mode == SparseMode::kBSLongformer))
    layout = layout.tril();
  return layout;
}

double density(const at::Tensor& layout) {
  return layout.numel() == 0 ? 0.0 : double(layout.sum().item<int64_t>()) / double(layout.numel());
}

at::Tensor token_mask(const at::Tensor& layout, int64_t block) {
  return layout.repeat_interleave(block, 1).repeat_interleave(block, 2);
}

}  // namespace ds::sparse
