// Tensor-parallel mappings, layers and cross-entropy on 2 and 4 ranks against the unsplit
// LibTorch computation: outputs, the input's gradient, and each rank's slice of the weight
// gradients (1e-5, relative to the largest value).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "ds/comm/communicator.h"
#include "ds/common/strings.h"
#include "ds/nn/checkpointing.h"
#include "ds/tp/layers.h"
#include "ds/tp/random.h"
#include "support/errors.h"
#include "support/ranks.h"

namespace ds::tp {
namespace {

Group self(comm::Communicator& world) { return world.shared_from_this(); }

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double scale = std::max(1.0, want.abs().max().item<double>());  // relative to the values' size
  EXPECT_LT((got - want).abs().max().item<double>() / scale, 1e-5) << what;
}

at::Tensor slice(const at::Tensor& full, int dim, comm::Communicator& w) {
  const int64_t n = full.size(dim) / w.size();
  return full.narrow(dim, w.rank() * n, n);
}

TEST(TensorParallel, MappingsAreTheirClosedForms) {
  for (int ranks : {2, 4}) {
    test::run_ranks(ranks, [](comm::Communicator& world) {
      const Group g = self(world);
      const int r = world.rank(), n = world.size();
      at::Tensor x = (at::arange(8, at::kFloat).reshape({2, 4}) + 10 * r).requires_grad_(true);
      // copy_to: identity forward; backward sums the ranks' gradients.
      at::Tensor y = copy_to(x, g);
      expect_close(y, x.detach(), "copy_to forward");
      (y * (r + 1)).sum().backward();
      expect_close(x.grad(), at::full({2, 4}, n * (n + 1) / 2.0), "copy_to backward");
      x.mutable_grad().reset();
      // reduce_from: sum forward; identity backward.
      y = reduce_from(x, g);
      expect_close(y, at::arange(8, at::kFloat).reshape({2, 4}) * n + 10.0 * n * (n - 1) / 2, "reduce_from forward");
      (y * 3).sum().backward();
      expect_close(x.grad(), at::full({2, 4}, 3.0), "reduce_from backward");
      x.mutable_grad().reset();
      // scatter_to / gather_from: a chunk of the last dimension and back.
      at::Tensor wide = at::arange(2 * 4 * n, at::kFloat).reshape({2, 4 * n}).requires_grad_(true);
      at::Tensor part = scatter_to(wide, g);
      expect_close(part, slice(wide.detach(), 1, world), "scatter_to forward");
      at::Tensor whole = gather_from(part, g);
      expect_close(whole, wide.detach(), "gather_from forward");
      (whole * at::arange(4 * n, at::kFloat)).sum().backward();  // every rank the same loss
      expect_close(wide.grad(), at::arange(4 * n, at::kFloat).expand({2, 4 * n}), "scatter/gather backward");
    });
  }
}

TEST(TensorParallel, ColumnThenRowParallelMlpIsTheWholeMlp) {
  test::run_ranks(2, [](comm::Communicator& world) {
    const Group g = self(world);
    torch::manual_seed(1);  // every rank: the same whole weights and input
    at::Tensor w1 = at::randn({8, 6}), b1 = at::randn({8}), w2 = at::randn({6, 8}), b2 = at::randn({6});
    at::Tensor x0 = at::randn({3, 5, 6});
    ColumnParallelLinearImpl fc(w1, b1, g);
    RowParallelLinearImpl proj(w2, b2, g);
    at::Tensor x = x0.clone().requires_grad_(true);
    at::Tensor y = proj.forward(at::gelu(fc.forward(x)));
    y.pow(2).sum().backward();
    // The whole MLP in plain LibTorch.
    at::Tensor W1 = w1.clone().requires_grad_(true), B1 = b1.clone().requires_grad_(true);
    at::Tensor W2 = w2.clone().requires_grad_(true), B2 = b2.clone().requires_grad_(true);
    at::Tensor X = x0.clone().requires_grad_(true);
    at::Tensor Y = at::linear(at::gelu(at::linear(X, W1, B1)), W2, B2);
    Y.pow(2).sum().backward();
    expect_close(y, Y.detach(), "output");
    expect_close(x.grad(), X.grad(), "input gradient");
    expect_close(fc.weight.grad(), slice(W1.grad(), 0, world), "column weight gradient");
    expect_close(fc.bias.grad(), slice(B1.grad(), 0, world), "column bias gradient");
    expect_close(proj.weight.grad(), slice(W2.grad(), 1, world), "row weight gradient");
    expect_close(proj.bias.grad(), B2.grad(), "row bias gradient (replicated)");
    // gather_output / a row layer taking the whole input.
    ColumnParallelLinearImpl gathered(w1, b1, g, /*gather_output=*/true);
    expect_close(gathered.forward(x0), at::linear(x0, w1, b1), "gathered column output");
    RowParallelLinearImpl scattered(w2, b2, g, /*input_is_parallel=*/false);
    at::Tensor h = at::randn({3, 8});
    expect_close(scattered.forward(h), at::linear(h, w2, b2), "row layer on the whole input");
    EXPECT_EQ(find_sharded_parameters(fc), (std::vector<Split>{{"weight", 0, 1}, {"bias", 0, 1}}));
  });
}

TEST(TensorParallel, VocabParallelEmbeddingAndCrossEntropyAreTheWholeOnes) {
  for (int ranks : {2, 4}) {
    test::run_ranks(ranks, [](comm::Communicator& world) {
      const Group g = self(world);
      torch::manual_seed(2);
      const int64_t V = 16, d = 5;
      at::Tensor table = at::randn({V, d});
      at::Tensor tokens = at::randint(V, {3, 7}, at::kLong);
      VocabParallelEmbeddingImpl emb(table, g);
      at::Tensor e = emb.forward(tokens);
      expect_close(e, at::embedding(table, tokens), "embedding");
      e.pow(2).sum().backward();
      at::Tensor T = table.clone().requires_grad_(true);
      at::embedding(T, tokens).pow(2).sum().backward();
      expect_close(emb.weight.grad(), slice(T.grad(), 0, world), "embedding gradient");
      // Cross-entropy of the sliced logits, targets -1 ignored.
      at::Tensor logits0 = at::randn({3, 7, V}) * 3;
      at::Tensor targets = at::randint(V, {3, 7}, at::kLong);
      targets[0][2] = -1, targets[2][6] = -1;
      at::Tensor mine = slice(logits0, 2, world).clone().requires_grad_(true);
      at::Tensor loss = vocab_parallel_cross_entropy(mine, targets, g);
      (loss * 2).backward();
      at::Tensor L = logits0.clone().requires_grad_(true);
      at::Tensor want = at::cross_entropy_loss(L.reshape({-1, V}), targets.reshape({-1}), {}, at::Reduction::Mean, -1);
      (want * 2).backward();
      EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-5);
      expect_close(mine.grad(), slice(L.grad(), 2, world), "logits gradient");
    });
  }
}

