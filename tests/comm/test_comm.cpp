// The communicator on 1-4 real processes over loopback (Gloo), against closed-form results.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <sstream>
#include <thread>

#include "collective_checks.h"
#include "ds/comm/agreement.h"
#include "ds/comm/communicator.h"
#include "ds/comm/logger.h"
#include "ds/comm/topology.h"
#include "ds/common/error.h"
#include "support/files.h"
#include "support/ranks.h"

using namespace ds;
using namespace std::chrono_literals;

TEST(ChunkOf, SplitsLikeTensorSplit) {
  // 10 over 4: 3, 3, 2, 2
  EXPECT_EQ(comm::chunk_of(10, 4, 0).offset, 0);
  EXPECT_EQ(comm::chunk_of(10, 4, 0).length, 3);
  EXPECT_EQ(comm::chunk_of(10, 4, 1).offset, 3);
  EXPECT_EQ(comm::chunk_of(10, 4, 2).offset, 6);
  EXPECT_EQ(comm::chunk_of(10, 4, 3).length, 2);
  EXPECT_EQ(comm::chunk_of(1, 4, 0).length, 1);
  EXPECT_EQ(comm::chunk_of(1, 4, 3).length, 0);
  EXPECT_EQ(comm::chunk_of(0, 3, 2).length, 0);
  for (int world = 1; world <= 5; ++world)
    for (int64_t n : {0, 1, 7, 64, 1001}) {
      int64_t covered = 0;
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(comm::chunk_of(n, world, r).offset, covered);
        covered += comm::chunk_of(n, world, r).length;
      }
      EXPECT_EQ(covered, n);
    }
  EXPECT_THROW(comm::chunk_of(10, 4, 4), Error);
}

TEST(Work, DefaultIsCompletedAndFailedRethrows) {
  comm::Work w;
  EXPECT_TRUE(w.is_completed());
  w.wait();
  auto f = comm::Work::failed(std::make_exception_ptr(CommError("boom")), "op");
  EXPECT_TRUE(f.is_completed());
  EXPECT_THROW(f.wait(), CommError);
}

TEST(Work, WaitTimesOutWithTheOperationsName) {
  auto state = std::make_shared<comm::Work::State>("all_reduce on rank 0 of 2 (gloo)", 50ms);
  comm::Work w(state);
  try {
    w.wait();
    FAIL();
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("all_reduce on rank 0 of 2"), std::string::npos) << e.what();
  }
  state->complete();
  w.wait();
}

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, MatchClosedFormForAllSizesAndDtypes) {
  test::run_ranks(GetParam(), [](comm::Communicator& c) { test::check_everything(c); });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Collectives, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

TEST(Collectives, LargeBuffersSpanManySegments) {
  // 5M floats = 20 MB: several 4 MiB segments per ring step.
  test::run_ranks(3, [](comm::Communicator& c) {
    const int64_t n = 5'000'003;
    at::Tensor t = at::full({n}, c.rank() + 1.0f);
    c.all_reduce(t).wait();
    EXPECT_TRUE(at::all(t == 6.0f).item<bool>());
    comm::Chunk mine = comm::chunk_of(n, 3, c.rank());
    at::Tensor in = at::arange(n, at::kFloat), out = at::empty({mine.length});
    c.reduce_scatter(out, in).wait();
    EXPECT_TRUE(at::equal(out, in.slice(0, mine.offset, mine.offset + mine.length) * 3));
  });
}

TEST(Collectives, ManyOperationsInFlightCompleteInOrder) {
  test::run_ranks(2, [](comm::Communicator& c) {
    std::vector<at::Tensor> ts;
    std::vector<comm::Work> ws;
    for (int i = 0; i < 20; ++i) {
      ts.push_back(at::full({1000 + i}, float(i)));
      ws.push_back(c.all_reduce(ts.back()));
    }
    for (int i = 0; i < 20; ++i) {
      ws[i].wait();
      EXPECT_TRUE(at::all(ts[i] == 2.0f * i).item<bool>()) << i;
    }
  });
}

TEST(CollectiveErrors, MisuseIsReportedBeforeAnythingIsSent) {
  test::run_ranks(2, [](comm::Communicator& c) {
    at::Tensor in = at::ones({10}), wrong = at::empty({4});
    try {
      c.reduce_scatter(wrong, in);
      ADD_FAILURE() << "no throw";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("output has 4 elements but rank"), std::string::npos) << e.what();
    }
    at::Tensor strided = at::ones({4, 4}).t();
    EXPECT_THROW(c.all_reduce(strided), CommError);
    at::Tensor ints = at::ones({4}, at::kInt);
    EXPECT_THROW(c.all_reduce(ints, comm::ReduceOp::Avg), CommError);
    at::Tensor odd = at::ones({5});
    EXPECT_THROW(c.all_to_all(odd, odd), CommError);  // 5 not divisible by 2, no splits given
    EXPECT_THROW(c.send(in, c.rank()), CommError);
    EXPECT_THROW(c.broadcast(in, 7), CommError);
    c.barrier().wait();  // still usable after rejected calls
  });
}

