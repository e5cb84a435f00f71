// The estimator: its model states equal what the engine allocates (Engine::memory_breakdown)
// at every ZeRO stage, 1, 2 and 4 ranks, fp32 and bf16, and on every rank of pipeline x
// tensor x data layouts; its step time adds up (with a pipeline's bubble and the tensor
// group's all-reduces); bad input and runs that fit nowhere are one line that says what would fit.
#include "ds/estimate/estimate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "ds/comm/topology.h"
#include "ds/models/gpt.h"
#include "ds/pipe/module.h"
#include "support/errors.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

estimate::ModelShape shape_of(const GptConfig& g) {
  estimate::ModelShape shape;
  shape.n_layer = g.n_layer, shape.d_model = g.d_model, shape.n_head = g.n_head, shape.seq_len = g.seq_len;
  shape.vocab_size = g.vocab_size;
  return shape;
}

Config resolved(const std::string& json, int world) {
  Config c = Config::parse(json, "test config");
  c.resolve(world);
  return c;
}

}  // namespace

class EstimateModelStates : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(EstimateModelStates, EqualTheEnginesAllocation) {
  const auto [world, stage, bf16] = GetParam();
  const std::string json = ds::str(R"({"train_batch_size": )", 2 * world, R"(, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.01}}, "bf16": {"enabled": )", bf16 ? "true" : "false",
                                   R"(}, "zero_optimization": {"stage": )", stage, "}}");
  test::run_ranks(world, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), json);
    run.train_to(1);  // after a step: stage 3's persistent units are gathered again
    const Engine::MemoryBreakdown m = run.engine().memory_breakdown();
    const GptConfig& g = run.model()->config();
    const estimate::ModelShape shape = shape_of(g);
    ASSERT_EQ(shape.parameters(), g.parameter_count());
    estimate::Layout layout;
    layout.ranks_per_node = world, layout.context = g.seq_len;
    const estimate::Estimate e = estimate::estimate(run.engine().config(), shape, layout, estimate::Rates::defaults());
    if (c.rank() != 0) return;  // equal chunks: every rank the same
    EXPECT_EQ(m.params, e.memory.params + e.memory.persistent) << "weights";
    EXPECT_EQ(m.grads, e.memory.grads) << "gradients";
    EXPECT_EQ(m.masters, e.memory.masters) << "masters";
    EXPECT_EQ(m.optimizer_state, e.memory.optimizer_states) << "optimizer states";
    EXPECT_EQ(m.on_disk, e.memory.on_disk);
  });
}

INSTANTIATE_TEST_SUITE_P(Layouts, EstimateModelStates,
                         ::testing::Combine(::testing::Values(1, 2, 4), ::testing::Values(0, 1, 2, 3), ::testing::Bool()),
                         [](const auto& info) {
                           return ds::str("world", std::get<0>(info.param), "_stage", std::get<1>(info.param),
                                          std::get<2>(info.param) ? "_bf16" : "_fp32");
                         });

// The 1-bit optimizers hold more than their states in the compressed phase (the whole
// momentum of a sharded unit, the zero-variance mask, the error feedback, 0/1 Adam's update
// accumulators) and keep full gradients at ZeRO-2: the estimate counts what they hold.
class EstimateCompressedOptimizers : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(EstimateCompressedOptimizers, EqualWhatTheyHoldInTheCompressedPhase) {
  const auto [type, stage] = GetParam();
  const std::string params = type == "ZeroOneAdam" ? R"("var_freeze_step": 2, "local_step_scaler": 1, "eps": 1e-3)"
                             : type == "OneBitLamb" ? R"("freeze_step": 1, "bias_correction": false)"
                                                    : R"("freeze_step": 1)";
  const std::string json = ds::str(R"({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": ")", type, R"(", "params": {"lr": 0.01, )", params, R"(}}, "zero_optimization": {"stage": )",
                                   stage, "}}");
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), json);
    run.train_to(4);  // well into the compressed phase (0/1 Adam: local steps)
    const Engine::MemoryBreakdown m = run.engine().memory_breakdown();
    const GptConfig& g = run.model()->config();
    const estimate::ModelShape shape = shape_of(g);
    estimate::Layout layout;
    layout.ranks_per_node = 2, layout.context = g.seq_len;
    const estimate::Estimate e = estimate::estimate(run.engine().config(), shape, layout, estimate::Rates::defaults());
    if (c.rank() != 0) return;
    EXPECT_GT(run.engine().optimizer().held_bytes(), 0);
    EXPECT_EQ(m.grads, e.memory.grads) << "gradients";
    EXPECT_EQ(m.masters, e.memory.masters) << "masters";
    EXPECT_EQ(m.optimizer_state, e.memory.optimizer_states) << "optimizer states and what the optimizer holds";
    EXPECT_EQ(e.memory.in_flight, 0) << "no gradient waits for a reduction: each rank keeps its own";
  });
}

