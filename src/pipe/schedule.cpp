#include "ds/pipe/schedule.h"

#include <algorithm>

#include "ds/common/error.h"

namespace ds::pipe {

namespace {

// One compute instruction of a stage, before the communication around it is added.
struct Work {
  bool forward;
  int micro_batch;
  int chunk;
};

// Megatron's order for virtual stages: the k-th forward (or backward) of a stage works on
// micro-batch group k / (stages * chunks), chunk (k / stages) % chunks (backwards: counted from
// the last chunk), micro-batch group * stages + k % stages.
Work interleaved_work(const ScheduleSpec& s, int k, bool forward) {
  const int p = s.stages, v = s.virtual_stages;
  const int in_group = k % (p * v);
  int chunk = in_group / p;
  if (!forward) chunk = v - 1 - chunk;
  return {forward, (k / (p * v)) * p + in_group % p, chunk};
}

// The compute order of one stage: `warmup` forwards, then one forward and one backward in
// turn, then the remaining backwards.
std::vector<Work> one_f_one_b(const ScheduleSpec& s, int warmup, Work (*forward_k)(const ScheduleSpec&, int, bool)) {
  const int total = s.micro_batches * s.virtual_stages;
  warmup = std::min(warmup, total);
  std::vector<Work> order;
  for (int k = 0; k < warmup; ++k) order.push_back(forward_k(s, k, true));
  for (int k = 0; k < total - warmup; ++k) {
    order.push_back(forward_k(s, warmup + k, true));
    order.push_back(forward_k(s, k, false));
  }
  for (int k = total - warmup; k < total; ++k) order.push_back(forward_k(s, k, false));
  return order;
}

Work plain_work(const ScheduleSpec&, int k, bool forward) { return {forward, k, 0}; }

std::vector<Work> compute_order(const ScheduleSpec& s, int stage) {
  std::vector<Work> order;
  switch (s.kind) {
    case Kind::kInference:
      for (int m = 0; m < s.micro_batches; ++m) order.push_back({true, m, 0});
      return order;
    case Kind::kGPipe:
      for (int m = 0; m < s.micro_batches; ++m) order.push_back({true, m, 0});
      for (int m = s.micro_batches - 1; m >= 0; --m) order.push_back({false, m, 0});
      return order;
    case Kind::kOneFOneB:
      return one_f_one_b(s, s.stages - stage - 1, plain_work);
    case Kind::kInterleaved: {
      // Megatron: with as many micro-batches as stages there is no steady phase to fill.
      const int p = s.stages, v = s.virtual_stages;
      const int warmup = s.micro_batches == p ? s.micro_batches * v : (p - stage - 1) * 2 + (v - 1) * p;
      return one_f_one_b(s, warmup, interleaved_work);
    }
  }
  return order;
}

}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kGPipe: return "gpipe";
    case Kind::kOneFOneB: return "1f1b";
    case Kind::kInterleaved: return "interleaved";
    case Kind::kInference: return "inference";
  }
  return "?";
}

Kind kind_from_name(const std::string& name) {
  for (Kind k : {Kind::kGPipe, Kind::kOneFOneB, Kind::kInterleaved, Kind::kInference})
    if (name == kind_name(k)) return k;
  throw ConfigError(ds::str("pipeline schedule '", name, "': expected gpipe, 1f1b, interleaved or inference"));
}

void validate(const ScheduleSpec& s) {
  if (s.stages < 1 || s.micro_batches < 1 || s.virtual_stages < 1)
    throw ConfigError(ds::str("pipeline schedule: stages (", s.stages, "), micro-batches (", s.micro_batches,
                              ") and virtual stages (", s.virtual_stages, ") must each be at least 1"));
  if (s.kind != Kind::kInterleaved && s.virtual_stages != 1)
    throw ConfigError(ds::str("pipeline schedule ", kind_name(s.kind), ": ", s.virtual_stages,
                              " virtual stages need the interleaved schedule"));
  if (s.kind == Kind::kInterleaved && s.stages > 1 && s.micro_batches % s.stages != 0)
    throw ConfigError(ds::str("interleaved pipeline schedule: ", s.micro_batches,
                              " micro-batches is not a multiple of the ", s.stages,
                              " stages; use a gradient_accumulation_steps that is (e.g. ",
                              (s.micro_batches / s.stages + 1) * s.stages, ")"));
}

std::vector<Step> schedule(const ScheduleSpec& s, int stage) {
  validate(s);
  if (stage < 0 || stage >= s.stages)
    throw ConfigError(ds::str("pipeline stage ", stage, " is outside 0..", s.stages - 1));
  const int p = s.stages, last = p * s.virtual_stages - 1;
  const int prev = (stage + p - 1) % p, next = (stage + 1) % p;
  std::vector<Step> steps;
  for (const Work& w : compute_order(s, stage)) {
    const int virt = w.chunk * p + stage;
    Step step;
    auto add = [&](Op op, int peer = -1) { step.push_back({op, w.micro_batch, w.chunk, peer}); };
    if (w.forward) {
      if (virt == 0) add(Op::kLoadMicroBatch);
      else add(Op::kRecvActivation, prev);
      if (virt == last && virt != 0) add(Op::kLoadMicroBatch);
      add(Op::kForward);
      if (virt != last) add(Op::kSendActivation, next);
    } else {
      if (virt != last) add(Op::kRecvGrad, next);
      add(Op::kBackward);
      if (virt != 0) add(Op::kSendGrad, prev);
    }
    steps.push_back(std::move(step));
  }
  if (s.kind != Kind::kInference)
    steps.push_back({{Op::kReduceTiedGrads}, {Op::kReduceGrads}, {Op::kOptimizerStep}});
  return steps;
}

std::string to_string(const Instruction& in) {
  static const char* names[] = {"LoadMicroBatch", "RecvActivation", "Forward", "SendActivation", "RecvGrad",
                                "Backward", "SendGrad", "ReduceTiedGrads", "ReduceGrads", "OptimizerStep"};
  std::string out = names[int(in.op)];
  if (in.micro_batch >= 0) out += ds::str("(mb ", in.micro_batch, in.chunk ? ds::str(", chunk ", in.chunk) : "",
                                          in.peer >= 0 ? ds::str(", stage ", in.peer) : "", ")");
  return out;
}

}  // namespace ds::pipe
