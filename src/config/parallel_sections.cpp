// "pipeline" and "tensor_parallel", and the DeepSpeed features deepspeed.cpp knows but rejects.
#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "sections.h"

namespace ds::config_detail {

namespace {

using P = PipelineConfig;
using T = TensorParallelConfig;

// "auto" (DeepSpeed's default: the PipelineModule decides) or a stage count.
void read_stages(ObjectReader& in, P& p) {
  const Json* v = in.find("stages");
  if (!v || ObjectReader::is_auto(*v)) return;
  read_value(*v, in.path_of("stages"), in.ctx(), at_least(1), p.stages);
}

// "parameters" | "uniform" | "best" | "type:<regex>", compared ignoring case as DeepSpeed does.
void read_partition(ObjectReader& in, P& p) {
  const Json* v = in.find("partition");
  if (!v) return;
  std::string path = in.path_of("partition");
  std::string method;
  read_value(*v, path, in.ctx(), {}, method);
  for (const char* m : {"parameters", "uniform", "best"}) {
    if (iequals(method, m)) {
      p.partition = m;
      return;
    }
  }
  if (method.size() > 5 && iequals(method.substr(0, 5), "type:")) {
    p.partition = method;
    return;
  }
  in.ctx().fail(
      path, str("expected \"parameters\", \"uniform\", \"best\" or \"type:<regex>\", got ", describe(*v)));
}

const Schema<P>& pipeline_schema() {
  static const Schema<P> s =
      Schema<P>()
          .custom(read_stages,
                  [](const P& p, Json& j) { j["stages"] = p.stages > 0 ? Json(p.stages) : Json("auto"); })
          .custom(read_partition, [](const P& p, Json& j) { j["partition"] = p.partition; })
          .field("seed_layers", &P::seed_layers)
          .field("activation_checkpoint_interval", &P::activation_checkpoint_interval, at_least(0))
          .field("pipe_partitioned", &P::pipe_partitioned)
          .field("grad_partitioned", &P::grad_partitioned);
  return s;
}

// DeepSpeed's nested {"tp": {"tp_size": N}} (alias "tensor_parallel") means the same as autotp_size N.
void read_tp_subsection(ObjectReader& in, T& t) {
  in.alias("tensor_parallel", "tp", false);
  ObjectReader tp = in.child("tp");
  int64_t tp_size = 1;
  bool given = tp.read("tp_size", tp_size, at_least(1));
  check_ignored(tp, "tp_grain_size", 1, "uneven partitioning is not used");
  tp.finish();
  if (!given || tp_size == 1) return;
  if (t.autotp_size > 1 && t.autotp_size != tp_size) {
    in.ctx().fail(
        join_path(in.path_of("tp"), "tp_size"),
        str(tp_size, " conflicts with autotp_size ", t.autotp_size, "; give one tensor-parallel size"));
  }
  t.autotp_size = tp_size;
}

const Schema<T>& tensor_parallel_schema() {
  static const Schema<T> s = Schema<T>()
                                 .alias("kernel_inject", "replace_with_kernel_inject", false)
                                 .field("autotp_size", &T::autotp_size, at_least(0))
                                 .field("tp_overlap_comm", &T::tp_overlap_comm)
                                 .custom(read_tp_subsection,
                                         [](const T& t, Json& j) {
                                           j["tp"] = {{"tp_size", t.autotp_size > 1 ? t.autotp_size : 1}};
                                         })
                                 .ignored("dtype", nullptr, "the precision comes from fp16/bf16")
                                 .unsupported("partition_config", nullptr, "custom AutoTP partition rules")
                                 .unsupported("preset_model", nullptr, "AutoTP model presets")
                                 .unsupported("injection_policy_tuple", nullptr, "AutoTP injection policies")
                                 .unsupported("keep_module_on_host", false, "keep_module_on_host")
                                 .unsupported("replace_with_kernel_inject", false, "kernel injection");
  return s;
}

// A DeepSpeed feature deepspeed.cpp rejects when it is switched on.
struct UnsupportedSection {
  const char* key;
  const char* flag;  // key that switches it on; "" = present means on; "*" = any nested "enabled": true
  const char* feature;
};

const UnsupportedSection kUnsupportedSections[] = {
    {"amp", "enabled", "NVIDIA Apex AMP (use fp16 or bf16)"},
    {"elasticity", "enabled", "elastic training"},
    {"compression_training", "*", "compression training"},
    {"data_efficiency", "enabled", "data efficiency (data sampling / routing)"},
    {"curriculum_learning", "enabled", "curriculum learning"},
    {"autotuning", "enabled", "the autotuner"},
    {"quantize_training", "enabled", "quantize training (MoQ)"},
    {"progressive_layer_drop", "enabled", "progressive layer drop"},
    {"eigenvalue", "enabled", "eigenvalue computation"},
    {"hybrid_engine", "enabled", "the hybrid engine"},
    {"nebula", "enabled", "Nebula checkpointing"},
    {"torch_autocast", "enabled", "torch autocast"},
    {"compile", "deepcompile", "DeepCompile"},
    {"weight_quantization", "", "weight quantization"},
};

// The path of the first nested "enabled": true, or "".
std::string find_enabled(const Json& v, const std::string& path) {
  if (v.is_object()) {
    for (const auto& item : v.items()) {
      std::string p = join_path(path, item.key());
      if (item.key() == "enabled" && item.value().is_boolean() && item.value().get<bool>()) return p;
      std::string found = find_enabled(item.value(), p);
      if (!found.empty()) return found;
    }
  }
  return "";
}

void check_unsupported_section(ObjectReader& root, const UnsupportedSection& s) {
  const Json* v = root.find(s.key);
  if (!v || v->is_null()) return;
  std::string path = root.path_of(s.key);
  if (!v->is_object()) root.ctx().fail(path, str("expected an object, got ", describe(*v)));
  std::string flag = s.flag;
  std::string on_path;
  if (flag.empty()) {
    on_path = path;
  } else if (flag == "*") {
    on_path = find_enabled(*v, path);
  } else if (auto it = v->find(flag); it != v->end()) {
    bool on = false;
    read_value(*it, join_path(path, flag), root.ctx(), {}, on);
    if (on) on_path = join_path(path, flag);
  }
  if (on_path.empty()) return;
  std::string fix =
      flag.empty() ? "remove it" : str("remove it or set ", flag == "*" ? "enabled" : flag, "=false");
  root.ctx().fail(on_path, str("deepspeed.cpp does not support ", s.feature, "; ", fix));
}

}  // namespace

void add_parallel_sections(Schema<Config>& root) {
  root.object("pipeline", &Config::pipeline, pipeline_schema())
      .object("tensor_parallel", &Config::tensor_parallel, tensor_parallel_schema())
      .field("sequence_parallel_size", &Config::sequence_parallel_size, between(1, 1 << 20))
      .unsupported("expert_parallel", nullptr, "expert parallelism (MoE)");
}

void add_unsupported_sections(Schema<Config>& root) {
  root.custom([](ObjectReader& in, Config&) {
        for (const auto& s : kUnsupportedSections) check_unsupported_section(in, s);
      })
      .unsupported("sparse_gradients", false, "sparse (CSR) gradients")
      .ignored("disable_allgather", false)
      .ignored("vocabulary_size", nullptr, "DeepSpeed only checks its alignment")
      .ignored("graph_harvesting", false, "CUDA graphs")
      .ignored("timers", nullptr, "throughput is always timed");
}

}  // namespace ds::config_detail