INSTANTIATE_TEST_SUITE_P(Types, EstimateCompressedOptimizers,
                         ::testing::Values(std::make_tuple("OneBitAdam", 0), std::make_tuple("OneBitAdam", 1),
                                           std::make_tuple("OneBitAdam", 2), std::make_tuple("OneBitLamb", 2),
                                           std::make_tuple("ZeroOneAdam", 0)),
                         [](const auto& info) { return ds::str(std::get<0>(info.param), "_stage", std::get<1>(info.param)); });

// Pipeline x tensor x data: each rank's model states (its stage's layers, its tensor slices,
// its ZeRO shard) equal what the engine allocates for the pipeline GPT, stage by stage.
class EstimateThreeD : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(EstimateThreeD, ModelStatesOfEveryStageEqualTheEnginesAllocation) {
  const auto [pipeline, tensor, stage] = GetParam();
  constexpr int kWorld = 4;
  const int data = kWorld / (pipeline * tensor);
  const std::string json = ds::str(R"({"train_batch_size": )", 2 * 2 * data, R"(, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.01}}, "zero_optimization": {"stage": )", stage,
                                   R"(}, "pipeline": {"stages": )", pipeline, R"(}, "tensor_parallel": {"autotp_size": )",
                                   tensor, "}}");
  GptConfig g;
  g.vocab_size = 24, g.n_layer = 5, g.n_head = 2, g.d_model = 16, g.seq_len = 8;
  test::run_ranks(kWorld, [&](comm::Communicator& c) {
    Config cfg = Config::parse(json, "test config");
    cfg.resolve(kWorld);
    auto groups = comm::ParallelGroups::create(c.shared_from_this(), comm::Topology::for_world(kWorld, pipeline, tensor));
    pipe::PipelineModule model(gpt_layer_specs(g, tensor > 1 ? groups.tensor : nullptr),
                               pipe::PipelineLayout::from(cfg, groups));
    Engine engine(model.ptr(), cfg, groups);
    const Engine::MemoryBreakdown m = engine.memory_breakdown();
    const estimate::ModelShape shape = shape_of(g);
    estimate::Layout layout;
    layout.ranks_per_node = kWorld, layout.context = g.seq_len;
    const estimate::Estimate e = estimate::estimate(cfg, shape, layout, estimate::Rates::defaults());
    ASSERT_EQ(e.stages.size(), size_t(pipeline));
    const estimate::Memory& mine = e.stages[size_t(groups.coord.pipe)];
    EXPECT_EQ(mine.stage, groups.coord.pipe);
    if (groups.coord.data != 0) return;  // equal chunks: the first data rank of each stage speaks
    const std::string where = ds::str("stage ", groups.coord.pipe, ", tensor rank ", groups.coord.tensor);
    EXPECT_EQ(m.params, mine.params + mine.persistent) << "weights, " << where;
    EXPECT_EQ(m.grads, mine.grads) << "gradients, " << where;
    EXPECT_EQ(m.masters, mine.masters) << "masters, " << where;
    EXPECT_EQ(m.optimizer_state, mine.optimizer_states) << "optimizer states, " << where;
  });
}

