// What a (pipe, tensor, data) layout costs each rank, measured on the reference GPT:
//   * tensor parallelism: bytes all-reduced over the tensor group per micro-batch (forward +
//     backward, from the comms logger) against Megatron's count: 2 all-reduces of B x T x d
//     per block forward and 2 per backward, one for the vocab-parallel embedding (forward)
//     and one for the head's input (backward), plus the vocab-parallel cross-entropy's three
//     of B x T (max, target logit, exp-sum);
//   * pipeline stages: each stage's parameters and model-state bytes (Engine::memory_breakdown)
//     against 1/p of the whole model's.
//
//   build/apps/ds-launch --num_procs 4 --no_prefix build/bench/layout_bench --pipe 2 --tensor 2
//   options: --pipe P (1) --tensor T (1) --layers L (8) --width D (256) --heads H (8)
//            --tokens T (128) --batch B (4) --vocab V (256) --zero S (0)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "args.h"
#include "ds/comm/communicator.h"
#include "ds/common/openmp_env.h"
#include "ds/common/strings.h"
#include "ds/deepspeed.h"
#include "ds/models/gpt.h"
#include "ds/pipe/module.h"

using ds::bench::arg;

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  at::set_num_threads(1);
  auto world = ds::comm::init_from_env();
  const int64_t pipe = arg(argc, argv, "--pipe", 1), tensor = arg(argc, argv, "--tensor", 1);
  const int64_t B = arg(argc, argv, "--batch", 4), T = arg(argc, argv, "--tokens", 128);
  ds::GptConfig c;
  c.n_layer = arg(argc, argv, "--layers", 8), c.d_model = arg(argc, argv, "--width", 256);
  c.n_head = arg(argc, argv, "--heads", 8), c.vocab_size = arg(argc, argv, "--vocab", 256), c.seq_len = T;
  const int64_t data = world->size() / (pipe * tensor);
  ds::Config cfg = ds::Config::parse(
      ds::str(R"({"train_batch_size": )", B * data, R"(, "train_micro_batch_size_per_gpu": )", B,
              R"(, "optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": )", arg(argc, argv, "--zero", 0),
              R"(}, "pipeline": {"stages": )", pipe, R"(}, "tensor_parallel": {"autotp_size": )", tensor, "}}"),
      "layout_bench");
  cfg.resolve(world->size());
  ds::comm::ParallelGroups groups = ds::parallel_groups(world, cfg);
  ds::tp::Group tp = tensor > 1 ? groups.tensor : nullptr;
  torch::manual_seed(1);
  ds::pipe::PipelineModule model(ds::gpt_layer_specs(c, tp), ds::pipe::PipelineLayout::from(cfg, groups));
  ds::Engine engine(model.ptr(), cfg, groups);
  const auto loss = [tp](const at::Tensor& out, const at::Tensor& y) { return ds::gpt_loss(out, y, tp); };
  at::Tensor tokens = at::randint(c.vocab_size, {B, T}, at::kLong);
  auto data_fn = [&](int) { return ds::pipe::MicroBatch{tokens, tokens.roll(-1, 1)}; };
  engine.train_batch(model->stage_model(loss), data_fn);  // warm-up step, not counted
  world->logger().set_enabled(true);
  world->logger().reset();
  engine.train_batch(model->stage_model(loss), data_fn);
  const ds::comm::OpStats ar = world->logger().total("all_reduce");

  // One line per rank, in rank order.
  const ds::Engine::MemoryBreakdown m = engine.memory_breakdown();
  const double whole = double(c.parameter_count());
  const double btd = double(B * T * c.d_model) * 4, bt = double(B * T) * 4;
  const int64_t blocks_here = [&] {
    int64_t n = 0;
    for (const auto& p : model->named_parameters())
      if (p.key().find(".qkv.weight") != std::string::npos) ++n;
    return n;
  }();
  const bool first = groups.coord.pipe == 0, last = groups.coord.pipe == pipe - 1;
  // Megatron's count for what this stage holds (the tensor group's all-reduces only).
  const double expected = tensor == 1 ? 0.0
                                      : 4.0 * double(blocks_here) * btd + (first ? btd : 0.0) +
                                            (last ? btd + 3.0 * bt : 0.0);
  // The step's own all-reduces, not the tensor group's: the global norm's sum of squares (one
  // double over the model group) and, with stages, the tied embedding's gradient.
  double step_bytes = groups.model->size() > 1 ? 8.0 : 0.0;
  if (pipe > 1 && (first || last)) step_bytes += double(c.vocab_size / tensor * c.d_model) * 4;
  if (data > 1) {
    std::fprintf(stderr, "layout_bench: run it with data-parallel size 1 (world = pipe x tensor): the gradient "
                         "all-reduce would be counted too\n");
    return 2;
  }
  const double measured = (double(ar.message_bytes) - step_bytes) / double(cfg.gradient_accumulation_steps);
  for (int r = 0; r < world->size(); ++r) {
    if (r == world->rank()) {
      std::printf("rank %d (pipe %d, tensor %d, data %d): %lld parameters (%.3f of %lld; 1/p x 1/t = %.3f), model states "
                  "%s; tensor all-reduce per micro-batch: %.0f bytes measured, %.0f Megatron's count (%.3f)\n",
                  r, groups.coord.pipe, groups.coord.tensor, groups.coord.data, (long long)engine.parameter_count(),
                  double(engine.parameter_count()) / whole, (long long)c.parameter_count(), 1.0 / double(pipe * tensor),
                  ds::format_bytes(double(m.total())).c_str(), measured, expected, expected > 0 ? measured / expected : 0.0);
      std::fflush(stdout);
    }
    world->barrier().wait();
  }
  return 0;
}
