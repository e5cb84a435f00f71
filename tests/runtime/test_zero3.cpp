// ZeRO stage 3 beyond equivalence (test_zero.cpp): a sharded parameter read outside a gathered
// scope names itself; GatheredParameters reads and writes back; models that do not mark their
// units, or have one unit, still train exactly; persistence, prefetch, reuse distance and max
// live parameters do what DeepSpeed's keys say; the bytes on the wire are 3 Psi; ds::zero::Init
// builds a model that never exists whole on a rank; ds::nn::linear is torch's linear.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>
#include <torch/nn/modules/linear.h>

#include "ds/zero/init.h"
#include "ds/nn/linear.h"
#include "ds/nn/unit.h"
#include "support/errors.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;

namespace {

const char* kSgd = R"({"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}})";

std::string config(int stage, int64_t micro, const std::string& zero = "", const char* optimizer = kSgd, int batch = 12) {
  return ds::str(R"({"train_batch_size": )", batch, R"(, "train_micro_batch_size_per_gpu": )", micro, R"(, "optimizer": )", optimizer,
                 R"(, "zero_optimization": {"stage": )", stage, zero, "}}");
}

// Every unit sharded, released as soon as it is done with.
const std::string kShardAll = R"(, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0)";

size_t unit_index(Engine& engine, const std::string& name) {
  for (size_t u = 0; u < engine.unit_count(); ++u)
    if (engine.unit(u).name() == name) return u;
  ADD_FAILURE() << "no unit " << name;
  return 0;
}

}  // namespace

TEST(Zero3, ASparseParameterReadOutsideAScopeNamesItselfAndTheRemedy) {
  test::TinyRun run(test::solo(), config(3, 12, kShardAll));
  run.train_to(1);
  auto params = run.model()->named_parameters();
  at::Tensor w = params["blocks.0.qkv.weight"];
  EXPECT_EQ(w.numel(), 0);  // released
  EXPECT_ERROR_HAS(w.sum(), "blocks.0.qkv.weight is sharded by ZeRO stage 3");
  EXPECT_ERROR_HAS(at::matmul(at::ones({2, 32}), w.t()), "engine.gathered_parameters");
  EXPECT_ERROR_HAS(params["wte.weight"].clone(), "wte.weight is sharded");
  // Inside a scope it is whole, and reads what the engine trained.
  run.engine().gathered_parameters({"blocks.0.qkv.weight"}, [&] {
    EXPECT_EQ(w.sizes(), (std::vector<int64_t>{96, 32}));
    EXPECT_TRUE(at::isfinite(w).all().item<bool>());
    EXPECT_GT(w.abs().sum().item<double>(), 0.0);
  });
  EXPECT_EQ(w.numel(), 0);  // released again
  EXPECT_ERROR_HAS(run.engine().gathered_parameters({"blocks.0.nope"}, [] {}), "no parameter named 'blocks.0.nope'");
  // The model's own forward works outside the engine too (evaluation): its units gather
  // themselves through ds::nn::run_unit and are released afterwards.
  Batch b = run.data().batch(0, 0, 4);
  at::NoGradGuard no_grad;
  at::Tensor loss = run.model()->loss(b.tokens, b.targets);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_EQ(run.engine().coordinator()->live_elements(), 0);
}

TEST(Zero3, GatheredParametersWritesTheModifierRanksValuesBackToEveryShard) {
  // A change made inside the scope on rank 0 becomes the weights everywhere and training goes
  // on from it exactly like one process at stage 0 that made the same change.
  auto modify = [](test::TinyRun& run, int rank) {
    at::Tensor w = run.model()->named_parameters()["blocks.1.fc.weight"];
    run.engine().gathered_parameters({"blocks.1.fc.weight", "ln_f.bias"}, [&] { w.fill_(rank == 0 ? 0.01 : -7.0); }, 0);
  };
  test::TinyRun base(test::solo(), config(0, 12));
  base.train_to(2);
  modify(base, 0);
  base.train_to(6);
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(3, 6, kShardAll));
    run.train_to(2);
    modify(run, c.rank());
    at::Tensor w = run.model()->named_parameters()["blocks.1.fc.weight"];
    run.engine().gathered_parameters({"blocks.1.fc.weight"}, [&] { EXPECT_TRUE(w.eq(0.01f).all().item<bool>()); });
    run.train_to(6);
    auto r = run.result();
    EXPECT_LT(test::max_abs_diff(r.losses, base.result().losses), 1e-5);
    EXPECT_LT((r.weights - base.result().weights).abs().max().item<double>(), 1e-5);
  });
}

