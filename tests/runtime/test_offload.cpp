// ZeRO-Infinity's optimizer swapping (offload_optimizer.device "nvme"): the states (and, under
// bf16, the fp32 masters) live in a file per rank and the step walks sub-groups through three
// rotating buffers. Training is bit for bit the same as with the states in memory, at stages
// 1-3, fp32 and bf16; checkpoints move between swapped and in-memory runs; GatheredParameters
// writes swapped masters; the files go away with the engine; a bad nvme_path fails at once
// with the path.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "aio/aio_test_support.h"
#include "ds/aio/file.h"
#include "ds/offload/optimizer_swapper.h"
#include "ds/offload/param_swapper.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/ranks.h"
#include "train_util.h"

using namespace ds;
using ds::aio::test::TestMount;

namespace {

const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01}})";

// sub_group_size 4096: the tiny GPT's units (up to ~13k elements) span several sub-groups
// and sub-groups span units.
std::string config(int stage, const std::string& precision, const std::string& nvme_path, int world = 2) {
  std::string offload = nvme_path.empty() ? "" : ds::str(R"(, "sub_group_size": 4096, "offload_optimizer": {"device": "nvme", "nvme_path": ")", nvme_path, R"("})");
  return ds::str(R"({"train_batch_size": 12, "train_micro_batch_size_per_gpu": )", 12 / world, R"(, "optimizer": )", kAdamW,
                 R"(, "gradient_clipping": 0.5)", precision, R"(, "zero_optimization": {"stage": )", stage,
                 stage == 3 ? R"(, "stage3_param_persistence_threshold": 0)" : "", offload, "}}");
}

std::vector<std::string> swap_dirs(const std::string& parent) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(parent))
    if (e.path().filename().string().rfind("ds-swap-rank", 0) == 0) out.push_back(e.path().string());
  return out;
}

}  // namespace

TEST(NvmeOffload, OptimizerStatesOnDiskTrainBitForBitLikeInMemory) {
  test::TempDir dir("ds_swap", "/tmp");
  for (int stage : {1, 2, 3}) {
    for (std::string precision : {"", R"(, "bf16": {"enabled": true})"}) {
      test::run_ranks(2, [&](comm::Communicator& c) {
        auto base = test::train_tiny(c.shared_from_this(), config(stage, precision, ""), 10);
        test::TinyRun run(c.shared_from_this(), config(stage, precision, dir.path()));
        const offload::OptimizerSwapper* swap = run.engine().swapper();
        ASSERT_NE(swap, nullptr);
        EXPECT_GT(swap->sub_groups(), 2u);
        EXPECT_TRUE(std::filesystem::exists(swap->path()));
        // In memory: the I/O buffers only; on disk: m and v (and the bf16 run's masters).
        auto mem = run.engine().memory_breakdown();
        EXPECT_EQ(mem.optimizer_state, swap->buffer_bytes());
        EXPECT_EQ(mem.masters, 0);
        EXPECT_GE(mem.on_disk, int64_t(4 * (precision.empty() ? 2 : 3)) * run.engine().parameter_count() / 2);
        run.train_to(10);
        auto r = run.result();
        const std::string what = ds::str("stage ", stage, precision.empty() ? " fp32" : " bf16");
        EXPECT_EQ(r.losses, base.losses) << what;
        EXPECT_TRUE(r.weights.equal(base.weights)) << what << ": " << (r.weights - base.weights).abs().max().item<double>();
        EXPECT_GT(swap->stats().bytes_read, 0u);
        EXPECT_EQ(swap->stats().bytes_read, swap->stats().bytes_written);
      });
      EXPECT_TRUE(swap_dirs(dir.path()).empty()) << "the swap files outlived their engines";
    }
  }
}

