#include "schema.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::config_detail {

// ---- messages ----

std::string format_message(const std::string& source, const std::string& path, const std::string& message) {
  std::string line = path.empty() ? str(source, ": ", message) : str(source, ": ", path, ": ", message);
  for (char& c : line)
    if (std::iscntrl(static_cast<unsigned char>(c))) c = ' ';
  return line;
}

void ParseContext::fail(const std::string& path, const std::string& message) const {
  throw ConfigError(format_message(source_, path, message));
}

void ParseContext::warn(const std::string& path, const std::string& message) {
  warnings_.push_back(format_message(source_, path, message));
}

void ParseContext::note_auto(const std::string& path, const std::string& value) {
  autos_.push_back(str(path, "=", value));
}

std::vector<std::string> ParseContext::take_warnings() {
  std::vector<std::string> out = std::move(warnings_);
  if (!autos_.empty()) {
    std::string list;
    for (const auto& a : autos_) list += (list.empty() ? "" : ", ") + a;
    out.push_back(format_message(source_, "",
                                 str("\"auto\" values took DeepSpeed's defaults (the Hugging Face ",
                                     "Trainer would fill them from its arguments): ", list)));
  }
  warnings_.clear();
  autos_.clear();
  return out;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string quote(const std::string& text) {
  constexpr size_t kMax = 60;
  std::string shown = text.size() > kMax ? text.substr(0, kMax) + "..." : text;
  return Json(shown).dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string format_number(double value) {
  char buf[40];
  if (std::isfinite(value) && value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", value);
  } else {
    std::snprintf(buf, sizeof buf, "%g", value);
  }
  return buf;
}

std::string describe(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return value.get<bool>() ? "boolean true" : "boolean false";
    case Json::value_t::number_integer:
      return str("number ", value.get<int64_t>());
    case Json::value_t::number_unsigned:
      return str("number ", value.get<uint64_t>());
    case Json::value_t::number_float:
      return "number " + format_number(value.get<double>());
    case Json::value_t::string:
      return "string " + quote(value.get_ref<const std::string&>());
    case Json::value_t::object:
      return "an object";
    case Json::value_t::array:
      return "an array";
    default:
      return "an unexpected value";
  }
}

bool same_value(const Json& a, const Json& b) {
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
  return a == b;
}

// ---- scalar readers ----

namespace {

std::string range_text(const Limits& lim, bool integer) {
  bool lo = std::isfinite(lim.min), hi = std::isfinite(lim.max);
  if (lo && hi && !lim.min_exclusive) {
    return integer ? str(" in ", format_number(lim.min), "..", format_number(lim.max))
                   : str(" in [", format_number(lim.min), ", ", format_number(lim.max), "]");
  }
  std::string text;
  if (lo) text += str(lim.min_exclusive ? " > " : " >= ", format_number(lim.min));
  if (hi) text += str(lo ? " and" : "", " <= ", format_number(lim.max));
  return text;
}

void check_range(double x, const std::string& path, const ParseContext& ctx, const Limits& lim, bool integer,
                 const Json& v) {
  bool below = lim.min_exclusive ? !(x > lim.min) : x < lim.min;
  if (below || x > lim.max) {
    ctx.fail(path, str("expected ", integer ? "an integer" : "a number", range_text(lim, integer), ", got ",
                       describe(v)));
  }
}

}  // namespace

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits&, bool& out) {
  if (!v.is_boolean()) ctx.fail(path, str("expected a boolean (true or false), got ", describe(v)));
  out = v.get<bool>();
}

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                int64_t& out) {
  constexpr double kLimit = 9.2e18;  // inside int64_t, so the cast below is exact enough
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    ctx.fail(path, str("expected an integer", range_text(lim, true), ", got ", describe(v), " (too large)"));
  }
  if (v.is_number_integer()) {
    out = v.get<int64_t>();
  } else if (v.is_number_float()) {
    // DeepSpeed configs write sizes as 5e8: integral floats are integers.
    double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > kLimit) {
      ctx.fail(path, str("expected an integer", range_text(lim, true), ", got ", describe(v)));
    }
    out = static_cast<int64_t>(d);
  } else {
    ctx.fail(path, str("expected an integer", range_text(lim, true), ", got ", describe(v)));
  }
  check_range(static_cast<double>(out), path, ctx, lim, true, v);
}

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                double& out) {
  if (!v.is_number()) ctx.fail(path, str("expected a number", range_text(lim, false), ", got ", describe(v)));
  out = v.get<double>();
  if (!std::isfinite(out)) ctx.fail(path, str("expected a finite number, got ", describe(v)));
  check_range(out, path, ctx, lim, false, v);
}

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::string& out) {
  if (!lim.choices.empty()) {
    out = lim.choices[match_name(v, path, ctx, lim.choices)];
    return;
  }
  if (!v.is_string()) ctx.fail(path, str("expected a string, got ", describe(v)));
  out = v.get<std::string>();
}

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::vector<int64_t>& out) {
  if (!v.is_array()) ctx.fail(path, str("expected a list of integers, got ", describe(v)));
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t x = 0;
    read_value(v[i], str(path, "[", i, "]"), ctx, lim, x);
    out.push_back(x);
  }
}

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::vector<std::string>& out) {
  if (!v.is_array()) ctx.fail(path, str("expected a list of strings, got ", describe(v)));
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    std::string s;
    read_value(v[i], str(path, "[", i, "]"), ctx, lim, s);
    out.push_back(s);
  }
}