INSTANTIATE_TEST_SUITE_P(Layouts, EstimateThreeD,
                         ::testing::Values(std::make_tuple(2, 1, 1), std::make_tuple(4, 1, 0), std::make_tuple(1, 2, 2),
                                           std::make_tuple(1, 2, 3), std::make_tuple(2, 2, 0), std::make_tuple(2, 2, 1)),
                         [](const auto& info) {
                           return ds::str("pipe", std::get<0>(info.param), "_tensor", std::get<1>(info.param), "_stage",
                                          std::get<2>(info.param));
                         });

// A pipeline's step: (accumulation + stages - 1) micro-batch slots of the slowest stage, the
// bubble the stages - 1 of them; stage 0 keeps `stages` micro-batches of its blocks' activations
// and the last stage the head's. Tensor parallelism divides the compute and adds all-reduces.
TEST(Estimate, APipelinesBubbleAndATensorGroupsAllReducesAreInTheStep) {
  estimate::ModelShape s;
  s.n_layer = 8, s.d_model = 256, s.n_head = 4, s.seq_len = 128, s.vocab_size = 512;
  estimate::Layout l;
  l.ranks_per_node = 4, l.context = 128;
  const auto r = estimate::Rates::defaults();
  auto run = [&](int pipeline, int tensor, int accumulation) {
    return estimate::estimate(resolved(ds::str(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": )",
                                               accumulation, R"(, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
      "zero_optimization": {"stage": 1}, "pipeline": {"stages": )", pipeline, R"(, "partition": "type:GptBlock"},
      "tensor_parallel": {"autotp_size": )", tensor, "}}"), 4), s, l, r);
  };
  const auto data = run(1, 1, 4), piped = run(4, 1, 4), split = run(1, 4, 4);
  for (const auto& e : {data, piped, split})
    EXPECT_DOUBLE_EQ(e.time.total_s, e.time.compute_s + e.time.optimizer_s + e.time.exposed_comm_s + e.time.io_s);
  EXPECT_EQ(data.time.bubble_s, 0);
  EXPECT_NEAR(piped.time.bubble_s / piped.time.compute_s, 3.0 / (4 + 3), 1e-12);
  // 4 stages of 2 blocks: the first stage's blocks hold the most, about a quarter of the whole
  // model's compute per micro-batch (the embeddings and head apart), over 7 slots.
  const double micro = data.time.compute_s / 4;  // one micro-batch of the whole model on one rank
  EXPECT_GT(piped.time.compute_s, 7 * micro / 4);
  EXPECT_LT(piped.time.compute_s, 7 * micro / 2);
  EXPECT_NEAR(split.time.compute_s, data.time.compute_s / 4, 1e-12);
  EXPECT_GT(split.time.comm_s, 0);  // the tensor group's all-reduces (one data rank: nothing else)
  ASSERT_EQ(piped.stages.size(), 4u);
  EXPECT_EQ(piped.memory.stage, 0);
  // Stage 0's blocks keep 4 micro-batches in flight, stage 3's one.
  EXPECT_GT(piped.stages[0].activations_without_checkpointing, 2 * piped.stages[3].activations_without_checkpointing -
                                                                 piped.stages[3].activations_without_checkpointing / 2);
  EXPECT_LT(split.memory.activations, data.memory.activations);
  // A pipeline recomputes by its activation_checkpoint_interval (ds-train ignores the
  // activation_checkpointing section there).
  const auto interval = estimate::estimate(resolved(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "pipeline": {"stages": 4, "activation_checkpoint_interval": 1}})", 4),
                                           s, l, r);
  EXPECT_EQ(interval.memory.activations, interval.memory.activations_with_checkpointing);
  EXPECT_GT(interval.time.compute_s, piped.time.compute_s);  // the recomputed forward
  EXPECT_EQ(piped.memory.activations, piped.memory.activations_without_checkpointing);
  // A scaling row whose ranks the layout cannot hold is named, not fatal: 3 per node.
  estimate::Layout three = l;
  three.ranks_per_node = 3;
  const std::string table = estimate::scaling_table(
      resolved(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "pipeline": {"stages": 2}})", 4), s, l, r, {4, 6, 8});
  EXPECT_NE(table.find("6 ranks: not whole nodes of 4 ranks"), std::string::npos) << table;
  const std::string odd = estimate::scaling_table(resolved(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "pipeline": {"stages": 2}})", 4), s, three, r, {3, 6});
  EXPECT_NE(odd.find("3 ranks: not a multiple of pipeline stages x tensor x sequence size (2)"), std::string::npos) << odd;
  EXPECT_NE(odd.find("\n6      | "), std::string::npos) << odd;
  // Stages on 2 nodes joined by a slow link: split over 2 tensor ranks (pipe_partitioned, the
  // default), half of each activation crosses it and the node's group gathers the rest.
  estimate::Layout nodes = l;
  nodes.ranks_per_node = 2, nodes.nodes = 2;
  estimate::Rates slow = r;
  slow.link_bytes_per_s = 1e8;
  auto across = [&](bool split) {
    return estimate::estimate(resolved(ds::str(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "pipeline": {"stages": 2, "pipe_partitioned": )",
                                               split ? "true" : "false", R"(, "grad_partitioned": )", split ? "true" : "false",
                                               R"(}, "tensor_parallel": {"autotp_size": 2}})"), 4), s, nodes, slow);
  };
  // Per micro-batch slot (4 + 1), an activation and a gradient: each saves half its bytes on the
  // link and pays a gather of that half (and one latency) inside the node.
  const double half = 2.0 * 128 * 256 * 4 / 2;
  const double saved = 5 * 2 * (half / slow.link_bytes_per_s - half / slow.loopback_bytes_per_s - slow.latency_s);
  EXPECT_GT(saved, 0);
  EXPECT_NEAR(across(false).time.comm_s - across(true).time.comm_s, saved, 1e-9);
  // Pipelines cannot shard gradients or offload (the engine refuses): no such choice offered.
  for (const auto& c : estimate::every_choice(resolved(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "pipeline": {"stages": 4}})", 4), s, l, r)) {
    EXPECT_LT(c.stage, 2);
    EXPECT_EQ(c.offload, "none");
  }
}

