// The batch keys and Config::resolve(): the batch identity
//   train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x data-parallel size,
// with data-parallel size = world size / (pipeline stages x tensor-parallel size x sequence-parallel
// size) (the ranks of one sequence group read the same samples). Any two batch keys
// imply the third; train_batch_size alone or the micro batch alone mean accumulation 1 (DeepSpeed's
// _set_batch_related_parameters, but with exact division and the arithmetic in every message).
#include <algorithm>

#include "ds/common/error.h"
#include "sections.h"

namespace ds::config_detail {

namespace {

constexpr const char* kTrainBatch = "train_batch_size";
constexpr const char* kMicroBatch = "train_micro_batch_size_per_gpu";
constexpr const char* kAccumulation = "gradient_accumulation_steps";

// No step of any training run is larger: beyond it a typo (an extra digit) would only show up
// as an allocation failure minutes later.
constexpr double kMaxBatchKey = 2147483647.0;  // 2^31 - 1

// Absent, null or "auto": 0, to be derived by resolve().
void read_batch_key(ObjectReader& in, const char* key, int64_t& out) {
  out = 0;
  const Json* v = in.find(key);
  if (!v || v->is_null() || ObjectReader::is_auto(*v)) return;
  read_value(*v, in.path_of(key), in.ctx(), between(1, kMaxBatchKey), out);
}

int64_t multiply(int64_t a, int64_t b, const ParseContext& ctx, const char* path) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) ctx.fail(path, str(a, " x ", b, " overflows a 64-bit integer"));
  return product;
}

struct BatchSolver {
  const ParseContext& ctx;
  const ParallelLayout& layout;

  std::string dp_text() const {
    std::string why =
        layout.pipeline_stages * layout.tensor_parallel_size * layout.sequence_parallel_size > 1
            ? str("world size ", layout.world_size, " / (pipeline stages ", layout.pipeline_stages,
                  " x tensor-parallel size ", layout.tensor_parallel_size,
                  layout.sequence_parallel_size > 1 ? str(" x sequence_parallel_size ", layout.sequence_parallel_size)
                                                    : std::string(),
                  ")")
            : str("world size ", layout.world_size);
    return str("data-parallel size ", layout.data_parallel_size, " (", why, ")");
  }

  // `total` must split into `parts`; the quotient is the derived key.
  int64_t divide(int64_t total, int64_t parts, const std::string& parts_text, const char* derived) const {
    if (total % parts != 0) {
      ctx.fail(kTrainBatch, str("train_batch_size ", total, " is not a multiple of ", parts_text, " = ",
                                parts, ", so ", derived, " cannot be derived"));
    }
    return total / parts;
  }

  void solve(int64_t& tbs, int64_t& mbs, int64_t& gas) const {
    const int64_t dp = layout.data_parallel_size;
    if (tbs > 0 && mbs > 0 && gas > 0) {
      int64_t product = multiply(multiply(mbs, gas, ctx, kTrainBatch), dp, ctx, kTrainBatch);
      if (tbs != product) {
        ctx.fail(kTrainBatch, str("train_batch_size ", tbs, " != train_micro_batch_size_per_gpu ", mbs,
                                  " x gradient_accumulation_steps ", gas, " x ", dp_text(), " = ", product));
      }
    } else if (tbs > 0 && mbs > 0) {
      gas = divide(tbs, multiply(mbs, dp, ctx, kTrainBatch),
                   str("train_micro_batch_size_per_gpu ", mbs, " x ", dp_text()), kAccumulation);
    } else if (tbs > 0 && gas > 0) {
      mbs = divide(tbs, multiply(gas, dp, ctx, kTrainBatch),
                   str("gradient_accumulation_steps ", gas, " x ", dp_text()), kMicroBatch);
    } else if (mbs > 0 && gas > 0) {
      tbs = multiply(multiply(mbs, gas, ctx, kTrainBatch), dp, ctx, kTrainBatch);
    } else if (tbs > 0) {
      gas = 1;
      mbs = divide(tbs, dp, dp_text(), kMicroBatch);
    } else if (mbs > 0) {
      gas = 1;
      tbs = multiply(mbs, dp, ctx, kTrainBatch);
    } else {
      ctx.fail(kTrainBatch,
               str("cannot derive the batch size: set train_batch_size or ", kMicroBatch,
                   " (for \"auto\", the program passes the micro batch size to resolve(); ds-config: "
                   "--micro-batch)"));
    }
  }
};

bool needs_total_steps(SchedulerType type) {
  return type == SchedulerType::kWarmupDecayLR || type == SchedulerType::kWarmupCosineLR;
}

}  // namespace

void add_batch_keys(Schema<Config>& root) {
  const std::pair<const char*, int64_t Config::*> keys[] = {
      {kTrainBatch, &Config::train_batch_size},
      {kMicroBatch, &Config::train_micro_batch_size_per_gpu},
      {kAccumulation, &Config::gradient_accumulation_steps}};
  for (const auto& [key, member] : keys) {
    root.custom(
        [key = key, member = member](ObjectReader& in, Config& c) { read_batch_key(in, key, c.*member); },
        [key = key, member = member](const Config& c, Json& j) {
          j[key] = c.*member > 0 ? Json(c.*member) : Json("auto");
        });
  }
}

}  // namespace ds::config_detail

