// Pure parsing of the launcher: hostfiles, --include/--exclude, --num_nodes/--num_procs, the
// world encoding, rank assignment and line splitting. Nothing here starts a process.
#include <gtest/gtest.h>

#include "ds/common/error.h"
#include "ds/launch/hostfile.h"
#include "ds/launch/output.h"
#include "ds/launch/ranks.h"

using namespace ds::launch;

namespace {

// Expects `fn` to throw ds::ConfigError whose message contains every one of `parts`.
template <typename Fn>
void expect_config_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected ds::ConfigError";
  } catch (const ds::ConfigError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

World pool_world() { return world_from_pool(parse_hostfile("w0 slots=4\nw1 slots=4\nw2 slots=2\n", "hf")); }

}  // namespace

TEST(Hostfile, ParsesHostsSlotsCommentsAndBlankLines) {
  auto pool = parse_hostfile("# cluster\n\nworker-0 slots=4\n  worker-1\tslots=2   # fast\n\n", "hf");
  ASSERT_EQ(pool.size(), 2u);
  EXPECT_EQ(pool[0].host, "worker-0");
  EXPECT_EQ(pool[0].slots, 4);
  EXPECT_EQ(pool[0].line, 3);
  EXPECT_EQ(pool[1].host, "worker-1");
  EXPECT_EQ(pool[1].slots, 2);
  EXPECT_EQ(pool[1].line, 4);
}

TEST(Hostfile, AcceptsIpAddressesAndCrlfFreeTrailingSpace) {
  auto pool = parse_hostfile("10.0.0.1 slots=1   \n", "hf");
  ASSERT_EQ(pool.size(), 1u);
  EXPECT_EQ(pool[0].host, "10.0.0.1");
}

TEST(Hostfile, RejectsLineWithoutSlotsNamingTheLine) {
  expect_config_error([] { parse_hostfile("a slots=1\n\nworker-1\n", "hosts.txt"); },
                      {"hosts.txt:3", "expected 'HOST slots=N'", "worker-1"});
}

TEST(Hostfile, RejectsExtraTokens) {
  expect_config_error([] { parse_hostfile("a slots=1 max_slots=2\n", "hf"); }, {"hf:1", "max_slots=2"});
}

TEST(Hostfile, RejectsBadSlotCounts) {
  expect_config_error([] { parse_hostfile("a slots=0\n", "hf"); }, {"hf:1", "bad slot count '0'"});
  expect_config_error([] { parse_hostfile("a slots=x\n", "hf"); }, {"hf:1", "'x'"});
  expect_config_error([] { parse_hostfile("a slots=-1\n", "hf"); }, {"hf:1", "'-1'"});
  expect_config_error([] { parse_hostfile("a slots=\n", "hf"); }, {"hf:1"});
  expect_config_error([] { parse_hostfile("a slots=99999999999\n", "hf"); }, {"hf:1"});
}

TEST(Hostfile, RejectsDuplicateHostsNamingBothLines) {
  expect_config_error([] { parse_hostfile("a slots=1\nb slots=1\na slots=2\n", "hf"); },
                      {"hf:3", "'a' is listed twice", "first on line 1"});
}

TEST(Hostfile, RejectsUnsafeHostNames) {
  expect_config_error([] { parse_hostfile("a@b slots=1\n", "hf"); }, {"hf:1", "a@b"});
  expect_config_error([] { parse_hostfile("a:1 slots=1\n", "hf"); }, {"hf:1"});
  expect_config_error([] { parse_hostfile("-oProxy slots=1\n", "hf"); }, {"hf:1"});
  expect_config_error([] { parse_hostfile("a;rm slots=1\n", "hf"); }, {"hf:1"});
}

TEST(Hostfile, RejectsEmptyFile) {
  expect_config_error([] { parse_hostfile("", "hf"); }, {"hf", "no hosts"});
  expect_config_error([] { parse_hostfile("# only comments\n\n", "hf"); }, {"no hosts"});
}

TEST(Hostfile, ReadReportsMissingFile) {
  expect_config_error([] { read_hostfile("/nonexistent/hostfile"); }, {"/nonexistent/hostfile"});
}

TEST(Filter, NoFilterKeepsEverySlot) {
  World w = filter_world(pool_world(), "", "");
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[2].slots, (std::vector<int>{0, 1}));
}

TEST(Filter, IncludeWholeHostsAndSlotsKeepsHostfileOrder) {
  World w = filter_world(pool_world(), "w2@w0:0,2", "");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].host, "w0");
  EXPECT_EQ(w[0].slots, (std::vector<int>{0, 2}));
  EXPECT_EQ(w[1].host, "w2");
  EXPECT_EQ(w[1].slots, (std::vector<int>{0, 1}));
}

TEST(Filter, IncludeRemovesDuplicateSlotsAndMergesRepeatedHosts) {
  World w = filter_world(pool_world(), "w1:3,1,3@w1:1,0", "");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].slots, (std::vector<int>{3, 1, 0}));
}

