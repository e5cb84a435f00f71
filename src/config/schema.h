// Internal: a small schema mechanism that reads a JSON object into a struct and writes it back.
//
// A Schema<T> lists, once per key, the JSON name, the struct member and its limits. The same
// list reads (type and range checks, "auto", aliases) and writes (to_json), so key names live
// in one place. The member's initial value is the default. ObjectReader tracks the JSON path and
// the keys looked up; whatever was not looked up is an unknown key.
//
//   static const Schema<AioConfig> schema = Schema<AioConfig>()
//       .alias("thread_count", "intra_op_parallelism", /*deprecated=*/true)
//       .field("block_size", &AioConfig::block_size, at_least(1))
//       .field("single_submit", &AioConfig::single_submit);
//   ObjectReader in = root.child("aio");
//   schema.read(in, config.aio);
//   in.finish();  // "aio.blok_size: unknown key (did you mean "block_size"?)"
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ds::config_detail {

using Json = nlohmann::json;

// Per-parse state: the name messages start with, warnings, and the keys that were "auto".
class ParseContext {
 public:
  explicit ParseContext(std::string source) : source_(std::move(source)) {}

  // Throws ds::ConfigError("<source>: <path>: <message>"), always a single line.
  [[noreturn]] void fail(const std::string& path, const std::string& message) const;
  void warn(const std::string& path, const std::string& message);
  // `path` was "auto" and took `value` (a DeepSpeed default); summarised in one warning.
  void note_auto(const std::string& path, const std::string& value);
  // The warnings, with the "auto" summary last.
  std::vector<std::string> take_warnings();
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::string> warnings_;
  std::vector<std::string> autos_;
};

// "<source>: <path>: <message>" on one line (control characters replaced).
std::string format_message(const std::string& source, const std::string& path, const std::string& message);
std::string join_path(const std::string& parent, const std::string& key);
// A JSON value for messages: `string "abc"`, `number 0.5`, `boolean true`, `null`, `an object`.
std::string describe(const Json& value);
std::string quote(const std::string& text);
std::string format_number(double value);
// Numbers compare by value (5e8 == 500000000); everything else by JSON equality.
bool same_value(const Json& a, const Json& b);

// Constraints on a value; for lists they apply to every element.
struct Limits {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false;
  std::vector<std::string> choices;  // strings: allowed values, matched ignoring case
  bool required = false;             // absent or "auto" is an error
};
inline Limits at_least(double v) {
  Limits l;
  l.min = v;
  return l;
}
inline Limits above(double v) {
  Limits l;
  l.min = v;
  l.min_exclusive = true;
  return l;
}
inline Limits between(double lo, double hi) {
  Limits l;
  l.min = lo;
  l.max = hi;
  return l;
}
inline Limits one_of(std::vector<std::string> c) {
  Limits l;
  l.choices = std::move(c);
  return l;
}
inline Limits required(Limits l = {}) {
  l.required = true;
  return l;
}

// Read one JSON value into a C++ value; a mismatch fails through `ctx` naming `path`.
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                bool& out);
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                int64_t& out);
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                double& out);
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::string& out);
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::vector<int64_t>& out);
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::vector<std::string>& out);
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::array<double, 2>& out);
template <class M>
void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::optional<M>& out) {
  if (v.is_null()) {
    out.reset();
    return;
  }
  M value{};
  read_value(v, path, ctx, lim, value);
  out = std::move(value);
}

template <class M>
Json write_value(const M& v) {
  return Json(v);
}
template <class M>
Json write_value(const std::optional<M>& v) {
  return v ? write_value(*v) : Json(nullptr);
}

// Names of an enum's values as written in JSON; reading ignores case, writing uses the first spelling.
template <class E>
using EnumNames = std::vector<std::pair<std::string, E>>;

// Index of the entry of `names` that `v` spells (ignoring case); fails listing the names otherwise.
size_t match_name(const Json& v, const std::string& path, const ParseContext& ctx,
                  const std::vector<std::string>& names);

template <class E>
E read_enum(const Json& v, const std::string& path, const ParseContext& ctx, const EnumNames<E>& names) {
  std::vector<std::string> spellings;
  for (const auto& n : names) spellings.push_back(n.first);
  return names[match_name(v, path, ctx, spellings)].second;
}
template <class E>
std::string enum_name(E value, const EnumNames<E>& names) {
  for (const auto& n : names)
    if (n.second == value) return n.first;
  return "";
}

// One JSON object being read: its path, the keys looked up so far, aliases applied.
class ObjectReader {
 public:
  // `value` must be an object; null reads as an empty object.
  ObjectReader(const Json& value, std::string path, ParseContext& ctx);

  const std::string& path() const { return path_; }
  ParseContext& ctx() const { return *ctx_; }
  // The path of `key` as the user wrote it (an alias keeps its original name).
  std::string path_of(const std::string& key) const;
  bool has(const std::string& key) const { return object_.contains(key); }
  // The value of `key` (nullptr when absent); either way the key becomes known.
  const Json* find(const std::string& key);