// Ulysses over 4 ranks against 4 data ranks: the same model states (ZeRO shards over both
// alike), a quarter of the activations and of the compute per rank, the all-to-alls in the
// step; what cannot split is named.
TEST(Estimate, SequenceParallelismDividesActivationsAndComputeAndAddsItsExchanges) {
  estimate::ModelShape s;
  s.n_layer = 4, s.d_model = 256, s.n_head = 4, s.seq_len = 128, s.vocab_size = 512;
  estimate::Layout l;
  l.ranks_per_node = 4, l.context = 128;
  const auto r = estimate::Rates::defaults();
  auto run = [&](int sequence, int world, const estimate::Layout& layout) {
    return estimate::estimate(resolved(ds::str(R"({"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW"},
      "zero_optimization": {"stage": 2}, "sequence_parallel_size": )", sequence, "}"), world), s, layout, r);
  };
  const auto data = run(1, 4, l), seq = run(4, 4, l);
  EXPECT_EQ(seq.memory.params, data.memory.params);
  EXPECT_EQ(seq.memory.grads, data.memory.grads);
  EXPECT_EQ(seq.memory.optimizer_states, data.memory.optimizer_states);
  EXPECT_NEAR(double(seq.memory.activations), double(data.memory.activations) / 4, 1.0);
  EXPECT_NEAR(seq.time.compute_s, data.time.compute_s / 4, 1e-12);
  // The same gradient reduction plus, per block, two rounds (forward, backward) of exchanges
  // of q, k, v and the output, 3/4 of each leaving the rank inside the node, and the loss's
  // count all-reduced.
  const double bandwidth = r.loopback_bytes_per_s * 2.0 / 4.0, slice = 2.0 * 128 / 4 * 256 * 4;
  const double exchange = 0.75 * 4 * slice / bandwidth + 2.0 * 3 * r.latency_s;
  EXPECT_NEAR(seq.time.comm_s - data.time.comm_s, 2 * 4 * exchange + 2.0 * 3 * r.latency_s, 1e-12);
  EXPECT_EQ(seq.tokens_per_step, 2 * 128);         // one sample's worth of ranks
  EXPECT_NE(seq.describe.find("sequence 4 (Ulysses)"), std::string::npos) << seq.describe;
  estimate::Layout odd = l;
  odd.context = 126;
  EXPECT_ERROR_HAS(run(4, 4, odd), "does not divide the context 126");
  estimate::Layout eight = l;
  eight.ranks_per_node = 8;
  EXPECT_ERROR_HAS(run(8, 8, eight), "sequence_parallel_size 8 does not divide the 4 heads");
}

// --calibrate's rates on this machine, for a tiny model over 2 tensor ranks: every rate
// positive and finite; a tensor slice's rate (its collectives moving nothing) near the whole
// model's per FLOP; a collective's latency measured; and the step then uses them.
TEST(Estimate, CalibrationMeasuresTheRatesAndATensorSlice) {
  test::run_ranks(1, [](comm::Communicator&) {
    estimate::ModelShape s;
    s.n_layer = 2, s.d_model = 64, s.n_head = 4, s.seq_len = 32, s.vocab_size = 256;
    estimate::Layout l;
    l.ranks_per_node = 2, l.context = 32;
    const estimate::Rates r = estimate::calibrate(s, l, 2, "", "", 2);
    std::printf("%s\n", r.describe().c_str());
    for (double v : {r.gemm_flops, r.model_efficiency, r.memory_bytes_per_s, r.loopback_bytes_per_s, r.latency_s,
                     r.tensor_efficiency, r.onebit_values_per_s, r.quantize_values_per_s, r.dequantize_values_per_s})
      EXPECT_TRUE(std::isfinite(v) && v > 0) << r.describe();
    // The compressions' loops: measured, so not the defaults; a value takes at least a
    // nanosecond's share of a copy and less than a microsecond.
    const estimate::Rates defaults = estimate::Rates::defaults();
    EXPECT_NE(r.onebit_values_per_s, defaults.onebit_values_per_s);
    EXPECT_NE(r.quantize_values_per_s, defaults.quantize_values_per_s);
    for (double v : {r.onebit_values_per_s, r.quantize_values_per_s, r.dequantize_values_per_s}) {
      EXPECT_GT(v, 1e6) << r.describe();
      EXPECT_LT(v, 1e11) << r.describe();
    }
    EXPECT_EQ(r.tensor_size, 2);
    EXPECT_GT(r.tensor_efficiency, 0.2) << "a slice computes half the FLOPs; at 1/5 of the rate something is wrong";
    EXPECT_LT(r.tensor_efficiency, 5.0);
    EXPECT_LT(r.latency_s, 0.1);
    const auto with = estimate::estimate(resolved(R"({"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "tensor_parallel": {"autotp_size": 2}})", 2), s, l, r);
    estimate::Rates uncalibrated = r;
    uncalibrated.tensor_size = 1;  // measured for another size: the whole model's rate is used
    const auto without = estimate::estimate(resolved(R"({"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "tensor_parallel": {"autotp_size": 2}})", 2), s, l,
                                            uncalibrated);
    EXPECT_NEAR(with.time.compute_s * r.tensor_efficiency, without.time.compute_s, 1e-12);
  });
}