TEST(Rendezvous, NamesTheRanksThatNeverArrived) {
  // A world of 4 where only ranks 0 and 1 start.
  test::run_processes(2, [](int rank, int port) {
    comm::GlooOptions o;
    o.rank = rank, o.world_size = 4, o.master_port = port, o.timeout = 2s;
    auto start = std::chrono::steady_clock::now();
    try {
      comm::make_gloo(o);
      ADD_FAILURE() << "rendezvous succeeded without ranks 2 and 3";
    } catch (const TimeoutError& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("ranks 2, 3"), std::string::npos) << m;
      EXPECT_NE(m.find("never arrived"), std::string::npos) << m;
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  });
}

TEST(Rendezvous, ClientWithoutMasterFailsAfterTheTimeout) {
  test::run_processes(1, [](int, int port) {
    comm::GlooOptions o;
    o.rank = 1, o.world_size = 2, o.master_port = port, o.timeout = 2s;
    try {
      comm::make_gloo(o);
      ADD_FAILURE() << "connected to nobody";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("could not reach the rendezvous"), std::string::npos) << e.what();
    }
  });
}

TEST(PeerFailure, SurvivorsGetAnErrorNotAHang) {
  test::RankRun run;
  run.comm_timeout = 5s;
  run.accept = [](int rank, int status) { return rank == 2 ? WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL : status == 0; };
  test::run_processes(3, [&](int rank, int port) {
    comm::GlooOptions o;
    o.rank = rank, o.world_size = 3, o.master_port = port, o.timeout = run.comm_timeout;
    auto c = comm::make_gloo(o);
    at::Tensor t = at::ones({1 << 20});
    c->all_reduce(t).wait();  // everyone is connected and working
    if (rank == 2) ::raise(SIGKILL);
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) {
      try {
        c->all_reduce(t).wait();
      } catch (const CommError& e) {
        EXPECT_LT(std::chrono::steady_clock::now() - start, 8s) << e.what();
        return;  // the expected outcome
      }
    }
    ADD_FAILURE() << "rank " << rank << " never noticed that rank 2 died";
  }, run);
}

TEST(PeerFailure, AStoppedRankIsNamedWhenTheOthersTimeOut) {
  // Rank 2 stops (SIGSTOP: alive, connected, silent). The survivors fail in their next
  // collective: a rank whose wait times out says which rank did not answer; Gloo then closes
  // that rank's connections, so a survivor still waiting may see the closed connection first,
  // and its error names the rank that closed it. Rank 0 kills rank 2 once every survivor has
  // its error (a file per survivor: exiting or killing earlier would close more connections).
  test::TempDir dir("ds_stopped");
  test::RankRun run;
  run.comm_timeout = 2s;
  run.accept = [](int rank, int status) { return rank == 2 ? WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL : status == 0; };
  test::run_processes(4, [&](int rank, int port) {
    comm::GlooOptions o;
    o.rank = rank, o.world_size = 4, o.master_port = port, o.timeout = run.comm_timeout;
    auto c = comm::make_gloo(o);
    at::Tensor pids = at::zeros({4}, at::kLong);
    at::Tensor mine = at::full({1}, int64_t(::getpid()), at::kLong);
    c->all_gather(pids, mine).wait();
    if (rank == 2) ::raise(SIGSTOP);
    std::string outcome = "no error";
    at::Tensor t = at::ones({1000});
    try {
      c->all_reduce(t).wait();
      ADD_FAILURE() << "rank " << rank << ": the all-reduce finished without rank 2";
    } catch (const TimeoutError& e) {
      outcome = e.what();
      EXPECT_NE(outcome.find("rank 2 did not answer (stopped, hung, or its host unreachable)"), std::string::npos)
          << outcome;
    } catch (const CommError& e) {
      outcome = e.what();
      const bool names_survivor = outcome.find("(rank 1 closed the connection") != std::string::npos ||
                                  outcome.find("(rank 3 closed the connection") != std::string::npos ||
                                  (rank != 0 && outcome.find("(rank 0 closed the connection") != std::string::npos);
      EXPECT_TRUE(names_survivor) << outcome;
    }
    std::filesystem::rename(dir.write(ds::str("tmp.", rank), outcome), dir.file(ds::str("failed.", rank)));
    const auto deadline = std::chrono::steady_clock::now() + 40s;
    auto all_failed = [&] {
      for (int r : {0, 1, 3})
        if (!std::filesystem::exists(dir.file(ds::str("failed.", r)))) return false;
      return true;
    };
    while (!all_failed() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(50ms);
    EXPECT_TRUE(all_failed()) << "rank " << rank << ": a survivor never got its error";
    if (rank == 0) {
      ::kill(pid_t(pids[2].item<int64_t>()), SIGKILL);
      int named = 0;
      for (int r : {0, 1, 3}) named += dir.read(ds::str("failed.", r)).find("rank 2 did not answer") !=
                                       std::string::npos;
      EXPECT_GE(named, 1) << "no survivor named the stopped rank";
    }
  }, run);
}

TEST(Agreement, OneRanksFailureBecomesEveryRanksErrorNamingIt) {
  test::run_ranks(3, [](comm::Communicator& c) {
    try {
      comm::all_or_nothing(c, [&] {
        if (c.rank() == 2) throw Error("the disk is full\nsecond line");
      });
      ADD_FAILURE() << "rank " << c.rank() << " did not learn of rank 2's failure";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "rank 2: the disk is full");
    }
    comm::all_or_nothing(c, [] {});  // and the ranks are still in step
    comm::check_ranks_agree(c, "the test", "same\ntext\n");
    try {
      comm::check_ranks_agree(c, "the model", c.rank() == 1 ? "a\nb x\nc\nd\n" : "a\nb\nc\n");
      ADD_FAILURE() << "no disagreement found";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "the ranks disagree on the model: rank 1 has \"b x\" where rank 0 has \"b\"; "
                                       "\"d\" vs nothing more; start every rank with the same program, arguments and config");
    }
  });
}