void read_value(const Json& v, const std::string& path, const ParseContext& ctx, const Limits& lim,
                std::array<double, 2>& out) {
  if (!v.is_array() || v.size() != 2) ctx.fail(path, str("expected a list of 2 numbers, got ", describe(v)));
  for (size_t i = 0; i < 2; ++i) read_value(v[i], str(path, "[", i, "]"), ctx, lim, out[i]);
}

size_t match_name(const Json& v, const std::string& path, const ParseContext& ctx,
                  const std::vector<std::string>& names) {
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + quote(n);
  if (!v.is_string()) ctx.fail(path, str("expected one of ", list, ", got ", describe(v)));
  const std::string& s = v.get_ref<const std::string&>();
  for (size_t i = 0; i < names.size(); ++i)
    if (iequals(names[i], s)) return i;
  std::string guess = nearest(s, names);
  ctx.fail(path, str("expected one of ", list, ", got ", describe(v),
                     guess.empty() ? "" : str(" (did you mean ", quote(guess), "?)")));
}

// ---- ObjectReader ----

ObjectReader::ObjectReader(const Json& value, std::string path, ParseContext& ctx)
    : object_(value.is_null() ? Json::object() : value), path_(std::move(path)), ctx_(&ctx) {
  if (!object_.is_object()) ctx.fail(path_, str("expected an object, got ", describe(value)));
}

std::string ObjectReader::path_of(const std::string& key) const {
  auto it = written_as_.find(key);
  return join_path(path_, it == written_as_.end() ? key : it->second);
}

const Json* ObjectReader::find(const std::string& key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.push_back(key);
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &*it;
}

const Json* ObjectReader::present_value(const std::string& key, const Limits& lim) {
  const Json* v = find(key);
  if (lim.required && (!v || is_auto(*v))) {
    ctx_->fail(path_of(key), v ? "\"auto\" is not possible here: deepspeed.cpp cannot derive it, set a value"
                               : "required key is missing");
  }
  return v;
}

ObjectReader ObjectReader::child(const std::string& key) {
  const Json* v = find(key);
  return ObjectReader(v ? *v : Json(nullptr), path_of(key), *ctx_);
}

void ObjectReader::alias(const std::string& from, const std::string& to, bool deprecated) {
  if (!has(from)) return;
  find(from);
  std::string from_path = path_of(from);
  std::string advice = deprecated ? str("deprecated, use ", quote(to), " instead") : "";
  if (has(to)) {
    if (!same_value(object_[from], object_[to])) {
      ctx_->fail(from_path, str("conflicts with ", quote(to), " (", describe(object_[from]), " vs ",
                                describe(object_[to]), "); give only ", quote(to)));
    }
    if (deprecated) ctx_->warn(from_path, advice + " (same value given under both names)");
  } else {
    object_[to] = object_[from];
    written_as_[to] = from;
    if (deprecated) ctx_->warn(from_path, advice);
  }
  object_.erase(from);
}

void ObjectReader::finish(const std::string& unknown) const {
  for (const auto& item : object_.items()) {
    const std::string& key = item.key();
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string guess = nearest(key, known_);
    std::string hint;
    if (!guess.empty()) {
      hint = str(" (did you mean ", quote(guess), "?)");
    } else if (!known_.empty() && known_.size() <= 16) {
      std::string list;
      for (const auto& k : known_) list += (list.empty() ? "" : ", ") + k;
      hint = str(" (valid keys: ", list, ")");
    }
    ctx_->fail(join_path(path_, key), unknown + hint);
  }
}

// ---- known keys without effect ----

namespace {

// Fails unless `v` has the JSON type of `default_value` (any type when the default is null).
void check_same_type(const Json& v, const Json& default_value, const std::string& path,
                     const ParseContext& ctx) {
  bool ok = default_value.is_null() || (default_value.is_boolean() && v.is_boolean()) ||
            (default_value.is_number() && v.is_number()) || (default_value.is_string() && v.is_string());
  if (!ok) {
    const char* expected = default_value.is_boolean()  ? "a boolean (true or false)"
                           : default_value.is_number() ? "a number"
                                                       : "a string";
    ctx.fail(path, str("expected ", expected, ", got ", describe(v)));
  }
}

}  // namespace

void check_ignored(ObjectReader& in, const std::string& key, const Json& default_value,
                   const std::string& why) {
  const Json* v = in.find(key);
  if (!v || ObjectReader::is_auto(*v)) return;
  check_same_type(*v, default_value, in.path_of(key), in.ctx());
  if (!same_value(*v, default_value)) {
    in.ctx().warn(in.path_of(key),
                  str("has no effect in deepspeed.cpp", why.empty() ? "" : " (" + why + ")", "; ignored"));
  }
}

void check_unsupported(ObjectReader& in, const std::string& key, const Json& default_value,
                       const std::string& feature) {
  const Json* v = in.find(key);
  if (!v || ObjectReader::is_auto(*v)) return;
  check_same_type(*v, default_value, in.path_of(key), in.ctx());
  if (!same_value(*v, default_value)) {
    std::string fix =
        default_value.is_null() ? "remove it" : str("remove it or set it to ", default_value.dump());
    in.ctx().fail(in.path_of(key), str("deepspeed.cpp does not support ", feature, "; ", fix));
  }
}

}  // namespace ds::config_detail
