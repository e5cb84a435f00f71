#include "ds/comm/logger.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "ds/common/strings.h"

namespace ds::comm {

namespace {
thread_local std::string current_label;
}  // namespace

LogLabel::LogLabel(std::string label) : previous_(std::move(current_label)) { current_label = std::move(label); }
LogLabel::~LogLabel() { current_label = std::move(previous_); }
std::string LogLabel::apply(const std::string& op) { return current_label.empty() ? op : current_label + " " + op; }

void CommsLogger::record(const std::string& op, int64_t message_bytes, int64_t sent_bytes, double seconds) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  OpStats& s = stats_[{op, message_bytes}];
  s.calls += 1;
  s.message_bytes += message_bytes;
  s.sent_bytes += sent_bytes;
  s.seconds += seconds;
}

std::map<std::string, OpStats> CommsLogger::totals() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, OpStats> out;
  for (const auto& [key, s] : stats_) {
    OpStats& t = out[key.first];
    t.calls += s.calls;
    t.message_bytes += s.message_bytes;
    t.sent_bytes += s.sent_bytes;
    t.seconds += s.seconds;
  }
  return out;
}

std::map<std::pair<std::string, int64_t>, OpStats> CommsLogger::by_size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

OpStats CommsLogger::total(const std::string& op) const {
  auto all = totals();
  auto it = all.find(op);
  return it == all.end() ? OpStats{} : it->second;
}

int64_t CommsLogger::sent_bytes() const {
  int64_t sum = 0;
  for (const auto& [op, s] : totals()) sum += s.sent_bytes;
  return sum;
}

void CommsLogger::reset() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.clear();
}

namespace {
// nccl-tests' bus-bandwidth factors: what each rank must move relative to the message.
double bus_factor(const std::string& labelled, int n) {
  if (n <= 1) return 1.0;
  const std::string op = labelled.substr(labelled.rfind(' ') + 1);  // without a LogLabel's prefix
  if (op == "all_reduce") return 2.0 * (n - 1) / n;
  if (op == "reduce_scatter" || op == "all_gather" || op == "all_to_all") return double(n - 1) / n;
  return 1.0;
}
}  // namespace

std::string CommsLogger::summary(int world_size) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  char line[384];
  int width = 16;  // the op column fits the longest (labelled) name
  for (const auto& [key, s] : stats_) width = std::max(width, int(std::min<size_t>(key.first.size(), 64)));
  std::snprintf(line, sizeof line, "%-*s %12s %8s %14s %12s %12s %12s %12s\n", width, "op", "msg size", "calls",
                "sent/call", "total ms", "avg ms", "algbw GB/s", "busbw GB/s");
  os << line;
  for (const auto& [key, s] : stats_) {
    double avg = s.calls ? s.seconds / s.calls : 0.0;
    double algbw = avg > 0 ? key.second / avg / 1e9 : 0.0;
    std::snprintf(line, sizeof line, "%-*s %12s %8lld %14s %12.3f %12.3f %12.3f %12.3f\n", width, key.first.c_str(),
                  format_bytes(double(key.second)).c_str(), static_cast<long long>(s.calls),
                  format_bytes(s.calls ? double(s.sent_bytes) / s.calls : 0.0).c_str(), s.seconds * 1e3,
                  avg * 1e3, algbw, algbw * bus_factor(key.first, world_size));
    os << line;
  }
  return os.str();
}

}  // namespace ds::comm
