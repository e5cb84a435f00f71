#include "ds/ckpt/manifest.h"

#include <limits>
#include <set>

#include "bounded_json.h"

#include "ds/ckpt/checksum.h"
#include "ds/common/error.h"

namespace ds::ckpt {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr const char* kFormatMarker = "deepspeed.cpp checkpoint";
constexpr int64_t kMaxWorld = int64_t(1) << 20;

// Typed access to a JSON object with the field's path in every error.
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {
    if (!j_.is_object()) throw Error(ds::str(where_, ": expected an object, got ", j_.type_name()));
  }
  const json& at(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end()) throw Error(ds::str(path(key), ": missing"));
    return *it;
  }
  bool has(const char* key) const { return j_.contains(key); }
  std::string path(const char* key) const { return where_ + "." + key; }
  int64_t integer(const char* key, int64_t lo = std::numeric_limits<int64_t>::min(),
                  int64_t hi = std::numeric_limits<int64_t>::max()) const {
    const json& v = at(key);
    bool fits = v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi));
    int64_t x = fits ? v.get<int64_t>() : 0;
    if (!fits || x < lo || x > hi)
      throw Error(ds::str(path(key), ": expected an integer in [", lo, ", ", hi, "], got ", v.dump()));
    return x;
  }
  uint64_t unsigned_integer(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      throw Error(ds::str(path(key), ": expected a non-negative integer, got ", v.dump()));
    return v.get<uint64_t>();
  }
  double number(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) throw Error(ds::str(path(key), ": expected a number, got ", v.dump()));
    return v.get<double>();
  }
  std::string string(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) throw Error(ds::str(path(key), ": expected a string, got ", v.dump()));
    return v.get<std::string>();
  }
  const json& array(const char* key) const {
    const json& v = at(key);
    if (!v.is_array()) throw Error(ds::str(path(key), ": expected an array, got ", v.type_name()));
    return v;
  }

 private:
  const json& j_;
  std::string where_;
};

ordered_json units_to_json_impl(const std::vector<UnitInfo>& units) {
  ordered_json out = ordered_json::array();
  for (const auto& u : units) {
    ordered_json slots = ordered_json::array();
    for (const auto& s : u.slots)
      slots.push_back(
          {{"name", s.name}, {"offset", s.offset}, {"numel", s.numel}, {"shape", s.shape}, {"split_dim", s.split_dim},
           {"split_groups", s.split_groups}});
    out.push_back({{"name", u.name}, {"numel", u.numel}, {"padded_numel", u.padded_numel}, {"mp_rank", u.mp_rank},
                   {"slots", slots}});
  }
  return out;
}