TEST(Filter, ExcludeSlotsAndWholeHosts) {
  World w = filter_world(pool_world(), "", "w0:1@w2");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].host, "w0");
  EXPECT_EQ(w[0].slots, (std::vector<int>{0, 2, 3}));
  EXPECT_EQ(w[1].host, "w1");
  EXPECT_EQ(w[1].slots.size(), 4u);
}

TEST(Filter, ExcludingEverySlotOfAHostDropsIt) {
  World w = filter_world(pool_world(), "", "w2:0,1");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].host, "w1");
}

TEST(Filter, IncludeAndExcludeAreMutuallyExclusive) {
  expect_config_error([] { filter_world(pool_world(), "w0", "w1"); }, {"mutually exclusive"});
}

TEST(Filter, UnknownHostIsAnErrorWithSuggestion) {
  expect_config_error([] { filter_world(pool_world(), "w3", ""); }, {"--include", "'w3'", "w0, w1, w2"});
  expect_config_error([] { filter_world(pool_world(), "", "wO:1"); },
                      {"--exclude", "'wO'", "did you mean 'w0'"});
}

TEST(Filter, UnknownSlotIsAnError) {
  expect_config_error([] { filter_world(pool_world(), "w2:2", ""); }, {"'w2' has no slot 2", "0,1"});
  expect_config_error([] { filter_world(pool_world(), "", "w0:4"); }, {"'w0' has no slot 4"});
}

TEST(Filter, BadSyntaxIsAnError) {
  expect_config_error([] { filter_world(pool_world(), "w0:", ""); }, {"bad slot ''"});
  expect_config_error([] { filter_world(pool_world(), "w0:a", ""); }, {"bad slot 'a'"});
  expect_config_error([] { filter_world(pool_world(), "w0:1,,2", ""); }, {"bad slot ''"});
  expect_config_error([] { filter_world(pool_world(), "w0@@w1", ""); }, {"empty host name"});
  expect_config_error([] { filter_world(pool_world(), "@w1", ""); }, {"empty host name"});
  expect_config_error([] { filter_world(pool_world(), ":0", ""); }, {"empty host name"});
  expect_config_error([] { filter_world(pool_world(), "w0:-1", ""); }, {"bad slot '-1'"});
}

// Found by fuzzing: slot lists were deduplicated by linear scans, so a host with many slots
// took quadratic time (90,054 slots: over 10 s); the largest hostfile allowed now filters at once.
TEST(Filter, AHostWithTheMostSlotsAllowedFiltersInLinearTime) {
  const World world = world_from_pool(parse_hostfile("w0 slots=1048576\nw1 slots=2\n", "big"));
  EXPECT_EQ(filter_world(world, "w0", "")[0].slots.size(), 1048576u);
  std::string many = "w0:";
  for (int s = 0; s < 100000; ++s) many += std::to_string(s) + ",";
  many.pop_back();
  EXPECT_EQ(filter_world(world, "", many)[0].slots.size(), 1048576u - 100000u);
  EXPECT_EQ(filter_world(world, many + "@w0", "")[0].slots.size(), 1048576u);
}

TEST(Filter, ExcludingEverythingIsAnError) {
  expect_config_error([] { filter_world(pool_world(), "", "w0@w1@w2"); }, {"leaves no slots"});
}

TEST(Limit, NumNodesTakesTheFirstHosts) {
  World w = limit_world(pool_world(), 2, -1);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].host, "w1");
}

TEST(Limit, NumProcsTakesTheFirstSlotsOfEveryHost) {
  World w = limit_world(pool_world(), -1, 2);
  ASSERT_EQ(w.size(), 3u);
  for (const Node& n : w) EXPECT_EQ(n.slots, (std::vector<int>{0, 1}));
}

TEST(Limit, AskingForMoreThanTheWorldHasIsAnError) {
  expect_config_error([] { limit_world(pool_world(), 4, -1); }, {"--num_nodes 4", "only 3 hosts"});
  expect_config_error([] { limit_world(pool_world(), -1, 3); }, {"--num_procs 3", "'w2' has only 2 slots"});
  expect_config_error([] { limit_world(pool_world(), 0, -1); }, {"--num_nodes must be at least 1"});
  expect_config_error([] { limit_world(pool_world(), -1, 0); }, {"--num_procs must be at least 1"});
}

TEST(WorldInfo, EncodeDecodeRoundTrips) {
  World w = filter_world(pool_world(), "w0:3,1@w2", "");
  std::string text = encode_world(w);
  EXPECT_EQ(text, "w0:3,1@w2:0,1");
  World back = decode_world(text);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].host, "w0");
  EXPECT_EQ(back[0].slots, (std::vector<int>{3, 1}));
  EXPECT_EQ(back[1].slots, (std::vector<int>{0, 1}));
  EXPECT_EQ(world_size(back), 4);
}

