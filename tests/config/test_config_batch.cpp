// The batch identity train = micro x accumulation x data-parallel, every combination of given keys,
// "auto", the parallel layout, and the failures with their arithmetic.
#include <nlohmann/json.hpp>

#include "config_test_util.h"

namespace ds {
namespace {

using config_test::error_of;
using ::testing::HasSubstr;

struct Batch {
  int64_t train, micro, accumulation;
};

Batch resolved(const std::string& json, int64_t world_size) {
  Config c = Config::parse(json);
  c.resolve(world_size);
  return {c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps};
}

void expect_batch(const std::string& json, int64_t world, Batch want) {
  Batch got = resolved(json, world);
  EXPECT_EQ(got.train, want.train) << json << " world " << world;
  EXPECT_EQ(got.micro, want.micro) << json << " world " << world;
  EXPECT_EQ(got.accumulation, want.accumulation) << json << " world " << world;
}

TEST(ConfigBatch, AllThreeGivenAndConsistentAreKept) {
  expect_batch(
      R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})", 4,
      {32, 4, 2});
}

TEST(ConfigBatch, AllThreeInconsistentShowsTheArithmetic) {
  EXPECT_EQ(
      error_of(
          R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})",
          2),
      "ds_config.json: train_batch_size: train_batch_size 32 != train_micro_batch_size_per_gpu 4 x "
      "gradient_accumulation_steps 2 x data-parallel size 2 (world size 2) = 16");
}

TEST(ConfigBatch, AnyTwoKeysImplyTheThird) {
  expect_batch(R"({"train_batch_size": 48, "train_micro_batch_size_per_gpu": 4})", 3, {48, 4, 4});
  expect_batch(R"({"train_batch_size": 48, "gradient_accumulation_steps": 4})", 3, {48, 4, 4});
  expect_batch(R"({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 4})", 3, {48, 4, 4});
}

TEST(ConfigBatch, OneKeyMeansAccumulationOne) {
  expect_batch(R"({"train_batch_size": 12})", 3, {12, 4, 1});
  expect_batch(R"({"train_micro_batch_size_per_gpu": 5})", 3, {15, 5, 1});
}

TEST(ConfigBatch, IdentityHoldsForEveryCombinationAndWorldSize) {
  for (int64_t world = 1; world <= 4; ++world) {
    for (int64_t micro : {1, 2, 3}) {
      for (int64_t accumulation : {1, 2, 5}) {
        int64_t train = micro * accumulation * world;
        std::string t = str("\"train_batch_size\": ", train),
                    m = str("\"train_micro_batch_size_per_gpu\": ", micro),
                    a = str("\"gradient_accumulation_steps\": ", accumulation);
        for (const std::string& body : {t + ", " + m + ", " + a, t + ", " + m, t + ", " + a, m + ", " + a}) {
          expect_batch("{" + body + "}", world, {train, micro, accumulation});
        }
      }
    }
  }
}

TEST(ConfigBatch, UndividableTrainBatchSaysWhichKeyCannotBeDerived) {
  EXPECT_EQ(error_of(R"({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4})", 2),
            "ds_config.json: train_batch_size: train_batch_size 30 is not a multiple of "
            "train_micro_batch_size_per_gpu 4 x "
            "data-parallel size 2 (world size 2) = 8, so gradient_accumulation_steps cannot be derived");
  EXPECT_THAT(
      error_of(R"({"train_batch_size": 30, "gradient_accumulation_steps": 4})", 1),
      HasSubstr(
          "is not a multiple of gradient_accumulation_steps 4 x data-parallel size 1 (world size 1) = 4, so "
          "train_micro_batch_size_per_gpu cannot be derived"));
  EXPECT_THAT(error_of(R"({"train_batch_size": 10})", 4),
              HasSubstr("train_batch_size 10 is not a multiple of data-parallel size 4 (world size 4) = 4"));
  // Smaller than one micro batch per rank.
  EXPECT_THAT(error_of(R"({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4})", 2),
              HasSubstr("train_batch_size 4 is not a multiple of"));
}

TEST(ConfigBatch, NothingToDeriveFromIsAnError) {
  EXPECT_THAT(error_of("{}", 1), HasSubstr("train_batch_size: cannot derive the batch size"));
  EXPECT_THAT(error_of(R"({"gradient_accumulation_steps": 4})", 1),
              HasSubstr("cannot derive the batch size"));
  EXPECT_THAT(error_of(R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"})", 1),
              HasSubstr("--micro-batch"));
}

TEST(ConfigBatch, AutoIsDerivedLikeAnAbsentKey) {
  expect_batch(
      R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": "auto"})",
      4, {8, 2, 1});
  expect_batch(
      R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 2})",
      4, {64, 8, 2});
}

