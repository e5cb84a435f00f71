// ds::Config: the top-level schema (which section groups, in which order), parsing entry
// points, checks across sections, and to_json().
#include "ds/config/config.h"

#include <nlohmann/json.hpp>

#include "ds/common/error.h"
#include "json_text.h"
#include "sections.h"

namespace ds::config_detail {

namespace {

const Schema<Config>& root_schema() {
  static const Schema<Config> schema = [] {
    Schema<Config> r;
    r.alias("bfloat16", "bf16", /*deprecated=*/true);
    add_batch_keys(r);
    add_optimizer_sections(r);
    add_misc_sections(r);
    add_zero_sections(r);
    add_sparse_attention(r);
    add_parallel_sections(r);
    r.field("gradient_clipping", &Config::gradient_clipping, at_least(0))
        .field("steps_per_print", &Config::steps_per_print, at_least(0))
        .field("wall_clock_breakdown", &Config::wall_clock_breakdown)
        .field("memory_breakdown", &Config::memory_breakdown)
        .field("prescale_gradients", &Config::prescale_gradients)
        .field("gradient_predivide_factor", &Config::gradient_predivide_factor, above(0))
        .field("zero_allow_untested_optimizer", &Config::zero_allow_untested_optimizer)
        .field("zero_force_ds_cpu_optimizer", &Config::zero_force_ds_cpu_optimizer)
        .field("dump_state", &Config::dump_state)
        .field("dataloader_drop_last", &Config::dataloader_drop_last)
        .field("seed", &Config::seed, at_least(0));
    add_unsupported_sections(r);
    return r;
  }();
  return schema;
}

bool scheduler_param_given(const Json& root, const char* key) {
  auto scheduler = root.find("scheduler");
  if (scheduler == root.end() || !scheduler->is_object()) return false;
  auto params = scheduler->find("params");
  return params != scheduler->end() && params->is_object() && params->contains(key);
}

// Values one section takes from another once everything is read.
void fill_cross_section_defaults(Config& c, const Json& root, ParseContext& ctx) {
  SchedulerConfig& s = c.scheduler;
  bool warmup = s.type == SchedulerType::kWarmupLR || s.type == SchedulerType::kWarmupDecayLR;
  bool has_optimizer = c.optimizer.type != OptimizerType::kNone;
  if (warmup && !s.warmup_max_lr && has_optimizer) s.warmup_max_lr = c.optimizer.lr;
  // A classic surprise: WarmupDecayLR warms up to its own default, not to the optimizer's lr.
  if (s.type == SchedulerType::kWarmupDecayLR && has_optimizer &&
      !scheduler_param_given(root, "warmup_max_lr") && c.optimizer.lr != *s.warmup_max_lr) {
    ctx.warn("scheduler.params.warmup_max_lr",
             str("not given: WarmupDecayLR warms up to DeepSpeed's default ", format_number(*s.warmup_max_lr),
                 ", not to optimizer.params.lr ", format_number(c.optimizer.lr)));
  }
}

}  // namespace

void check_cross_section(const Config& c, ParseContext& ctx) {
  if (c.fp16.enabled && c.bf16.enabled) {
    ctx.fail("bf16.enabled", "fp16 and bf16 cannot both be enabled; choose one");
  }
  if (c.optimizer.type == OptimizerType::kZeroOneAdam && c.zero_optimization.stage > 0)
    ctx.fail("optimizer.type", str("ZeroOneAdam needs ZeRO stage 0 (zero_optimization.stage is ", c.zero_optimization.stage,
                                   "): its local steps update every weight on every rank from that rank's own momentum, "
                                   "so each rank holds all of the optimizer state, as in DeepSpeed; use stage 0, or "
                                   "OneBitAdam with ZeRO 1-2"));
  if (c.optimizer.type == OptimizerType::kLamb) {
    const ZeroConfig& z = c.zero_optimization;
    if (z.offload_optimizer.device == OffloadDevice::kNvme || z.offload_param.device == OffloadDevice::kNvme)
      ctx.fail(z.offload_optimizer.device == OffloadDevice::kNvme ? "zero_optimization.offload_optimizer.device"
                                                                   : "zero_optimization.offload_param.device",
               "Lamb cannot swap to NVMe: its trust ratios need every tensor's norms before any weight moves, "
               "so each step would read and write the swapped states and weight shards twice; use device \"cpu\" "
               "or \"none\", or Adam/AdamW");
  }
  if (c.optimizer.type == OptimizerType::kOneBitAdam || c.optimizer.type == OptimizerType::kOneBitLamb) {
    const ZeroConfig& z = c.zero_optimization;
    const std::string name = optimizer_type_name(c.optimizer.type);
    if (z.stage == 3)
      ctx.fail("optimizer.type", name + " works with ZeRO stages 0-2 here (DeepSpeed: stage 0 only); stage 3 "
                                        "gathers weights shard by shard and has no whole local gradient to compress; "
                                        "use stage 2 or a stage-3 optimizer such as Adam");
    if (z.offload_optimizer.device == OffloadDevice::kNvme)
      ctx.fail("zero_optimization.offload_optimizer.device", name + " cannot swap its states to NVMe (its "
                                                                    "compressed step needs every unit's whole momentum "
                                                                    "in memory); use device \"cpu\" or \"none\"");
  }
}

}  // namespace ds::config_detail

namespace ds {

Config Config::from_json(const nlohmann::json& json, const std::string& source) {
  using namespace config_detail;
  ParseContext ctx(source);
  if (!json.is_object()) ctx.fail("", str("expected a JSON object at the top level, got ", describe(json)));
  Config config;
  config.source_ = source;
  ObjectReader root(json, "", ctx);
  root_schema().read(root, config);
  root.finish();
  fill_cross_section_defaults(config, json, ctx);
  check_cross_section(config, ctx);
  config.warnings_ = ctx.take_warnings();
  return config;
}

Config Config::parse(std::string_view json_text, const std::string& source) {
  return from_json(config_detail::parse_json_text(json_text, source), source);
}

Config Config::load(const std::string& path) { return parse(config_detail::read_text_file(path), path); }

nlohmann::json Config::to_json() const { return config_detail::root_schema().write(*this); }

std::string Config::fingerprint() const {
  std::string out;
  const nlohmann::json flat = to_json().flatten();  // kept alive: items() refers into it
  for (const auto& [path, value] : flat.items()) out += path + " = " + value.dump() + "\n";
  if (resolved_)
    out += str("(layout) data ", parallel.data_parallel_size, " x pipe ", parallel.pipeline_stages, " x tensor ",
               parallel.tensor_parallel_size, " x sequence ", parallel.sequence_parallel_size, "\n");
  return out;
}

}  // namespace ds
