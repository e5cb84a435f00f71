// Defaults are DeepSpeed's code defaults (DESIGN.md section 5), per section and per type.
#include <nlohmann/json.hpp>

#include "config_test_util.h"

namespace ds {
namespace {

TEST(ConfigDefaults, EmptyConfigTopLevelMatchesDeepSpeedCode) {
  Config c = Config::parse("{}");
  EXPECT_EQ(c.gradient_clipping, 0.0);
  EXPECT_FALSE(c.steps_per_print.has_value());  // None since DeepSpeed PR #6602 (was 10)
  EXPECT_FALSE(c.wall_clock_breakdown);
  EXPECT_FALSE(c.memory_breakdown);
  EXPECT_FALSE(c.prescale_gradients);
  EXPECT_EQ(c.gradient_predivide_factor, 1.0);
  EXPECT_FALSE(c.communication_data_type.has_value());
  EXPECT_FALSE(c.data_types.grad_accum_dtype.has_value());
  EXPECT_FALSE(c.zero_allow_untested_optimizer);
  EXPECT_TRUE(c.zero_force_ds_cpu_optimizer);
  EXPECT_FALSE(c.dump_state);
  EXPECT_EQ(c.optimizer.type, OptimizerType::kNone);
  EXPECT_EQ(c.scheduler.type, SchedulerType::kNone);
  EXPECT_FALSE(c.sparse_attention.enabled);
  EXPECT_EQ(c.train_batch_size, 0);  // unknown until resolve()
  EXPECT_TRUE(c.warnings().empty());
}

TEST(ConfigDefaults, ZeroSectionMatchesDeepSpeedCode) {
  const ZeroConfig z = Config::parse("{}").zero_optimization;
  EXPECT_EQ(z.stage, 0);
  EXPECT_TRUE(z.contiguous_gradients);
  EXPECT_TRUE(z.reduce_scatter);
  EXPECT_EQ(z.reduce_bucket_size, 500000000);
  EXPECT_TRUE(z.allgather_partitions);
  EXPECT_EQ(z.allgather_bucket_size, 500000000);
  EXPECT_FALSE(z.overlap_comm);
  EXPECT_EQ(z.sub_group_size, 1000000000);
  EXPECT_EQ(z.stage3_prefetch_bucket_size, 50000000);
  EXPECT_EQ(z.stage3_param_persistence_threshold, 100000);
  EXPECT_EQ(z.stage3_max_live_parameters, 1000000000);
  EXPECT_EQ(z.stage3_max_reuse_distance, 1000000000);
  EXPECT_FALSE(z.stage3_gather_16bit_weights_on_model_save);
  EXPECT_FALSE(z.round_robin_gradients);
  EXPECT_EQ(z.offload_param.device, OffloadDevice::kNone);
  EXPECT_EQ(z.offload_param.buffer_count, 5);
  EXPECT_EQ(z.offload_param.buffer_size, 100000000);
  EXPECT_EQ(z.offload_param.max_in_cpu, 1000000000);
  EXPECT_FALSE(z.offload_param.pin_memory);
  EXPECT_EQ(z.offload_optimizer.device, OffloadDevice::kNone);
  EXPECT_EQ(z.offload_optimizer.buffer_count, 4);
  EXPECT_EQ(z.offload_optimizer.ratio, 1.0);
  EXPECT_FALSE(z.offload_optimizer.pipeline_read);
  EXPECT_FALSE(z.offload_optimizer.pipeline_write);
}

TEST(ConfigDefaults, OverlapCommIsTrueOnlyForStage3UnlessGiven) {
  for (int stage = 0; stage <= 3; ++stage) {
    Config c = Config::parse(str(R"({"zero_optimization": {"stage": )", stage, "}}"));
    EXPECT_EQ(c.zero_optimization.overlap_comm, stage == 3) << "stage " << stage;
  }
  EXPECT_FALSE(Config::parse(R"({"zero_optimization": {"stage": 3, "overlap_comm": false}})")
                   .zero_optimization.overlap_comm);
  EXPECT_TRUE(Config::parse(R"({"zero_optimization": {"stage": 1, "overlap_comm": true}})")
                  .zero_optimization.overlap_comm);
}

TEST(ConfigDefaults, AioMatchesDeepSpeedCode) {
  const AioConfig a = Config::parse("{}").aio;
  EXPECT_EQ(a.block_size, 1048576);
  EXPECT_EQ(a.queue_depth, 8);
  EXPECT_EQ(a.intra_op_parallelism, 1);
  EXPECT_FALSE(a.single_submit);
  EXPECT_TRUE(a.overlap_events);
}

TEST(ConfigDefaults, Fp16AndBf16MatchDeepSpeedCode) {
  Config c = Config::parse("{}");
  EXPECT_FALSE(c.fp16.enabled);
  EXPECT_FALSE(c.fp16.auto_cast);
  EXPECT_EQ(c.fp16.loss_scale, 0.0);
  EXPECT_TRUE(c.fp16.dynamic_loss_scale());
  EXPECT_EQ(c.fp16.initial_scale_power, 16);
  EXPECT_EQ(c.fp16.initial_dynamic_scale(), 65536.0);
  EXPECT_EQ(c.fp16.loss_scale_window, 1000);
  EXPECT_EQ(c.fp16.hysteresis, 2);
  EXPECT_FALSE(c.fp16.consecutive_hysteresis);
  EXPECT_EQ(c.fp16.min_loss_scale, 1);
  EXPECT_FALSE(c.bf16.enabled);
  EXPECT_FALSE(c.bf16.check_grad_overflow);
}

TEST(ConfigDefaults, SmallSectionsMatchDeepSpeedCode) {
  Config c = Config::parse("{}");
  EXPECT_FALSE(c.activation_checkpointing.partition_activations);
  EXPECT_FALSE(c.activation_checkpointing.cpu_checkpointing);
  EXPECT_FALSE(c.activation_checkpointing.contiguous_memory_optimization);
  EXPECT_FALSE(c.activation_checkpointing.number_checkpoints.has_value());
  EXPECT_FALSE(c.activation_checkpointing.synchronize_checkpoint_boundary);
  EXPECT_FALSE(c.activation_checkpointing.profile);
  EXPECT_FALSE(c.flops_profiler.enabled);
  EXPECT_EQ(c.flops_profiler.profile_step, 1);
  EXPECT_EQ(c.flops_profiler.module_depth, -1);
  EXPECT_EQ(c.flops_profiler.top_modules, 1);
  EXPECT_TRUE(c.flops_profiler.detailed);
  EXPECT_FALSE(c.comms_logger.enabled);
  EXPECT_FALSE(c.comms_logger.verbose);
  EXPECT_TRUE(c.comms_logger.prof_all);
  EXPECT_FALSE(c.comms_logger.debug);
  EXPECT_TRUE(c.comms_logger.prof_ops.empty());
  EXPECT_EQ(c.csv_monitor.job_name, "DeepSpeedJobName");
  EXPECT_EQ(c.wandb.project, "deepspeed");
  EXPECT_EQ(c.checkpoint.tag_validation, TagValidation::kWarn);
  EXPECT_FALSE(c.checkpoint.load_universal);
  EXPECT_EQ(c.pipeline.stages, 0);  // "auto"
  EXPECT_EQ(c.pipeline.partition, "best");
  EXPECT_TRUE(c.pipeline.pipe_partitioned);
  EXPECT_TRUE(c.pipeline.grad_partitioned);
  EXPECT_EQ(c.tensor_parallel.autotp_size, 0);
}

TEST(ConfigDefaults, OptimizerDefaultsFollowTheType) {
  Config adam = Config::parse(R"({"optimizer": {"type": "adam"}})");  // DeepSpeed lower-cases its names
  EXPECT_EQ(adam.optimizer.type, OptimizerType::kAdam);
  EXPECT_EQ(adam.optimizer.lr, 1e-3);
  EXPECT_EQ(adam.optimizer.betas[0], 0.9);
  EXPECT_EQ(adam.optimizer.betas[1], 0.999);
  EXPECT_EQ(adam.optimizer.eps, 1e-8);
  EXPECT_EQ(adam.optimizer.weight_decay, 0.0);
  EXPECT_TRUE(adam.optimizer.bias_correction);
  EXPECT_FALSE(adam.optimizer.torch_adam);
  EXPECT_TRUE(adam.optimizer.adam_w_mode);

  Config adagrad = Config::parse(R"({"optimizer": {"type": "Adagrad"}})");
  EXPECT_EQ(adagrad.optimizer.lr, 1e-2);
  EXPECT_EQ(adagrad.optimizer.eps, 1e-10);
  Config lion = Config::parse(R"({"optimizer": {"type": "Lion", "params": {"lr": 1e-4}}})");
  EXPECT_EQ(lion.optimizer.betas[1], 0.999);
  EXPECT_EQ(lion.optimizer.lr, 1e-4);
  Config sgd = Config::parse(R"({"optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}})");
  EXPECT_EQ(sgd.optimizer.momentum, 0.9);
  EXPECT_FALSE(sgd.optimizer.nesterov);
  Config onebit = Config::parse(R"({"optimizer": {"type": "OneBitAdam"}})");
  EXPECT_EQ(onebit.optimizer.freeze_step, 100000);
  EXPECT_EQ(onebit.optimizer.comm_backend_name, "nccl");
  Config zero_one = Config::parse(R"({"optimizer": {"type": "ZeroOneAdam"}})");
  EXPECT_EQ(zero_one.optimizer.var_freeze_step, 100000);
  EXPECT_EQ(zero_one.optimizer.var_update_scaler, 16);
  EXPECT_EQ(zero_one.optimizer.local_step_scaler, 32678);
  EXPECT_EQ(zero_one.optimizer.local_step_clipper, 16);
  EXPECT_FALSE(zero_one.optimizer.bias_correction);
  Config lamb = Config::parse(R"({"optimizer": {"type": "lamb", "params": {"lr": 2e-3, "max_coeff": 0.3}}})");
  EXPECT_EQ(lamb.optimizer.type, OptimizerType::kLamb);  // DeepSpeed's names ignore case
  EXPECT_EQ(lamb.optimizer.lr, 2e-3);
  EXPECT_EQ(lamb.optimizer.max_coeff, 0.3);
  EXPECT_EQ(lamb.optimizer.min_coeff, 0.01);  // FusedLamb's defaults
  EXPECT_EQ(lamb.optimizer.eps, 1e-8);
  EXPECT_TRUE(lamb.optimizer.bias_correction);
  EXPECT_FALSE(lamb.optimizer.eps_inside_sqrt);
}

