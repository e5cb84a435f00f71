// Plays every stage's schedule against the others (ds::pipe::simulate in schedule.h).
#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include "ds/common/error.h"
#include "ds/pipe/schedule.h"

namespace ds::pipe {

namespace {

struct Message {
  int micro_batch;
  int virtual_stage;  // the sender's
  double time;
};

bool is_recv(Op op) { return op == Op::kRecvActivation || op == Op::kRecvGrad; }
bool is_send(Op op) { return op == Op::kSendActivation || op == Op::kSendGrad; }
int channel_kind(Op op) { return op == Op::kRecvActivation || op == Op::kSendActivation ? 0 : 1; }

class Simulator {
 public:
  Simulator(const ScheduleSpec& spec, std::vector<std::vector<Instruction>> programs, double forward_time,
            double backward_time)
      : spec_(spec), p_(spec.stages), programs_(std::move(programs)), pc_(size_t(p_)), clock_(size_t(p_)),
        live_(size_t(p_)), done_(size_t(p_)) {
    forward_ = forward_time / spec.virtual_stages;
    backward_ = backward_time / spec.virtual_stages;
    out_.peak_activations.assign(size_t(p_), 0);
    out_.busy.assign(size_t(p_), 0.0);
    if (programs_.size() != size_t(p_))
      throw Error(ds::str("pipeline simulation: ", programs_.size(), " programs for ", p_, " stages"));
  }

  Simulation run() {
    for (bool progress = true; progress;) {
      progress = false;
      for (int s = 0; s < p_; ++s)
        while (pc_[size_t(s)] < programs_[size_t(s)].size() && execute(s, programs_[size_t(s)][pc_[size_t(s)]])) {
          ++pc_[size_t(s)];
          progress = true;
        }
    }
    check_finished();
    out_.makespan = *std::max_element(clock_.begin(), clock_.end());
    double busy = 0;
    for (double b : out_.busy) busy += b;
    out_.bubble = out_.makespan > 0 ? 1.0 - busy / (double(p_) * out_.makespan) : 0.0;
    return out_;
  }

 private:
  // Runs one instruction of stage s; false when it is a receive whose message has not been sent.
  bool execute(int s, const Instruction& in) {
    const size_t i = size_t(s);
    const int virt = in.chunk * p_ + s;
    if (is_recv(in.op)) {
      auto& queue = channels_[{in.peer, s, channel_kind(in.op)}];
      if (queue.empty()) return false;
      const Message m = queue.front();
      const int from = in.op == Op::kRecvActivation ? virt - 1 : virt + 1;
      if (m.micro_batch != in.micro_batch || m.virtual_stage != from)
        throw Error(ds::str("pipeline schedule ", kind_name(spec_.kind), ": stage ", s, " waits for ", to_string(in),
                            " but the next message from stage ", in.peer, " is micro-batch ", m.micro_batch,
                            " of virtual stage ", m.virtual_stage));
      queue.pop_front();
      clock_[i] = std::max(clock_[i], m.time);
    } else if (is_send(in.op)) {
      channels_[{s, in.peer, channel_kind(in.op)}].push_back({in.micro_batch, virt, clock_[i]});
    } else if (in.op == Op::kForward) {
      if (!done_[i].insert({in.micro_batch, virt, true}).second) fail(s, in, "runs twice");
      compute(i, forward_, spec_.kind == Kind::kInference ? 0 : 1);
    } else if (in.op == Op::kBackward) {
      if (!done_[i].count({in.micro_batch, virt, true})) fail(s, in, "comes before its forward");
      if (!done_[i].insert({in.micro_batch, virt, false}).second) fail(s, in, "runs twice");
      compute(i, backward_, -1);
    }
    return true;
  }

  void compute(size_t i, double time, int activations) {
    clock_[i] += time;
    out_.busy[i] += time;
    live_[i] += activations;
    out_.peak_activations[i] = std::max(out_.peak_activations[i], live_[i]);
  }

  [[noreturn]] void fail(int s, const Instruction& in, const char* what) const {
    throw Error(ds::str("pipeline schedule ", kind_name(spec_.kind), ": on stage ", s, ", ", to_string(in), " ", what));
  }

  void check_finished() const {
    std::string blocked;
    for (int s = 0; s < p_; ++s)
      if (pc_[size_t(s)] < programs_[size_t(s)].size())
        blocked += ds::str(blocked.empty() ? "" : "; ", "stage ", s, " at ", to_string(programs_[size_t(s)][pc_[size_t(s)]]));
    if (!blocked.empty())
      throw Error(ds::str("pipeline schedule ", kind_name(spec_.kind), " deadlocks (", spec_.stages, " stages, ",
                          spec_.micro_batches, " micro-batches): ", blocked));
    for (const auto& [key, queue] : channels_)
      if (!queue.empty())
        throw Error(ds::str("pipeline schedule ", kind_name(spec_.kind), ": ", queue.size(), " message(s) from stage ",
                            std::get<0>(key), " to stage ", std::get<1>(key), " are never received"));
    const size_t per_stage = size_t(spec_.micro_batches) * size_t(spec_.virtual_stages);
    const size_t want = spec_.kind == Kind::kInference ? per_stage : 2 * per_stage;
    for (int s = 0; s < p_; ++s)
      if (done_[size_t(s)].size() != want)
        throw Error(ds::str("pipeline schedule ", kind_name(spec_.kind), ": stage ", s, " runs ", done_[size_t(s)].size(),
                            " forwards and backwards, not ", want));
  }

  const ScheduleSpec spec_;
  const int p_;
  double forward_ = 0, backward_ = 0;
  std::vector<std::vector<Instruction>> programs_;
  std::vector<size_t> pc_;
  std::vector<double> clock_;
  std::vector<int> live_;
  std::vector<std::set<std::tuple<int, int, bool>>> done_;  // (micro-batch, virtual stage, forward)
  std::map<std::tuple<int, int, int>, std::deque<Message>> channels_;  // (from, to, kind): FIFO
  Simulation out_;
};

}  // namespace

std::vector<Instruction> flatten(const std::vector<Step>& steps) {
  std::vector<Instruction> out;
  for (const Step& s : steps) out.insert(out.end(), s.begin(), s.end());
  return out;
}

Simulation simulate(const ScheduleSpec& spec, const std::vector<std::vector<Instruction>>& programs,
                    double forward_time, double backward_time) {
  validate(spec);
  return Simulator(spec, programs, forward_time, backward_time).run();
}

Simulation simulate(const ScheduleSpec& spec, double forward_time, double backward_time) {
  validate(spec);
  std::vector<std::vector<Instruction>> programs;
  for (int s = 0; s < spec.stages; ++s) programs.push_back(flatten(schedule(spec, s)));
  return simulate(spec, programs, forward_time, backward_time);
}

}  // namespace ds::pipe