TEST(TensorParallel, ASizeThatDoesNotDivideIsNamed) {
  test::run_ranks(4, [](comm::Communicator& world) {
    EXPECT_ERROR_HAS(ColumnParallelLinearImpl(at::zeros({6, 4}), at::Tensor(), self(world)),
                     "tensor_parallel.autotp_size 4 does not divide the output width 6");
    EXPECT_ERROR_HAS(VocabParallelEmbeddingImpl(at::zeros({30, 4}), self(world)),
                     "tensor_parallel.autotp_size 4 does not divide the vocabulary 30");
  });
}

// The same draw on every rank: an all-reduce of (x, -x) with max gives (max, -min).
bool same_everywhere(const at::Tensor& x, const Group& g) {
  at::Tensor both = at::cat({x, -x}).contiguous();
  g->all_reduce(both, comm::ReduceOp::Max).wait();
  return both.narrow(0, 0, x.numel()).equal(-both.narrow(0, x.numel(), x.numel()));
}

TEST(TensorParallel, RngStreamsAgreeOutsideAForkAndDifferInside) {
  test::run_ranks(2, [](comm::Communicator& world) {
    const Group g = self(world);
    torch::manual_seed(5);
    const at::Tensor first = at::rand({6}), second = at::rand({6});  // the default stream alone
    seed_rng(5, g);
    at::Tensor a = at::rand({6});
    at::Tensor inside, again;
    {
      ForkRng fork;
      inside = at::rand({6});
    }
    at::Tensor b = at::rand({6});
    {
      ForkRng fork;
      again = at::rand({6});
    }
    EXPECT_TRUE(a.equal(first) && b.equal(second)) << "a fork must not move the default stream";
    EXPECT_TRUE(same_everywhere(a, g) && same_everywhere(b, g));
    EXPECT_FALSE(same_everywhere(inside, g)) << "each tensor rank has its own stream";
    EXPECT_FALSE(again.equal(inside)) << "the stream continues from one fork to the next";
    // A checkpointed dropout inside a fork repeats its mask in the recompute.
    at::Tensor w0 = at::randn({6, 6}), x0 = at::randn({3, 6});
    auto run = [&](bool checkpointed) {
      seed_rng(9, g);
      at::Tensor w = w0.clone().requires_grad_(true), x = x0.clone().requires_grad_(true);
      auto f = [&](const std::vector<at::Tensor>& in) {
        ForkRng fork;
        return at::dropout(in[0].matmul(w), 0.5, true).matmul(w);
      };
      at::Tensor y = checkpointed ? checkpointing::checkpoint(f, {x}) : f({x});
      { ForkRng fork; at::rand({2}); }  // the stream moves on before the backward
      y.pow(2).sum().backward();
      return std::vector<at::Tensor>{y.detach(), x.grad(), w.grad()};
    };
    const auto plain = run(false), ckpt = run(true);
    for (size_t i = 0; i < plain.size(); ++i) expect_close(ckpt[i], plain[i], ds::str("checkpointed tensor ", i));
  });
}

}  // namespace
}  // namespace ds::tp
