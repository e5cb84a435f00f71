// Every class of error is one ds::ConfigError line naming the file and the JSON path.
#include "config_test_util.h"

namespace ds {
namespace {

using config_test::error_of;
using config_test::warning_with;
using ::testing::HasSubstr;

TEST(ConfigErrors, UnknownKeyNamesPathAndNearestKey) {
  EXPECT_EQ(error_of(R"({"zero_optimization": {"stgae": 2}})"),
            R"(ds_config.json: zero_optimization.stgae: unknown key (did you mean "stage"?))");
  EXPECT_EQ(error_of(R"({"gradient_cliping": 1.0})"),
            R"(ds_config.json: gradient_cliping: unknown key (did you mean "gradient_clipping"?))");
  EXPECT_EQ(
      error_of(R"({"zero_optimization": {"offload_param": {"devcie": "cpu"}}})"),
      R"(ds_config.json: zero_optimization.offload_param.devcie: unknown key (did you mean "device"?))");
}

TEST(ConfigErrors, UnknownKeyWithoutCloseMatchListsTheValidKeys) {
  std::string msg = error_of(R"({"aio": {"xyzzy": 1}})");
  EXPECT_THAT(msg, HasSubstr("aio.xyzzy: unknown key (valid keys: "));
  EXPECT_THAT(msg, HasSubstr("queue_depth"));
}

TEST(ConfigErrors, WrongTypeNamesExpectedAndGot) {
  EXPECT_EQ(error_of(R"({"fp16": {"enabled": "true"}})"),
            R"(ds_config.json: fp16.enabled: expected a boolean (true or false), got string "true")");
  EXPECT_EQ(error_of(R"({"bf16": {"enabled": 1}})"),
            "ds_config.json: bf16.enabled: expected a boolean (true or false), got number 1");
  EXPECT_EQ(error_of(R"({"fp16": []})"), "ds_config.json: fp16: expected an object, got an array");
  EXPECT_EQ(error_of(R"({"optimizer": {"type": "Adam", "params": {"betas": [0.9]}}})"),
            "ds_config.json: optimizer.params.betas: expected a list of 2 numbers, got an array");
  EXPECT_EQ(error_of(R"({"comms_logger": {"prof_ops": ["all_reduce", 3]}})"),
            "ds_config.json: comms_logger.prof_ops[1]: expected a string, got number 3");
}

TEST(ConfigErrors, IntegerKeysRejectFractionsButAcceptScientificNotation) {
  EXPECT_EQ(error_of(R"({"zero_optimization": {"reduce_bucket_size": 0.5}})"),
            "ds_config.json: zero_optimization.reduce_bucket_size: expected an integer >= 1, got number 0.5");
  Config c = Config::parse(
      R"({"zero_optimization": {"reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 0.94e6}})");
  EXPECT_EQ(c.zero_optimization.reduce_bucket_size, 500000000);
  EXPECT_EQ(c.zero_optimization.stage3_prefetch_bucket_size, 940000);
  EXPECT_THAT(error_of(R"({"aio": {"queue_depth": 1e300}})"),
              HasSubstr("aio.queue_depth: expected an integer >= 1"));
}