TEST(Topology, CoordinatesFollowPipeDataTensorOrder) {
  comm::Topology t(2, 3, 2);  // 12 ranks, tensor fastest
  EXPECT_EQ(t.world_size(), 12);
  comm::Coord c = t.coord_of(7);  // 7 = (1*3 + 0)*2 + 1
  EXPECT_EQ(c.pipe, 1);
  EXPECT_EQ(c.data, 0);
  EXPECT_EQ(c.tensor, 1);
  for (int r = 0; r < 12; ++r) EXPECT_EQ(t.rank_of(t.coord_of(r)), r);
  EXPECT_EQ(t.group_along(comm::Axis::Tensor, 7), (std::vector<int>{6, 7}));
  EXPECT_EQ(t.group_along(comm::Axis::Data, 7), (std::vector<int>{7, 9, 11}));
  EXPECT_EQ(t.group_along(comm::Axis::Pipe, 7), (std::vector<int>{1, 7}));
  for (comm::Axis axis : {comm::Axis::Pipe, comm::Axis::Data, comm::Axis::Tensor}) {
    std::vector<int> seen(12, 0);
    for (const auto& g : t.groups_along(axis))
      for (int r : g) seen[r]++;
    EXPECT_EQ(seen, std::vector<int>(12, 1)) << comm::to_string(axis);
  }
}

TEST(Topology, RejectsWorldsThatDoNotDivide) {
  EXPECT_EQ(comm::Topology::for_world(8, 2, 2).size(comm::Axis::Data), 2);
  try {
    comm::Topology::for_world(6, 4, 1);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("world size 6 is not divisible"), std::string::npos) << e.what();
  }
}

TEST(Topology, SubGroupsReduceOverTheirOwnAxis) {
  test::run_ranks(4, [](comm::Communicator& world) {
    // pipe=2 x data=2: ranks {0,1} and {2,3} are data groups; {0,2} and {1,3} pipe groups.
    auto g = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology(2, 2, 1));
    EXPECT_EQ(g.data->size(), 2);
    EXPECT_EQ(g.pipe->size(), 2);
    EXPECT_EQ(g.tensor->size(), 1);
    at::Tensor t = at::full({5}, float(world.rank()));
    g.data->all_reduce(t).wait();
    float want = world.rank() < 2 ? 0 + 1 : 2 + 3;
    EXPECT_TRUE(at::all(t == want).item<bool>()) << "data group of rank " << world.rank();
    at::Tensor p = at::full({3}, float(world.rank()));
    g.pipe->all_reduce(p).wait();
    EXPECT_TRUE(at::all(p == float(world.rank() % 2 == 0 ? 0 + 2 : 1 + 3)).item<bool>());
    EXPECT_EQ(g.data->rank(), g.coord.data);
    g.tensor->barrier().wait();
    // The model-parallel group (pipe x tensor of one replica) is the pipe group here.
    at::Tensor m = at::full({2}, float(world.rank()));
    g.model->all_reduce(m).wait();
    EXPECT_TRUE(at::all(m == float(world.rank() % 2 == 0 ? 0 + 2 : 1 + 3)).item<bool>());
    EXPECT_EQ(g.model_rank(), g.coord.pipe);
    world.barrier().wait();
  });
}