namespace {

// Not nn::UnitAware: its forward calls its layers directly.
struct MlpImpl : torch::nn::Module {
  torch::nn::Linear a{nullptr}, b{nullptr};
  MlpImpl() {
    a = register_module("a", torch::nn::Linear(8, 16));
    b = register_module("b", torch::nn::Linear(16, 1));
  }
  at::Tensor forward(const at::Tensor& x) { return b(at::relu(a(x))); }
};

// One unit: parameters on the root module.
struct AffineImpl : torch::nn::Module {
  at::Tensor w, c;
  AffineImpl() {
    w = register_parameter("w", at::randn({8, 1}));
    c = register_parameter("c", at::zeros({1}));
  }
  at::Tensor forward(const at::Tensor& x) { return at::matmul(x, w) + c; }
};

// Regression on fixed data, the global batch of 8 split over the ranks.
template <typename M>
std::vector<double> fit(std::shared_ptr<comm::Communicator> comm, int stage, int steps) {
  Config cfg = Config::parse(config(stage, 8 / comm->size(), stage == 3 ? kShardAll : "", kSgd, 8), "test");
  cfg.resolve(comm->size());
  torch::manual_seed(3);
  auto model = std::make_shared<M>();
  at::Tensor x = at::randn({8, 8}), y = at::randn({8, 1});
  Engine engine(model, cfg, comm);
  const int64_t n = 8 / comm->size(), first = comm->rank() * n;
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    at::Tensor loss = engine.forward([&] {
      return (model->forward(x.slice(0, first, first + n)) - y.slice(0, first, first + n)).pow(2).mean();
    });
    engine.backward(loss);
    losses.push_back(engine.step()->loss);
  }
  return losses;
}

}  // namespace

TEST(Zero3, ModelsThatDoNotMarkTheirUnitsOrHaveOneUnitTrainExactlyWithAWarning) {
  const auto mlp0 = fit<MlpImpl>(test::solo(), 0, 8);
  const auto affine0 = fit<AffineImpl>(test::solo(), 0, 8);
  test::run_ranks(2, [&](comm::Communicator& c) {
    ::testing::internal::CaptureStderr();
    const auto mlp3 = fit<MlpImpl>(c.shared_from_this(), 3, 8);
    std::string warned = ::testing::internal::GetCapturedStderr();
    EXPECT_LT(test::max_abs_diff(mlp3, mlp0), 1e-6);
    if (c.rank() == 0) {
      EXPECT_NE(warned.find("does not run its units through ds::nn::run_unit"), std::string::npos) << warned;
    }
    ::testing::internal::CaptureStderr();
    const auto affine3 = fit<AffineImpl>(c.shared_from_this(), 3, 8);
    warned = ::testing::internal::GetCapturedStderr();
    EXPECT_LT(test::max_abs_diff(affine3, affine0), 1e-6);
    if (c.rank() == 0) {
      EXPECT_NE(warned.find("single unit (root)"), std::string::npos) << warned;
    }
  });
  EXPECT_LT(mlp0.back(), mlp0.front());
}

TEST(Zero3, SmallUnitsPersistAndTheRestIsReleasedBetweenSteps) {
  // ln_f (64 weights) is under the threshold; every other unit is larger.
  test::TinyRun run(test::solo(), config(3, 12, R"(, "stage3_param_persistence_threshold": 100)"));
  run.train_to(2);
  const zero::ParamCoordinator& pc = *run.engine().coordinator();
  for (size_t u = 0; u < run.engine().unit_count(); ++u) {
    const bool small = run.engine().unit(u).name() == "ln_f";
    EXPECT_EQ(pc.persistent(int(u)), small) << run.engine().unit(u).name();
    EXPECT_EQ(pc.gathered(int(u)), small) << run.engine().unit(u).name();
  }
  EXPECT_EQ(pc.live_elements(), run.engine().unit(unit_index(run.engine(), "ln_f")).padded_numel());
  // Its weights follow the optimizer (re-gathered after each step): a gathered read equals the
  // shard's master.
  at::Tensor w = run.model()->named_parameters()["ln_f.weight"];
  EXPECT_TRUE(w.equal(run.engine().master(unit_index(run.engine(), "ln_f")).slice(0, 0, w.numel())));
}

