#include "ds/tp/random.h"

#include <ATen/ATen.h>

#include <mutex>

#include "ds/common/error.h"
#include "ds/nn/checkpointing.h"
#include "ds/nn/rng.h"

namespace ds::tp {

namespace {

constexpr uint64_t kMegatronOffset = 2718;

std::mutex mu;
at::Tensor stream;  // the tensor-parallel stream's generator state; undefined until seeded

at::Tensor stream_state() {
  std::lock_guard<std::mutex> lock(mu);
  return stream.defined() ? stream.clone() : at::Tensor();
}

void set_stream_state(const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(mu);
  stream = state.defined() ? state.clone() : at::Tensor();
}

}  // namespace

void seed_rng(uint64_t seed, const Group& group) {
  const uint64_t rank = group ? uint64_t(group->rank()) : 0;
  nn::seed_cpu_rng(seed + kMegatronOffset + rank);
  set_stream_state(nn::cpu_rng_state());
  nn::seed_cpu_rng(seed);
  static const bool registered = [] {
    checkpointing::register_rng_stream(stream_state, set_stream_state);
    return true;
  }();
  (void)registered;
}

ForkRng::ForkRng() {
  at::Tensor s = stream_state();
  if (!s.defined()) throw Error("ds::tp::ForkRng: call ds::tp::seed_rng(seed, tensor_group) first");
  saved_ = nn::cpu_rng_state();
  nn::set_cpu_rng_state(s);
}

ForkRng::~ForkRng() {
  set_stream_state(nn::cpu_rng_state());
  nn::set_cpu_rng_state(saved_);
}

}  // namespace ds::tp
