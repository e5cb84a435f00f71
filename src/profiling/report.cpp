// The flops profiler's report, laid out like DeepSpeed's (summary, the top modules per depth,
// the module tree), per rank instead of per GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "ds/common/error.h"
#include "ds/profiling/flops_profiler.h"

namespace ds::profiling {

std::string si(double n, const std::string& unit, int precision) {
  const char* prefix[] = {"", "k", "M", "G", "T", "P"};
  int i = 0;
  double v = n;
  while (std::fabs(v) >= 1000.0 && i < 5) v /= 1000.0, ++i;
  char buf[64];
  if (i == 0 && v == std::floor(v))  // a small whole number: 256 params, 0 MACs
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  const std::string suffix = std::string(prefix[i]) + unit;
  return suffix.empty() ? std::string(buf) : std::string(buf) + " " + suffix;
}

namespace {

std::string fixed(double v, int precision) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

std::string seconds(double s) {
  char buf[32];
  if (s >= 1.0)
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  else
    std::snprintf(buf, sizeof buf, "%.2f ms", s * 1e3);
  return buf;
}

std::string percent(double part, double whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", whole > 0 ? 100.0 * part / whole : 0.0);
  return buf;
}

void row(std::ostringstream& out, const std::string& label, const std::string& value) {
  out << label << std::string(label.size() < 62 ? 62 - label.size() : 1, ' ') << value << "\n";
}

void summary(std::ostringstream& out, const Profile& p, const ReportOptions& o) {
  const ModuleStats& root = p.modules[0];
  const double fwd_s = root.latency_s;
  const int mp = o.tensor_parallel * o.pipeline_parallel;
  row(out, "world size:", std::to_string(o.world_size));
  row(out, "data parallel size:", std::to_string(o.data_parallel));
  if (o.sequence_parallel > 1) row(out, "sequence parallel size (Ulysses):", std::to_string(o.sequence_parallel));
  row(out, "model parallel size (tensor x pipeline):", ds::str(o.tensor_parallel, " x ", o.pipeline_parallel));
  if (o.micro_batch > 0)
    row(out, "batch size per rank (micro-batch x accumulation):", ds::str(o.micro_batch, " x ", o.accumulation));
  row(out, "params per rank:", si(double(root.params)));
  if (mp > 1) row(out, "params of model ~ params per rank * model parallel size:", si(double(root.params) * mp));
  row(out, "fwd MACs per rank:", si(p.forward_macs, "MACs"));
  row(out, "fwd flops per rank:", si(p.forward_flops));
  row(out, "bwd flops per rank (counted):",
      ds::str(si(p.backward_flops), " (", p.forward_flops > 0 ? fixed(p.backward_flops / p.forward_flops, 2) : "-",
              " x fwd)"));
  if (o.tokens_per_sample > 0 && o.micro_batch > 0) {
    const double tokens = double(o.micro_batch * o.accumulation * o.tokens_per_sample) / std::max(1, o.sequence_parallel);
    row(out, "fwd+bwd flops per token:", si((p.forward_flops + p.backward_flops) / tokens));
  }
  row(out, "fwd latency:", seconds(fwd_s));
  if (fwd_s > 0) row(out, "fwd FLOPS per rank = fwd flops / fwd latency:", si(p.forward_flops / fwd_s, "FLOPS"));
  if (o.backward_s > 0) {
    row(out, "bwd latency:", seconds(o.backward_s));
    row(out, "bwd FLOPS per rank = bwd flops / bwd latency:", si(p.backward_flops / o.backward_s, "FLOPS"));
    row(out, "fwd+bwd FLOPS per rank = (fwd + bwd flops) / (fwd + bwd latency):",
        si((p.forward_flops + p.backward_flops) / (fwd_s + o.backward_s), "FLOPS"));
  }
  if (o.optimizer_s > 0) row(out, "step latency:", seconds(o.optimizer_s));
  if (o.iteration_s > 0) {
    row(out, "iter latency:", seconds(o.iteration_s));
    const double model_rate = 3 * p.forward_flops / o.iteration_s;
    row(out, "FLOPS per rank = 3 * fwd flops / iter latency:", si(model_rate, "FLOPS"));
    if (o.micro_batch > 0)
      row(out, "samples/second:",
          fixed(double(o.micro_batch * o.accumulation * o.data_parallel) / o.iteration_s, 2));
    if (o.gemm_flops_per_s > 0) {
      row(out, ds::str("GEMM rate measured here (", o.gemm_description, "):"), si(o.gemm_flops_per_s, "FLOPS"));
      row(out, "model FLOPs utilisation (MFU) = FLOPS per rank / GEMM rate:", percent(model_rate, o.gemm_flops_per_s));
    }
  }
}

// The ops that did the arithmetic, most first (at most 6, the rest summed).
void by_op(std::ostringstream& out, const char* phase, const std::map<std::string, double>& ops, double total) {
  std::vector<std::pair<double, std::string>> v;
  for (const auto& [op, flops] : ops) v.emplace_back(flops, op);
  std::sort(v.rbegin(), v.rend());
  std::string line;
  double rest = total;
  for (size_t i = 0; i < v.size() && i < 6; ++i) {
    line += ds::str(i ? ", " : "", v[i].second, " ", percent(v[i].first, total));
    rest -= v[i].first;
  }
  if (v.size() > 6) line += ds::str(", other ", percent(rest, total));
  row(out, ds::str(phase, " flops by op:"), line.empty() ? "-" : line);
}

// The modules at each depth, most expensive first, up to top_modules of each.
void top_modules(std::ostringstream& out, const Profile& p, const ReportOptions& o, int max_depth) {
  out << "\n----------------------------- Aggregated Profile per rank -----------------------------\n";
  out << "Top " << o.top_modules << " modules in terms of params, MACs or fwd latency at different model depths:\n";
  for (int d = 0; d <= max_depth; ++d) {
    std::vector<const ModuleStats*> at;
    for (const auto& m : p.modules)
      if (m.depth == d) at.push_back(&m);
    if (at.empty()) break;
    auto list = [&](auto key, auto show) {
      std::vector<const ModuleStats*> v = at;
      std::stable_sort(v.begin(), v.end(), [&](auto* a, auto* b) { return key(*a) > key(*b); });
      v.resize(std::min(v.size(), size_t(o.top_modules)));
      std::string s = "{";
      for (size_t i = 0; i < v.size(); ++i) s += ds::str(i ? ", '" : "'", v[i]->name, "': '", show(*v[i]), "'");
      return s + "}";
    };
    out << "depth " << d << ":\n";
    out << "    params      - "
        << list([](const ModuleStats& m) { return double(m.params); },
                [](const ModuleStats& m) { return si(double(m.params)); })
        << "\n";
    out << "    MACs        - "
        << list([](const ModuleStats& m) { return m.macs; }, [](const ModuleStats& m) { return si(m.macs, "MACs"); })
        << "\n";
    out << "    fwd latency - "
        << list([](const ModuleStats& m) { return m.latency_s; }, [](const ModuleStats& m) { return seconds(m.latency_s); })
        << "\n";
  }
}

// `prefix`: the parent's name and a dot (a child is shown by its own scope name).
void tree(std::ostringstream& out, const Profile& p, size_t i, const std::string& prefix, int max_depth) {
  const ModuleStats& m = p.modules[i];
  const ModuleStats& root = p.modules[0];
  out << std::string(size_t(m.depth) * 2, ' ') << m.name.substr(prefix.size()) << " (" << si(double(m.params)) << ", "
      << percent(double(m.params), double(root.params)) << " Params, " << si(m.macs, "MACs") << ", "
      << percent(m.macs, root.macs) << " MACs, " << seconds(m.latency_s) << ", " << percent(m.latency_s, root.latency_s)
      << " latency, " << si(m.latency_s > 0 ? m.flops / m.latency_s : 0, "FLOPS")
      << (m.calls > 1 ? ds::str(", ", m.calls, " calls") : "") << ")\n";
  if (max_depth >= 0 && m.depth >= max_depth) return;
  for (size_t c : m.children) tree(out, p, c, i == 0 ? "" : m.name + ".", max_depth);
}

}  // namespace

std::string format_profile(const Profile& p, const ReportOptions& o) {
  std::ostringstream out;
  out << "\n-------------------------- deepspeed.cpp Flops Profiler --------------------------\n";
  out << "Profile Summary" << (o.step > 0 ? ds::str(" at step ", o.step) : std::string()) << " (rank " << o.rank
      << "):\n";
  out << "Notations:\ndata parallel size (dp_size), model parallel size (mp_size),\n"
         "number of parameters (params), number of multiply-accumulate operations (MACs),\n"
         "number of floating-point operations (flops), floating-point operations per second (FLOPS),\n"
         "fwd latency (forward propagation latency), bwd latency (backward propagation latency),\n"
         "step (weights update latency), iter latency (sum of fwd, bwd and step latency)\n\n";
  summary(out, p, o);
  by_op(out, "fwd", p.forward_flops_by_op, p.forward_flops);
  by_op(out, "bwd", p.backward_flops_by_op, p.backward_flops);
  int max_depth = 0;
  for (const auto& m : p.modules) max_depth = std::max(max_depth, m.depth);
  if (o.module_depth >= 0) max_depth = std::min<int>(max_depth, int(o.module_depth));
  top_modules(out, p, o, max_depth);
  if (o.detailed) {
    out << "\n------------------------------ Detailed Profile per rank ------------------------------\n"
           "Each module profile is listed after its name in the following order:\n"
           "params, percentage of total params, MACs, percentage of total MACs, fwd latency, percentage of "
           "total fwd latency, fwd FLOPS\n"
           "Note: 1) A module's values include its submodules'. 2) Ops outside every submodule count to the "
           "parent only, so the children may sum to less. 3) fwd latency is summed over the module's calls.\n\n";
    tree(out, p, 0, "", max_depth);
  }
  out << "------------------------------------------------------------------------------\n";
  return out.str();
}

}  // namespace ds::profiling