TEST(ConfigDefaults, AdamAppliesDecoupledWeightDecayUnlessAdamWModeIsFalse) {
  EXPECT_TRUE(Config::parse(R"({"optimizer": {"type": "Adam"}})").optimizer.decoupled_weight_decay());
  EXPECT_FALSE(Config::parse(R"({"optimizer": {"type": "Adam", "params": {"adam_w_mode": false}}})")
                   .optimizer.decoupled_weight_decay());
  EXPECT_TRUE(Config::parse(R"({"optimizer": {"type": "AdamW", "params": {"adam_w_mode": false}}})")
                  .optimizer.decoupled_weight_decay());
}

TEST(ConfigDefaults, SchedulerDefaultsFollowTheType) {
  Config warmup = Config::parse(R"({"optimizer": {"type": "Adam", "params": {"lr": 2e-4}},
                                    "scheduler": {"type": "WarmupLR"}})");
  EXPECT_EQ(warmup.scheduler.warmup_min_lr, 0.0);
  EXPECT_EQ(warmup.scheduler.warmup_max_lr, 2e-4);  // WarmupLR: the optimizer's lr
  EXPECT_EQ(warmup.scheduler.warmup_num_steps, 1000);
  EXPECT_EQ(warmup.scheduler.warmup_type, WarmupType::kLog);
  EXPECT_FALSE(Config::parse(R"({"scheduler": {"type": "WarmupLR"}})").scheduler.warmup_max_lr.has_value());

  Config decay =
      Config::parse(R"({"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 10}}})");
  EXPECT_EQ(decay.scheduler.warmup_max_lr, 1e-3);
  EXPECT_EQ(decay.scheduler.total_num_steps, 10);

  Config cosine =
      Config::parse(R"({"scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 10}}})");
  EXPECT_EQ(cosine.scheduler.warmup_min_ratio, 0.0);
  EXPECT_EQ(cosine.scheduler.cos_min_ratio, 1e-4);

  Config cycle = Config::parse(
      R"({"scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3}}})");
  EXPECT_EQ(cycle.scheduler.cycle_first_step_size, 2000);
  EXPECT_FALSE(cycle.scheduler.cycle_second_step_size.has_value());
  EXPECT_TRUE(cycle.scheduler.cycle_momentum);
  EXPECT_EQ(cycle.scheduler.cycle_min_mom, 0.8);
  EXPECT_EQ(cycle.scheduler.cycle_max_mom, 0.9);
  EXPECT_EQ(cycle.scheduler.decay_step_size, 0);

  Config range = Config::parse(R"({"scheduler": {"type": "LRRangeTest"}})");
  EXPECT_EQ(range.scheduler.lr_range_test_min_lr, 1e-3);
  EXPECT_EQ(range.scheduler.lr_range_test_step_size, 2000);
  EXPECT_EQ(range.scheduler.lr_range_test_step_rate, 1.0);
  EXPECT_FALSE(range.scheduler.lr_range_test_staircase);
}