  // Reads `key` into `out` when present and not "auto"; returns whether it did.
  template <class M>
  bool read(const std::string& key, M& out, const Limits& lim = {}) {
    const Json* v = present_value(key, lim);
    if (!v) return false;
    if (is_auto(*v)) {
      ctx_->note_auto(path_of(key), write_value(out).dump());
      return false;
    }
    read_value(*v, path_of(key), *ctx_, lim, out);
    return true;
  }
  template <class E>
  bool read_enum(const std::string& key, E& out, const EnumNames<E>& names, const Limits& lim = {}) {
    const Json* v = present_value(key, lim);
    if (!v) return false;
    if (is_auto(*v)) {
      ctx_->note_auto(path_of(key), quote(enum_name(out, names)));
      return false;
    }
    out = ds::config_detail::read_enum(*v, path_of(key), *ctx_, names);
    return true;
  }

  // The object under `key`; absent or null reads as empty.
  ObjectReader child(const std::string& key);
  // Moves `from` to `to`. Both present: equal values are accepted, different ones fail.
  void alias(const std::string& from, const std::string& to, bool deprecated);
  void set(const std::string& key, Json value) { object_[key] = std::move(value); }
  // Keys not looked up fail as "<unknown> (did you mean ...?)"; `unknown` defaults to "unknown key".
  void finish(const std::string& unknown = "unknown key") const;

  static bool is_auto(const Json& v) { return v.is_string() && v.get_ref<const std::string&>() == "auto"; }

 private:
  const Json* present_value(const std::string& key, const Limits& lim);

  Json object_;
  std::string path_;
  ParseContext* ctx_;
  std::vector<std::string> known_;
  std::map<std::string, std::string> written_as_;  // canonical key -> key as written
};

// Keys DeepSpeed knows that change nothing here: type-checked; a non-default value is a warning.
void check_ignored(ObjectReader& in, const std::string& key, const Json& default_value,
                   const std::string& why);
// Keys DeepSpeed knows that deepspeed.cpp cannot honour: a non-default value is an error.
void check_unsupported(ObjectReader& in, const std::string& key, const Json& default_value,
                       const std::string& feature);

template <class T>
class Schema {
 public:
  using ReadFn = std::function<void(ObjectReader&, T&)>;
  using WriteFn = std::function<void(const T&, Json&)>;

  template <class M>
  Schema& field(const std::string& key, M T::*member, Limits lim = {}) {
    return custom([=](ObjectReader& in, T& t) { in.read(key, t.*member, lim); },
                  [=](const T& t, Json& j) { j[key] = write_value(t.*member); });
  }
  template <class E>
  Schema& choice(const std::string& key, E T::*member, EnumNames<E> names) {
    return custom([=](ObjectReader& in, T& t) { in.read_enum(key, t.*member, names); },
                  [=](const T& t, Json& j) { j[key] = enum_name(t.*member, names); });
  }
  // An enum that may be absent (null, or "auto": left empty).
  template <class E>
  Schema& optional_choice(const std::string& key, std::optional<E> T::*member, EnumNames<E> names) {
    return custom(
        [=](ObjectReader& in, T& t) {
          const Json* v = in.find(key);
          if (!v || v->is_null() || ObjectReader::is_auto(*v)) return;
          t.*member = ds::config_detail::read_enum(*v, in.path_of(key), in.ctx(), names);
        },
        [=](const T& t, Json& j) {
          j[key] = (t.*member) ? Json(enum_name(*(t.*member), names)) : Json(nullptr);
        });
  }
  // A nested object read with `sub`, which must outlive this schema (a function-local static).
  template <class S>
  Schema& object(const std::string& key, S T::*member, const Schema<S>& sub) {
    const Schema<S>* s = &sub;
    return custom(
        [=](ObjectReader& in, T& t) {
          ObjectReader c = in.child(key);
          s->read(c, t.*member);
          c.finish();
        },
        [=](const T& t, Json& j) { j[key] = s->write(t.*member); });
  }
  Schema& alias(std::string from, std::string to, bool deprecated) {
    aliases_.push_back({std::move(from), std::move(to), deprecated});
    return *this;
  }
  Schema& ignored(std::string key, Json default_value, std::string why = "") {
    return custom([=](ObjectReader& in, T&) { check_ignored(in, key, default_value, why); });
  }
  Schema& unsupported(std::string key, Json default_value, std::string feature) {
    return custom([=](ObjectReader& in, T&) { check_unsupported(in, key, default_value, feature); });
  }
  // Steps run in the order they were added; `write` may be empty (nothing written).
  Schema& custom(ReadFn read, WriteFn write = nullptr) {
    steps_.push_back({std::move(read), std::move(write)});
    return *this;
  }

  void read(ObjectReader& in, T& t) const {
    for (const auto& a : aliases_) in.alias(a.from, a.to, a.deprecated);
    for (const auto& s : steps_)
      if (s.first) s.first(in, t);
  }
  Json write(const T& t) const {
    Json j = Json::object();
    for (const auto& s : steps_)
      if (s.second) s.second(t, j);
    return j;
  }

 private:
  struct Alias {
    std::string from, to;
    bool deprecated;
  };
  std::vector<Alias> aliases_;
  std::vector<std::pair<ReadFn, WriteFn>> steps_;
};

}  // namespace ds::config_detail
