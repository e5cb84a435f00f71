// ZeRO memory, traffic and speed per stage, run under ds-launch (one process per rank):
//
//   ds-launch --num_procs 4 build/bench/zero_bench --stage 2          # GPT-2 124M shape
//   ds-launch --num_procs 2 build/bench/zero_bench --stage 3 --reuse-distance 1
//   bench/zero_bench.sh                                               # stages 0-3 x 1, 2, 4 ranks
//
// Per rank: bytes of parameters, gradients, masters and optimizer state counted from the
// engine's own buffers (after the backward, so gradients exist; at stage 3 the units are
// released by then), the formula for this stage, peak RSS, bytes sent per step (comms logger)
// against 2 (N-1)/N x 4 bytes x padded parameters (3 at stage 3), and the median step time.
// Stage 3 builds the model under ds::zero::Init and honours --reuse-distance, --prefetch and
// --persistence (DeepSpeed's stage3_max_reuse_distance, stage3_prefetch_bucket_size,
// stage3_param_persistence_threshold; defaults as DeepSpeed's). Sequences are short
// (--tokens): the shape, not the context, sets the parameter count.
//
// Speed: --micro sequences of --tokens per rank per step; tokens/s over all ranks and, given
// --peak-gflops (the machine's GEMM rate, bench/gemm_bench), model FLOP utilisation
// (GptConfig::flops_per_token: 6 N + 12 L T d). --bf16 1 trains bf16 (its
// compute dtype as the engine chooses it; DS_COMPUTE_DTYPE=bf16|fp32 forces it).
//
// Activation checkpointing: --checkpoint-blocks K recomputes the first K blocks in the backward
// (bench/activation_checkpointing.sh compares peak RSS and step time with and without).
//
// ZeRO-Infinity: --nvme PATH swaps the optimizer states (and with --bf16 1 the fp32 masters)
// to PATH in sub-groups of --sub-group elements; the optimizer's swap traffic, the time it
// waited for the disk and its throughput are printed per step; --nvme-params 1 (stage 3 with
// --bf16 1) also swaps the weight shards (offload_param).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"
#include "ds/common/openmp_env.h"
#include "ds/common/strings.h"
#include "ds/config/config.h"
#include "ds/models/gpt.h"
#include "ds/deepspeed.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/offload/param_swapper.h"
#include "ds/zero/init.h"

namespace {

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return std::atoll(argv[i + 1]);
  return fallback;
}

// Model-state bytes per rank for fp32 Adam in this engine (Psi = padded parameters, N ranks):
// stage 0: params 4 + grads 4 + Adam m, v 8 = 16 Psi; the master is the parameter itself.
// stage 1: 4 Psi params + 4 Psi grads + (4 grad shard + 8 state) Psi / N.
// stage 2: 4 Psi params + (4 grad shard + 8 state) Psi / N.
// stage 3: (4 param shard + 4 grad shard + 8 state) Psi / N, plus the persistent units whole.
double formula_bytes(int stage, double psi, int n, double persistent) {
  switch (stage) {
    case 0: return 16 * psi;
    case 1: return 8 * psi + 12 * psi / n;
    case 2: return 4 * psi + 12 * psi / n;
    default: return 16 * psi / n + 4 * persistent;
  }
}

