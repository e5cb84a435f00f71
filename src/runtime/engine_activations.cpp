// The engine's side of activation checkpointing: the config's `activation_checkpointing`
// section becomes ds::checkpointing's options (the model decides what it checkpoints, as with
// DeepSpeed's deepspeed.checkpointing.checkpoint), a start-up line says what each key does
// here, the first step checks that the model checkpointed anything, and `profile` prints the
// checkpointed calls' times every steps_per_print.
#include <cstdio>

#include "ds/comm/communicator.h"
#include "ds/common/error.h"
#include "ds/nn/checkpointing.h"
#include "ds/runtime/engine.h"

namespace ds {

void Engine::configure_activation_checkpointing() {
  const ActivationCheckpointingConfig& a = config_.activation_checkpointing;
  checkpointing::Options o;
  o.contiguous = a.contiguous_memory_optimization;
  o.number_checkpoints = a.number_checkpoints.value_or(0);
  o.profile = a.profile;
  std::shared_ptr<comm::Communicator> tensor = groups_.tensor;
  if (a.partition_activations && tensor->size() > 1) {
    o.partition.rank = tensor->rank();
    o.partition.size = tensor->size();
    o.partition.all_gather = [tensor](at::Tensor& out, const at::Tensor& piece) { tensor->all_gather(out, piece).wait(); };
  }
  checkpointing_token_ = checkpointing::configure(o);  // throws for contiguous without number_checkpoints
  checkpointing::reset_stats();
  if (!a.present || groups_.world->rank() != 0) return;
  std::string line = "[ds] activation checkpointing (the model checkpoints what it passes to ds::checkpointing::checkpoint):";
  line += a.partition_activations
              ? (tensor->size() > 1 ? ds::str(" saved inputs split across the tensor group of ", tensor->size(), ";")
                                    : std::string(" partition_activations has no tensor group to split across;"))
              : "";
  if (a.contiguous_memory_optimization)
    line += ds::str(" saved inputs in one buffer of ", o.number_checkpoints, " slots;");
  if (a.cpu_checkpointing) line += " cpu_checkpointing: saved inputs are in host memory already (CPU build);";
  if (a.synchronize_checkpoint_boundary) line += " synchronize_checkpoint_boundary: CPU operations are synchronous;";
  if (a.profile) line += " profile every steps_per_print;";
  line.pop_back();
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void Engine::report_activation_checkpointing(int64_t step) {
  const ActivationCheckpointingConfig& a = config_.activation_checkpointing;
  if (!a.present || groups_.world->rank() != 0) return;
  const checkpointing::Stats s = checkpointing::stats();
  if (step == 1 && s.calls == 0)
    std::fprintf(stderr, "warning: activation_checkpointing is set but the first step checkpointed nothing: the "
                         "model decides what to recompute by calling ds::checkpointing::checkpoint (ds::Gpt does it "
                         "per block with GptConfig::checkpoint_blocks, which ds-train sets from this section)\n");
  const int64_t every = config_.steps_per_print.value_or(0);
  if (a.profile && every > 0 && step % every == 0) {
    std::printf("[ds] step %lld | %s\n", static_cast<long long>(step), s.describe().c_str());
    std::fflush(stdout);
    checkpointing::reset_stats();
  }
}

}  // namespace ds