TEST(Zero3, PrefetchReuseDistanceAndMaxLiveFollowTheTrace) {
  struct Step {
    int64_t gathers = 0, prefetched = 0, peak_live = 0, padded_psi = 0, largest_unit = 0;
  };
  auto third_step = [](const std::string& zero) {
    test::TinyRun run(test::solo(), config(3, 12, R"(, "stage3_param_persistence_threshold": 0)" + zero));
    run.train_to(2);  // the first micro-batch records the trace
    const zero::ParamCoordinator& pc = *run.engine().coordinator();
    EXPECT_TRUE(pc.trace_valid());
    const auto before = pc.stats();
    run.train_to(3);
    Step s;
    s.gathers = pc.stats().gathers - before.gathers;
    s.prefetched = pc.stats().prefetched - before.prefetched;
    s.peak_live = pc.stats().peak_live;
    for (size_t u = 0; u < run.engine().unit_count(); ++u) {
      s.padded_psi += run.engine().unit(u).padded_numel();
      s.largest_unit = std::max(s.largest_unit, run.engine().unit(u).padded_numel());
    }
    return s;
  };
  // Units: wte, wpe, blocks.0, blocks.1, ln_f. The trace: forward wte wpe b0 b1 ln_f
  // wte (the tied head); backward wte (head) ln_f b1 b0 wpe wte.
  Step none = third_step(R"(, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 0)");
  // Nothing kept: each use gathers, except that the backward needs wte once (its gradient is
  // complete only after the embedding's backward, so it stays from the head's backward on).
  EXPECT_EQ(none.gathers, 11);
  EXPECT_EQ(none.prefetched, 0);
  // Distance 1: a unit used again right away stays (the head, from its forward to its backward).
  EXPECT_EQ(third_step(R"(, "stage3_max_reuse_distance": 1, "stage3_prefetch_bucket_size": 0)").gathers, 10);
  // DeepSpeed's default (1e9) keeps every unit from its forward to its backward: once each.
  Step keep = third_step(R"(, "stage3_prefetch_bucket_size": 0)");
  EXPECT_EQ(keep.gathers, 5);
  EXPECT_EQ(keep.peak_live, keep.padded_psi);  // the whole model was gathered at once
  // Prefetch issues gathers ahead of use; max live parameters caps what is gathered at once.
  Step ahead = third_step(R"(, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 100000)");
  EXPECT_EQ(ahead.gathers, 11);
  EXPECT_GE(ahead.prefetched, 8);
  // The window counts what is gathered ahead already: one unit's worth keeps one unit ahead.
  Step window = third_step(ds::str(R"(, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": )", none.largest_unit));
  EXPECT_GT(window.prefetched, 0);
  EXPECT_LE(window.peak_live, 4 * none.largest_unit);  // in use + one ahead (+ wte, kept for its gradient)
  EXPECT_LT(window.peak_live, ahead.peak_live);
  const int64_t cap = 2 * none.largest_unit;
  Step capped = third_step(ds::str(R"(, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 100000, "stage3_max_live_parameters": )", cap));
  EXPECT_GT(capped.prefetched, 0);
  EXPECT_LE(capped.peak_live, cap + none.largest_unit);
  EXPECT_LT(capped.peak_live, ahead.peak_live);
}

TEST(Zero3, TrafficPerStepIsThreePsi) {
  // With the head kept from its forward to its backward (reuse distance 1) each unit is
  // gathered twice and its gradient reduce-scattered once per step: 3 x (N-1)/N x 4 bytes x
  // padded Psi per rank, exactly.
  test::run_ranks(4, [](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(3, 3, R"(, "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 1)"));
    run.train_to(1);
    c.logger().reset();
    c.logger().set_enabled(true);
    run.train_to(2);
    int64_t padded = 0;
    for (size_t u = 0; u < run.engine().unit_count(); ++u) padded += run.engine().unit(u).padded_numel();
    int64_t gathered = 0, scattered = 0;
    for (const auto& [op, s] : c.logger().totals()) {
      if (op == "all_gather") gathered += s.sent_bytes;
      if (op == "reduce_scatter") scattered += s.sent_bytes;
    }
    const int64_t psi_bytes = padded * 4 * 3 / 4;  // (N-1)/N of the padded fp32 bytes
    EXPECT_EQ(scattered, psi_bytes);
    EXPECT_EQ(gathered, 2 * psi_bytes);
    if (c.rank() == 0)
      std::printf("stage 3, 4 ranks: %lld bytes gathered, %lld reduce-scattered per step (padded psi %lld)\n",
                  (long long)gathered, (long long)scattered, (long long)padded);
  });
}

TEST(Zero3, MemoryPerRankIsSixteenPsiOverN) {
  test::run_ranks(4, [](comm::Communicator& c) {
    auto between_steps = [&](int stage) {
      test::TinyRun run(c.shared_from_this(), config(stage, 3, stage == 3 ? kShardAll : "",
                                                     R"({"type": "AdamW", "params": {"lr": 0.01}})"));
      run.train_to(1);
      return run.engine().memory_breakdown();
    };
    auto s0 = between_steps(0), s3 = between_steps(3);
    EXPECT_EQ(s3.params * 4, s0.params);
    EXPECT_EQ(s3.grads * 4, s0.grads);
    EXPECT_EQ(s3.optimizer_state * 4, s0.optimizer_state);
    EXPECT_EQ(s3.total() * 4, s0.total());
  });
}

TEST(Zero3, InitShardsEachUnitAsItIsBuiltAndTrainsLikeStageZero) {
  test::TinyRun base(test::solo(), config(0, 12));
  base.train_to(10);
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyShape shape;
    shape.zero_init = true;
    test::TinyRun run(c.shared_from_this(), config(3, 6, kShardAll), shape);
    for (const auto& p : run.model()->parameters()) EXPECT_EQ(p.numel(), 0);  // only shards exist
    run.train_to(10);
    EXPECT_LT(test::max_abs_diff(run.result().losses, base.result().losses), 1e-5);
  });
  // At stages 0-2 an Init does nothing: the model is built whole.
  Config c0 = Config::parse(config(2, 12), "test");
  c0.resolve(1);
  auto comm = test::solo();
  zero::Init init(comm, c0);
  EXPECT_FALSE(init.enabled());
}