std::string sarg(int argc, char** argv, const char* name) {
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return argv[i + 1];
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  ds::ensure_passive_openmp(argv);
  try {
    const int stage = static_cast<int>(arg(argc, argv, "--stage", 0));
    const int64_t steps = arg(argc, argv, "--steps", 3), tokens = arg(argc, argv, "--tokens", 32);
    const int64_t micro = arg(argc, argv, "--micro", 1), peak_gflops = arg(argc, argv, "--peak-gflops", 0);
    ds::GptConfig mc;  // GPT-2 small by default
    mc.vocab_size = arg(argc, argv, "--vocab", 50257);
    mc.n_layer = arg(argc, argv, "--layers", 12);
    mc.n_head = arg(argc, argv, "--heads", 12);
    mc.d_model = arg(argc, argv, "--width", 768);
    mc.seq_len = arg(argc, argv, "--context", 1024);
    mc.checkpoint_blocks = arg(argc, argv, "--checkpoint-blocks", 0);
    auto comm = ds::comm::init_from_env();
    const int n = comm->size();
    at::set_num_threads(std::max(1, 2 / n));
    const std::string nvme_path = sarg(argc, argv, "--nvme");
    std::string nvme = nvme_path.empty() ? "" : ds::str(R"(, "offload_optimizer": {"device": "nvme", "nvme_path": ")", nvme_path, R"("})");
    if (!nvme.empty() && arg(argc, argv, "--nvme-params", 0))  // stage 3, bf16: the weight shards too
      nvme += ds::str(R"(, "offload_param": {"device": "nvme", "nvme_path": ")", nvme_path, R"("})");
    const std::string bf16 = arg(argc, argv, "--bf16", 0) ? R"(, "bf16": {"enabled": true})" : "";
    ds::Config config = ds::Config::parse(ds::str(R"({"train_batch_size": )", n * micro,
        R"(, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "comms_logger": {"enabled": true},)",
        R"( "zero_optimization": {"stage": )", stage, R"(, "overlap_comm": true)",
        R"(, "reduce_bucket_size": )", arg(argc, argv, "--reduce-bucket", 500000000),
        R"(, "stage3_max_reuse_distance": )", arg(argc, argv, "--reuse-distance", 1000000000),
        R"(, "stage3_prefetch_bucket_size": )", arg(argc, argv, "--prefetch", 50000000),
        R"(, "stage3_param_persistence_threshold": )", arg(argc, argv, "--persistence", 100000),
        R"(, "sub_group_size": )", arg(argc, argv, "--sub-group", 1000000000), nvme, "}", bf16,
        mc.checkpoint_blocks > 0 ? R"(, "activation_checkpointing": {})" : "", "}"));
    config.resolve(n);
    torch::manual_seed(0);
    ds::comm::ParallelGroups groups = ds::parallel_groups(comm, config);
    ds::zero::Init init(groups.data, config);  // stage 3: each unit sharded as soon as it is built
    ds::Gpt model(mc);
    const int64_t rss_built = ds::peak_rss_bytes();
    ds::EngineOptions options;
    options.sharded_units = init.take_units();
    ds::Engine engine(model.ptr(), config, groups, std::move(options));
    at::Tensor x = at::randint(0, mc.vocab_size, {micro, tokens}, at::kLong);
    ds::Engine::MemoryBreakdown mem;
    std::vector<double> times;
    int64_t forward_growth = 0;  // RSS added by the first forward: its activations (and gathers)
    for (int64_t s = 0; s < steps; ++s) {
      if (s == 1) {  // traffic of steady-state steps only
        comm->logger().reset();
        if (engine.swapper()) engine.swapper()->reset_stats();
      }
      const int64_t before_forward = ds::current_rss_bytes();
      at::Tensor loss = engine.forward([&] { return model->loss(x, x); });
      if (s == 0) forward_growth = ds::current_rss_bytes() - before_forward;  // the cache is empty then
      engine.backward(loss);
      mem = engine.memory_breakdown();  // gradients are held now (before step() zeroes them)
      auto st = engine.step();
      if (s > 0) times.push_back(st->seconds);
    }
    int64_t psi = 0, persistent = 0;
    for (size_t u = 0; u < engine.unit_count(); ++u) {
      psi += engine.unit(u).padded_numel();
      if (engine.coordinator() && engine.coordinator()->persistent(int(u))) persistent += engine.unit(u).padded_numel();
    }
    int64_t sent = 0;
    for (const auto& [op, st] : comm->logger().totals())
      if (op == "all_reduce" || op == "reduce_scatter" || op == "all_gather") sent += st.sent_bytes;
    const double per_step = double(sent) / double(steps - 1);
    const double copies = stage == 3 ? 3.0 : 2.0;  // stage 3 gathers for the forward and again for the backward
    const double wire_bytes = bf16.empty() ? 4.0 : 2.0;  // bf16 gathers and reduces in bf16
    const double traffic_theory = n > 1 ? copies * (n - 1) / n * wire_bytes * double(psi) : 0.0;
    std::sort(times.begin(), times.end());
    at::Tensor rss = at::full({1}, double(ds::peak_rss_bytes()), at::kDouble);
    comm->all_reduce(rss, ds::comm::ReduceOp::Max).wait();
    if (comm->rank() == 0) {
      const double f = formula_bytes(stage, double(psi), n, double(persistent));
      std::printf("zero_bench: stage %d, %d ranks, %s\n", stage, n, mc.describe().c_str());
      std::printf("  per rank: params %s, grads %s, masters %s, optimizer %s = %s", ds::format_bytes(mem.params).c_str(),
                  ds::format_bytes(mem.grads).c_str(), ds::format_bytes(mem.masters).c_str(),
                  ds::format_bytes(mem.optimizer_state).c_str(), ds::format_bytes(mem.total()).c_str());
      if (nvme.empty() && bf16.empty())  // the formulas are for fp32 states in memory
        std::printf("; formula %s (%+.2f %%)", ds::format_bytes(f).c_str(), 100.0 * (mem.total() - f) / f);
      std::printf("\n");
      std::printf("  peak RSS (max over ranks) %s; rank 0 after building the model %s; activations (estimate, %lld of "
                  "%lld blocks recomputed) %s\n",
                  ds::format_bytes(rss.item<double>()).c_str(), ds::format_bytes(double(rss_built)).c_str(),
                  (long long)mc.checkpoint_blocks, (long long)mc.n_layer,
                  ds::format_bytes(mc.activation_bytes(micro, tokens)).c_str());
      std::printf("  rank 0's RSS grew by %s during the first forward (activations kept for the backward)\n",
                  ds::format_bytes(double(forward_growth)).c_str());
      if (const ds::zero::ParamCoordinator* pc = engine.coordinator())
        std::printf("  stage 3: peak gathered %s of %s elements, %lld gathers (%lld prefetched), %.0f ms waiting for "
                    "gathers, %.0f ms for shard reads\n",
                    std::to_string(pc->stats().peak_live).c_str(), std::to_string(psi).c_str(),
                    (long long)pc->stats().gathers, (long long)pc->stats().prefetched, pc->stats().wait_s * 1e3,
                    pc->stats().read_wait_s * 1e3);
      std::printf("  sent per rank per step %s; %g(N-1)/N x %g B x Psi = %s (%+.2f %%)\n", ds::format_bytes(per_step).c_str(), copies, wire_bytes,
                  ds::format_bytes(traffic_theory).c_str(), traffic_theory > 0 ? 100.0 * (per_step - traffic_theory) / traffic_theory : 0.0);
      if (const ds::offload::OptimizerSwapper* sw = engine.swapper()) {
        const auto& st = sw->stats();
        const double k = double(steps - 1), moved = double(st.bytes_read + st.bytes_written) / k;
        std::printf("  nvme: %s on disk per rank (%zu sub-groups, %s buffers); per step %s moved, optimizer step %.0f ms, "
                    "waiting for the disk %.0f ms, verifying checksums %.0f ms; %.2f GB/s over the optimizer step\n",
                    ds::format_bytes(double(mem.on_disk)).c_str(), sw->sub_groups(), ds::format_bytes(double(sw->buffer_bytes())).c_str(),
                    ds::format_bytes(moved).c_str(), st.step_s / k * 1e3, st.io_wait_s / k * 1e3, st.checksum_s / k * 1e3,
                    moved / (st.step_s / k) / 1e9);
      }
      const double step_s = times.empty() ? 0.0 : times[times.size() / 2];
      const double tps = step_s > 0 ? double(n * micro * tokens) / step_s : 0.0;
      const double flops_per_token = mc.flops_per_token(tokens);
      std::printf("  step time (median of %zu) %.0f ms; %.0f tokens/s", times.size(), step_s * 1e3, tps);
      if (peak_gflops > 0)
        std::printf("; %.1f model GFLOP/s = %.1f %% of %lld GFLOP/s", tps * flops_per_token / 1e9,
                    100.0 * tps * flops_per_token / 1e9 / double(peak_gflops), (long long)peak_gflops);
      std::printf("\n");
    }
    comm->barrier().wait();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero_bench: error: %s\n", e.what());
    return 1;
  }
}
