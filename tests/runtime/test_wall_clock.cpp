// wall_clock_breakdown: the step's parts on the progress line and in the metrics CSV, on 2
// ranks at ZeRO stage 3 (gradient reductions during the backward, gathers in forward and
// backward, persistent units again after the update); the waits are parts of the phases
// that contain them.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "ds/common/strings.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream in(line);
  for (std::string cell; std::getline(in, cell, ',');) out.push_back(cell);
  return out;
}

}  // namespace

TEST(WallClockBreakdown, TheProgressLineAndTheCsvSplitEachPhase) {
  test::TempDir dir("ds_wall_clock");
  test::run_ranks(2, [&](comm::Communicator& c) {
    const std::string json = R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "wall_clock_breakdown": true,
      "optimizer": {"type": "AdamW", "params": {"lr": 0.01}}, "zero_optimization": {"stage": 3}})";
    test::TinyRun run(c.shared_from_this(), json);
    if (c.rank() == 0) run.engine().set_metrics_csv(dir.file("m.csv"));
    run.train_to(3);
    if (c.rank() != 0) return;
    std::ifstream in(dir.file("m.csv"));
    std::string header, line;
    std::getline(in, header);
    const auto names = split(header);
    ASSERT_EQ(names.size(), 16u) << header;
    EXPECT_EQ(names[9], "forward_ms");
    EXPECT_EQ(names[15], "disk_wait_ms");
    int rows = 0;
    while (std::getline(in, line)) {
      const auto cells = split(line);
      ASSERT_EQ(cells.size(), names.size()) << line;
      std::map<std::string, double> v;
      for (size_t i = 9; i < cells.size(); ++i) v[names[i]] = std::stod(cells[i]);
      EXPECT_GT(v["forward_ms"], 0.0) << line;
      EXPECT_GT(v["backward_ms"], 0.0) << line;
      EXPECT_GT(v["optimizer_ms"], 0.0) << line;
      EXPECT_GE(v["backward_comm_wait_ms"], 0.0) << line;
      EXPECT_LE(v["backward_comm_wait_ms"], v["backward_ms"]) << line;
      EXPECT_GE(v["gather_wait_ms"], 0.0) << line;
      // gathers are waited for in forward and backward, and in the step's refresh of the
      // persistent units after the update
      EXPECT_LE(v["gather_wait_ms"], v["forward_ms"] + v["backward_ms"] + v["optimizer_ms"]) << line;
      EXPECT_EQ(v["disk_wait_ms"], 0.0) << "no disk offload: " << line;
      EXPECT_LE(v["forward_ms"] + v["backward_ms"] + v["reduce_ms"] + v["optimizer_ms"], std::stod(cells[6]) * 1.01 + 1)
          << "the parts exceed the step: " << line;
      ++rows;
    }
    EXPECT_EQ(rows, 3);
    StepStats s;
    s.step = 4, s.forward_s = 0.002, s.backward_s = 0.003, s.backward_comm_s = 0.001, s.gather_wait_s = 0.0005;
    const std::string p = run.engine().progress_line(s);
    EXPECT_NE(p.find("fwd 2.0 bwd 3.0 (comm wait 1.0) reduce 0.0 step 0.0 ms | gather wait 0.5 ms"), std::string::npos) << p;
    // With the run's length: "step N/M" and an ETA from the recent steps (the first left out).
    EXPECT_EQ(p.find("ETA"), std::string::npos) << p;
    run.engine().set_total_steps(10);
    const std::string q = run.engine().progress_line(s);
    EXPECT_NE(q.find("step 4/10 | "), std::string::npos) << q;
    EXPECT_NE(q.find(" | ETA "), std::string::npos) << q;
  });
}