TEST(Estimate, ZeroShrinksModelStatesAsDeepSpeedsFormulasSay) {
  // GPT-2 124M, fp32 Adam: 16 bytes per parameter at stage 0; stages 1-3 divide the
  // optimizer states, then the gradients, then the weights by the ranks (padding aside).
  estimate::ModelShape s;
  s.n_layer = 12, s.d_model = 768, s.n_head = 12, s.seq_len = 1024, s.vocab_size = 50257;
  const double psi = double(s.parameters());
  estimate::Layout l;
  l.ranks_per_node = 8, l.context = 1024;
  const std::string base = R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": )";
  auto states = [&](int stage) {
    return double(estimate::estimate(resolved(base + std::to_string(stage) + "}}", 8), s, l, estimate::Rates::defaults())
                      .memory.model_states());
  };
  EXPECT_NEAR(states(0) / psi, 16.0, 0.01);
  EXPECT_NEAR(states(1) / psi, 4 + 4 + (4.0 + 8.0) / 8, 0.01);  // weights, full gradients + own shard, states / 8
  EXPECT_NEAR(states(2) / psi, 4 + (4.0 + 8.0) / 8, 0.01);      // the gradient shard replaces the full gradients
  EXPECT_NEAR(states(3) / psi, (4.0 + 4.0 + 8.0) / 8, 0.01);
}

