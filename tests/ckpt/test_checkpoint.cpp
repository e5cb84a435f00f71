// Save as N ranks, load as M ranks; the files and errors a loader meets.
#include <gtest/gtest.h>

#include "ckpt_test_util.h"
#include "ds/ckpt/atomic_file.h"
#include "ds/ckpt/checkpoint.h"
#include "support/errors.h"

namespace ds::ckpt {
namespace {

using test::bit_equal;
using test::TempDir;

constexpr PartitionScheme kSchemes[] = {PartitionScheme::kTensorSplit, PartitionScheme::kEqualChunks};

// Loading every part of `m` ranks and gluing them back gives the saved buffers bit for bit.
void expect_loads_back(const CheckpointReader& ck, const std::vector<UnitInfo>& units,
                       const test::FullState& full, const Partition& m) {
  for (int rank = 0; rank < m.count; ++rank) {
    auto mine = ck.load_partition(units, m, rank);
    ASSERT_EQ(mine.size(), units.size());
    for (size_t u = 0; u < units.size(); ++u) {
      Range r = partition_range(units[u].padded_numel, m, rank);
      ASSERT_TRUE(bit_equal(mine[u].fp32, full.fp32[u].narrow(0, r.offset, r.length))) << units[u].name;
      ASSERT_EQ(mine[u].states.size(), full.states[u].size());
      for (size_t k = 0; k < mine[u].states.size(); ++k)
        ASSERT_TRUE(bit_equal(mine[u].states[k], full.states[u][k].narrow(0, r.offset, r.length)));
    }
  }
}

TEST(Checkpoint, SavedByNRanksLoadsBitIdenticalAtMRanks) {
  auto units = test::toy_units(8);
  auto full = test::random_state(units, 2, 11);
  for (auto saved : kSchemes)
    for (int n = 1; n <= 4; ++n) {
      TempDir dir;
      test::save_as_ranks(dir.path(), units, full, {saved, n}, "global_step42");
      CheckpointReader ck(dir.path());
      EXPECT_EQ(ck.tag(), "global_step42");
      EXPECT_EQ(ck.manifest().files.size(), size_t(n + 1));
      for (auto loaded : kSchemes)
        for (int m = 1; m <= 4; ++m) {
          SCOPED_TRACE(ds::str(to_string(saved), " N=", n, " -> ", to_string(loaded), " M=", m));
          expect_loads_back(ck, units, full, {loaded, m});
        }
    }
}

TEST(Checkpoint, LoadsIntoAnotherUnitGroupingAndPadding) {
  auto units = test::toy_units(8);
  auto full = test::random_state(units, 1, 5);
  TempDir dir;
  test::save_as_ranks(dir.path(), units, full, {PartitionScheme::kTensorSplit, 3}, "t", 1);
  auto other = test::regrouped(units, 64);
  auto loaded = CheckpointReader(dir.path()).load_partition(other, {PartitionScheme::kTensorSplit, 1}, 0);
  ASSERT_EQ(loaded.size(), 1u);
  for (const auto& s : other[0].slots) {
    at::Tensor got = loaded[0].fp32.narrow(0, s.offset, s.numel).view(s.shape);
    EXPECT_TRUE(bit_equal(got, test::param_of(units, full, s.name))) << s.name;
  }
  EXPECT_EQ(loaded[0]
                .fp32.narrow(0, other[0].numel, other[0].padded_numel - other[0].numel)
                .abs()
                .sum()
                .item<float>(),
            0.0f);  // padding is zero
}

TEST(Checkpoint, ModelStatesEngineStateAndFp32WeightsRoundTrip) {
  auto units = test::toy_units(8);
  auto full = test::random_state(units, 2, 3);
  TempDir dir;
  test::save_as_ranks(dir.path(), units, full, {PartitionScheme::kTensorSplit, 2}, "global_step42");
  CheckpointReader ck(dir.path(), "global_step42");
  const EngineState& e = ck.engine_state();
  EXPECT_EQ(e.global_steps, 42);
  EXPECT_EQ(e.optimizer_steps, 41);
  EXPECT_EQ(e.scheduler_iteration, 40);
  EXPECT_EQ(e.loss_scaler.scale, 1024.0);
  EXPECT_EQ(e.loss_scaler.hysteresis_left, 2);
  EXPECT_EQ(e.data.batches_in_epoch, 5);
  EXPECT_EQ(e.data.seed, 1234567890123ULL);
  EXPECT_EQ(e.client["best_loss"], 0.25);

  ModelStates want = test::toy_model_states(units, full), got = ck.load_model_states();
  ASSERT_EQ(got.module.size(), want.module.size());
  for (size_t i = 0; i < want.module.size(); ++i) {
    EXPECT_EQ(got.module[i].first, want.module[i].first);
    EXPECT_TRUE(bit_equal(got.module[i].second, want.module[i].second)) << want.module[i].first;
  }
  ASSERT_EQ(got.rng_states.size(), 1u);
  EXPECT_TRUE(bit_equal(got.rng_states[0].second, want.rng_states[0].second));
  ASSERT_EQ(got.optimizer_tensors.size(), want.optimizer_tensors.size());
  for (size_t i = 0; i < want.optimizer_tensors.size(); ++i) {
    EXPECT_EQ(got.optimizer_tensors[i].first, want.optimizer_tensors[i].first);
    EXPECT_TRUE(bit_equal(got.optimizer_tensors[i].second, want.optimizer_tensors[i].second));
  }

  auto weights = ck.load_fp32_weights();
  ASSERT_EQ(weights.size(), 9u);
  for (const auto& [name, t] : weights) EXPECT_TRUE(bit_equal(t, test::param_of(units, full, name))) << name;
  ck.verify_all();
}

TEST(Checkpoint, WeightsOnlyLoadSkipsOptimizerStatesAndStateNamesAreChecked) {
  auto units = test::toy_units(8);
  auto full = test::random_state(units, 2, 3);
  TempDir dir;
  test::save_as_ranks(dir.path(), units, full, {PartitionScheme::kTensorSplit, 2}, "t");
  CheckpointReader ck(dir.path());
  LoadOptions weights_only;
  weights_only.optimizer_states = false;
  auto part = ck.load_partition(units, {PartitionScheme::kTensorSplit, 1}, 0, weights_only);
  EXPECT_TRUE(part[0].states.empty());
  EXPECT_TRUE(bit_equal(part[0].fp32, full.fp32[0]));
  LoadOptions sgd;
  sgd.expected_state_names = {"momentum_buffer"};
  EXPECT_ERROR_HAS(
      ck.load_partition(units, {PartitionScheme::kTensorSplit, 1}, 0, sgd),
      "the checkpoint's optimizer AdamW keeps states (exp_avg, exp_avg_sq) but the engine's keeps "
      "(momentum_buffer)");
}

TEST(Checkpoint, ShardsSlicedFromABigBufferDoNotBloatTheFiles) {
  auto units = test::toy_units(8);
  auto full = test::random_state(units, 0, 3);
  TempDir a, b;
  Partition p{PartitionScheme::kTensorSplit, 4};
  test::save_as_ranks(a.path(), units, full, p, "t", 0);
  // The same parts, as views into the full buffers (the writer must not save whole storages).
  CheckpointWriter w(b.path(), test::toy_layout(units, "t", p, 0));
  w.prepare();
  std::vector<FileInfo> files;
  for (int k = 0; k < p.count; ++k) {
    std::vector<UnitShard> views;
    for (size_t u = 0; u < units.size(); ++u) {
      Range r = partition_range(units[u].padded_numel, p, k);
      views.push_back({full.fp32[u].narrow(0, r.offset, r.length), {}});
    }
    files.push_back(w.write_optimizer_part(k, views));
  }
  for (int k = 0; k < p.count; ++k)
    EXPECT_EQ(*file_size(b.path() + "/t/" + optim_states_name(k)),
              *file_size(a.path() + "/t/" + optim_states_name(k)));
}

TEST(Checkpoint, WriterRejectsShardsOfTheWrongShape) {
  auto units = test::toy_units(8);
  auto full = test::random_state(units, 2, 3);
  TempDir dir;
  CheckpointWriter w(dir.path(), test::toy_layout(units, "t", {PartitionScheme::kTensorSplit, 2}));
  w.prepare();
  auto part = test::part_of(units, full, {PartitionScheme::kTensorSplit, 2}, 1);
  EXPECT_ERROR_HAS(w.write_optimizer_part(2, part),
                   "optimizer part 2 does not exist: the layout has 2 parts");
  auto wrong = part;
  wrong[1].fp32 = wrong[1].fp32.narrow(0, 0, 3);
  EXPECT_ERROR_HAS(w.write_optimizer_part(1, wrong),
                   "part 1 of unit blocks.0 (fp32) has 3 elements; under "
                   "tensor_split over 2 parts it holds 12");
  wrong = part;
  wrong[0].states.pop_back();
  EXPECT_ERROR_HAS(w.write_optimizer_part(1, wrong),
                   "part 1 of unit root: 1 optimizer state tensors for 2 names");
  wrong = part;
  wrong[2].states[0] = wrong[2].states[0].to(at::kDouble);
  EXPECT_ERROR_HAS(w.write_optimizer_part(1, wrong), "must be a 1-D float32 CPU tensor, got Double");
  EXPECT_ERROR_HAS(w.commit({}), "does not list mp_rank_00_model_states.pt");
  Manifest bad = test::toy_layout(units, "t", {PartitionScheme::kTensorSplit, 2});
  bad.engine.client = nlohmann::json::array();
  EXPECT_ERROR_HAS(CheckpointWriter(dir.path(), bad), "engine_state.client must be a JSON object, got array");
  bad = test::toy_layout(units, "t", {PartitionScheme::kTensorSplit, 2});
  bad.units[0].slots[0].offset = -1;
  EXPECT_ERROR_HAS(CheckpointWriter(dir.path(), bad), "units[0].slots[0] (wte.weight): elements [-1, -1+35)");
}

TEST(Checkpoint, EqualChunkRanksMaySaveTheirWholePaddedChunk) {
  auto units = test::toy_units(8);  // root: 56 elements over 3 parts: chunks of 19, the last one 18
  auto full = test::random_state(units, 2, 9);
  Partition p{PartitionScheme::kEqualChunks, 3};
  TempDir dir;
  CheckpointWriter w(dir.path(), test::toy_layout(units, "t", p));
  w.prepare();
  std::vector<FileInfo> files;
  for (int k = 0; k < 3; ++k) {
    auto part = test::part_of(units, full, p, k);
    for (size_t u = 0; u < units.size(); ++u) {  // pad every tensor to the full chunk
      int64_t chunk = (units[u].padded_numel + 2) / 3;
      auto pad = [&](const at::Tensor& t) { return at::cat({t, at::full({chunk - t.numel()}, 7.0f)}); };
      part[u].fp32 = pad(part[u].fp32);
      for (auto& s : part[u].states) s = pad(s);
    }
    files.push_back(w.write_optimizer_part(k, part));
  }
  files.push_back(w.write_model_states(test::toy_model_states(units, full)));
  w.commit(files);
  expect_loads_back(CheckpointReader(dir.path()), units, full, {PartitionScheme::kTensorSplit, 2});
}

}  // namespace
}  // namespace ds::ckpt