TEST(ConfigErrors, OutOfRangeShowsTheRange) {
  EXPECT_EQ(error_of(R"({"zero_optimization": {"stage": 4}})"),
            "ds_config.json: zero_optimization.stage: expected an integer in 0..3, got number 4");
  EXPECT_EQ(error_of(R"({"zero_optimization": {"offload_optimizer": {"ratio": 1.5}}})"),
            "ds_config.json: zero_optimization.offload_optimizer.ratio: expected a number in [0, 1], got "
            "number 1.5");
  EXPECT_EQ(error_of(R"({"gradient_predivide_factor": 0})"),
            "ds_config.json: gradient_predivide_factor: expected a number > 0, got number 0");
  EXPECT_EQ(error_of(R"({"train_batch_size": 0})"),
            "ds_config.json: train_batch_size: expected an integer in 1..2147483647, got number 0");
  // A step no run takes (a stray digit) is refused here, not by an allocation minutes later.
  EXPECT_EQ(error_of(R"({"train_batch_size": 9223372036854775806})"),
            "ds_config.json: train_batch_size: expected an integer in 1..2147483647, got number 9223372036854775806");
  // What the engine would refuse is refused by the config: ds-config validate and ds-train agree.
  EXPECT_EQ(error_of(R"({"zero_optimization": {"reduce_bucket_size": 0}})"),
            "ds_config.json: zero_optimization.reduce_bucket_size: expected an integer >= 1, got number 0");
  EXPECT_EQ(error_of(R"({"zero_optimization": {"sub_group_size": 0}})"),
            "ds_config.json: zero_optimization.sub_group_size: expected an integer >= 1, got number 0");
  EXPECT_EQ(error_of(R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": ""}}})"),
            "ds_config.json: zero_optimization.offload_param.nvme_path: is empty; give the directory to swap to");
}

TEST(ConfigErrors, DeepNestingIsRefusedBeforeItIsBuilt) {
  std::string deep(50000, '[');
  deep += std::string(50000, ']');
  EXPECT_EQ(error_of(R"({"x": )" + deep + "}"),
            "ds_config.json: nested deeper than 64 levels; a ds_config.json needs fewer than 10");
  std::string ok = R"({"optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.95]}}})";
  EXPECT_NO_THROW(Config::parse(ok));
}

TEST(ConfigErrors, BadChoiceListsChoicesAndSuggests) {
  EXPECT_EQ(
      error_of(R"({"zero_optimization": {"offload_param": {"device": "cpus"}}})"),
      R"(ds_config.json: zero_optimization.offload_param.device: expected one of "none", "cpu", "nvme", got string "cpus" (did you mean "cpu"?))");
  EXPECT_THAT(error_of(R"({"communication_data_type": "int8"})"),
              HasSubstr("communication_data_type: expected one of"));
  EXPECT_THAT(error_of(R"({"sparse_attention": {"mode": "bigbrd"}})"),
              HasSubstr("(did you mean \"bigbird\"?)"));
  EXPECT_THAT(
      error_of(R"({"pipeline": {"partition": "random"}})"),
      HasSubstr("pipeline.partition: expected \"parameters\", \"uniform\", \"best\" or \"type:<regex>\""));
}

TEST(ConfigErrors, DuplicateKeyIsDetectedWithItsPath) {
  EXPECT_EQ(error_of(R"({"zero_optimization": {"stage": 1, "stage": 2}})"),
            "ds_config.json: zero_optimization.stage: duplicate key (JSON parsers silently keep only the "
            "last value; "
            "remove one)");
  EXPECT_THAT(error_of(R"({"fp16": {"enabled": true}, "fp16": {"enabled": false}})"),
              HasSubstr(": fp16: duplicate key"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Adam", "params": {"lr": 1, "betas": [1, 2], "lr": 2}}})"),
              HasSubstr(": optimizer.params.lr: duplicate key"));
  EXPECT_THAT(error_of(R"({"comms_logger": {"prof_ops": ["a", {"x": 1, "x": 2}]}})"),
              HasSubstr(": comms_logger.prof_ops[1].x: duplicate key"));
  // The same key in different objects is fine.
  EXPECT_NO_THROW(Config::parse(R"({"fp16": {"enabled": false}, "bf16": {"enabled": false}})"));
}

TEST(ConfigErrors, InvalidJsonIsOneLineWithThePosition) {
  std::string msg = error_of("{\n  \"fp16\": {\"enabled\": true,}\n}");
  EXPECT_THAT(msg, HasSubstr("ds_config.json: invalid JSON: parse error at line 2"));
  EXPECT_THAT(error_of(""), HasSubstr("invalid JSON"));
  EXPECT_EQ(error_of("[1, 2]"), "ds_config.json: expected a JSON object at the top level, got an array");
}

