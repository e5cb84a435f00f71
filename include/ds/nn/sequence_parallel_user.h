// A model that splits its sequences over the config's sequence group (Ulysses,
// `sequence_parallel_size` > 1) derives from this and says over how many ranks; the engine
// refuses the key for any other model: attention over a rank's own slice of the sequence
// alone would train silently on the wrong function. ds::Gpt does when built with a sequence
// group (and the pipeline's PipelineModule when a layer spec says so); a model of your own
// exchanges heads for tokens around its attention with ds::seq::all_to_all (ds/seq/ulysses.h)
// and returns the group's size. Only the size is compared: build the model with the engine's
// own group (groups.sequence), not another of the same size.
#pragma once

namespace ds::nn {

class SequenceParallelUser {
 public:
  virtual ~SequenceParallelUser() = default;
  // The ranks each sequence is split over (1: none).
  virtual int sequence_parallel_size() const = 0;
};

}  // namespace ds::nn