TEST(ConfigBatch, ResolveOptionsFillAutoKeysButNeverOverrideGivenOnes) {
  Config c = Config::parse(R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                               "gradient_accumulation_steps": "auto"})");
  ResolveOptions options;
  options.world_size = 2;
  options.train_micro_batch_size_per_gpu = 3;
  options.gradient_accumulation_steps = 4;
  c.resolve(options);
  EXPECT_EQ(c.train_batch_size, 24);
  EXPECT_EQ(c.train_micro_batch_size_per_gpu, 3);
  EXPECT_EQ(c.gradient_accumulation_steps, 4);

  Config given = Config::parse(R"({"train_micro_batch_size_per_gpu": 5})");
  given.resolve(options);  // the hints would say micro 3, accumulation 4; the file says micro 5
  EXPECT_EQ(given.train_micro_batch_size_per_gpu, 5);
  EXPECT_EQ(given.gradient_accumulation_steps, 4);
  EXPECT_EQ(given.train_batch_size, 40);
}

TEST(ConfigBatch, DataParallelSizeExcludesPipelineAndTensorRanks) {
  Config c = Config::parse(R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3,
                               "pipeline": {"stages": 2}, "tensor_parallel": {"autotp_size": 2}})");
  c.resolve(8);
  EXPECT_EQ(c.parallel.world_size, 8);
  EXPECT_EQ(c.parallel.pipeline_stages, 2);
  EXPECT_EQ(c.parallel.tensor_parallel_size, 2);
  EXPECT_EQ(c.parallel.data_parallel_size, 2);
  EXPECT_EQ(c.train_batch_size, 12);
  EXPECT_TRUE(c.resolved());

  EXPECT_EQ(
      error_of(
          R"({"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3,
                         "pipeline": {"stages": 2}, "tensor_parallel": {"autotp_size": 2}})",
          8),
      "ds_config.json: train_batch_size: train_batch_size 16 != train_micro_batch_size_per_gpu 2 x "
      "gradient_accumulation_steps 3 x data-parallel size 2 (world size 8 / (pipeline stages 2 x "
      "tensor-parallel "
      "size 2)) = 12");
}

TEST(ConfigBatch, NestedTpSizeIsTheTensorParallelSize) {
  Config c = Config::parse(R"({"train_batch_size": 8, "tensor_parallel": {"tp": {"tp_size": 2}}})");
  c.resolve(4);
  EXPECT_EQ(c.parallel.tensor_parallel_size, 2);
  EXPECT_EQ(c.train_micro_batch_size_per_gpu, 4);
  EXPECT_THAT(error_of(R"({"tensor_parallel": {"autotp_size": 2, "tp": {"tp_size": 4}}})"),
              HasSubstr("tensor_parallel.tp.tp_size: 4 conflicts with autotp_size 2"));
}

TEST(ConfigBatch, WorldSizeMustSplitIntoPipelineTimesTensorRanks) {
  EXPECT_EQ(error_of(R"({"train_batch_size": 8, "pipeline": {"stages": 4}})", 6),
            "ds_config.json: pipeline.stages: world size 6 is not divisible by pipeline stages 4 x "
            "tensor-parallel size 1 = 4");
  EXPECT_THAT(error_of(R"({"train_batch_size": 8, "tensor_parallel": {"autotp_size": 4}})", 2),
              HasSubstr("tensor_parallel.autotp_size: world size 2 is not divisible by"));
}

TEST(ConfigBatch, InvalidWorldSizeIsAnError) {
  Config c = Config::parse(R"({"train_batch_size": 8})");
  EXPECT_THROW(c.resolve(0), ConfigError);
  EXPECT_FALSE(c.resolved());
  EXPECT_EQ(c.train_batch_size, 8);
}

TEST(ConfigBatch, Zero2Or3CannotBeCombinedWithPipelineStages) {
  EXPECT_THAT(
      error_of(R"({"train_batch_size": 8, "pipeline": {"stages": 2}, "zero_optimization": {"stage": 2}})", 2),
      HasSubstr("zero_optimization.stage: stage 2 cannot be combined with 2 pipeline stages"));
  EXPECT_NO_THROW(resolved(
      R"({"train_batch_size": 8, "pipeline": {"stages": 2}, "zero_optimization": {"stage": 1}})", 2));
}

TEST(ConfigBatch, AutoTotalNumStepsComesFromResolveOptionsOrWarns) {
  const std::string json =
      R"({"train_batch_size": 8, "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": "auto"}}})";
  Config with = Config::parse(json);
  ResolveOptions options;
  options.total_num_steps = 5000;
  with.resolve(options);
  EXPECT_EQ(with.scheduler.total_num_steps, 5000);
  EXPECT_EQ(with.to_json()["scheduler"]["params"]["total_num_steps"], 5000);

  Config without = Config::parse(json);
  without.resolve(1);
  EXPECT_EQ(without.scheduler.total_num_steps, 0);
  EXPECT_THAT(config_test::warning_with(without, "scheduler.params.total_num_steps"),
              HasSubstr("the training program must supply the number of steps"));
  EXPECT_EQ(without.to_json()["scheduler"]["params"]["total_num_steps"], "auto");
}

}  // namespace
}  // namespace ds
