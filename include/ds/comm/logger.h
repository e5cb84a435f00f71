// CommsLogger: calls, bytes and time per communication operation (DeepSpeed's comms_logger).
//
//   comm->logger().set_enabled(true);
//   ... training ...
//   std::cout << comm->logger().summary();   // one row per (op, message size)
//
// "message bytes" is the size of the user's buffer; "sent bytes" is what this rank put on
// the wire (counted at the transport for Gloo; the algorithm's volume for MPI's own
// collectives). Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace ds::comm {

struct OpStats {
  int64_t calls = 0;
  int64_t message_bytes = 0;  // sum over calls
  int64_t sent_bytes = 0;     // sum over calls
  double seconds = 0.0;       // sum over calls
};

class CommsLogger {
 public:
  void set_enabled(bool enabled) { enabled_ = enabled; }
  bool enabled() const { return enabled_; }

  void record(const std::string& op, int64_t message_bytes, int64_t sent_bytes, double seconds);
  // Per op name, summed over message sizes.
  std::map<std::string, OpStats> totals() const;
  OpStats total(const std::string& op) const;
  // Per (op name, message bytes of one call).
  std::map<std::pair<std::string, int64_t>, OpStats> by_size() const;
  int64_t sent_bytes() const;  // over all ops
  void reset();
  // A table: op, message size, calls, total/avg latency, algorithmic and bus bandwidth.
  std::string summary(int world_size) const;

 private:
  mutable std::mutex mu_;
  bool enabled_ = true;
  std::map<std::pair<std::string, int64_t>, OpStats> stats_;  // (op, message bytes per call)
};

// Collectives started on this thread while a LogLabel lives are logged (and named in their
// errors) as "<label> <op>", e.g. 1-bit Adam's "compressed all_to_all": the summary then
// shows them apart from the same ops elsewhere. Labels do not nest; the innermost wins.
class LogLabel {
 public:
  explicit LogLabel(std::string label);
  ~LogLabel();
  LogLabel(const LogLabel&) = delete;
  LogLabel& operator=(const LogLabel&) = delete;
  // The op name to log for `op` on this thread.
  static std::string apply(const std::string& op);

 private:
  std::string previous_;
};

}  // namespace ds::comm
