// A user's own LibTorch model trained with deepspeed.cpp: a small MLP that learns
// y = sin(3x) + x^2 / 2 on [-1, 1]. Run it on one process, or on several with
//   ds-launch --num_procs 2 ./custom_model ds_config.json
#include <ds/deepspeed.h>
#include <torch/torch.h>

#include <cstdio>

struct MlpImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, out{nullptr};
  MlpImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(1, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 64));
    out = register_module("out", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return out(torch::tanh(fc2(torch::tanh(fc1(x))))); }
};
TORCH_MODULE(Mlp);

int main(int argc, char** argv) {
  try {
    torch::manual_seed(0);
    Mlp model;
    // Ranks from the environment (ds-launch), config read and resolved; one unit per Linear.
    auto engine_ptr = ds::initialize(model.ptr(), argc > 1 ? argv[1] : "ds_config.json");
    ds::Engine& engine = *engine_ptr;
    const ds::Config& config = engine.config();
    const int64_t micro = config.train_micro_batch_size_per_gpu;
    double first = 0, last = 0;
    for (int step = 0; step < 300; ++step) {
      for (int64_t m = 0; m < config.gradient_accumulation_steps; ++m) {
        torch::Tensor x = torch::rand({micro, 1}) * 2 - 1;
        torch::Tensor y = torch::sin(3 * x) + x * x / 2;
        torch::Tensor loss = engine.forward([&] { return torch::mse_loss(model->forward(x), y); });
        engine.backward(loss);
      }
      if (auto s = engine.step()) (step == 0 ? first : last) = s->loss;
    }
    if (engine.comm().rank() == 0) std::printf("custom_model: loss %.4f -> %.4f\n", first, last);
    return last < first / 10 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "custom_model: error: %s\n", e.what());
    return 1;
  }
}
