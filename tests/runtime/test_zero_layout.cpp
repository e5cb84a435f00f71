// The pure parts of the engine's plan: the precision policy chosen from the config, and what
// a rank keeps of a unit at each ZeRO stage (zero::plan_unit).
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "ds/common/cpu.h"
#include "ds/config/config.h"
#include "ds/zero/layout.h"
#include "ds/zero/precision.h"
#include "support/errors.h"

using namespace ds;
using zero::GradSync;
using zero::PrecisionPolicy;

namespace {

Config parsed(const std::string& extra) {
  return Config::parse(R"({"train_batch_size": 8)" + extra + "}", "test");
}

}  // namespace

TEST(PrecisionPolicy, FollowsTheConfigAndTheComputeDtype) {
  PrecisionPolicy fp32 = PrecisionPolicy::from_config(parsed(""));
  EXPECT_EQ(fp32.working, at::kFloat);
  EXPECT_EQ(fp32.param, at::kFloat);
  EXPECT_EQ(fp32.reduce, at::kFloat);
  EXPECT_TRUE(fp32.master_is_working());
  EXPECT_FALSE(fp32.rounds_working());

  PrecisionPolicy storage = PrecisionPolicy::from_config(parsed(R"(, "bf16": {"enabled": true})"), at::kFloat);
  EXPECT_EQ(storage.working, at::kFloat);  // the default: fp32 GEMMs on bf16 values
  EXPECT_EQ(storage.param, at::kBFloat16);
  EXPECT_EQ(storage.reduce, at::kBFloat16);
  EXPECT_FALSE(storage.master_is_working());
  EXPECT_TRUE(storage.rounds_working());
  EXPECT_EQ(storage.describe(), "bf16 (master fp32, working fp32, param bf16, reduce bf16, grad fp32)");

  PrecisionPolicy compute = PrecisionPolicy::from_config(parsed(R"(, "bf16": {"enabled": true})"), at::kBFloat16);
  EXPECT_EQ(compute.working, at::kBFloat16);
  EXPECT_EQ(compute.grad, at::kBFloat16);  // 2-byte gradient shards, as DeepSpeed keeps them
  EXPECT_EQ(PrecisionPolicy::from_config(parsed(R"(, "bf16": {"enabled": true}, "data_types": {"grad_accum_dtype": "fp32"})"),
                                         at::kBFloat16)
                .grad,
            at::kFloat);
  EXPECT_FALSE(compute.rounds_working());
  EXPECT_FALSE(compute.master_is_working());

  PrecisionPolicy fp16 = PrecisionPolicy::from_config(
      parsed(R"(, "fp16": {"enabled": true}, "communication_data_type": "fp32")"));
  EXPECT_EQ(fp16.param, at::kHalf);
  EXPECT_EQ(fp16.reduce, at::kFloat);
  EXPECT_TRUE(fp16.loss_scaling);
  EXPECT_EQ(fp16.name, "fp16");

  EXPECT_ERROR_HAS(parsed(R"(, "bf16": {"enabled": true}, "fp16": {"enabled": true})"),
                   "fp16 and bf16 cannot both be enabled");
  EXPECT_ERROR_HAS(PrecisionPolicy::from_config(parsed(""), at::kBFloat16),
                   "compute dtype bf16 needs bf16.enabled in the config");
  EXPECT_ERROR_HAS(PrecisionPolicy::from_config(parsed(R"(, "fp16": {"enabled": true})"), at::kBFloat16),
                   "compute dtype bf16 cannot hold the fp16 weights");
}