TEST(Estimate, TheStepTimeIsItsParts) {
  estimate::ModelShape s;
  s.n_layer = 4, s.d_model = 256, s.n_head = 4, s.seq_len = 256, s.vocab_size = 256;
  estimate::Layout l;
  l.ranks_per_node = 2, l.context = 256;
  const auto e = estimate::estimate(resolved(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 3}})", 2), s, l,
                                    estimate::Rates::defaults());
  EXPECT_GT(e.time.compute_s, 0);
  EXPECT_GT(e.time.comm_s, 0);
  EXPECT_DOUBLE_EQ(e.time.total_s, e.time.compute_s + e.time.optimizer_s + e.time.exposed_comm_s + e.time.io_s);
  // compute: 6N + 12LTd per token over 2 x 2 x 256 tokens, the node's model rate shared by 2 ranks
  const auto r = estimate::Rates::defaults();
  EXPECT_NEAR(e.time.compute_s, s.flops_per_token(256) * 1024 / (r.gemm_flops * r.model_efficiency / 2), 1e-9);
  // The optimizer streams its bytes: AdamW 28 per parameter (w, g, m, v read; w, m, v written),
  // Lamb 40 (a second pass reads w, m, v and writes w; bench/optimizer_bench measures 1.8x).
  const auto lamb = estimate::estimate(resolved(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
    "optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 3}})", 2), s, l, r);
  EXPECT_NEAR(lamb.time.optimizer_s / e.time.optimizer_s, 40.0 / 28.0, 1e-9);
}