TEST(Zero3, ZeroLinearMatchesTorchLinearAndItsGradients) {
  // ds::nn::linear saves the weight itself instead of a transposed view; the arithmetic is
  // torch's own (the same kernels in the same order): forward and gradients match bit for bit.
  torch::manual_seed(1);
  for (bool bias : {true, false}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{7, 5}, std::vector<int64_t>{2, 3, 5}}) {
      at::Tensor x = at::randn(shape).requires_grad_(), w = at::randn({4, 5}).requires_grad_();
      at::Tensor b = bias ? at::randn({4}).requires_grad_() : at::Tensor();
      at::Tensor x2 = x.detach().clone().requires_grad_(), w2 = w.detach().clone().requires_grad_();
      at::Tensor b2 = bias ? b.detach().clone().requires_grad_() : at::Tensor();
      at::Tensor y = nn::linear(x, w, b), ref = at::linear(x2, w2, b2);
      at::Tensor g = at::randn_like(ref);
      EXPECT_TRUE(y.equal(ref));
      y.backward(g);
      ref.backward(g);
      EXPECT_TRUE(x.grad().allclose(x2.grad(), 0, 1e-6));
      EXPECT_TRUE(w.grad().allclose(w2.grad(), 0, 1e-6));
      if (bias) {
        EXPECT_TRUE(b.grad().allclose(b2.grad(), 0, 1e-6));
      }
    }
  }
}