TEST(Topology, ModelGroupsSpanPipeAndTensorAndGroupsCanBeMadeAgain) {
  comm::Topology t(2, 2, 2);
  EXPECT_EQ(t.model_group(5), (std::vector<int>{0, 1, 4, 5}));  // data coordinate 0
  EXPECT_EQ(t.model_group(2), (std::vector<int>{2, 3, 6, 7}));  // data coordinate 1
  test::run_ranks(4, [](comm::Communicator& world) {
    // Every layout of 4 ranks, twice each: a second set of groups (a second engine) must not
    // meet the first one's rendezvous keys. The sequence groups "sequence/0" are {0, 1} in the
    // first layout with them and {0, 2} in the second: a count kept by name alone would differ
    // between ranks 0 and 2, and they would wait for each other forever.
    for (int round = 0; round < 2; ++round) {
      for (auto [pipe, data, tensor, sequence] :
           {std::array<int, 4>{1, 2, 2, 1}, {2, 1, 2, 1}, {1, 4, 1, 1}, {1, 4, 1, 2}, {1, 2, 2, 2}}) {
        auto g = comm::ParallelGroups::create(world.shared_from_this(), comm::Topology(pipe, data, tensor, sequence));
        EXPECT_EQ(g.model->size(), pipe * tensor);
        EXPECT_EQ(g.data->size(), data);
        EXPECT_EQ(g.sequence->size(), sequence);
        for (const auto& [group, ranks] : {std::pair{g.model, g.topology.model_group(world.rank())},
                                           std::pair{g.sequence, g.topology.sequence_group(world.rank())}}) {
          at::Tensor sum = at::full({1}, float(world.rank()));
          group->all_reduce(sum).wait();
          float want = 0;
          for (int r : ranks) want += float(r);
          EXPECT_EQ(sum.item<float>(), want) << g.topology.describe() << " rank " << world.rank();
        }
      }
    }
    auto dp = comm::ParallelGroups::data_parallel(world.shared_from_this());
    EXPECT_EQ(dp.data.get(), &world);  // the world itself, no new group
    EXPECT_EQ(dp.model->size(), 1);
  });
}

TEST(CommsLogger, SummaryListsEveryOperation) {
  comm::CommsLogger log;
  log.record("all_reduce", 1 << 20, 1 << 20, 0.001);
  log.record("all_reduce", 1 << 20, 1 << 20, 0.003);
  log.record("reduce_scatter", 1 << 20, 1 << 19, 0.001);
  EXPECT_EQ(log.total("all_reduce").calls, 2);
  EXPECT_DOUBLE_EQ(log.total("all_reduce").seconds, 0.004);
  std::string s = log.summary(2);
  EXPECT_NE(s.find("all_reduce"), std::string::npos);
  EXPECT_NE(s.find("reduce_scatter"), std::string::npos);
  EXPECT_NE(s.find("1.00 MiB"), std::string::npos) << s;
  log.set_enabled(false);
  log.record("barrier", 0, 0, 0.1);
  EXPECT_EQ(log.total("barrier").calls, 0);
}

TEST(CommsLogger, LabelledOpsAreListedApartWithTheSameBandwidths) {
  {
    comm::LogLabel label("compressed");
    EXPECT_EQ(comm::LogLabel::apply("all_gather"), "compressed all_gather");
  }
  EXPECT_EQ(comm::LogLabel::apply("all_gather"), "all_gather");
  comm::CommsLogger log;
  log.record("all_gather", 1 << 20, 1 << 19, 0.001);
  log.record("compressed all_gather", 1 << 20, 1 << 19, 0.001);
  std::istringstream rows(log.summary(2));
  std::string header, plain, labelled;
  std::getline(rows, header), std::getline(rows, plain), std::getline(rows, labelled);
  ASSERT_EQ(labelled.rfind("compressed all_gather", 0), 0u) << labelled;
  // The same numbers, bus bandwidth included (the label is not part of the op's kind), and
  // the columns line up.
  EXPECT_EQ(plain.substr(plain.size() - 60), labelled.substr(labelled.size() - 60));
  EXPECT_EQ(plain.size(), labelled.size());
}
