// The pure reshape arithmetic: partitions, copy plans, model compatibility, unit checks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <map>

#include "ckpt_test_util.h"
#include "ds/ckpt/reshape.h"
#include "ds/comm/communicator.h"
#include "support/errors.h"

namespace ds::ckpt {
namespace {

constexpr PartitionScheme kSchemes[] = {PartitionScheme::kTensorSplit, PartitionScheme::kEqualChunks};

TEST(Partition, TensorSplitIsTheCommunicatorsChunkLayout) {
  for (int64_t n = 0; n <= 40; ++n)
    for (int world = 1; world <= 7; ++world)
      for (int r = 0; r < world; ++r) {
        Range mine = partition_range(n, {PartitionScheme::kTensorSplit, world}, r);
        comm::Chunk theirs = comm::chunk_of(n, world, r);
        ASSERT_EQ(mine.offset, theirs.offset) << n << "/" << world << "/" << r;
        ASSERT_EQ(mine.length, theirs.length) << n << "/" << world << "/" << r;
      }
}

TEST(Partition, EqualChunksAreCeilSizedAndTheLastOnesShorterOrEmpty) {
  Partition p{PartitionScheme::kEqualChunks, 4};
  EXPECT_EQ(partition_range(10, p, 0).length, 3);
  EXPECT_EQ(partition_range(10, p, 3).offset, 9);
  EXPECT_EQ(partition_range(10, p, 3).length, 1);
  Partition five{PartitionScheme::kEqualChunks, 5};
  EXPECT_EQ(partition_range(4, five, 4).offset, 4);  // more parts than elements: empty at the end
  EXPECT_EQ(partition_range(4, five, 4).length, 0);
}

TEST(Partition, PartsTileTheBufferAndPartitionOfInvertsThem) {
  for (auto scheme : kSchemes)
    for (int64_t n = 0; n <= 30; ++n)
      for (int count = 1; count <= 6; ++count) {
        Partition p{scheme, count};
        int64_t next = 0;
        for (int k = 0; k < count; ++k) {
          Range r = partition_range(n, p, k);
          ASSERT_EQ(r.offset, next);
          for (int64_t e = r.offset; e < r.end(); ++e) ASSERT_EQ(partition_of(n, p, e), k);
          next = r.end();
        }
        ASSERT_EQ(next, n);
      }
}

TEST(Partition, OutOfRangeArgumentsAreErrors) {
  EXPECT_ERROR_HAS(partition_range(10, {PartitionScheme::kTensorSplit, 2}, 2), "no part 2");
  EXPECT_ERROR_HAS(partition_of(10, {PartitionScheme::kTensorSplit, 2}, 10), "element 10 is outside");
}

// Runs a plan over "element ids": the saved state of parameter element (name, i) is a unique
// number; every loaded target element must hold the id it asked for, padding stays -1.
void check_plan_moves_every_element(const std::vector<UnitInfo>& saved, const Partition& sp,
                                    const std::vector<UnitInfo>& model, const Partition& mp) {
  std::map<std::string, int64_t> base;  // parameter -> id of its element 0
  int64_t next_id = 0;
  for (const auto& u : saved)
    for (const auto& s : u.slots) base[s.name] = next_id, next_id += s.numel;
  // The saved parts, as element ids.
  std::vector<std::vector<std::vector<int64_t>>> parts(size_t(sp.count));  // [part][unit][i]
  for (int k = 0; k < sp.count; ++k)
    for (const auto& u : saved) {
      Range r = partition_range(u.padded_numel, sp, k);
      std::vector<int64_t> ids(size_t(r.length), -2);
      for (const auto& s : u.slots)
        for (int64_t i = 0; i < s.numel; ++i)
          if (s.offset + i >= r.offset && s.offset + i < r.end())
            ids[size_t(s.offset + i - r.offset)] = base[s.name] + i;
      parts[size_t(k)].push_back(ids);
    }
  for (int rank = 0; rank < mp.count; ++rank) {
    std::vector<Range> ranges;
    for (const auto& u : model) ranges.push_back(partition_range(u.padded_numel, mp, rank));
    auto plan = plan_copies(saved, sp, requests_for_ranges(model, ranges));
    std::vector<std::vector<int64_t>> got;
    for (const auto& r : ranges) got.emplace_back(size_t(r.length), -1);
    for (const auto& op : plan)
      for (int64_t i = 0; i < op.length; ++i) {
        int64_t& dst = got[size_t(op.target)][size_t(op.dst_offset + i)];
        ASSERT_EQ(dst, -1) << "element written twice";
        dst = parts[size_t(op.part)][size_t(op.src_unit)][size_t(op.src_offset + i)];
      }
    for (size_t u = 0; u < model.size(); ++u)
      for (int64_t i = 0; i < ranges[u].length; ++i) {
        int64_t flat = ranges[u].offset + i, want = -1;
        for (const auto& s : model[u].slots)
          if (flat >= s.offset && flat < s.offset + s.numel) want = base[s.name] + flat - s.offset;
        ASSERT_EQ(got[u][size_t(i)], want)
            << "unit " << model[u].name << " element " << flat << " rank " << rank;
      }
  }
}

TEST(Plan, EveryElementArrivesOnceForEverySavedAndLoadedWorldSize) {
  auto units = test::toy_units(8);
  for (auto saved_scheme : kSchemes)
    for (auto loaded_scheme : kSchemes)
      for (int n = 1; n <= 4; ++n)
        for (int m = 1; m <= 4; ++m) {
          SCOPED_TRACE(
              ds::str(to_string(saved_scheme), " N=", n, " -> ", to_string(loaded_scheme), " M=", m));
          check_plan_moves_every_element(units, {saved_scheme, n}, units, {loaded_scheme, m});
        }
}

TEST(Plan, OtherUnitGroupingAndPaddingStillMatchByName) {
  auto units = test::toy_units(8);
  for (int n = 1; n <= 4; ++n)
    for (int m = 1; m <= 3; ++m) {
      SCOPED_TRACE(ds::str("N=", n, " M=", m));
      check_plan_moves_every_element(units, {PartitionScheme::kTensorSplit, n}, test::regrouped(units, 16),
                                     {PartitionScheme::kEqualChunks, m});
      check_plan_moves_every_element(test::regrouped(units, 4), {PartitionScheme::kEqualChunks, n}, units,
                                     {PartitionScheme::kTensorSplit, m});
    }
}

TEST(Plan, SameLayoutReadsOnlyTheRanksOwnFile) {
  auto units = test::toy_units(8);
  Partition p{PartitionScheme::kTensorSplit, 3};
  for (int rank = 0; rank < 3; ++rank) {
    std::vector<Range> ranges;
    for (const auto& u : units) ranges.push_back(partition_range(u.padded_numel, p, rank));
    auto plan = plan_copies(units, p, requests_for_ranges(units, ranges));
    EXPECT_EQ(parts_used(plan), std::vector<int>{rank});
  }
}

TEST(Plan, UnknownParameterOrOutOfRangeRequestIsAnError) {
  auto units = test::toy_units(8);
  Partition p{PartitionScheme::kTensorSplit, 2};
  EXPECT_ERROR_HAS(plan_copies(units, p, {{"nope.weight", 0, 1, 0, 0}}),
                   "the checkpoint has no parameter \"nope.weight\"");
  EXPECT_ERROR_HAS(plan_copies(units, p, {{"blocks.0.b", 2, 2, 0, 0}}),
                   "request for elements [2, +2) of blocks.0.b");
  EXPECT_ERROR_HAS(requests_for_ranges(units, {{0, 100}, {0, 1}, {0, 1}, {0, 1}}), "is outside unit root");
}

TEST(Compatibility, NamesTheFirstMismatchingParameterWithBothShapes) {
  auto saved = test::toy_units(8);
  auto model = saved;
  model[1].slots[0].shape = {3, 5};  // same numel, other shape
  EXPECT_ERROR_HAS(check_compatible(saved, model),
                   "the checkpoint does not match the model: parameter blocks.0.w has shape [5, 3] in the "
                   "checkpoint but [3, 5] in the model");
  model = saved;
  model[2].slots[1].name = "blocks.1.bias";
  EXPECT_ERROR_HAS(check_compatible(saved, model),
                   "parameter blocks.1.bias [3] of the model is not in the checkpoint");
  model = saved;
  model[3].slots.clear();
  EXPECT_ERROR_HAS(check_compatible(saved, model),
                   "the checkpoint's parameter head.scale [] is not in the model");
  EXPECT_NO_THROW(check_compatible(saved, test::regrouped(saved, 32)));
}

// Tensor rank `rank` of `size`'s slice of `whole`, cut along `dim` in `groups` blocks the way
// the tensor-parallel layers cut it, by plain LibTorch slicing.
at::Tensor tensor_slice(const at::Tensor& whole, int dim, int groups, int rank, int size) {
  const int64_t block = whole.size(dim) / groups, mine = block / size;
  std::vector<at::Tensor> pieces;
  for (int g = 0; g < groups; ++g) pieces.push_back(whole.narrow(dim, g * block + rank * mine, mine));
  return at::cat(pieces, dim).contiguous();
}

SlotInfo slot(const std::string& name, const at::Tensor& t, int dim, int groups, int size) {
  return {name, 0, t.numel(), t.sizes().vec(), size > 1 ? dim : -1, size > 1 ? groups : 1};
}

// Every element of a model slice's requested range arrives from the saved slice that holds it.
TEST(Reslice, EveryElementOfTheNewSliceComesFromTheSavedSliceHoldingIt) {
  struct Case {
    std::vector<int64_t> shape;
    int dim, groups;
  };
  const Case cases[] = {{{24, 5}, 0, 1}, {{6, 24}, 1, 1}, {{36, 4}, 0, 3}, {{3, 24, 2}, 1, 1}, {{2, 3, 24}, 2, 3},
                        {{24}, 0, 1},    {{5, 3}, -1, 1}};
  const std::pair<int, int> sizes[] = {{2, 1}, {1, 2}, {2, 4}, {4, 2}, {3, 2}, {1, 4}, {4, 1}, {2, 3}};
  for (const Case& c : cases) {
    const at::Tensor whole = at::arange(c10::multiply_integers(c.shape), at::kDouble).reshape(c.shape);
    for (auto [saved_size, size] : sizes) {
      const int dim = c.dim < 0 ? 0 : c.dim;
      if (c.dim >= 0 && (whole.size(dim) % (c.groups * saved_size) || whole.size(dim) % (c.groups * size))) continue;
      auto cut = [&](int r, int n) { return c.dim < 0 ? whole : tensor_slice(whole, dim, c.groups, r, n); };
      std::vector<at::Tensor> saved_slices;
      for (int s = 0; s < saved_size; ++s) saved_slices.push_back(cut(s, saved_size).view(-1));
      const std::vector<UnitInfo> saved{{"u", saved_slices[0].numel(), saved_slices[0].numel(),
                                         {slot("w", cut(0, saved_size), c.dim, c.groups, saved_size)}}};
      for (int rank = 0; rank < size; ++rank) {
        const at::Tensor want = cut(rank, size).view(-1);
        const std::vector<UnitInfo> model{{"u", want.numel(), want.numel(), {slot("w", cut(rank, size), c.dim, c.groups, size)}}};
        const TensorReslice t{saved_size, size, rank};
        ASSERT_NO_THROW(check_compatible(saved, model, true, t));
        const int64_t n = want.numel();
        for (auto [begin, length] : {std::pair<int64_t, int64_t>{0, n}, {1, n - 2}, {n / 3, n / 2}, {n - 1, 1}}) {
          const auto per_rank = reslice_requests(saved, model, t, {{"w", begin, length, 0, 0}});
          ASSERT_EQ(per_rank.size(), size_t(saved_size));
          at::Tensor got = at::full({length}, -1.0, at::kDouble), hits = at::zeros({length}, at::kInt);
          for (int s = 0; s < saved_size; ++s)
            for (const Request& q : per_rank[size_t(s)]) {
              ASSERT_EQ(q.param, "w");
              ASSERT_LE(q.begin + q.length, saved_slices[size_t(s)].numel());
              got.narrow(0, q.dst_offset, q.length).copy_(saved_slices[size_t(s)].narrow(0, q.begin, q.length));
              hits.narrow(0, q.dst_offset, q.length).add_(1);
            }
          const std::string where = ds::str("shape ", shape_string(c.shape), " dim ", c.dim, " groups ", c.groups,
                                            ", ", saved_size, " -> ", size, " rank ", rank, " [", begin, ", +", length, ")");
          EXPECT_TRUE(at::equal(hits, at::ones({length}, at::kInt))) << where;
          EXPECT_TRUE(at::equal(got, want.narrow(0, begin, length))) << where;
        }
      }
    }
  }
}

TEST(Reslice, ShapesThatDoNotSplitOrDisagreeAreNamed) {
  const at::Tensor whole = at::zeros({6, 4});
  const std::vector<UnitInfo> saved{{"u", 12, 12, {slot("qkv", tensor_slice(whole, 0, 3, 0, 2), 0, 3, 2)}}};
  // 6 rows in 3 blocks: 2 rows a block, which 4 ranks cannot split.
  std::vector<UnitInfo> model{{"u", 6, 6, {{"qkv", 0, 6, {3, 2}, 0, 3}}}};
  EXPECT_ERROR_HAS(check_compatible(saved, model, true, {2, 4, 0}),
                   "parameter qkv (whole shape [6, 4]) has 6 along dimension 0 in 3 blocks, which 4 tensor-parallel "
                   "ranks cannot split evenly");
  model = {{"u", 24, 24, {{"qkv", 0, 24, {6, 4}, -1, 1}}}};
  EXPECT_NO_THROW(check_compatible(saved, model, true, {2, 1, 0}));
  model = {{"u", 24, 24, {{"qkv", 0, 24, {4, 6}, -1, 1}}}};
  EXPECT_ERROR_HAS(check_compatible(saved, model, true, {2, 1, 0}),
                   "parameter qkv has whole shape [6, 4] in the checkpoint (saved by 2 tensor ranks), so [6, 4] on "
                   "each of 1, but [4, 6] in the model");
  model = {{"u", 12, 12, {{"qkv", 0, 12, {6, 2}, 1, 1}}}};
  EXPECT_ERROR_HAS(check_compatible(saved, model, true, {2, 2, 0}),
                   "parameter qkv is split along dimension 0 (3 blocks) in the checkpoint but along dimension 1 (1 "
                   "blocks) in the model");
}

TEST(Units, MalformedSlotsAreErrorsNamingTheField) {
  auto good = test::toy_units(8);
  EXPECT_NO_THROW(check_units(good, "m"));
  auto u = good;
  u[0].slots[1].offset = -4;
  EXPECT_ERROR_HAS(check_units(u, "m"),
                   "m: units[0].slots[1] (wpe.weight): elements [-4, -4+15) are outside");
  u = good;
  u[0].slots[1].offset = int64_t(1) << 62;
  EXPECT_ERROR_HAS(check_units(u, "m"), "are outside the unit's 50 parameter elements");
  u = good;
  u[0].slots[1].offset = 30;
  EXPECT_ERROR_HAS(check_units(u, "m"), "overlaps the previous parameter");
  u = good;
  u[1].slots[0].numel = 14;
  EXPECT_ERROR_HAS(check_units(u, "m"), "numel 14 does not match shape [5, 3]");
  u = good;
  u[2].padded_numel = 3;
  EXPECT_ERROR_HAS(check_units(u, "m"), "units[2] (blocks.1): numel 20 and padded_numel 3 are inconsistent");
  u = good;
  u[3].name = "root";
  EXPECT_ERROR_HAS(check_units(u, "m"), "repeated unit name \"root\"");
  u = good;
  u[3].slots[0].name = "wte.weight";
  EXPECT_ERROR_HAS(check_units(u, "m"), "parameter \"wte.weight\" appears twice");
  EXPECT_ERROR_HAS(check_units({}, "m"), "m: no units");
}

TEST(Names, AreDeepSpeedsFileNames) {
  EXPECT_EQ(model_states_name(), "mp_rank_00_model_states.pt");
  EXPECT_EQ(optim_states_name(3), "zero_pp_rank_3_mp_rank_00_optim_states.pt");
  EXPECT_EQ(optim_states_name(12, 1), "zero_pp_rank_12_mp_rank_01_optim_states.pt");
  EXPECT_EQ(rank_states_name(3, 1), "dp_rank_3_mp_rank_01_optim_rank_states.pt");
  EXPECT_TRUE(is_rank_states_name(rank_states_name(12)));
  EXPECT_FALSE(is_rank_states_name(optim_states_name(12)));
  EXPECT_FALSE(is_rank_states_name("dp_rank_1_mp_rank_00_optim_rank_states.pt.tmp"));
  EXPECT_NO_THROW(check_tag("global_step100"));
  EXPECT_ERROR_HAS(check_tag("a/b"), "one path component");
  EXPECT_ERROR_HAS(check_tag(".."), "not usable");
  EXPECT_ERROR_HAS(check_tag(""), "empty checkpoint tag");
}

}  // namespace
}  // namespace ds::ckpt
