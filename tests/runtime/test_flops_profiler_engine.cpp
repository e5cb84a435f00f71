// The flops profiler through the engine: the step after profile_step completed steps is
// profiled on rank 0, the counts at ZeRO stage 3 on 2 ranks are those of one process at stage
// 0 and the hand count of the model, the report goes to output_file once, and an unwritable
// output_file is refused at start-up.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "ds/profiling/flops_profiler.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

std::string config(int64_t batch, int stage, const std::string& output_file) {
  return ds::str(R"({"train_batch_size": )", batch, R"(, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.01}}, "zero_optimization": {"stage": )",
                 stage, R"(}, "flops_profiler": {"enabled": true, "profile_step": 1, "module_depth": 2, "top_modules": 2,
    "output_file": ")", output_file, R"("}})");
}

// The value after `label` on its line of the report.
std::string value_of(const std::string& report, const std::string& label) {
  const size_t at = report.find(label);
  if (at == std::string::npos) return "<no " + label + ">";
  const size_t end = report.find('\n', at);
  std::string v = report.substr(at + label.size(), end - at - label.size());
  return v.substr(v.find_first_not_of(' '));
}

// "9.12 M (1.96 x fwd)" -> 9.12e6
double number_of(const std::string& value) {
  std::istringstream in(value);
  double v = 0;
  std::string prefix;
  in >> v >> prefix;
  const std::string prefixes = "kMGTP";
  const size_t p = prefix.empty() ? std::string::npos : prefixes.find(prefix[0]);
  for (size_t i = 0; p != std::string::npos && i <= p; ++i) v *= 1000;
  return v;
}

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

}  // namespace

TEST(FlopsProfilerEngine, StageThreeOnTwoRanksCountsWhatOneProcessAndTheHandCountDo) {
  test::TempDir dir("ds_flops_engine");
  test::run_ranks(1, [&](comm::Communicator& c) {  // micro-batch 2 x accumulation 2
    test::TinyRun run(c.shared_from_this(), config(4, 0, dir.file("one.txt")));
    run.train_to(3);
    // By hand (see FlopsProfiler tests): per token and block 12 d^2 and the attention's two
    // GEMMs over the causal tiles the block kernels compute (blocks of 64: the tiles at or
    // below the diagonal, each whole), the head d V; 2 micro-batches of 2 sequences of T tokens.
    const GptConfig& g = run.model()->config();
    const int64_t context = run.data().context(), block = GptConfig::kExactBlock;
    double area = 0;  // query x key pairs the tiles hold
    for (int64_t r = 0; r * block < context; ++r)
      for (int64_t c = 0; c <= r; ++c)
        area += double(std::min(block, context - r * block) * std::min(block, context - c * block));
    const double T = double(context), d = double(g.d_model);
    const double per_token = double(g.n_layer) * (12 * d * d + 2 * area / T * d) + d * double(g.vocab_size);
    const std::string report = dir.read("one.txt");
    EXPECT_EQ(value_of(report, "fwd MACs per rank:"), profiling::si(per_token * 4 * T, "MACs")) << report;
    EXPECT_EQ(value_of(report, "params per rank:"), profiling::si(double(g.parameter_count()))) << report;
  });
  test::run_ranks(2, [&](comm::Communicator& c) {  // the same per rank, at stage 3
    test::TinyRun run(c.shared_from_this(), config(8, 3, dir.file("two.txt")));
    run.train_to(3);
  });
  const std::string one = dir.read("one.txt"), two = dir.read("two.txt");
  for (const std::string* r : {&one, &two}) {
    EXPECT_EQ(count(*r, "Profile Summary at step 2 (rank 0)"), 1u) << *r;
    // The module tree (the aggregated "top modules" depend on timings: not checked here).
    EXPECT_NE(r->find("\n  blocks.1 ("), std::string::npos) << *r;
    EXPECT_NE(r->find("\n    attn ("), std::string::npos) << *r;
    EXPECT_NE(r->find("model FLOPs utilisation (MFU)"), std::string::npos) << *r;
  }
  for (const char* label : {"params per rank:", "fwd MACs per rank:", "fwd flops per rank:", "fwd flops by op:"})
    EXPECT_EQ(value_of(one, label), value_of(two, label)) << label;
  // The backward differs by the gradient accumulation: stage 0 adds the second micro-batch's
  // gradients to the first's, stage 3 moves each micro-batch's out to its shard.
  const double bwd_one = number_of(value_of(one, "bwd flops per rank (counted):"));
  const double bwd_two = number_of(value_of(two, "bwd flops per rank (counted):"));
  EXPECT_GT(bwd_two, 0);
  EXPECT_NEAR(bwd_one / bwd_two, 1.0, 0.01) << bwd_one << " vs " << bwd_two;
  EXPECT_EQ(value_of(two, "world size:"), "2");
}

TEST(FlopsProfilerEngine, AnOutputFileThatCannotBeWrittenIsAConfigErrorAtStartUp) {
  test::TempDir dir("ds_flops_engine_bad");
  test::run_ranks(1, [&](comm::Communicator& c) {
    EXPECT_ERROR_HAS(test::TinyRun(c.shared_from_this(), config(4, 0, dir.file("no/such/dir/p.txt"))),
                     "flops_profiler.output_file: cannot write '" + dir.file("no/such/dir/p.txt") + "'");
  });
}