TEST(Zero3, ATinyReduceBucketSettlesEachUnitBeforeTheNextAndStaysExact) {
  // reduce_bucket_size 1: every unit's reduce-scatter completes before the next is queued
  // (nothing piles up on the wire); the result is the same.
  test::TinyRun base(test::solo(), config(0, 12));
  base.train_to(5);
  test::run_ranks(2, [&](comm::Communicator& c) {
    test::TinyRun run(c.shared_from_this(), config(3, 6, kShardAll + R"(, "reduce_bucket_size": 1)"));
    run.train_to(5);
    EXPECT_LT(test::max_abs_diff(run.result().losses, base.result().losses), 1e-5);
  });
}

namespace {

// A shard store whose reads finish late on one rank and early on the other: the shards live
// in memory, and take() sleeps a rank-dependent, varying time first.
class SlowStore final : public zero::ShardStore {
 public:
  SlowStore(std::vector<at::Tensor> shards, int rank) : shards_(std::move(shards)), rank_(rank) {}
  void start_read(int u) override {
    if (pending_.insert(u).second) events_.push_back(u);
  }
  at::Tensor take(int u) override {
    EXPECT_EQ(pending_.count(u), 1u) << "take without a read of unit " << u;
    std::this_thread::sleep_for(std::chrono::milliseconds(rank_ == 1 ? 3 * (u % 4) : 0));
    pending_.erase(u);
    // Read ahead: something else happened between this read's start and its use.
    if (!(events_.size() && events_.back() == u)) ++taken_ahead_;
    events_.push_back(-1 - u);
    return shards_[size_t(u)];
  }
  void give_back(int) override {}
  std::set<int> pending_;
  std::vector<int> events_;  // u: read started, -1-u: taken
  int taken_ahead_ = 0;

 private:
  std::vector<at::Tensor> shards_;
  int rank_;
};

}  // namespace

TEST(Zero3, GathersFromADiskStoreKeepOneCollectiveOrderWhateverTheReadTimes) {
  // Six units gathered from a store whose reads take different times on the two ranks, with
  // another collective between uses (as the gradient reduce-scatters are): the gathers must be
  // issued at the same places of the collective order on both ranks, so the results are right
  // and Gloo never sees two different messages at one position.
  test::run_ranks(2, [](comm::Communicator& c) {
    auto comm = c.shared_from_this();
    std::vector<std::unique_ptr<zero::FlatUnit>> units;
    std::vector<at::Tensor> shards, expected;
    for (int u = 0; u < 6; ++u) {
      at::Tensor w = at::arange(1000 * (u + 1), at::kFloat) + float(u);
      expected.push_back(w.clone());
      zero::FlatUnitOptions o;
      o.pad_to = 128;
      o.persistent_grads = false;
      units.push_back(std::make_unique<zero::FlatUnit>(ds::str("u", u), zero::NamedParams{{"w", w.requires_grad_()}}, o));
      units.back()->shard(2, c.rank());
      shards.push_back(units.back()->shard_data().clone());
      units.back()->drop_shard_data();
    }
    SlowStore store(shards, c.rank());
    zero::CoordinatorOptions o;
    o.persistence_threshold = 0;
    o.max_reuse_distance = 0;
    o.prefetch_elements = 3000;  // about one unit ahead; the reads run further ahead
    o.store = &store;
    o.max_reads_ahead = 3;
    std::vector<zero::FlatUnit*> raw;
    for (auto& u : units) raw.push_back(u.get());
    zero::ParamCoordinator pc(raw, comm, o);
    for (int micro = 0; micro < 3; ++micro) {
      pc.begin_micro_batch();
      for (int u = 0; u < 6; ++u) {
        pc.pre_forward({u});
        EXPECT_TRUE(units[size_t(u)]->params().slice(0, 0, expected[size_t(u)].numel()).equal(expected[size_t(u)]))
            << "unit " << u << " micro-batch " << micro;
        at::Tensor between = at::full({int64_t(37 + u)}, float(c.rank() + 1));
        comm->all_reduce(between).wait();
        EXPECT_TRUE((between == 3.0f).all().item<bool>());
        pc.post_forward({u});
      }
      pc.end_micro_batch();
    }
    EXPECT_GT(pc.stats().prefetched, 0);
    EXPECT_GT(store.taken_ahead_, 0) << "no read ran ahead of its gather";
    EXPECT_TRUE(store.pending_.empty()) << "reads left unused after the micro-batch";
  });
}