TEST(ConfigErrors, OptimizerParametersAreCheckedAgainstTheType) {
  EXPECT_EQ(error_of(R"({"optimizer": {"type": "SGD", "params": {"lr": 0.1, "betas": [0.9, 0.99]}}})"),
            "ds_config.json: optimizer.params.betas: unknown parameter for optimizer SGD (valid keys: lr, "
            "weight_decay, "
            "momentum, dampening, nesterov, maximize)");
  EXPECT_EQ(
      error_of(R"({"optimizer": {"type": "Adam", "params": {"weight_decy": 0.1}}})"),
      R"(ds_config.json: optimizer.params.weight_decy: unknown parameter for optimizer Adam (did you mean "weight_decay"?))");
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Adam", "params": {"max_grad_norm": 1.0}}})"),
              HasSubstr("optimizer.params.max_grad_norm: not an optimizer parameter in DeepSpeed"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lion", "params": {"torch_adam": true}}})"),
              HasSubstr("optimizer.params.torch_adam: unknown parameter for optimizer Lion"));
  EXPECT_THAT(error_of(R"({"optimizer": {"params": {"lr": 1}}})"),
              HasSubstr("optimizer.type: required key is missing"));
}

TEST(ConfigErrors, UnsupportedOrUnknownOptimizerIsRejectedClearly) {
  EXPECT_EQ(
      error_of(R"({"optimizer": {"type": "Muon", "params": {"lr": 1e-3}}})"),
      R"(ds_config.json: optimizer.type: deepspeed.cpp does not support optimizer "Muon"; supported: Adam, AdamW, SGD, Adagrad, Lion, OneBitAdam, ZeroOneAdam, Lamb, OneBitLamb)");
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "RMSprop"}})"),
              HasSubstr("does not support optimizer \"RMSprop\""));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Adma"}})"),
              HasSubstr("unknown optimizer \"Adma\" (did you mean \"Adam\"?)"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Adam", "params": {"amsgrad": true}}})"),
              HasSubstr("optimizer.params.amsgrad: deepspeed.cpp does not support the AMSGrad variant"));
}

TEST(ConfigErrors, LambSettingsItCannotHonourAreRefused) {
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb", "params": {"amsgrad": true}}})"),
              HasSubstr("optimizer.params.amsgrad: deepspeed.cpp does not support the AMSGrad variant"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb", "params": {"min_coeff": 0.5, "max_coeff": 0.1}}})"),
              HasSubstr("optimizer.params.min_coeff: min_coeff 0.5 is above max_coeff 0.1"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb", "params": {"eps": 0}}})"),
              HasSubstr("optimizer.params.eps: Lamb needs eps > 0"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb"}, "bf16": {"enabled": true}, "zero_optimization": {"stage": 3,
                          "offload_param": {"device": "nvme", "nvme_path": "/tmp"}}})"),
              HasSubstr("zero_optimization.offload_param.device: Lamb cannot swap to NVMe"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb", "params": {"max_coeff": -1}}})"),
              HasSubstr("optimizer.params.max_coeff"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb", "params": {"max_grad_norm": 1.0}}})"),
              HasSubstr("use the top-level \"gradient_clipping\""));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb", "params": {"freeze_step": 10}}})"),
              HasSubstr("unknown parameter for optimizer Lamb"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 2,
                          "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}}})"),
              HasSubstr("zero_optimization.offload_optimizer.device: Lamb cannot swap to NVMe"));
}

TEST(ConfigErrors, SchedulerTypeAndParametersAreChecked) {
  EXPECT_THAT(error_of(R"({"scheduler": {"type": "warmuplr"}})"),
              HasSubstr("scheduler.type: unknown scheduler \"warmuplr\" (did you mean \"WarmupLR\"?)"));
  EXPECT_THAT(error_of(R"({"scheduler": {"type": "StepLR"}})"),
              HasSubstr("does not support torch scheduler \"StepLR\""));
  EXPECT_EQ(error_of(R"({"scheduler": {"type": "OneCycle", "params": {"cycle_max_lr": 1e-3}}})"),
            "ds_config.json: scheduler.params.cycle_min_lr: required key is missing");
  EXPECT_THAT(error_of(R"({"scheduler": {"type": "WarmupDecayLR", "params": {}}})"),
              HasSubstr("scheduler.params.total_num_steps: required key is missing for WarmupDecayLR"));
  EXPECT_THAT(error_of(R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}}})"),
              HasSubstr("scheduler.params.warmup_type: expected one of \"log\", \"linear\""));
  EXPECT_THAT(error_of(R"({"scheduler": {"type": "WarmupLR", "params": {"total_num_steps": 10}}})"),
              HasSubstr("scheduler.params.total_num_steps: unknown parameter for scheduler WarmupLR"));
}