TEST(ConfigDefaults, SparseAttentionDefaultsPerMode) {
  SparseAttentionConfig fixed = Config::parse(R"({"sparse_attention": {}})").sparse_attention;
  EXPECT_TRUE(fixed.enabled);
  EXPECT_EQ(fixed.mode, SparseMode::kFixed);
  EXPECT_EQ(fixed.block, 16);
  EXPECT_EQ(fixed.num_local_blocks, 4);
  EXPECT_EQ(fixed.num_global_blocks, 1);
  EXPECT_EQ(fixed.attention, SparseDirection::kBidirectional);
  EXPECT_EQ(fixed.num_different_global_patterns, 1);

  SparseAttentionConfig bigbird =
      Config::parse(R"({"sparse_attention": {"mode": "bigbird"}})").sparse_attention;
  EXPECT_EQ(bigbird.num_random_blocks, 0);
  EXPECT_EQ(bigbird.num_sliding_window_blocks, 3);
  EXPECT_EQ(bigbird.num_global_blocks, 1);

  SparseAttentionConfig variable =
      Config::parse(R"({"sparse_attention": {"mode": "variable"}})").sparse_attention;
  EXPECT_EQ(variable.local_window_blocks, std::vector<int64_t>{4});
  EXPECT_EQ(variable.global_block_indices, std::vector<int64_t>{0});
  EXPECT_FALSE(variable.global_block_end_indices.has_value());
}

