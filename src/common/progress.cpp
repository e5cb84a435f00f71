#include "ds/common/progress.h"

#include <cstdio>
#include <cstdlib>

#include "ds/common/strings.h"

namespace ds {

namespace {

double seconds_from_env(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  return end && *end == '\0' && s >= 0 ? s : fallback;
}

}  // namespace

Progress::Progress(bool enabled, std::string what, double total, Unit unit, std::string noun)
    : enabled_(enabled),
      what_(std::move(what)),
      noun_(std::move(noun)),
      total_(total),
      quiet_(seconds_from_env("DS_PROGRESS_QUIET", 2.0)),
      every_(seconds_from_env("DS_PROGRESS_EVERY", 10.0)),
      next_(quiet_),
      unit_(unit),
      start_(std::chrono::steady_clock::now()) {}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::amount(double v) const {
  if (unit_ == Unit::kBytes) return format_bytes(v);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

void Progress::advance(double n) {
  done_ += n;
  if (!enabled_ || finished_) return;
  const double t = elapsed();
  if (t < next_) return;
  const int percent = total_ > 0 ? int(100.0 * done_ / total_) : 0;
  std::printf("[ds] %s: %d%% (%s of %s%s) after %.1f s\n", what_.c_str(), percent, amount(done_).c_str(),
              amount(total_).c_str(), noun_.empty() ? "" : (" " + noun_).c_str(), t);
  std::fflush(stdout);
  printed_ = true;
  next_ = t + every_;
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_ || !printed_) return;
  std::printf("[ds] %s: done (%s%s) in %.1f s\n", what_.c_str(), amount(total_).c_str(),
              noun_.empty() ? "" : (" " + noun_).c_str(), elapsed());
  std::fflush(stdout);
}

}  // namespace ds
