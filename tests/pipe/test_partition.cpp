// pipeline.partition: uniform, parameters and type:REGEX, checked against exhaustive search.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "ds/pipe/partition.h"
#include "support/errors.h"

namespace ds::pipe {
namespace {

int64_t largest_part(const std::vector<int64_t>& w, const std::vector<int>& b) {
  int64_t most = 0;
  for (size_t p = 0; p + 1 < b.size(); ++p) {
    int64_t sum = 0;
    for (int i = b[p]; i < b[p + 1]; ++i) sum += w[size_t(i)];
    most = std::max(most, sum);
  }
  return most;
}

// The best largest part over every way to cut w into `parts` non-empty runs.
int64_t best_by_search(const std::vector<int64_t>& w, int parts) {
  int64_t best = INT64_MAX;
  std::vector<int> b{0};
  std::function<void(int)> cut = [&](int from) {
    if (int(b.size()) == parts) {
      b.push_back(int(w.size()));
      best = std::min(best, largest_part(w, b));
      b.pop_back();
      return;
    }
    for (int next = from + 1; next <= int(w.size()) - (parts - int(b.size())); ++next) {
      b.push_back(next);
      cut(next);
      b.pop_back();
    }
  };
  cut(0);
  return best;
}

void expect_valid(const std::vector<int>& b, int items, int parts) {
  ASSERT_EQ(b.size(), size_t(parts + 1));
  EXPECT_EQ(b.front(), 0);
  EXPECT_EQ(b.back(), items);
  for (size_t p = 0; p + 1 < b.size(); ++p) EXPECT_LT(b[p], b[p + 1]) << "stage " << p << " is empty";
}

TEST(PipePartition, UniformGivesTheFirstStagesTheRemainder) {
  EXPECT_EQ(partition_uniform(10, 4), (std::vector<int>{0, 3, 6, 8, 10}));
  EXPECT_EQ(partition_uniform(8, 4), (std::vector<int>{0, 2, 4, 6, 8}));
  EXPECT_EQ(partition_uniform(4, 4), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(partition_uniform(5, 1), (std::vector<int>{0, 5}));
}

TEST(PipePartition, BalancedFindsTheSmallestLargestStage) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + int(rng() % 9), parts = 1 + int(rng() % unsigned(n));
    std::vector<int64_t> w(static_cast<size_t>(n));
    for (auto& x : w) x = rng() % 4 == 0 ? 0 : int64_t(rng() % 100);  // zeros too (type:REGEX weights)
    const std::vector<int> b = partition_balanced(w, parts);
    expect_valid(b, n, parts);
    EXPECT_EQ(largest_part(w, b), best_by_search(w, parts)) << "trial " << trial;
  }
}

// The reference GPT as layer specs: embedding, blocks, final LayerNorm, LM head (tied).
std::vector<LayerInfo> gpt(int blocks, int64_t embedding, int64_t block) {
  std::vector<LayerInfo> l{{"Embedding", embedding}};
  for (int i = 0; i < blocks; ++i) l.push_back({"TransformerBlock", block});
  l.push_back({"LayerNorm", 1536});
  l.push_back({"LMHead", 0});
  return l;
}

TEST(PipePartition, MethodsOnAGpt) {
  const auto layers = gpt(8, 38'597'376, 7'087'872);  // GPT-2 widths, 8 blocks: 11 layers
  // type:transformer: two blocks per stage; the embedding with the first, the head with the last.
  EXPECT_EQ(partition_layers(layers, 4, "type:transformer"), (std::vector<int>{0, 3, 5, 7, 11}));
  // parameters: the embedding (5.4 blocks' worth) alone on stage 0, the blocks spread evenly
  // over the rest (3, 3, 2 + the final LayerNorm and the head), not 5, 3, 0.
  EXPECT_EQ(partition_layers(layers, 4, "parameters"), (std::vector<int>{0, 1, 4, 7, 11}));
  EXPECT_EQ(partition_layers(layers, 4, "uniform"), (std::vector<int>{0, 3, 6, 9, 11}));
  EXPECT_EQ(partition_layers(layers, 1, "parameters"), (std::vector<int>{0, 11}));
  EXPECT_EQ(partition_layers(layers, 4, "best"), partition_layers(layers, 4, "parameters"));
}

TEST(PipePartition, BadInputIsOneLine) {
  const auto layers = gpt(2, 100, 10);  // 5 layers
  EXPECT_ERROR_HAS(partition_layers(layers, 6, "uniform"), "pipeline.stages is 6 but the model has 5 layers: use at most 5");
  EXPECT_ERROR_HAS(partition_layers(layers, 2, "balanced"), "expected parameters, best, uniform or type:REGEX");
  EXPECT_ERROR_HAS(partition_layers(layers, 2, "type:conv"),
                   "matches none of the layer types (Embedding, TransformerBlock, LayerNorm, LMHead)");
  EXPECT_ERROR_HAS(partition_layers(layers, 2, "type:(block"), "not a regular expression");
  EXPECT_ERROR_HAS(partition_balanced({1, -2, 3}, 2), "negative layer weight");
}

}  // namespace
}  // namespace ds::pipe
