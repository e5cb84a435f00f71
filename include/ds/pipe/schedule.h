// Pipeline schedules as data: which stage does what, in which order, for one training batch
// (or one evaluation batch), as a pure function of the pipeline's shape. Nothing here runs a
// model or talks to another rank; an executor maps each instruction to code, and `simulate`
// plays all stages against each other to check a schedule and to predict its bubble.
//
//   ds::pipe::ScheduleSpec spec{ds::pipe::Kind::kOneFOneB, /*stages=*/4, /*micro_batches=*/8};
//   for (const ds::pipe::Step& step : ds::pipe::schedule(spec, stage_id))
//     for (const ds::pipe::Instruction& in : step) executor.run(in);
//
// Kinds:
//   kGPipe        fill-drain: every forward, then every backward (in reverse micro-batch order);
//                 a stage holds all micro-batches' activations at once.
//   kOneFOneB     DeepSpeed's TrainSchedule (PipeDream-flush): stage s runs stages - s - 1
//                 forwards, then alternates one forward and one backward, then drains; at most
//                 stages - s micro-batches' activations live at once. Same bubble as GPipe.
//   kInterleaved  Megatron's interleaved 1F1B: each stage holds `virtual_stages` model chunks
//                 (stage s holds virtual stages s, s + stages, ...); micro-batches go through the
//                 chunks in groups of `stages`, and the bubble shrinks by the number of chunks.
//                 Needs micro_batches to be a multiple of stages (as Megatron does).
//   kInference    forwards only (evaluation), no backward, no optimizer step.
//
// A Step is one compute instruction with the communication around it: the receive it waits for
// first, and the send of its result after it. Sends are asynchronous (the executor posts them
// and waits at the end of the batch at the latest); receives block. Messages between two
// stages keep their order per kind (activations, gradients), as point-to-point channels do.
#pragma once

#include <string>
#include <vector>

namespace ds::pipe {

enum class Kind { kGPipe, kOneFOneB, kInterleaved, kInference };

enum class Op {
  kLoadMicroBatch,   // read micro-batch `micro_batch` (inputs on the first virtual stage, labels on the last)
  kRecvActivation,   // from `peer`: the input of the forward that follows
  kForward,
  kSendActivation,   // to `peer`: the output of the forward before
  kRecvGrad,         // from `peer`: the gradient of this chunk's output
  kBackward,
  kSendGrad,         // to `peer`: the gradient of this chunk's input
  kReduceTiedGrads,  // all-reduce the gradients of tied layers between the stages that hold them
  kReduceGrads,      // reduce the gradients over the data-parallel group
  kOptimizerStep,
};

struct Instruction {
  Op op;
  int micro_batch = -1;  // -1 for the batch-level instructions
  int chunk = 0;         // the model chunk on this stage: virtual stage chunk * stages + stage
  int peer = -1;         // the other stage of a send or receive

  bool operator==(const Instruction& o) const {
    return op == o.op && micro_batch == o.micro_batch && chunk == o.chunk && peer == o.peer;
  }
};
using Step = std::vector<Instruction>;

struct ScheduleSpec {
  Kind kind = Kind::kOneFOneB;
  int stages = 1;
  int micro_batches = 1;
  int virtual_stages = 1;  // model chunks per stage (kInterleaved only; 1 otherwise)
};

// Throws ds::ConfigError naming the values when the shape is not one the kind can schedule.
void validate(const ScheduleSpec& spec);
// The steps of stage `stage` (0-based) for one batch.
std::vector<Step> schedule(const ScheduleSpec& spec, int stage);

const char* kind_name(Kind k);
Kind kind_from_name(const std::string& name);  // gpipe | 1f1b | interleaved | inference
std::string to_string(const Instruction& in);

// All stages' schedules played against each other with compute times per model chunk
// (forward, backward of a whole stage's layers divided by virtual_stages) and instant
// communication. Throws ds::Error if a receive can never be satisfied (a deadlock), if
// a message arrives out of the order a receive expects, or if a message is never received.
struct Simulation {
  double makespan = 0;                 // time from the first instruction to the last
  double bubble = 0;                   // 1 - busy / (stages * makespan)
  std::vector<int> peak_activations;   // per stage: most micro-batch chunks forwarded, not yet backwarded
  std::vector<double> busy;            // per stage: compute time
};
Simulation simulate(const ScheduleSpec& spec, double forward_time = 1.0, double backward_time = 2.0);
// The same for programs given per stage (instructions in order): to check a hand-made or
// modified schedule of the shape `spec`.
Simulation simulate(const ScheduleSpec& spec, const std::vector<std::vector<Instruction>>& programs,
                    double forward_time = 1.0, double backward_time = 2.0);
// A stage's steps as one list of instructions.
std::vector<Instruction> flatten(const std::vector<Step>& steps);

}  // namespace ds::pipe
