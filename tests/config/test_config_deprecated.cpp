// Deprecated spellings DeepSpeed still accepts are mapped, each with one warning line; "auto" values
// that take a default are reported in one summary line.
#include "config_test_util.h"

namespace ds {
namespace {

using config_test::error_of;
using config_test::warning_with;
using ::testing::HasSubstr;

TEST(ConfigDeprecated, CpuOffloadMapsToOffloadOptimizerWithAWarning) {
  Config c = Config::parse(R"({"zero_optimization": {"stage": 2, "cpu_offload": true}})");
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kCpu);
  EXPECT_EQ(c.zero_optimization.offload_param.device, OffloadDevice::kNone);
  ASSERT_EQ(c.warnings().size(), 1u);
  EXPECT_EQ(c.warnings()[0],
            "ds_config.json: zero_optimization.cpu_offload: deprecated, use \"offload_optimizer\" "
            "instead (mapped to offload_optimizer.device \"cpu\")");
}

TEST(ConfigDeprecated, CpuOffloadParamInBothSpellingsMapsToOffloadParam) {
  for (const char* key : {"cpu_offload_param", "cpu_offload_params"}) {
    Config c = Config::parse(str(R"({"zero_optimization": {"stage": 3, ")", key, R"(": true}})"));
    EXPECT_EQ(c.zero_optimization.offload_param.device, OffloadDevice::kCpu) << key;
    EXPECT_THAT(warning_with(c, str("zero_optimization.", key)),
                HasSubstr("deprecated, use \"offload_param\" instead"));
  }
}

TEST(ConfigDeprecated, CpuOffloadUsePinMemoryMapsToPinMemoryOfTheMappedSections) {
  Config c =
      Config::parse(R"({"zero_optimization": {"stage": 3, "cpu_offload": true, "cpu_offload_param": true,
                                                      "cpu_offload_use_pin_memory": true}})");
  EXPECT_TRUE(c.zero_optimization.offload_optimizer.pin_memory);
  EXPECT_TRUE(c.zero_optimization.offload_param.pin_memory);
  EXPECT_THAT(warning_with(c, "cpu_offload_use_pin_memory"),
              HasSubstr("(mapped to pin_memory of offload_optimizer, offload_param)"));
  EXPECT_EQ(c.warnings().size(), 3u);
}

TEST(ConfigDeprecated, FalseDeprecatedOffloadStillWarnsAndMapsNothing) {
  Config c = Config::parse(R"({"zero_optimization": {"stage": 2, "cpu_offload": false}})");
  EXPECT_EQ(c.zero_optimization.offload_optimizer.device, OffloadDevice::kNone);
  EXPECT_THAT(warning_with(c, "cpu_offload"), HasSubstr("(false: no offload)"));
}

TEST(ConfigDeprecated, DeprecatedAndNewKeyTogetherIsAnError) {
  EXPECT_THAT(
      error_of(
          R"({"zero_optimization": {"stage": 2, "cpu_offload": true, "offload_optimizer": {"device": "cpu"}}})"),
      HasSubstr(
          "zero_optimization.cpu_offload: deprecated, and cannot be combined with \"offload_optimizer\""));
}

TEST(ConfigDeprecated, GatherFp16WeightsAliasMapsWithAWarning) {
  Config c = Config::parse(
      R"({"zero_optimization": {"stage": 3, "stage3_gather_fp16_weights_on_model_save": true}})");
  EXPECT_TRUE(c.zero_optimization.stage3_gather_16bit_weights_on_model_save);
  EXPECT_EQ(c.warnings().size(), 1u);
  EXPECT_THAT(warning_with(c, "stage3_gather_fp16_weights_on_model_save"),
              HasSubstr("deprecated, use \"stage3_gather_16bit_weights_on_model_save\" instead"));
}

TEST(ConfigDeprecated, FieldNamesWithoutStage3PrefixAreSilentAliases) {
  Config c = Config::parse(
      R"({"zero_optimization": {"stage": 3, "prefetch_bucket_size": 1e6, "max_live_parameters": 2e8,
                                                      "gather_16bit_weights_on_model_save": true}})");
  EXPECT_EQ(c.zero_optimization.stage3_prefetch_bucket_size, 1000000);
  EXPECT_EQ(c.zero_optimization.stage3_max_live_parameters, 200000000);
  EXPECT_TRUE(c.zero_optimization.stage3_gather_16bit_weights_on_model_save);
  EXPECT_TRUE(c.warnings().empty());
}