TEST(UnitLayout, EachStageKeepsWhatZeroSays) {
  const PrecisionPolicy fp32;
  // 1000 elements over 4 ranks, padded to 64 x 4 = 256: 1024, chunks of 256.
  zero::UnitLayout s0 = zero::plan_unit(1000, {0, 4, 1, fp32});
  EXPECT_EQ(s0.padded_numel, 1024);
  EXPECT_EQ(s0.own.offset, 0);
  EXPECT_EQ(s0.own.length, 1024);
  EXPECT_TRUE(s0.persistent_grads);
  EXPECT_FALSE(s0.grad_shard);
  EXPECT_EQ(s0.sync, GradSync::kAllReduce);
  EXPECT_FALSE(s0.gather_after_step);

  for (int stage : {1, 2, 3}) {
    zero::UnitLayout l = zero::plan_unit(1000, {stage, 4, 1, fp32});
    EXPECT_EQ(l.own.offset, 256) << stage;
    EXPECT_EQ(l.own.length, 256) << stage;
    EXPECT_TRUE(l.grad_shard) << stage;
    EXPECT_EQ(l.sync, GradSync::kReduceScatter) << stage;
    EXPECT_EQ(l.persistent_grads, stage == 1) << stage;
    EXPECT_EQ(l.reduce_every_micro_batch, stage >= 2) << stage;
    EXPECT_EQ(l.gather_after_step, stage < 3) << stage;
    EXPECT_EQ(l.shard_params, stage == 3) << stage;
    EXPECT_TRUE(l.master_is_weights) << stage;
    EXPECT_FALSE(l.writes_working_copy) << stage;
  }
  PrecisionPolicy bf16;
  bf16.param = bf16.reduce = at::kBFloat16;
  zero::UnitLayout mixed = zero::plan_unit(1000, {2, 4, 3, bf16});
  EXPECT_FALSE(mixed.master_is_weights);
  EXPECT_TRUE(mixed.writes_working_copy);
  EXPECT_EQ(mixed.own.offset, 768);
  // Every rank's chunk, over any world size, tiles the padded buffer exactly.
  for (int world = 1; world <= 7; ++world) {
    int64_t next = 0;
    for (int r = 0; r < world; ++r) {
      zero::UnitLayout l = zero::plan_unit(12345, {1, world, r, fp32});
      EXPECT_EQ(l.padded_numel % (64 * world), 0);
      EXPECT_EQ(l.own.offset, next);
      EXPECT_EQ(l.own.length, l.padded_numel / world);
      next += l.own.length;
    }
  }
  EXPECT_ERROR_HAS(zero::plan_unit(10, {4, 1, 0, fp32}), "ZeRO stage 4 does not exist");
  EXPECT_ERROR_HAS(zero::plan_unit(10, {1, 2, 2, fp32}), "data-parallel rank 2 of 2 does not exist");
}

namespace {

// Sets an environment variable for the scope of a test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST(PrecisionPolicy, TheComputeDtypeFollowsTheCpuUnlessForced) {
  const Config bf16 = parsed(R"(, "bf16": {"enabled": true})");
  const bool native = cpu_features().native_bf16();
  std::printf("this CPU: %s; bf16 computes natively: %s\n", cpu_features().describe().c_str(), native ? "yes" : "no");
  {
    ScopedEnv e("DS_COMPUTE_DTYPE", "auto");
    const zero::ComputeChoice c = zero::choose_compute(bf16);
    EXPECT_EQ(c.dtype, native ? at::kBFloat16 : at::kFloat) << c.reason;
    EXPECT_NE(c.reason.find(native ? "the CPU has native bf16 dot products" : "this CPU has no native bf16 dot products"),
              std::string::npos)
        << c.reason;
    EXPECT_EQ(PrecisionPolicy::from_config(bf16).working, c.dtype);
    EXPECT_EQ(zero::choose_compute(parsed("")).dtype, at::kFloat);
  }
  {
    ScopedEnv e("DS_COMPUTE_DTYPE", "bf16");
    const zero::ComputeChoice c = zero::choose_compute(bf16);
    EXPECT_EQ(c.dtype, at::kBFloat16);
    EXPECT_EQ(c.slow, !native) << c.reason;
    EXPECT_ERROR_HAS(zero::choose_compute(parsed("")), "DS_COMPUTE_DTYPE=bf16 needs bf16.enabled");
    EXPECT_ERROR_HAS(zero::choose_compute(parsed(R"(, "fp16": {"enabled": true})")), "the config trains fp16");
  }
  {
    ScopedEnv e("DS_COMPUTE_DTYPE", "fp32");
    EXPECT_EQ(zero::choose_compute(bf16).dtype, at::kFloat);
  }
  {
    ScopedEnv e("DS_COMPUTE_DTYPE", "fp8");
    EXPECT_ERROR_HAS(zero::choose_compute(bf16), "DS_COMPUTE_DTYPE=fp8: expected bf16, fp32 or auto");
  }
  // fp16 stays storage: LibTorch 1.13 has no fp16 CPU GEMM, whatever the CPU has.
  const zero::ComputeChoice f = zero::choose_compute(parsed(R"(, "fp16": {"enabled": true})"));
  EXPECT_EQ(f.dtype, at::kFloat);
  EXPECT_NE(f.reason.find("no fp16 GEMM on CPUs"), std::string::npos) << f.reason;
}