std::vector<int64_t> parse_shape(const json& j, const std::string& where) {
  if (!j.is_array() || j.size() > 64) throw Error(ds::str(where, ": expected an array of at most 64 sizes"));
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    if (!d.is_number_integer() || (d.is_number_unsigned() && d.get<uint64_t>() > uint64_t(INT64_MAX)) ||
        d.get<int64_t>() < 0)
      throw Error(ds::str(where, ": expected non-negative integer sizes, got ", j.dump()));
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

std::vector<UnitInfo> parse_units(const json& j, const std::string& where, int version) {
  std::vector<UnitInfo> units;
  for (size_t i = 0; i < j.size(); ++i) {
    Fields f(j[i], ds::str(where, "[", i, "]"));
    UnitInfo u{f.string("name"), f.integer("numel", 0), f.integer("padded_numel", 0), {}, 0};
    if (version >= 3) u.mp_rank = int(f.integer("mp_rank", 0, INT32_MAX));
    const json& slots = f.array("slots");
    for (size_t k = 0; k < slots.size(); ++k) {
      Fields s(slots[k], ds::str(f.path("slots"), "[", k, "]"));
      SlotInfo slot{s.string("name"), s.integer("offset"), s.integer("numel"),
                    parse_shape(s.at("shape"), s.path("shape")), -1};
      if (version >= 2) {
        slot.split_dim = int(s.integer("split_dim", -1, 63));
        if (version >= 3) slot.split_groups = int(s.integer("split_groups", 1, INT32_MAX));
        if (slot.split_dim >= int(slot.shape.size()))
          throw Error(ds::str(s.path("split_dim"), ": ", slot.split_dim, " is not a dimension of shape ",
                              shape_string(slot.shape)));
      }
      u.slots.push_back(std::move(slot));
    }
    units.push_back(std::move(u));
  }
  return units;
}

bool safe_file_name(const std::string& name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  for (unsigned char c : name)
    if (c == '/' || c < 0x20 || c == 0x7f) return false;
  return true;
}

void check_files(const Manifest& m, const std::string& where) {
  std::set<std::string> seen;
  for (const auto& f : m.files) {
    if (!safe_file_name(f.name)) throw Error(ds::str(where, ": unsafe file name \"", f.name, "\""));
    if (!seen.insert(f.name).second) throw Error(ds::str(where, ": file ", f.name, " is listed twice"));
  }
  std::vector<std::string> missing;
  for (int mp : m.mp_ranks()) {
    if (!seen.count(model_states_name(mp))) missing.push_back(model_states_name(mp));
    for (int k = 0; k < m.partition.count; ++k)
      if (!seen.count(optim_states_name(k, mp))) missing.push_back(optim_states_name(k, mp));
  }
  if (!missing.empty())
    throw Error(ds::str(where, ": does not list ", missing.front(), missing.size() > 1 ? " and others" : ""));
}

}  // namespace

std::vector<UnitInfo> Manifest::units_of_tensor_rank(int tensor_rank) const {
  std::vector<UnitInfo> out = units;
  for (auto& u : out)
    if (u.mp_rank % tp_world_size != tensor_rank) u.slots.clear();
  return out;
}

std::vector<int> Manifest::mp_ranks() const {
  std::set<int> ranks{0};  // mp rank 0 always saves (at least its model states)
  for (const auto& u : units) ranks.insert(u.mp_rank);
  return {ranks.begin(), ranks.end()};
}

ordered_json units_to_json(const std::vector<UnitInfo>& units) { return units_to_json_impl(units); }

std::vector<UnitInfo> units_from_json(const std::string& text, const std::string& where) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array()) throw Error(ds::str(where, ": not a JSON array of units"));
  std::vector<UnitInfo> units = parse_units(j, where, kFormatVersion);
  check_units(units, where);
  return units;
}

