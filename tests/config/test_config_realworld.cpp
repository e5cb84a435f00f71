// Realistic DeepSpeed configs load with the values they state, and to_json() round-trips.
#include <nlohmann/json.hpp>

#include "config_test_util.h"

namespace ds {
namespace {

using config_test::data_file;
using config_test::warning_with;
using ::testing::HasSubstr;

// to_json() of a parsed config parses back to the same to_json().
void expect_round_trip(const Config& c) {
  nlohmann::json once = c.to_json();
  Config again = Config::parse(once.dump());
  if (c.resolved()) again.resolve(c.parallel.world_size);
  EXPECT_EQ(again.to_json(), once);
}

TEST(ConfigRealWorld, Zero3WithNvmeOffloadLoads) {
  Config c = Config::load(data_file("zero3_nvme.json"));
  c.resolve(8);
  EXPECT_EQ(c.train_batch_size, 2 * 8 * 8);
  EXPECT_EQ(c.zero_optimization.stage, 3);
  EXPECT_TRUE(c.zero_optimization.overlap_comm);  // stage 3 default
  EXPECT_EQ(c.zero_optimization.reduce_bucket_size, 10000000);
  EXPECT_EQ(c.zero_optimization.stage3_prefetch_bucket_size, 940000);
  EXPECT_EQ(c.zero_optimization.sub_group_size, 100000000);
  EXPECT_EQ(c.zero_optimization.offload_param.device, OffloadDevice::kNvme);
  EXPECT_EQ(c.zero_optimization.offload_param.nvme_path, "/local_nvme");
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kNvme);
  EXPECT_TRUE(c.zero_optimization.offload_optimizer.pipeline_read);
  EXPECT_EQ(c.aio.block_size, 262144);
  EXPECT_EQ(c.aio.queue_depth, 32);
  EXPECT_EQ(c.aio.intra_op_parallelism, 1);
  EXPECT_TRUE(c.fp16.enabled);
  EXPECT_EQ(c.fp16.initial_scale_power, 12);
  EXPECT_EQ(c.scheduler.type, SchedulerType::kWarmupCosineLR);
  EXPECT_EQ(c.scheduler.warmup_type, WarmupType::kLinear);
  EXPECT_EQ(c.scheduler.cos_min_ratio, 0.1);
  EXPECT_EQ(c.activation_checkpointing.number_checkpoints, 24);
  EXPECT_EQ(c.steps_per_print, 100);
  EXPECT_EQ(c.gradient_clipping, 1.0);
  EXPECT_THAT(warning_with(c, "aio.thread_count"), HasSubstr("deprecated"));
  expect_round_trip(c);
}

TEST(ConfigRealWorld, Bf16Zero2Loads) {
  Config c = Config::load(data_file("bf16_zero2.json"));
  c.resolve(8);
  EXPECT_EQ(c.gradient_accumulation_steps, 4);
  EXPECT_TRUE(c.bf16.enabled);
  EXPECT_EQ(c.zero_optimization.stage, 2);
  EXPECT_TRUE(c.zero_optimization.overlap_comm);
  EXPECT_TRUE(c.zero_optimization.round_robin_gradients);
  EXPECT_EQ(c.optimizer.type, OptimizerType::kAdamW);
  EXPECT_EQ(c.optimizer.betas[1], 0.95);
  EXPECT_EQ(c.scheduler.warmup_max_lr, 3e-4);
  EXPECT_EQ(c.scheduler.total_num_steps, 100000);
  EXPECT_TRUE(c.comms_logger.enabled);
  EXPECT_EQ(c.comms_logger.prof_ops, (std::vector<std::string>{"all_reduce", "reduce_scatter"}));
  EXPECT_EQ(c.csv_monitor.job_name, "gpt_1.3b_bf16");
  EXPECT_EQ(c.flops_profiler.top_modules, 3);
  EXPECT_EQ(c.checkpoint.tag_validation, TagValidation::kFail);
  EXPECT_EQ(c.data_types.grad_accum_dtype, DataType::kFp32);
  EXPECT_TRUE(c.warnings().empty()) << c.warnings().front();
  expect_round_trip(c);
}

TEST(ConfigRealWorld, HuggingFaceTrainerConfigWithAutoValuesLoads) {
  Config c = Config::load(data_file("hf_trainer_auto.json"));
  ResolveOptions options;
  options.world_size = 4;
  options.train_micro_batch_size_per_gpu = 8;
  options.gradient_accumulation_steps = 2;
  options.total_num_steps = 1000;
  c.resolve(options);
  EXPECT_EQ(c.train_batch_size, 64);
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_FALSE(c.bf16.enabled);
  EXPECT_EQ(c.optimizer.lr, 1e-3);
  EXPECT_EQ(c.scheduler.warmup_max_lr, 1e-3);  // "auto": the optimizer's lr
  EXPECT_EQ(c.scheduler.total_num_steps, 1000);
  EXPECT_EQ(c.zero_optimization.reduce_bucket_size, 500000000);
  EXPECT_EQ(c.zero_optimization.offload_param.device, OffloadDevice::kCpu);
  EXPECT_TRUE(c.zero_optimization.offload_param.pin_memory);
  EXPECT_EQ(c.steps_per_print, 2000);
  std::string autos = warning_with(c, "\"auto\" values");
  EXPECT_THAT(autos, HasSubstr("zero_optimization.stage3_prefetch_bucket_size=50000000"));
  EXPECT_THAT(autos, HasSubstr("scheduler.params.warmup_num_steps=1000"));
  expect_round_trip(c);
}

TEST(ConfigRealWorld, ThreeDimensionalPipelineTensorDataLayoutLoads) {
  Config c = Config::load(data_file("pipeline_tp_fp16.json"));
  c.resolve(16);
  EXPECT_EQ(c.parallel.data_parallel_size, 4);
  EXPECT_EQ(c.gradient_accumulation_steps, 4);
  EXPECT_EQ(c.pipeline.partition, "type:transformer");
  EXPECT_TRUE(c.pipeline.seed_layers);
  EXPECT_FALSE(c.optimizer.decoupled_weight_decay());
  EXPECT_EQ(c.scheduler.type, SchedulerType::kOneCycle);
  EXPECT_FALSE(c.scheduler.cycle_momentum);
  expect_round_trip(c);
}

TEST(ConfigRealWorld, SparseAttentionBertConfigLoads) {
  Config c = Config::load(data_file("sparse_bert.json"));
  c.resolve(2);
  EXPECT_EQ(c.sparse_attention.mode, SparseMode::kBSLongformer);
  EXPECT_EQ(c.sparse_attention.global_block_end_indices, (std::vector<int64_t>{1, 6}));
  EXPECT_EQ(c.scheduler.warmup_max_lr, 1e-4);  // WarmupLR: the optimizer's lr
  EXPECT_FALSE(c.optimizer.bias_correction);
  expect_round_trip(c);
}

TEST(ConfigRealWorld, CommentsAreAccepted) {
  Config c = Config::parse(R"(
    // line comment before everything
    {
      "train_batch_size": 8, // trailing comment
      /* block comment */ "fp16": {"enabled": true}
      /* multi
         line */
    })");
  EXPECT_EQ(c.train_batch_size, 8);
  EXPECT_TRUE(c.fp16.enabled);
}

TEST(ConfigRealWorld, FromJsonValidatesAnAlreadyParsedDocument) {
  nlohmann::json j = {{"train_micro_batch_size_per_gpu", 2}, {"zero_optimization", {{"stage", 1}}}};
  Config c = Config::from_json(j, "inline");
  EXPECT_EQ(c.zero_optimization.stage, 1);
  try {
    Config::from_json({{"zero_optimization", {{"stage", "one"}}}}, "inline");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("inline: zero_optimization.stage: expected an integer in 0..3"));
  }
}

}  // namespace
}  // namespace ds