TEST(NvmeOffload, StageThreeWeightShardsOnDiskTrainBitForBit) {
  // offload_param nvme (with the optimizer states on disk too): every unit's bf16 shard is
  // read from the file for its gathers and written back after each step.
  test::TempDir dir("ds_swap", "/tmp");
  const std::string bf16 = R"(, "bf16": {"enabled": true})";
  test::run_ranks(2, [&](comm::Communicator& c) {
    auto base = test::train_tiny(c.shared_from_this(), config(3, bf16, ""), 10);
    std::string cfg = config(3, bf16, dir.path());
    cfg.insert(cfg.rfind("}}"), ds::str(R"(, "offload_param": {"device": "nvme", "nvme_path": ")", dir.path(), R"("})"));
    test::TinyRun run(c.shared_from_this(), cfg);
    auto mem = run.engine().memory_breakdown();
    EXPECT_EQ(mem.params, 0);  // between steps nothing of the weights is in memory
    run.train_to(10);
    // Every gather read its shard from the file (asynchronously, through ds::aio); after the
    // first micro-batch recorded the trace, reads were started ahead of use; every step wrote
    // each unit's shard back once.
    const offload::ParamSwapper* ps = run.engine().param_swapper();
    ASSERT_NE(ps, nullptr);
    const zero::ParamCoordinator& pc = *run.engine().coordinator();
    EXPECT_EQ(ps->stats().reads, pc.stats().gathers);
    EXPECT_GT(pc.stats().prefetched, 0);
    EXPECT_EQ(ps->stats().writes, int64_t(run.engine().unit_count()) * (1 + 10));
    auto r = run.result();
    EXPECT_EQ(r.losses, base.losses);
    EXPECT_TRUE(r.weights.equal(base.weights)) << (r.weights - base.weights).abs().max().item<double>();
  });
  EXPECT_TRUE(swap_dirs(dir.path()).empty());
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) ADD_FAILURE() << "left behind: " << e.path();
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), R"({"train_batch_size": 12, "optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/tmp"}}})"),
                   "needs bf16 or fp16");
}

TEST(NvmeOffload, CheckpointsMoveBetweenSwappedAndInMemoryRuns) {
  test::TempDir swap("ds_swap", "/tmp"), ck("ds_swap_ck");
  const std::string bf16 = R"(, "bf16": {"enabled": true})";
  test::run_ranks(2, [&](comm::Communicator& c) {
    auto whole = test::train_tiny(c.shared_from_this(), config(3, bf16, ""), 10);
    {
      test::TinyRun first(c.shared_from_this(), config(3, bf16, swap.path()));
      first.train_to(5);
      first.engine().save_checkpoint(ck.path());
    }
    for (bool swapped : {false, true}) {
      test::TinyRun second(c.shared_from_this(), config(3, bf16, swapped ? swap.path() : ""));
      second.engine().load_checkpoint(ck.path());
      second.train_to(10);
      auto r = second.result();
      EXPECT_EQ(r.losses, std::vector<double>(whole.losses.begin() + 5, whole.losses.end())) << swapped;
      EXPECT_TRUE(r.weights.equal(whole.weights)) << swapped;
    }
  });
}

TEST(NvmeOffload, GatheredParametersWritesSwappedMasters) {
  test::TempDir swap("ds_swap", "/tmp");
  const std::string bf16 = R"(, "bf16": {"enabled": true})";
  test::run_ranks(2, [&](comm::Communicator& c) {
    std::vector<test::TrainResult> results;
    for (bool swapped : {false, true}) {
      test::TinyRun run(c.shared_from_this(), config(2, bf16, swapped ? swap.path() : ""));
      run.train_to(2);
      at::Tensor w = run.model()->named_parameters()["blocks.0.fc.weight"];
      run.engine().gathered_parameters({"blocks.0.fc.weight"}, [&] { w.mul_(0.5); }, 0);
      run.train_to(5);
      results.push_back(run.result());
    }
    EXPECT_EQ(results[0].losses, results[1].losses);
    EXPECT_TRUE(results[0].weights.equal(results[1].weights));
  });
}