namespace ds {

void Config::resolve(int64_t world_size) {
  ResolveOptions options;
  options.world_size = world_size;
  resolve(options);
}

void Config::resolve(const ResolveOptions& options) {
  using namespace config_detail;
  ParseContext ctx(source_);
  if (options.world_size < 1) ctx.fail("", str("world size must be at least 1, got ", options.world_size));
  if (options.train_micro_batch_size_per_gpu < 0 || options.gradient_accumulation_steps < 0 ||
      options.total_num_steps < 0) {
    ctx.fail("", "resolve options: batch sizes and step counts must not be negative");
  }
  ParallelLayout layout;
  layout.world_size = options.world_size;
  layout.pipeline_stages = pipeline.stages > 0 ? pipeline.stages : 1;
  layout.tensor_parallel_size = tensor_parallel.autotp_size > 1 ? tensor_parallel.autotp_size : 1;
  layout.sequence_parallel_size = sequence_parallel_size;
  int64_t model_ranks = multiply(layout.pipeline_stages, layout.tensor_parallel_size, ctx, "pipeline.stages");
  model_ranks = multiply(model_ranks, layout.sequence_parallel_size, ctx, "sequence_parallel_size");
  if (layout.world_size % model_ranks != 0) {
    ctx.fail(
        layout.sequence_parallel_size > 1 ? "sequence_parallel_size"
        : layout.pipeline_stages > 1      ? "pipeline.stages"
                                          : "tensor_parallel.autotp_size",
        str("world size ", layout.world_size, " is not divisible by pipeline stages ", layout.pipeline_stages,
            " x tensor-parallel size ", layout.tensor_parallel_size,
            layout.sequence_parallel_size > 1 ? str(" x sequence_parallel_size ", layout.sequence_parallel_size)
                                              : std::string(),
            " = ", model_ranks));
  }
  layout.data_parallel_size = layout.world_size / model_ranks;
  if (layout.pipeline_stages > 1 && zero_optimization.stage >= 2) {
    ctx.fail("zero_optimization.stage",
             str("stage ", zero_optimization.stage, " cannot be combined with ", layout.pipeline_stages,
                 " pipeline stages (use stage 0 or 1, as in DeepSpeed)"));
  }

  int64_t tbs = train_batch_size, mbs = train_micro_batch_size_per_gpu, gas = gradient_accumulation_steps;
  if (mbs == 0) mbs = options.train_micro_batch_size_per_gpu;
  if (gas == 0) gas = options.gradient_accumulation_steps;
  BatchSolver{ctx, layout}.solve(tbs, mbs, gas);

  if (needs_total_steps(scheduler.type) && scheduler.total_num_steps == 0) {
    scheduler.total_num_steps = options.total_num_steps;
    if (scheduler.total_num_steps == 0) {
      ctx.warn("scheduler.params.total_num_steps",
               "\"auto\": the training program must supply the number of steps");
    }
  }
  // The run's length, when the program says it: a freeze_step past it never compresses.
  const int64_t steps = options.total_num_steps > 0 ? options.total_num_steps : scheduler.total_num_steps;
  const bool onebit = optimizer.type == OptimizerType::kOneBitAdam || optimizer.type == OptimizerType::kOneBitLamb;
  if (onebit && steps > 0 && optimizer.freeze_step >= steps) {
    ctx.warn("optimizer.params.freeze_step",
             str(optimizer.freeze_step, " is not before the run's last step (", steps, "): the momentum is never "
                 "compressed and every step is a plain ", optimizer.type == OptimizerType::kOneBitLamb ? "Lamb" : "Adam",
                 " step with full-precision all-reduces; set it to ~15-25% of the steps"));
  }
  // DeepSpeed's advice for 1-bit Lamb: the trust ratio's average must have settled by the freeze.
  if (optimizer.type == OptimizerType::kOneBitLamb && optimizer.freeze_step * (1.0 - optimizer.coeff_beta) < 1.0) {
    ctx.warn("optimizer.params.coeff_beta",
             str(format_number(optimizer.coeff_beta), " averages the trust ratio over ~",
                 format_number(1.0 / (1.0 - optimizer.coeff_beta)), " steps, more than the ", optimizer.freeze_step,
                 " warm-up steps (freeze_step): the frozen ratio is biased toward 0; lower coeff_beta or raise "
                 "freeze_step"));
  }
  train_batch_size = tbs;
  train_micro_batch_size_per_gpu = mbs;
  gradient_accumulation_steps = gas;
  parallel = layout;
  resolved_ = true;
  for (auto& w : ctx.take_warnings()) {
    if (std::find(warnings_.begin(), warnings_.end(), w) == warnings_.end())
      warnings_.push_back(std::move(w));
  }
}

}  // namespace ds
