// The pipeline executor on real processes: a stack of layers split over 1, 2 and 4 stages,
// every schedule, must leave in each stage's layers the gradients a plain LibTorch loop over
// the whole stack computes for the same micro-batches, and return its mean loss everywhere.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "ds/comm/topology.h"
#include "ds/common/error.h"
#include "ds/pipe/executor.h"
#include "ds/pipe/link.h"
#include "ds/pipe/partition.h"
#include "support/errors.h"
#include "support/ranks.h"

namespace ds::pipe {
namespace {

constexpr int kLayers = 8, kWidth = 12, kRows = 3;

// Layer i: the same weights in every process.
std::vector<torch::nn::Linear> make_layers() {
  torch::manual_seed(1234);
  std::vector<torch::nn::Linear> layers;
  for (int i = 0; i < kLayers; ++i) layers.emplace_back(kWidth, kWidth);
  return layers;
}

at::Tensor layer_forward(torch::nn::Linear& l, const at::Tensor& x) { return at::tanh(l->forward(x)); }

MicroBatch micro_batch(int i) {
  at::Tensor x = at::sin(at::arange(kRows * kWidth, at::kFloat).reshape({kRows, kWidth}) * (0.1 + 0.37 * i));
  at::Tensor y = at::cos(at::arange(kRows * kWidth, at::kFloat).reshape({kRows, kWidth}) * (0.05 + 0.11 * i));
  return {x, y};
}

at::Tensor mse(const at::Tensor& out, const at::Tensor& y) { return (out - y).pow(2).mean(); }

struct Reference {
  double loss = 0;
  std::vector<at::Tensor> weight_grads, bias_grads;
};

// The plain loop: every micro-batch through all layers, loss / m, backward, gradients summed.
Reference reference(int micro_batches) {
  auto layers = make_layers();
  Reference r;
  for (int i = 0; i < micro_batches; ++i) {
    MicroBatch b = micro_batch(i);
    at::Tensor x = b.inputs;
    for (auto& l : layers) x = layer_forward(l, x);
    at::Tensor loss = mse(x, b.labels);
    r.loss += loss.item<double>() / micro_batches;
    (loss / double(micro_batches)).backward();
  }
  for (auto& l : layers) r.weight_grads.push_back(l->weight.grad()), r.bias_grads.push_back(l->bias.grad());
  return r;
}

// One batch of `spec` on this stage; checks its layers' gradients and the loss against the plain loop.
void check_against_reference(comm::Communicator& pipe, const ScheduleSpec& spec) {
  const std::string what = ds::str(kind_name(spec.kind), " p=", spec.stages, " m=", spec.micro_batches, " v=",
                                   spec.virtual_stages, " stage ", pipe.rank());
  auto layers = make_layers();
  const int virtual_stages = spec.stages * spec.virtual_stages;
  const std::vector<int> bounds = partition_uniform(kLayers, virtual_stages);
  auto range = [&](int chunk) {
    const int v = chunk * spec.stages + pipe.rank();
    return std::make_pair(bounds[size_t(v)], bounds[size_t(v + 1)]);
  };
  StageModel model{[&](int chunk, const at::Tensor& x) {
                     at::Tensor h = x;
                     for (auto [i, end] = range(chunk); i < end; ++i) h = layer_forward(layers[size_t(i)], h);
                     return h;
                   },
                   mse};
  int tied = 0, reduced = 0, stepped = 0;
  Executor ex(spec, pipe.shared_from_this());
  BatchHooks hooks;
  hooks.reduce_tied_grads = [&] { ++tied; };
  hooks.reduce_grads = [&] { ++reduced; };
  hooks.optimizer_step = [&] { ++stepped; };
  const double loss = ex.run(model, micro_batch, hooks);
  const Reference ref = reference(spec.micro_batches);
  EXPECT_NEAR(loss, ref.loss, 1e-6) << what;
  EXPECT_EQ(tied + reduced + stepped, 3) << what;
  for (int chunk = 0; chunk < spec.virtual_stages; ++chunk)
    for (auto [i, end] = range(chunk); i < end; ++i) {
      const auto& l = layers[size_t(i)];
      ASSERT_TRUE(l->weight.grad().defined()) << what << ": layer " << i << " got no gradient";
      EXPECT_TRUE(at::allclose(l->weight.grad(), ref.weight_grads[size_t(i)], 1e-5, 1e-7)) << what << ": layer " << i;
      EXPECT_TRUE(at::allclose(l->bias.grad(), ref.bias_grads[size_t(i)], 1e-5, 1e-7)) << what << ": layer " << i;
    }
  // Layers of other stages are untouched.
  for (int i = 0; i < kLayers; ++i) {
    bool mine = false;
    for (int chunk = 0; chunk < spec.virtual_stages; ++chunk) mine |= i >= range(chunk).first && i < range(chunk).second;
    if (!mine) {
      EXPECT_FALSE(layers[size_t(i)]->weight.grad().defined()) << what << ": layer " << i;
    }
  }
}

void every_schedule(comm::Communicator& pipe) {
  const int p = pipe.size();
  for (int m : {1, 3, 4, 8}) {
    check_against_reference(pipe, {Kind::kGPipe, p, m});
    check_against_reference(pipe, {Kind::kOneFOneB, p, m});
    if (m % p == 0 && 2 * p <= kLayers) check_against_reference(pipe, {Kind::kInterleaved, p, m, 2});
  }
}

TEST(PipeExecutor, OneStageEqualsThePlainLoop) {
  test::run_ranks(1, every_schedule);
}

TEST(PipeExecutor, TwoStagesEqualThePlainLoop) {
  test::run_ranks(2, every_schedule);
}

TEST(PipeExecutor, FourStagesEqualThePlainLoop) {
  test::run_ranks(4, every_schedule);
}

TEST(PipeExecutor, InferenceReturnsTheMeanLossWithoutGradients) {
  test::run_ranks(2, [](comm::Communicator& pipe) {
    auto layers = make_layers();
    const std::vector<int> b = partition_uniform(kLayers, 2);
    StageModel model{[&](int, const at::Tensor& x) {
                       at::Tensor h = x;
                       for (int i = b[size_t(pipe.rank())]; i < b[size_t(pipe.rank() + 1)]; ++i) h = layer_forward(layers[size_t(i)], h);
                       return h;
                     },
                     mse};
    Executor ex({Kind::kInference, 2, 5}, pipe.shared_from_this());
    EXPECT_NEAR(ex.run(model, micro_batch), reference(5).loss, 1e-6);
    for (auto& l : layers) EXPECT_FALSE(l->weight.grad().defined());
  });
}

TEST(PipeLink, ShapesAndDtypesNeedNoAgreementAndKeepTheirOrder) {
  test::run_ranks(2, [](comm::Communicator& c) {
    StageLink link(c.shared_from_this());
    auto values = [](std::vector<int64_t> shape) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      return at::sin(at::arange(n, at::kFloat)).reshape(shape);
    };
    const std::vector<at::Tensor> msgs = {values({3, 4}), at::arange(7, at::kLong), values({2, 1, 5}).to(at::kBFloat16),
                                          at::full({}, 2.5, at::kDouble), at::empty({0, 3}), values({4, 3}).t()};
    if (c.rank() == 0) {
      for (const auto& m : msgs) link.send(m, 1, 5);
      for (const auto& m : msgs) link.send(m * 2, 1, 6);  // another tag: its own order
      link.wait_sends();
      EXPECT_TRUE(link.recv(1, 5).equal(at::ones({2, 2})));
    } else {
      for (const auto& m : msgs) {
        at::Tensor got = link.recv(0, 6);  // tag 6 first: tags do not block each other
        EXPECT_EQ(got.sizes(), m.sizes());
        EXPECT_EQ(got.scalar_type(), m.scalar_type());
        EXPECT_TRUE(got.equal(m * 2));
      }
      for (const auto& m : msgs) EXPECT_TRUE(link.recv(0, 5).equal(m));
      link.send(at::ones({2, 2}), 0, 5);
      link.wait_sends();
    }
  });
}

// Split over the tensor group (pipeline.pipe_partitioned): each tensor rank sends only its
// chunk and the receiving group gathers the whole, for sizes the group does not divide (7, 1
// element, empty) and bf16; a split message costs a header and 1/t of the data; a tensor that
// differs over the sending group is one error naming the key, before anything is sent.
TEST(PipeLink, MessagesSplitOverTheTensorGroupArriveWhole) {
  test::run_ranks(4, [](comm::Communicator& c) {
    auto g = comm::ParallelGroups::create(c.shared_from_this(), comm::Topology::for_world(4, 2, 2));
    StageLink link(g.pipe, g.tensor);
    const std::vector<at::Tensor> msgs = {at::sin(at::arange(1000, at::kFloat)).reshape({10, 100}), at::arange(7, at::kLong),
                                          at::ones({1}), at::empty({0, 3}),
                                          at::cos(at::arange(30, at::kFloat)).to(at::kBFloat16).reshape({5, 6})};
    const char* key = "pipeline.pipe_partitioned";
    if (g.coord.pipe == 0) {
      const int64_t before = g.pipe->logger().total("send").message_bytes;
      link.send(msgs[0], 1, 3, key);
      link.wait_sends();
      EXPECT_EQ(g.pipe->logger().total("send").message_bytes - before, 10 * 8 + 500 * 4) << "a header and half the floats";
      for (size_t i = 1; i < msgs.size(); ++i) link.send(msgs[i], 1, 3, key);
      link.wait_sends();
      StageLink fresh(g.pipe, g.tensor);  // a new link checks its first split message again
      EXPECT_ERROR_HAS(fresh.send(msgs[0] + g.coord.tensor, 1, 4, key),
                       "pipeline.pipe_partitioned: stage 0 sends stage 1 (tag 4) a tensor that differs between its "
                       "tensor-parallel ranks");
    } else {
      for (const auto& m : msgs) {
        const at::Tensor got = link.recv(0, 3, /*split=*/true);
        EXPECT_EQ(got.sizes(), m.sizes());
        EXPECT_EQ(got.scalar_type(), m.scalar_type());
        EXPECT_TRUE(got.equal(m)) << m.sizes();
      }
    }
  });
}

TEST(PipeLink, AMissingPeerIsAnErrorNotAHang) {
  test::RankRun run;
  run.comm_timeout = std::chrono::seconds(2);
  test::run_ranks(
      2,
      [](comm::Communicator& c) {
        StageLink link(c.shared_from_this());
        if (c.rank() == 1) {  // rank 0 never sends
          EXPECT_ERROR_HAS(link.recv(0, 3), "recv");
        }
      },
      run);
  test::run_ranks(1, [](comm::Communicator& c) {
    StageLink link(c.shared_from_this());
    EXPECT_ERROR_HAS(link.recv(0, 1), "waits for a message from itself (tag 1) that it has not sent");
    EXPECT_ERROR_HAS(link.send(at::ones({1}), 0, 1 << 23), "tag 8388608 is outside");
  });
}

TEST(PipeExecutor, AStageCountThatIsNotThePipeGroupIsRefused) {
  test::run_ranks(2, [](comm::Communicator& c) {
    EXPECT_ERROR_HAS(Executor({Kind::kOneFOneB, 4, 4}, c.shared_from_this()), "4 stages but the pipe group has 2 ranks");
  });
}

}  // namespace
}  // namespace ds::pipe