namespace {

// Fills the filesystem holding `dir` until a write fails with ENOSPC.
void fill_disk(const std::string& dir) {
  std::FILE* f = std::fopen((dir + "/filler").c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::vector<char> chunk(64 << 10, 'x');
  while (std::fwrite(chunk.data(), 1, chunk.size(), f) == chunk.size() && std::fflush(f) == 0) {
  }
  std::fclose(f);
}

}  // namespace

TEST(NvmeOffload, ABadSwapPathFailsBeforeTrainingNamingIt) {
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), config(2, "", "/nonexistent/swap", 1)), "/nonexistent/swap");
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), R"({"train_batch_size": 12, "optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 0, "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}}})"),
                   "needs ZeRO stage 1, 2 or 3");
  test::TempDir dir("ds_swap_fs");
  {
    TestMount ramfs;  // no O_DIRECT
    if (auto why = ramfs.mount_virtual(dir.path(), "ramfs", "")) GTEST_SKIP() << *why;
    EXPECT_ERROR_HAS(test::TinyRun(test::solo(), config(2, "", ramfs.path(), 1)), ramfs.path());
  }
  TestMount ext4;  // full: the error says how much is free and how much is needed
  if (auto why = ext4.mount_ext4_image(dir.path(), 8)) GTEST_SKIP() << *why;
  fill_disk(ext4.path());
  EXPECT_ERROR_HAS(test::TinyRun(test::solo(), config(2, "", ext4.path(), 1)), "ZeRO-Infinity needs");
}

TEST(NvmeOffload, ADiskThatFillsUpMidRunFailsTheSaveAndTheLastCheckpointStillLoads) {
  test::TempDir dir("ds_swap_fs");
  TestMount ext4;
  if (auto why = ext4.mount_ext4_image(dir.path(), 32)) GTEST_SKIP() << *why;
  const std::string cfg = config(2, "", ext4.path(), 1), ck = ext4.path() + "/ck";
  {
    test::TinyRun run(test::solo(), cfg);
    run.train_to(2);
    run.engine().save_checkpoint(ck);
    fill_disk(ext4.path());
    run.train_to(3);  // the swap file's space was reserved at start: training goes on
    EXPECT_ERROR_HAS(run.engine().save_checkpoint(ck), "No space left on device");
  }
  std::filesystem::remove(ext4.path() + "/filler");
  test::TinyRun again(test::solo(), cfg);
  EXPECT_EQ(again.engine().load_checkpoint(ck).global_step, 2);
}

TEST(NvmeOffload, ASwapFileChangedBehindTheRunIsNamed) {
  // Every sub-group is checksummed as it is written and checked as it is read back: bytes
  // changed in the file (another process, a failing disk) stop the step with the file and the
  // sub-group, instead of training on garbage.
  test::TempDir dir("ds_swap", "/tmp");
  offload::SwapOptions o;
  o.nvme_path = dir.path();
  o.sub_group_size = 4096;
  auto zeros = [](int64_t n) { return std::vector<at::Tensor>{at::zeros({n}), at::zeros({n})}; };
  offload::OptimizerSwapper swap(o, {10000}, 2, /*swap_master=*/false, zeros);
  swap.for_each([](const offload::SwapSegment&, at::Tensor, std::vector<at::Tensor>& st) { st[0].fill_(1); });
  swap.for_each([](const offload::SwapSegment&, at::Tensor, std::vector<at::Tensor>& st) {
    EXPECT_TRUE((st[0] == 1).all().item<bool>());
  });
  const int fd = ::open(swap.path().c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  const uint64_t offset = 2 * 4096 * 4 + 100;  // inside the second sub-group's first state
  ASSERT_EQ(::pwrite(fd, "garbage!", 8, off_t(offset)), 8);
  ::close(fd);
  EXPECT_ERROR_HAS(swap.for_each([](const offload::SwapSegment&, at::Tensor, std::vector<at::Tensor>&) {}),
                   "changed on disk since it was written: sub-group 1");
}
