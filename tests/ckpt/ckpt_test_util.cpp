#include "ckpt_test_util.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ds::ckpt::test {

namespace {

UnitInfo make_unit(const std::string& name,
                   const std::vector<std::pair<std::string, std::vector<int64_t>>>& params, int64_t pad_to) {
  UnitInfo u{name, 0, 0, {}};
  for (const auto& [pname, shape] : params) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    u.slots.push_back({pname, u.numel, n, shape});
    u.numel += n;
  }
  u.padded_numel = (u.numel + pad_to - 1) / pad_to * pad_to;
  return u;
}

}  // namespace

std::vector<UnitInfo> toy_units(int64_t pad_to) {
  return {
      make_unit("root", {{"wte.weight", {7, 5}}, {"wpe.weight", {3, 5}}}, pad_to),
      make_unit("blocks.0", {{"blocks.0.w", {5, 3}}, {"blocks.0.b", {3}}, {"blocks.0.g", {1, 1, 2}}}, pad_to),
      make_unit("blocks.1", {{"blocks.1.w", {5, 3}}, {"blocks.1.b", {3}}, {"blocks.1.g", {1, 1, 2}}}, pad_to),
      make_unit("head", {{"head.scale", {}}}, pad_to)};
}

std::vector<UnitInfo> regrouped(const std::vector<UnitInfo>& units, int64_t pad_to) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> params;
  for (auto it = units.rbegin(); it != units.rend(); ++it)  // another order, too
    for (const auto& s : it->slots) params.emplace_back(s.name, s.shape);
  return {make_unit("everything", params, pad_to)};
}

FullState random_state(const std::vector<UnitInfo>& units, int n_states, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  FullState full;
  for (const auto& u : units) {
    auto fill = [&] {
      at::Tensor t = at::zeros({u.padded_numel}, at::kFloat);
      t.narrow(0, 0, u.numel).copy_(at::randn({u.numel}, gen, at::kFloat));
      return t;
    };
    full.fp32.push_back(fill());
    full.states.emplace_back();
    for (int k = 0; k < n_states; ++k) full.states.back().push_back(fill());
  }
  return full;
}

std::vector<UnitShard> part_of(const std::vector<UnitInfo>& units, const FullState& full, const Partition& p,
                               int k) {
  std::vector<UnitShard> out;
  for (size_t u = 0; u < units.size(); ++u) {
    Range r = partition_range(units[u].padded_numel, p, k);
    UnitShard s{full.fp32[u].narrow(0, r.offset, r.length).clone(), {}};
    for (const auto& st : full.states[u]) s.states.push_back(st.narrow(0, r.offset, r.length).clone());
    out.push_back(std::move(s));
  }
  return out;
}

at::Tensor param_of(const std::vector<UnitInfo>& units, const FullState& full, const std::string& name) {
  for (size_t u = 0; u < units.size(); ++u)
    for (const auto& s : units[u].slots)
      if (s.name == name) return full.fp32[u].narrow(0, s.offset, s.numel).view(s.shape);
  throw std::runtime_error("no parameter " + name);
}

Manifest toy_layout(const std::vector<UnitInfo>& units, const std::string& tag, const Partition& p,
                    int n_states) {
  Manifest m;
  m.tag = tag;
  m.dp_world_size = p.count;
  m.zero_stage = p.count > 1 ? 2 : 0;
  m.precision = "bf16";
  m.partition = p;
  m.units = units;
  m.optimizer.type = n_states == 2 ? "AdamW" : "SGD";
  for (int k = 0; k < n_states; ++k)
    m.optimizer.state_names.push_back(n_states == 2 ? (k ? "exp_avg_sq" : "exp_avg") : "momentum_buffer");
  m.engine.global_steps = 42;
  m.engine.global_samples = 42 * 32;
  m.engine.optimizer_steps = 41;
  m.engine.skipped_steps = 1;
  m.engine.scheduler_iteration = 40;
  m.engine.loss_scaler = {1024.0, 2, 42, 17};
  m.engine.data = {3, 5, 1344, 1234567890123ULL};
  m.engine.client = {{"note", "hello"}, {"best_loss", 0.25}};
  return m;
}

ModelStates toy_model_states(const std::vector<UnitInfo>& units, const FullState& full) {
  ModelStates ms;
  for (const auto& u : units)
    for (const auto& s : u.slots) ms.module.emplace_back(s.name, param_of(units, full, s.name));
  ms.module.emplace_back("head.steps", at::arange(5, at::kLong));
  // Per-tensor optimizer scalars (1-bit Lamb's): slot i gets (i, 1, 0.5).
  double i = 0;
  for (const auto& u : units)
    for (const auto& s : u.slots) ms.optimizer_tensors.emplace_back(s.name, at::tensor({i++, 1.0, 0.5}, at::kDouble));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  ms.rng_states.emplace_back("cpu", gen.get_state());
  return ms;
}

void save_as_ranks(const std::string& dir, const std::vector<UnitInfo>& units, const FullState& full,
                   const Partition& p, const std::string& tag, int n_states) {
  CheckpointWriter w(dir, toy_layout(units, tag, p, n_states));
  w.prepare();
  std::vector<FileInfo> files;
  for (int k = p.count - 1; k >= 0; --k)
    files.push_back(w.write_optimizer_part(k, part_of(units, full, p, k)));
  files.push_back(w.write_model_states(toy_model_states(units, full)));
  w.commit(files);
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // an empty tensor's data pointer may be null (memcmp must not see it)
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), size_t(x.numel()) * x.element_size()) == 0;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace ds::ckpt::test