// 1-bit Adam and Lamb are priced in their compressed phase: the data group's bytes are the
// momentum's sign bits (1/32 of an fp32 all-reduce's), plus ZeRO 1-2's weight all-gather.
TEST(Estimate, TheOneBitOptimizersCompressedPhaseSendsSignBits) {
  estimate::ModelShape s;
  s.n_layer = 4, s.d_model = 256, s.n_head = 4, s.seq_len = 256, s.vocab_size = 256;
  estimate::Layout l;
  l.ranks_per_node = 1, l.nodes = 4, l.context = 256;
  estimate::Rates r = estimate::Rates::defaults();
  r.link_bytes_per_s = 12.5e6, r.link_latency_s = 0;  // 100 Mbit/s: the bytes dominate
  auto at = [&](const std::string& optimizer, int stage) {
    return estimate::estimate(resolved(ds::str(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
      "optimizer": )", optimizer, R"(, "zero_optimization": {"stage": )", stage, "}}"), 4), s, l, r);
  };
  const auto adam = at(R"({"type": "Adam"})", 0), onebit = at(R"({"type": "OneBitAdam"})", 0);
  EXPECT_NEAR(onebit.time.comm_s / adam.time.comm_s, 1.0 / 32, 1e-3);
  EXPECT_NE(onebit.describe.find("OneBitAdam after freeze_step (compressed momentum)"), std::string::npos);
  EXPECT_EQ(adam.describe.find("compressed"), std::string::npos);
  // Stage 2: the weights' all-gather (fp32 here) stays; 1-bit Lamb the same.
  const auto adam2 = at(R"({"type": "Adam"})", 2), lamb2 = at(R"({"type": "OneBitLamb"})", 2);
  EXPECT_NEAR(lamb2.time.comm_s / adam2.time.comm_s, (1.0 / 32 + 0.5) / 1.0, 1e-3);
  EXPECT_GT(onebit.time.optimizer_s, adam.time.optimizer_s);  // the compression's passes
}

// ZeRO++: hpZ's secondary copies are model states the estimate counts as the engine holds
// them; over a slow link qwZ and qgZ send int8 blocks (about a quarter of fp32's bytes) and
// hpZ keeps all but a unit's first gather of a step off the link.
TEST(Estimate, ZeroPlusPlusSecondaryCopiesAndQuantizedBytes) {
  for (bool bf16 : {false, true}) {
    const std::string json = ds::str(R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 0.01}}, "bf16": {"enabled": )", bf16 ? "true" : "false",
      R"(}, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "zero_hpz_partition_size": 2,
      "zero_quantized_weights": true}})");
    test::run_ranks(4, [&](comm::Communicator& c) {
      test::TinyRun run(c.shared_from_this(), json);
      run.train_to(1);  // the copies' buffers stay allocated after the step
      const Engine::MemoryBreakdown m = run.engine().memory_breakdown();
      EXPECT_GT(run.engine().coordinator()->secondary_bytes(), 0);
      const GptConfig& g = run.model()->config();
      const estimate::ModelShape shape = shape_of(g);
      estimate::Layout layout;
      layout.ranks_per_node = 4, layout.context = g.seq_len;
      const estimate::Estimate e = estimate::estimate(run.engine().config(), shape, layout, estimate::Rates::defaults());
      EXPECT_EQ(m.params, e.memory.params + e.memory.persistent) << (bf16 ? "bf16" : "fp32");
      EXPECT_NE(e.describe.find("qwZ, hpZ 2"), std::string::npos) << e.describe;
    });
  }
  estimate::ModelShape s;
  s.n_layer = 4, s.d_model = 256, s.n_head = 4, s.seq_len = 256, s.vocab_size = 256;
  estimate::Rates r = estimate::Rates::defaults();
  r.link_bytes_per_s = 12.5e6, r.link_latency_s = r.latency_s = 0;  // the link's bytes dominate
  r.loopback_bytes_per_s = r.memory_bytes_per_s = 1e18;              // inside a node: free
  r.quantize_values_per_s = r.dequantize_values_per_s = 1e18;        // and so are the int8 loops
  auto at = [&](int per_node, const std::string& keys) {
    estimate::Layout l;
    l.ranks_per_node = per_node, l.nodes = 4 / per_node, l.context = 256;
    return estimate::estimate(resolved(ds::str(R"({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2,
      "optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 3)", keys, "}}"), 4), s, l, r).time.comm_s;
  };
  const double plain = at(1, "");
  // 2 micro-batches: per unit 2 reduce-scatters and 4 gathers of 4 bytes per value, or of int8 blocks.
  EXPECT_NEAR(at(1, R"(, "zero_quantized_weights": true, "zero_quantized_gradients": true)") / plain,
              (1.0 + 4.0 / 2048) / 4.0, 1e-3);
  // hpZ over the 2 ranks of a node: of the 4 gathers, 1 crosses the link.
  EXPECT_NEAR(at(2, R"(, "zero_hpz_partition_size": 2)") / at(2, ""), (2.0 + 1.0) / (2.0 + 4.0), 1e-3);
  // hpZ over all 4 ranks is off, as the engine turns it off; a group of 2 ranks on nodes of 1
  // crosses the link: of 4 gathers of 4 bytes and 2 reduce-scatters, 1 gather goes whole and 3
  // from the copies (half each) instead of 4 whole: (2 + 1 + 3/2) / (2 + 4) of plain's bytes.
  EXPECT_DOUBLE_EQ(at(1, R"(, "zero_hpz_partition_size": 4)"), plain);
  EXPECT_NEAR(at(1, R"(, "zero_hpz_partition_size": 2)") / plain, (2.0 * 0.75 + 0.75 + 1.5) / (6.0 * 0.75), 1e-3);
  EXPECT_ERROR_HAS(at(2, R"(, "zero_hpz_partition_size": 3)"), "zero_hpz_partition_size 3 does not divide the 4");
}