TEST(ConfigDefaults, ToJsonWritesOnlyTheKeysOfTheSparseMode) {
  nlohmann::json dense =
      Config::parse(R"({"sparse_attention": {"mode": "dense"}})").to_json()["sparse_attention"];
  EXPECT_EQ(dense, nlohmann::json({{"mode", "dense"}, {"block", 16}}));
  nlohmann::json fixed = Config::parse(R"({"sparse_attention": {}})").to_json()["sparse_attention"];
  EXPECT_EQ(fixed.size(), 8u);
  EXPECT_FALSE(fixed.contains("num_random_blocks"));
}

TEST(ConfigDefaults, ToJsonFillsEveryDefaultAndWritesAutoForUnresolvedBatch) {
  nlohmann::json j = Config::parse("{}").to_json();
  EXPECT_EQ(j["train_batch_size"], "auto");
  EXPECT_EQ(j["zero_optimization"]["reduce_bucket_size"], 500000000);
  EXPECT_EQ(j["aio"]["queue_depth"], 8);
  EXPECT_EQ(j["fp16"]["initial_scale_power"], 16);
  EXPECT_TRUE(j["steps_per_print"].is_null());
  EXPECT_EQ(j["pipeline"]["stages"], "auto");
  EXPECT_FALSE(j.contains("optimizer"));
  EXPECT_FALSE(j.contains("sparse_attention"));
}

}  // namespace
}  // namespace ds
