// A long silent phase (swap-file creation, stage 3's first gathers, loading weights) that
// says what it is doing only when it is slow: nothing if it ends within `quiet` seconds
// (default 2), else a line then, one every `every` seconds (default 10) with how far it is,
// and one at the end with the time it took. Lines go to stdout as "[ds] ..." on the ranks
// that enable it (rank 0).
//
//   ds::Progress p(rank0, "writing the optimizer's swap files", double(bytes), ds::Progress::Unit::kBytes);
//   for (...) { ...; p.advance(double(chunk)); }
//   p.finish();
//   // [ds] writing the optimizer's swap files: 41% (1.23 of 3.00 GiB) after 2.0 s
//   // [ds] writing the optimizer's swap files: done (3.00 GiB) in 7.9 s
//
// DS_PROGRESS_QUIET and DS_PROGRESS_EVERY (seconds) override the defaults.
#pragma once

#include <chrono>
#include <string>

namespace ds {

class Progress {
 public:
  enum class Unit { kCount, kBytes };
  // `noun`: what a count counts ("units"); unused for bytes.
  Progress(bool enabled, std::string what, double total, Unit unit = Unit::kCount, std::string noun = "");
  void advance(double n = 1);
  // The end line, if anything was printed. Destroying without finish() (an exception) prints nothing.
  void finish();
  bool printed() const { return printed_; }

 private:
  std::string amount(double v) const;
  double elapsed() const;

  bool enabled_;
  std::string what_, noun_;
  double total_, done_ = 0, quiet_, every_, next_;
  Unit unit_;
  bool printed_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace ds
