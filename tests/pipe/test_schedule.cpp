// Pipeline schedules, checked without running a model: every stage's program played against
// the others (ds::pipe::simulate) must finish (no receive waits forever), receive messages in
// the order they were sent, run each micro-batch's forward before its backward exactly once,
// and keep no more activations than the schedule promises; the simulated time must match the
// closed-form bubble of each schedule.
#include <gtest/gtest.h>

#include <cmath>

#include "ds/common/error.h"
#include "ds/pipe/schedule.h"
#include "support/errors.h"

namespace ds::pipe {
namespace {

std::vector<Instruction> flat(const ScheduleSpec& spec, int stage) { return flatten(schedule(spec, stage)); }

// Each shape every kind can schedule: stages 1-4, micro-batches 1-8, 2 virtual stages.
std::vector<ScheduleSpec> shapes(Kind kind) {
  std::vector<ScheduleSpec> out;
  for (int p = 1; p <= 4; ++p)
    for (int m = 1; m <= 8; ++m) {
      if (kind == Kind::kInterleaved && m % p != 0) continue;
      out.push_back({kind, p, m, kind == Kind::kInterleaved ? 2 : 1});
    }
  return out;
}

std::string name(const ScheduleSpec& s) {
  return ds::str(kind_name(s.kind), " p=", s.stages, " m=", s.micro_batches, " v=", s.virtual_stages);
}

TEST(PipeSchedule, EveryKindAndShapeFinishesInOrderWithEachWorkOnce) {
  for (Kind kind : {Kind::kGPipe, Kind::kOneFOneB, Kind::kInterleaved, Kind::kInference})
    for (const ScheduleSpec& spec : shapes(kind)) {
      Simulation sim;
      ASSERT_NO_THROW(sim = simulate(spec)) << name(spec);
      EXPECT_EQ(sim.busy.size(), size_t(spec.stages));
    }
}

TEST(PipeSchedule, OneFOneBKeepsAtMostStagesMinusStageIdActivations) {
  for (const ScheduleSpec& spec : shapes(Kind::kOneFOneB)) {
    const Simulation sim = simulate(spec);
    for (int s = 0; s < spec.stages; ++s)
      EXPECT_EQ(sim.peak_activations[size_t(s)], std::min(spec.stages - s, spec.micro_batches)) << name(spec) << " stage " << s;
  }
  for (const ScheduleSpec& spec : shapes(Kind::kGPipe))  // the memory 1F1B saves
    EXPECT_EQ(simulate(spec).peak_activations[0], spec.micro_batches) << name(spec);
}

TEST(PipeSchedule, BubbleMatchesTheClosedForms) {
  const double f = 1.0, b = 2.0;
  for (Kind kind : {Kind::kGPipe, Kind::kOneFOneB})
    for (const ScheduleSpec& spec : shapes(kind)) {
      const int p = spec.stages, m = spec.micro_batches;
      const Simulation sim = simulate(spec, f, b);
      EXPECT_DOUBLE_EQ(sim.makespan, (m + p - 1) * (f + b)) << name(spec);
      EXPECT_NEAR(sim.bubble, double(p - 1) / (m + p - 1), 1e-12) << name(spec);
    }
  for (const ScheduleSpec& spec : shapes(Kind::kInference))
    EXPECT_DOUBLE_EQ(simulate(spec, f, b).makespan, (spec.micro_batches + spec.stages - 1) * f) << name(spec);
  // Megatron: with v chunks per stage the bubble time is (p - 1)(f + b) / v.
  for (const ScheduleSpec& spec : shapes(Kind::kInterleaved)) {
    const int p = spec.stages, m = spec.micro_batches, v = spec.virtual_stages;
    if (m == p && p > 1) continue;  // all warm-up: no steady phase (checked below)
    EXPECT_NEAR(simulate(spec, f, b).makespan, m * (f + b) + (p - 1) * (f + b) / v, 1e-9) << name(spec);
  }
}

TEST(PipeSchedule, InterleavedBeatsOneFOneBWhereItApplies) {
  for (int p : {2, 4})
    for (int m : {p, 2 * p}) {
      const double one = simulate({Kind::kOneFOneB, p, m}).makespan;
      const double two = simulate({Kind::kInterleaved, p, m, 2}).makespan;
      EXPECT_LT(two, one) << "p=" << p << " m=" << m;
    }
}

TEST(PipeSchedule, OneFOneBOrderOnFourStages) {
  // Stage 1 of 4, 4 micro-batches: two warm-up forwards, then 1F1B, then the drain.
  const std::vector<Instruction> got = flat({Kind::kOneFOneB, 4, 4}, 1);
  std::vector<std::pair<Op, int>> compute;
  for (const Instruction& in : got)
    if (in.op == Op::kForward || in.op == Op::kBackward) compute.emplace_back(in.op, in.micro_batch);
  const std::vector<std::pair<Op, int>> want = {{Op::kForward, 0},  {Op::kForward, 1},  {Op::kForward, 2},
                                                {Op::kBackward, 0}, {Op::kForward, 3},  {Op::kBackward, 1},
                                                {Op::kBackward, 2}, {Op::kBackward, 3}};
  EXPECT_EQ(compute, want);
  // The step around a forward: receive, compute, send; the batch ends with the reductions and the step.
  const std::vector<Step> steps = schedule({Kind::kOneFOneB, 4, 4}, 1);
  EXPECT_EQ(steps[0], (Step{{Op::kRecvActivation, 0, 0, 0}, {Op::kForward, 0, 0, -1}, {Op::kSendActivation, 0, 0, 2}}));
  EXPECT_EQ(steps[3], (Step{{Op::kRecvGrad, 0, 0, 2}, {Op::kBackward, 0, 0, -1}, {Op::kSendGrad, 0, 0, 0}}));
  EXPECT_EQ(steps.back(), (Step{{Op::kReduceTiedGrads}, {Op::kReduceGrads}, {Op::kOptimizerStep}}));
}

TEST(PipeSchedule, FirstAndLastStagesLoadTheMicroBatch) {
  for (Kind kind : {Kind::kGPipe, Kind::kOneFOneB, Kind::kInterleaved, Kind::kInference})
    for (const ScheduleSpec& spec : shapes(kind))
      for (int s = 0; s < spec.stages; ++s) {
        int loads = 0;
        for (const Instruction& in : flat(spec, s)) loads += in.op == Op::kLoadMicroBatch;
        const int virt_ends = (s == 0) + (s == spec.stages - 1);  // first / last virtual stage live here
        const int want = spec.stages * spec.virtual_stages == 1 ? 1 : virt_ends;
        EXPECT_EQ(loads, want * spec.micro_batches) << name(spec) << " stage " << s;
      }
}

TEST(PipeSchedule, InferenceHasNoBackwardOrStep) {
  for (const Instruction& in : flat({Kind::kInference, 3, 5}, 1))
    EXPECT_TRUE(in.op == Op::kRecvActivation || in.op == Op::kForward || in.op == Op::kSendActivation) << to_string(in);
}

TEST(PipeSchedule, BadShapesAreOneLineErrors) {
  EXPECT_ERROR_HAS(schedule({Kind::kOneFOneB, 0, 4}, 0), "must each be at least 1");
  EXPECT_ERROR_HAS(schedule({Kind::kOneFOneB, 2, 0}, 0), "must each be at least 1");
  EXPECT_ERROR_HAS(schedule({Kind::kOneFOneB, 2, 4}, 2), "stage 2 is outside 0..1");
  EXPECT_ERROR_HAS(schedule({Kind::kOneFOneB, 2, 4, 2}, 0), "need the interleaved schedule");
  EXPECT_ERROR_HAS(schedule({Kind::kInterleaved, 4, 6, 2}, 0), "6 micro-batches is not a multiple of the 4 stages");
  EXPECT_ERROR_HAS(kind_from_name("pipedream"), "expected gpipe, 1f1b, interleaved or inference");
  EXPECT_EQ(kind_from_name("1f1b"), Kind::kOneFOneB);
}

TEST(PipeSchedule, TheSimulatorCatchesBrokenSchedules) {
  // The checks above are only as good as the simulator: break a correct schedule in each way
  // it must notice.
  const ScheduleSpec spec{Kind::kOneFOneB, 3, 4};
  auto programs = [&] {
    std::vector<std::vector<Instruction>> p;
    for (int s = 0; s < spec.stages; ++s) p.push_back(flat(spec, s));
    return p;
  };
  auto index_of = [](const std::vector<Instruction>& prog, Op op, int mb) {
    for (size_t i = 0; i < prog.size(); ++i)
      if (prog[i].op == op && prog[i].micro_batch == mb) return i;
    throw Error("not found");
  };
  EXPECT_NO_THROW(simulate(spec, programs()));

  auto swapped = programs();  // stage 1 receives micro-batch 1 before micro-batch 0
  std::swap(swapped[1][index_of(swapped[1], Op::kRecvActivation, 0)].micro_batch,
            swapped[1][index_of(swapped[1], Op::kRecvActivation, 1)].micro_batch);
  EXPECT_ERROR_HAS(simulate(spec, swapped), "but the next message from stage 0 is micro-batch 0");

  auto unsent = programs();  // stage 2 never sends micro-batch 3's gradient: stage 1 waits forever
  unsent[2].erase(unsent[2].begin() + long(index_of(unsent[2], Op::kSendGrad, 3)));
  EXPECT_ERROR_HAS(simulate(spec, unsent), "deadlocks (3 stages, 4 micro-batches): stage 0 at RecvGrad(mb 3, stage 1); "
                                           "stage 1 at RecvGrad(mb 3, stage 2)");

  auto unreceived = programs();  // stage 1 drops a receive: the message stays in the channel
  unreceived[1].erase(unreceived[1].begin() + long(index_of(unreceived[1], Op::kRecvGrad, 3)));
  EXPECT_ERROR_HAS(simulate(spec, unreceived), "message(s) from stage 2 to stage 1 are never received");

  auto early = programs();  // the last stage runs a backward before its forward
  const size_t f = index_of(early[2], Op::kForward, 0), b = index_of(early[2], Op::kBackward, 0);
  std::swap(early[2][f], early[2][b]);
  EXPECT_ERROR_HAS(simulate(spec, early), "on stage 2, Backward(mb 0) comes before its forward");

  auto twice = programs();
  twice[0].insert(twice[0].begin() + long(index_of(twice[0], Op::kForward, 2)), {Op::kForward, 2, 0, -1});
  EXPECT_ERROR_HAS(simulate(spec, twice), "on stage 0, Forward(mb 2) runs twice");
}

}  // namespace
}  // namespace ds::pipe