TEST(ConfigErrors, KnownButUnsupportedFeaturesSayHowToFixThem) {
  EXPECT_EQ(error_of(R"({"amp": {"enabled": true, "opt_level": "O1"}})"),
            "ds_config.json: amp.enabled: deepspeed.cpp does not support NVIDIA Apex AMP (use fp16 or bf16); "
            "remove "
            "it or set enabled=false");
  EXPECT_THAT(error_of(R"({"elasticity": {"enabled": true, "max_train_batch_size": 2000}})"),
              HasSubstr("elasticity.enabled: deepspeed.cpp does not support elastic training"));
  EXPECT_THAT(
      error_of(
          R"({"compression_training": {"weight_quantization": {"shared_parameters": {"enabled": true}}}})"),
      HasSubstr("compression_training.weight_quantization.shared_parameters.enabled: deepspeed.cpp does not "
                "support"));
  for (const char* key : {"data_efficiency", "autotuning", "curriculum_learning", "quantize_training"}) {
    EXPECT_THAT(error_of(str(R"({")", key, R"(": {"enabled": true}})")),
                HasSubstr(str(key, ".enabled: deepspeed.cpp does not support")));
  }
  // Present but switched off: accepted, as DeepSpeed accepts it.
  EXPECT_NO_THROW(Config::parse(R"({"amp": {"enabled": false}, "elasticity": {"enabled": false},
                                    "autotuning": {"enabled": false, "fast": true}})"));
  EXPECT_THAT(
      error_of(R"({"zero_optimization": {"stage": 3, "zero_quantized_nontrainable_weights": true}})"),
      HasSubstr("zero_optimization.zero_quantized_nontrainable_weights: deepspeed.cpp does not support ZeRO++ "
                "quantized non-trainable weights"));
  EXPECT_THAT(error_of(R"({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 0}})"),
              HasSubstr("zero_optimization.zero_hpz_partition_size"));
  EXPECT_THAT(error_of(R"({"aio": {"use_gds": true}})"),
              HasSubstr("aio.use_gds: deepspeed.cpp does not support"));
}

TEST(ConfigErrors, KnownKnobsWithoutEffectWarnInsteadOfFailing) {
  Config c = Config::parse(R"({"zero_optimization": {"stage": 3, "memory_efficient_linear": false,
                                                      "use_multi_rank_bucket_allreduce": true}})");
  EXPECT_THAT(warning_with(c, "zero_optimization.memory_efficient_linear"),
              HasSubstr("has no effect in deepspeed.cpp"));
  EXPECT_EQ(warning_with(c, "use_multi_rank_bucket_allreduce"), "");  // the default: nothing to say
  EXPECT_THAT(error_of(R"({"zero_optimization": {"memory_efficient_linear": "no"}})"),
              HasSubstr("expected a boolean (true or false), got string \"no\""));
}