const FileInfo* Manifest::find_file(const std::string& name) const {
  for (const auto& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

ordered_json engine_state_to_json(const EngineState& s) {
  const auto& ls = s.loss_scaler;
  const auto& d = s.data;
  return {{"global_steps", s.global_steps},
          {"global_samples", s.global_samples},
          {"micro_steps", s.micro_steps},
          {"skipped_steps", s.skipped_steps},
          {"optimizer_steps", s.optimizer_steps},
          {"scheduler_iteration", s.scheduler_iteration},
          {"loss_scaler",
           {{"scale", ls.scale},
            {"hysteresis_left", ls.hysteresis_left},
            {"iteration", ls.iteration},
            {"last_overflow_iteration", ls.last_overflow_iteration}}},
          {"data",
           {{"epoch", d.epoch},
            {"batches_in_epoch", d.batches_in_epoch},
            {"samples", d.samples},
            {"seed", d.seed}}},
          {"client", ordered_json(s.client)}};
}

EngineState engine_state_from_json(const json& j, const std::string& where) {
  Fields f(j, where);
  EngineState s;
  s.global_steps = f.integer("global_steps", 0);
  s.global_samples = f.integer("global_samples", 0);
  s.micro_steps = f.integer("micro_steps", 0);
  s.skipped_steps = f.integer("skipped_steps", 0);
  s.optimizer_steps = f.integer("optimizer_steps", 0);
  s.scheduler_iteration = f.integer("scheduler_iteration", -1);
  Fields ls(f.at("loss_scaler"), f.path("loss_scaler"));
  s.loss_scaler = {ls.number("scale"), int(ls.integer("hysteresis_left", 0, INT32_MAX)),
                   ls.integer("iteration"), ls.integer("last_overflow_iteration")};
  Fields d(f.at("data"), f.path("data"));
  s.data = {d.integer("epoch", 0), d.integer("batches_in_epoch", 0), d.integer("samples", 0),
            d.unsigned_integer("seed")};
  if (f.has("client")) {
    if (!f.at("client").is_object()) throw Error(ds::str(f.path("client"), ": expected an object"));
    s.client = f.at("client");
  }
  return s;
}

ordered_json manifest_to_json(const Manifest& m) {
  ordered_json files = ordered_json::array();
  for (const auto& f : m.files)
    files.push_back({{"name", f.name}, {"bytes", f.bytes}, {"xxh64", to_hex(f.xxh64)}});
  return {{"format", kFormatMarker},
          {"format_version", kFormatVersion},  // what this build writes, whatever was read
          {"tag", m.tag},
          {"producer", m.producer},
          {"world", {{"dp", m.dp_world_size}, {"pp", m.pp_world_size}, {"tp", m.tp_world_size}}},
          {"zero_stage", m.zero_stage},
          {"precision", m.precision},
          {"partition", {{"scheme", to_string(m.partition.scheme)}, {"count", m.partition.count}}},
          {"optimizer", {{"type", m.optimizer.type}, {"state_names", m.optimizer.state_names}}},
          {"units", units_to_json_impl(m.units)},
          {"engine_state", engine_state_to_json(m.engine)},
          {"files", files}};
}

std::string manifest_text(const Manifest& m) {
  ordered_json j = manifest_to_json(m);
  std::string out = "{\n";
  size_t i = 0;
  for (const auto& [key, value] : j.items()) {
    out += " " + ordered_json(key).dump() + ": ";
    if (key == "units") {
      out += "[\n";
      for (size_t u = 0; u < value.size(); ++u) {
        const auto& unit = value[u];
        out += ds::str("  {\"name\": ", unit["name"].dump(), ", \"numel\": ", unit["numel"].dump(),
                       ", \"padded_numel\": ", unit["padded_numel"].dump(), ", \"mp_rank\": ", unit["mp_rank"].dump(),
                       ", \"slots\": [\n");
        for (size_t k = 0; k < unit["slots"].size(); ++k)
          out += "   " + unit["slots"][k].dump() + (k + 1 < unit["slots"].size() ? ",\n" : "\n");
        out += std::string("  ]}") + (u + 1 < value.size() ? ",\n" : "\n");
      }
      out += " ]";
    } else if (key == "files") {
      out += "[\n";
      for (size_t k = 0; k < value.size(); ++k)
        out += "  " + value[k].dump() + (k + 1 < value.size() ? ",\n" : "\n");
      out += " ]";
    } else if (key == "engine_state") {
      std::string text = value.dump(1);
      for (size_t at = text.find('\n'); at != std::string::npos; at = text.find('\n', at + 2))
        text.insert(at + 1, " ");
      out += text;
    } else {
      out += value.dump();
    }
    out += ++i < j.size() ? ",\n" : "\n";
  }
  return out + "}\n";
}

void check_layout(const Manifest& m, const std::string& what) {
  check_tag(m.tag);
  auto in = [](int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  if (!in(m.dp_world_size, 1, kMaxWorld) || !in(m.pp_world_size, 1, kMaxWorld) ||
      !in(m.tp_world_size, 1, kMaxWorld))
    throw Error(ds::str(what, ": world sizes must be in [1, ", kMaxWorld, "]"));
  if (!in(m.zero_stage, 0, 3)) throw Error(ds::str(what, ": zero_stage ", m.zero_stage, " is not 0..3"));
  for (const auto& u : m.units)
    if (!in(u.mp_rank, 0, int64_t(m.pp_world_size) * m.tp_world_size - 1))
      throw Error(ds::str(what, ": unit ", u.name, " has mp_rank ", u.mp_rank, " but there are ",
                          int64_t(m.pp_world_size) * m.tp_world_size, " model-parallel ranks (pp x tp)"));
  if (!in(m.partition.count, 1, kMaxWorld))
    throw Error(ds::str(what, ": partition count ", m.partition.count, " is not in [1, ", kMaxWorld, "]"));
  if (!m.engine.client.is_object())
    throw Error(ds::str(what, ": engine_state.client must be a JSON object, got ", m.engine.client.type_name()));
  if (m.precision != "fp32" && m.precision != "bf16" && m.precision != "fp16")
    throw Error(ds::str(what, ": precision \"", m.precision, "\" is not fp32, bf16 or fp16"));
  std::set<std::string> names;
  for (const auto& n : m.optimizer.state_names)
    if (n.empty() || n == "fp32" || !names.insert(n).second)
      throw Error(ds::str(what, ": optimizer state name \"", n, "\" is empty, reserved or repeated"));
  // Each tensor rank's units are a model of their own (the same names hold other slices).
  for (int r = 0; r < m.tp_world_size; ++r) {
    std::vector<UnitInfo> mine;
    for (const auto& u : m.units)
      if (u.mp_rank % m.tp_world_size == r) mine.push_back(u);
    if (!mine.empty() || r == 0) check_units(mine, m.tp_world_size > 1 ? ds::str(what, " (tensor rank ", r, ")") : what);
  }
}

Manifest parse_manifest(const std::string& text, const std::string& path) {
  json j;
  try {
    j = detail::parse_bounded_json(text.begin(), text.end(), path);
  } catch (const json::exception& e) {
    throw Error(ds::str(path, ": not valid JSON (", e.what(), ")"));
  }
  Fields f(j, path);
  if (!f.has("format") || f.at("format") != kFormatMarker)
    throw Error(
        ds::str(path, ": not a deepspeed.cpp checkpoint manifest (no \"format\": \"", kFormatMarker, "\")"));
  Manifest m;
  m.format_version = int(f.integer("format_version", 1, INT32_MAX));
  if (m.format_version > kFormatVersion)
    throw Error(ds::str(path, ": format_version ", m.format_version,
                        " was written by a newer deepspeed.cpp; this "
                        "build reads version ",
                        kFormatVersion));
  m.tag = f.string("tag");
  m.producer = f.string("producer");
  Fields world(f.at("world"), f.path("world"));
  m.dp_world_size = int(world.integer("dp", 1, kMaxWorld));
  m.pp_world_size = int(world.integer("pp", 1, kMaxWorld));
  m.tp_world_size = int(world.integer("tp", 1, kMaxWorld));
  m.zero_stage = int(f.integer("zero_stage", 0, 3));
  m.precision = f.string("precision");
  Fields part(f.at("partition"), f.path("partition"));
  try {
    m.partition.scheme = partition_scheme_from_string(part.string("scheme"));
  } catch (const Error& e) {
    throw Error(ds::str(part.path("scheme"), ": ", e.what()));
  }
  m.partition.count = int(part.integer("count", 1, kMaxWorld));
  Fields opt(f.at("optimizer"), f.path("optimizer"));
  m.optimizer.type = opt.string("type");
  for (const auto& n : opt.array("state_names")) {
    if (!n.is_string()) throw Error(ds::str(opt.path("state_names"), ": expected strings"));
    m.optimizer.state_names.push_back(n.get<std::string>());
  }
  m.units = parse_units(f.array("units"), f.path("units"), m.format_version);
  m.engine = engine_state_from_json(f.at("engine_state"), f.path("engine_state"));
  const json& files = f.array("files");
  for (size_t i = 0; i < files.size(); ++i) {
    Fields e(files[i], ds::str(f.path("files"), "[", i, "]"));
    auto digest = parse_hex64(e.string("xxh64"));
    if (!digest) throw Error(ds::str(e.path("xxh64"), ": expected 16 hex digits"));
    m.files.push_back({e.string("name"), e.integer("bytes", 0), *digest});
  }
  check_layout(m, path);
  check_files(m, ds::str(path, ": files"));
  return m;
}

}  // namespace ds::ckpt