TEST(ConfigDeprecated, AioThreadCountIsIntraOpParallelism) {
  Config c = Config::parse(R"({"aio": {"thread_count": 4}})");
  EXPECT_EQ(c.aio.intra_op_parallelism, 4);
  EXPECT_THAT(warning_with(c, "aio.thread_count"),
              HasSubstr("deprecated, use \"intra_op_parallelism\" instead"));
}

TEST(ConfigDeprecated, BfloatSixteenSectionIsBf16) {
  Config c = Config::parse(R"({"bfloat16": {"enabled": true}})");
  EXPECT_TRUE(c.bf16.enabled);
  EXPECT_THAT(warning_with(c, "bfloat16"), HasSubstr("deprecated, use \"bf16\" instead"));
}

TEST(ConfigDeprecated, LossScaleKeysInsideBf16AreAcceptedAndIgnored) {
  Config c = Config::parse(R"({"bf16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 16,
                                        "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}})");
  EXPECT_TRUE(c.bf16.enabled);
  EXPECT_EQ(c.warnings().size(), 5u);
  EXPECT_THAT(warning_with(c, "bf16.loss_scale_window"), HasSubstr("bf16 uses no loss scaling; ignored"));
  EXPECT_THAT(error_of(R"({"bf16": {"loss_scale": "dynamic"}})"),
              HasSubstr("bf16.loss_scale: expected a number"));
}

TEST(ConfigDeprecated, BooleanZeroOptimizationIsStage1) {
  Config on = Config::parse(R"({"zero_optimization": true, "allgather_size": 2e8})");
  EXPECT_EQ(on.zero_optimization.stage, 1);
  EXPECT_EQ(on.zero_optimization.allgather_bucket_size, 200000000);
  EXPECT_THAT(warning_with(on, "zero_optimization"), HasSubstr("deprecated boolean form"));
  EXPECT_EQ(Config::parse(R"({"zero_optimization": false})").zero_optimization.stage, 0);
}

TEST(ConfigDeprecated, SparseAttentionMisspeltKeyOfOldDeepSpeedIsAccepted) {
  Config c = Config::parse(R"({"sparse_attention": {"mode": "fixed", "different_layout_per_head": true,
                                                    "num_differnt_global_patterns": 2}})");
  EXPECT_EQ(c.sparse_attention.num_different_global_patterns, 2);
  EXPECT_THAT(warning_with(c, "num_differnt_global_patterns"), HasSubstr("deprecated"));
}

TEST(ConfigDeprecated, AutoDefaultsAreSummarisedInOneWarning) {
  Config c = Config::parse(R"({"gradient_clipping": "auto", "fp16": {"enabled": "auto"},
                               "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}})");
  EXPECT_EQ(c.gradient_clipping, 0.0);
  EXPECT_EQ(c.optimizer.lr, 1e-3);
  ASSERT_EQ(c.warnings().size(), 1u);
  EXPECT_THAT(c.warnings()[0], HasSubstr("\"auto\" values took DeepSpeed's defaults"));
  EXPECT_THAT(c.warnings()[0], HasSubstr("optimizer.params.lr=0.001"));
  EXPECT_THAT(c.warnings()[0], HasSubstr("fp16.enabled=false"));
  EXPECT_THAT(c.warnings()[0], HasSubstr("gradient_clipping=0.0"));
}

TEST(ConfigDeprecated, EveryWarningIsOneLineNamingTheSource) {
  Config c = Config::load(config_test::data_file("hf_trainer_auto.json"));
  ASSERT_FALSE(c.warnings().empty());
  for (const auto& w : c.warnings()) {
    EXPECT_EQ(w.find('\n'), std::string::npos) << w;
    EXPECT_THAT(w, HasSubstr("hf_trainer_auto.json: "));
  }
}

}  // namespace
}  // namespace ds