TEST(ConfigErrors, CrossSectionContradictionsAreRejected) {
  EXPECT_EQ(error_of(R"({"fp16": {"enabled": true}, "bf16": {"enabled": true}})"),
            "ds_config.json: bf16.enabled: fp16 and bf16 cannot both be enabled; choose one");
  EXPECT_EQ(error_of(R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}})"),
            R"(ds_config.json: zero_optimization.offload_param.nvme_path: required when device is "nvme")");
  EXPECT_THAT(
      error_of(
          R"({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}})"),
      HasSubstr("zero_optimization.offload_optimizer.ratio: partial offload (0.5 < 1) needs ZeRO stage 3, "
                "stage is 2"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "OneBitAdam"}, "zero_optimization": {"stage": 3}})"),
              HasSubstr("optimizer.type: OneBitAdam works with ZeRO stages 0-2 here"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "OneBitAdam"}, "zero_optimization": {"stage": 2,
                "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"}}})"),
              HasSubstr("OneBitAdam cannot swap its states to NVMe"));
  EXPECT_THAT(error_of(R"({"optimizer": {"type": "OneBitAdam", "params": {"comm_backend_name": "ucx"}}})"),
              HasSubstr("optimizer.params.comm_backend_name: unknown backend \"ucx\""));
}

TEST(ConfigErrors, SparseAttentionFollowsDeepSpeedsRules) {
  EXPECT_EQ(
      error_of(R"({"sparse_attention": {"mode": "fixed", "num_local_blocks": 4, "num_global_blocks": 3}})"),
      "ds_config.json: sparse_attention.num_global_blocks: num_local_blocks 4 must be divisible by "
      "num_global_blocks 3");
  EXPECT_THAT(
      error_of(
          R"({"sparse_attention": {"attention": "unidirectional", "horizontal_global_attention": true}})"),
      HasSubstr("sparse_attention.horizontal_global_attention: needs \"attention\": \"bidirectional\""));
  EXPECT_THAT(error_of(R"({"sparse_attention": {"num_different_global_patterns": 2}})"),
              HasSubstr("more than 1 needs different_layout_per_head=true"));
  EXPECT_THAT(
      error_of(
          R"({"sparse_attention": {"mode": "variable", "global_block_indices": [0, 4], "global_block_end_indices": [2]}})"),
      HasSubstr("sparse_attention.global_block_end_indices: has 1 entries, global_block_indices has 2"));
  EXPECT_THAT(
      error_of(
          R"({"sparse_attention": {"mode": "bslongformer", "global_block_indices": [3], "global_block_end_indices": [2]}})"),
      HasSubstr("sparse_attention.global_block_end_indices[0]: end 2 must be greater than its start 3"));
  // A key of another mode is ignored (as DeepSpeed does) but said so.
  Config c = Config::parse(R"({"sparse_attention": {"mode": "dense", "num_local_blocks": 8}})");
  EXPECT_THAT(warning_with(c, "sparse_attention.num_local_blocks"),
              HasSubstr("not used by mode \"dense\"; ignored"));
}

TEST(ConfigErrors, AliasGivenTwiceWithDifferentValuesIsAnError) {
  EXPECT_THAT(error_of(R"({"aio": {"thread_count": 2, "intra_op_parallelism": 4}})"),
              HasSubstr("aio.thread_count: conflicts with \"intra_op_parallelism\" (number 2 vs number 4)"));
  Config same = Config::parse(R"({"aio": {"thread_count": 2, "intra_op_parallelism": 2}})");
  EXPECT_EQ(same.aio.intra_op_parallelism, 2);
}

TEST(ConfigErrors, AValueErrorUnderAnAliasNamesTheKeyAsWritten) {
  EXPECT_THAT(error_of(R"({"aio": {"thread_count": 0}})"),
              HasSubstr("aio.thread_count: expected an integer >= 1"));
}

TEST(ConfigErrors, FilesThatCannotBeReadAreNamed) {
  try {
    Config::load("/nonexistent/dir/ds_config.json");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "/nonexistent/dir/ds_config.json: cannot open: No such file or directory");
  }
  try {
    Config::load("/tmp");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "/tmp: cannot read: is a directory");
  }
}

TEST(ConfigErrors, LoadNamesTheFileInEveryMessage) {
  try {
    Config::load(config_test::data_file("bad_typo.json"));
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_THAT(
        std::string(e.what()),
        HasSubstr(
            "bad_typo.json: zero_optimization.overlap_com: unknown key (did you mean \"overlap_comm\"?)"));
  }
}

}  // namespace
}  // namespace ds