TEST(Estimate, BadInputAndRunsThatFitNowhereAreOneLineSayingWhatWouldFit) {
  EXPECT_ERROR_HAS(estimate::ModelShape::from_parameters(1000, 12, 768, 12, 1024),
                   "12 blocks of width 768 and context 1024 already hold");
  EXPECT_EQ(estimate::ModelShape::from_parameters(int64_t(1.3e9), 24, 2048, 16, 2048, 8).vocab_size % 8, 0);
  estimate::ModelShape s;
  s.n_layer = 2, s.d_model = 100, s.n_head = 3, s.seq_len = 64, s.vocab_size = 256;
  EXPECT_ERROR_HAS(s.validate(), "the heads (3) must divide the width (100)");
  s.n_head = 4;
  const std::string json = R"({"train_batch_size": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})";
  estimate::Layout l;
  l.context = 65;
  EXPECT_ERROR_HAS(estimate::estimate(resolved(json, 1), s, l, estimate::Rates::defaults()),
                   "the context 65 must be from 1 to the model's 64");
  l.context = 64;
  Config piped = resolved(R"({"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "nvme", "nvme_path": "/nvme"}},
    "pipeline": {"stages": 2}})", 2);
  l.ranks_per_node = 2;
  EXPECT_ERROR_HAS(estimate::estimate(piped, s, l, estimate::Rates::defaults()),
                   "offload with pipeline.stages > 1 is not supported");
  Config split = resolved(R"({"train_batch_size": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "tensor_parallel": {"autotp_size": 2}})", 2);
  s.vocab_size = 255;
  EXPECT_ERROR_HAS(estimate::estimate(split, s, l, estimate::Rates::defaults()),
                   "tensor_parallel.autotp_size 2 does not divide the heads (4) and the vocabulary (255)");
  s.vocab_size = 256;
  estimate::Layout single;
  single.context = 64;
  const Config offload = resolved(R"({"train_batch_size": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 0, "offload_optimizer": {"device": "nvme", "nvme_path": "/nvme"}}})", 1);
  EXPECT_ERROR_HAS(estimate::estimate(offload, s, single, estimate::Rates::defaults()),
                   "offload_optimizer needs ZeRO stage 1, 2 or 3");
  // 20B parameters at fp32 Adam (320 GB of model states) on one 24 GiB node of 2 ranks: ZeRO-3
  // over enough nodes, or offload, is what fits.
  estimate::ModelShape big = estimate::ModelShape::from_parameters(int64_t(2e10), 44, 6144, 48, 2048);
  estimate::Layout one;
  one.ranks_per_node = 2, one.context = 2048;
  const Config c = resolved(R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})", 2);
  const std::string advice = estimate::what_would_fit(c, big, one, estimate::Rates::defaults());
  EXPECT_NE(advice.find("ZeRO stage 3"), std::string::npos) << advice;
  EXPECT_NE(advice.find(" fits: "), std::string::npos) << advice;
  // A micro-batch whose activations alone exceed a node fits nowhere.
  estimate::Layout wide = one;
  const Config huge = resolved(R"({"train_micro_batch_size_per_gpu": 4096, "gradient_accumulation_steps": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})", 2);
  EXPECT_NE(estimate::what_would_fit(huge, big, wide, estimate::Rates::defaults()).find("nothing up to"),
            std::string::npos);
}