TEST(WorldInfo, DecodeRejectsMissingSlotsAndDuplicates) {
  expect_config_error([] { decode_world("a:0@b"); }, {"'b' has no slot list"});
  expect_config_error([] { decode_world("a:0@a:1"); }, {"'a' appears twice"});
  expect_config_error([] { decode_world(""); }, {"empty host name"});
}

TEST(Ranks, AreNumberedNodeByNodeInWorldOrder) {
  World w = filter_world(pool_world(), "w0:1,3@w2", "");
  NodeRanks n0 = node_ranks(w, 0), n1 = node_ranks(w, 1);
  EXPECT_EQ(n0.world_size, 4);
  EXPECT_EQ(n0.num_nodes, 2);
  ASSERT_EQ(n1.ranks.size(), 2u);
  EXPECT_EQ(n0.ranks[1].rank, 1);
  EXPECT_EQ(n0.ranks[1].slot, 3);
  EXPECT_EQ(n1.host, "w2");
  EXPECT_EQ(n1.ranks[0].rank, 2);
  EXPECT_EQ(n1.ranks[0].local_rank, 0);
  EXPECT_EQ(n1.ranks[1].rank, 3);
  expect_config_error([&] { node_ranks(w, 2); }, {"--node_rank 2", "0..1"});
  expect_config_error([&] { node_ranks(w, -1); }, {"--node_rank -1"});
}

TEST(Ranks, EnvironmentHasTorchrunAndDeepSpeedNames) {
  World w = pool_world();
  NodeRanks node = node_ranks(w, 1);
  auto env = rank_env(node, node.ranks[2], {"10.0.0.1", 1234});
  auto get = [&](const std::string& k) {
    for (const auto& e : env)
      if (e.first == k) return e.second;
    return std::string("<unset>");
  };
  EXPECT_EQ(get("MASTER_ADDR"), "10.0.0.1");
  EXPECT_EQ(get("MASTER_PORT"), "1234");
  EXPECT_EQ(get("RANK"), "6");
  EXPECT_EQ(get("WORLD_SIZE"), "10");
  EXPECT_EQ(get("LOCAL_RANK"), "2");
  EXPECT_EQ(get("LOCAL_WORLD_SIZE"), "4");
  EXPECT_EQ(get("GROUP_RANK"), "1");
  EXPECT_EQ(get("NODE_RANK"), "1");
  EXPECT_EQ(get("GROUP_WORLD_SIZE"), "3");
  EXPECT_EQ(get("CROSS_SIZE"), "3");
  EXPECT_EQ(get("LOCAL_SIZE"), "4");
  EXPECT_EQ(get("DS_SLOT"), "2");
}

TEST(Ranks, DefaultOmpThreadsShareTheCores) {
  EXPECT_EQ(default_omp_threads(8, 2), 4);
  EXPECT_EQ(default_omp_threads(2, 4), 1);
  EXPECT_EQ(default_omp_threads(0, 4), 1);
}

TEST(LineSplitter, JoinsLinesSplitAcrossReads) {
  LineSplitter s;
  EXPECT_TRUE(s.feed("par").empty());
  EXPECT_TRUE(s.feed("ti").empty());
  EXPECT_EQ(s.feed("al\nnext\nmo"), (std::vector<std::string>{"partial", "next"}));
  EXPECT_EQ(s.feed("re\n"), (std::vector<std::string>{"more"}));
  EXPECT_FALSE(s.finish().has_value());
}

TEST(LineSplitter, KeepsEmptyLinesAndFlushesTheUnterminatedRest) {
  LineSplitter s;
  EXPECT_EQ(s.feed("\n\nx"), (std::vector<std::string>{"", ""}));
  EXPECT_EQ(s.finish(), std::optional<std::string>("x"));
  EXPECT_FALSE(s.finish().has_value());
}

TEST(LineSplitter, CutsOverlongLines) {
  LineSplitter s(4);
  EXPECT_EQ(s.feed("abcdefghij"), (std::vector<std::string>{"abcd", "efgh"}));
  EXPECT_EQ(s.feed("\n"), (std::vector<std::string>{"ij"}));
  EXPECT_EQ(s.feed("abcd\n"), (std::vector<std::string>{"abcd"}));
  EXPECT_EQ(s.feed("abcd"), (std::vector<std::string>{}));
  EXPECT_EQ(s.feed("\n"), (std::vector<std::string>{"abcd"}));
}

TEST(LineSplitter, PrefixesEveryLine) {
  EXPECT_EQ(prefix_lines(rank_prefix(3), {"a", "", "b"}), "[rank3]: a\n[rank3]: \n[rank3]: b\n");
  EXPECT_EQ(prefix_lines("", {"a"}), "a\n");
  EXPECT_EQ(prefix_lines("p", {}), "");
}
