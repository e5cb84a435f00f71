#include "ds/data/dataset.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "ds/common/error.h"

namespace ds {

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ a) ^ b);
}

namespace {

constexpr uint64_t kHeldOutStream = 0x6865'6c64'6f75'74ull;  // held-out examples' own stream

// A synthetic task: each example is prompt + answer in one string of fixed length; the
// model reads all but the last byte and is scored on predicting the answer bytes.
class SyntheticTask final : public Dataset {
 public:
  using Generator = std::function<std::pair<std::string, std::string>(std::mt19937_64&)>;
  SyntheticTask(std::string name, std::string summary, int64_t length, uint64_t seed, Generator gen)
      : name_(std::move(name)), summary_(std::move(summary)), length_(length), seed_(seed), gen_(std::move(gen)) {}

  std::string describe() const override { return "task '" + name_ + "': " + summary_; }
  int64_t context() const override { return length_ - 1; }
  bool has_answers() const override { return true; }
  Batch batch(int64_t step, int64_t first, int64_t count) const override {
    std::vector<uint64_t> seeds;
    for (int64_t i = first; i < first + count; ++i) seeds.push_back(mix_seed(seed_, uint64_t(step), uint64_t(i)));
    return make(seeds);
  }
  Batch held_out(int64_t count) const override {
    std::vector<uint64_t> seeds;
    for (int64_t i = 0; i < count; ++i) seeds.push_back(mix_seed(seed_ ^ kHeldOutStream, 0, uint64_t(i)));
    return make(seeds);
  }

 private:
  Batch make(const std::vector<uint64_t>& seeds) const {
    const int64_t n = static_cast<int64_t>(seeds.size()), T = length_ - 1;
    at::Tensor tokens = at::empty({n, T}, at::kLong), targets = at::full({n, T}, -1, at::kLong);
    auto tk = tokens.accessor<int64_t, 2>();
    auto tg = targets.accessor<int64_t, 2>();
    for (int64_t b = 0; b < n; ++b) {
      std::mt19937_64 rng(seeds[b]);
      auto [prompt, answer] = gen_(rng);
      std::string text = prompt + answer;
      DS_CHECK(static_cast<int64_t>(text.size()) == length_, "task ", name_, " made an example of ", text.size(),
               " bytes, expected ", length_);
      for (int64_t t = 0; t < T; ++t) tk[b][t] = static_cast<uint8_t>(text[t]);
      for (int64_t t = static_cast<int64_t>(prompt.size()) - 1; t < T; ++t) tg[b][t] = static_cast<uint8_t>(text[t + 1]);
    }
    return {tokens, targets};
  }
  std::string name_, summary_;
  int64_t length_;
  uint64_t seed_;
  Generator gen_;
};

std::string digits(uint64_t value, int width) {
  std::string s(width, '0');
  for (int i = width - 1; i >= 0; --i, value /= 10) s[i] = char('0' + value % 10);
  return s;
}

}  // namespace

Batch pad_sequences(Batch b, int64_t multiple) {
  if (multiple < 1) throw Error(ds::str("pad_sequences: multiple must be >= 1, got ", multiple));
  const int64_t T = b.tokens.size(1), pad = (multiple - T % multiple) % multiple;
  if (pad == 0) return b;
  b.tokens = at::constant_pad_nd(b.tokens, {0, pad}, 0);
  b.targets = at::constant_pad_nd(b.targets, {0, pad}, -1);
  return b;
}

Batch sequence_slice(Batch b, int64_t rank, int64_t ranks) {
  if (rank < 0 || rank >= ranks) throw Error(ds::str("sequence_slice: rank ", rank, " is not one of ", ranks));
  b = pad_sequences(std::move(b), ranks);
  const int64_t length = b.tokens.size(1) / ranks;
  b.tokens = b.tokens.narrow(1, rank * length, length).contiguous();
  b.targets = b.targets.narrow(1, rank * length, length).contiguous();
  return b;
}

std::vector<std::string> task_names() { return {"reverse", "add"}; }

std::unique_ptr<Dataset> make_task(const std::string& name, uint64_t seed) {
  if (name == "reverse") {
    const int n = 8;
    return std::make_unique<SyntheticTask>(
        name, "reverse 8 random letters (\"abcdefgh=hgfedcba\")", 2 * n + 1, seed, [n](std::mt19937_64& rng) {
          std::string s;
          for (int i = 0; i < n; ++i) s += char('a' + rng() % 26);
          return std::make_pair(s + "=", std::string(s.rbegin(), s.rend()));
        });
  }
  if (name == "add") {
    const int d = 4;
    return std::make_unique<SyntheticTask>(
        name, "add two 4-digit numbers, all written least-significant digit first (\"4321+7890=12220\")",
        2 * d + 2 + d + 1, seed, [d](std::mt19937_64& rng) {
          auto reversed = [](std::string s) { return std::string(s.rbegin(), s.rend()); };
          uint64_t a = rng() % 10000, b = rng() % 10000;
          return std::make_pair(reversed(digits(a, d)) + "+" + reversed(digits(b, d)) + "=", reversed(digits(a + b, d + 1)));
        });
  }
  std::string names;
  for (const auto& t : task_names()) names += (names.empty() ? "" : ", ") + t;
  throw ConfigError(ds::str("unknown task '", name, "' (tasks: ", names, ")"));
}

std::unique_ptr<TextDataset> TextDataset::open(const std::string& path, int64_t context, uint64_t seed) {
  if (context < 1) throw ConfigError(ds::str("sequence length must be >= 1, got ", context));
  // A directory, a device (/dev/zero) or a pipe would be read until something breaks.
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    throw Error(ds::str("cannot read data file '", path, "': it does not exist"));
  if (!std::filesystem::is_regular_file(status))
    throw Error(ds::str("data file '", path, "' is not a regular file (",
                        std::filesystem::is_directory(status) ? "a directory" : "a device, pipe or socket",
                        "); give a text file"));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ds::str("cannot read data file '", path, "' (missing or not readable)"));
  std::unique_ptr<TextDataset> d(new TextDataset());
  d->bytes_.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) throw Error(ds::str("error reading data file '", path, "'"));
  const int64_t n = static_cast<int64_t>(d->bytes_.size());
  d->train_end_ = n * 9 / 10;
  if (n - d->train_end_ < context + 1 || d->train_end_ < context + 1)
    throw ConfigError(ds::str("data file '", path, "' has ", n, " bytes: too short for sequence length ", context,
                              " (need at least ", 10 * (context + 1), " bytes, or a shorter --seq-len)"));
  d->path_ = path, d->context_ = context, d->seed_ = seed;
  return d;
}

std::string TextDataset::describe() const {
  return ds::str("text '", path_, "': ", bytes_.size(), " bytes (", train_end_, " for training, the rest held out)");
}

Batch TextDataset::windows(const std::vector<int64_t>& starts) const {
  const int64_t n = static_cast<int64_t>(starts.size());
  at::Tensor tokens = at::empty({n, context_}, at::kLong), targets = at::empty({n, context_}, at::kLong);
  auto tk = tokens.accessor<int64_t, 2>();
  auto tg = targets.accessor<int64_t, 2>();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t t = 0; t < context_; ++t) {
      tk[b][t] = bytes_[starts[b] + t];
      tg[b][t] = bytes_[starts[b] + t + 1];
    }
  return {tokens, targets};
}

Batch TextDataset::batch(int64_t step, int64_t first, int64_t count) const {
  std::vector<int64_t> starts;
  const uint64_t span = static_cast<uint64_t>(train_end_ - context_);  // start + context + 1 <= train_end
  for (int64_t i = first; i < first + count; ++i)
    starts.push_back(static_cast<int64_t>(mix_seed(seed_, uint64_t(step), uint64_t(i)) % span));
  return windows(starts);
}

Batch TextDataset::held_out(int64_t count) const {
  std::vector<int64_t> starts;
  const int64_t span = static_cast<int64_t>(bytes_.size()) - train_end_ - context_;
  for (int64_t i = 0; i < count; ++i) starts.push_back(train_end_ + (i * 7919) % span);
  return windows(starts);
}

double exact_match_accuracy(const Dataset& data, const std::function<at::Tensor(const at::Tensor&)>& logits_of,
                            int64_t examples) {
  Batch b = data.held_out(examples);
  int64_t correct = 0;
  for (int64_t s = 0; s < examples; s += 256) {
    int64_t e = std::min(examples, s + 256);
    at::Tensor pred = logits_of(b.tokens.slice(0, s, e)).argmax(-1);
    at::Tensor tgt = b.targets.slice(0, s, e);
    at::Tensor wrong = (pred != tgt).logical_and(tgt != -1).any(1);
    correct += (e - s) - wrong.sum().item<int64_t>();
  }
  return examples ? double(correct) / double(examples) : 0.0;
}

double held_out_loss(const Dataset& data, const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& loss_of,
                     int64_t examples) {
  Batch b = data.held_out(examples);
  double sum = 0.0;
  int64_t chunks = 0;
  for (int64_t s = 0; s < examples; s += 64, ++chunks)
    sum += loss_of(b.tokens.slice(0, s, std::min(examples, s + 64)), b.targets.slice(0, s, std::min(examples, s + 64))).item<double>();
  return chunks ? sum / double(chunks) : 0.0;
}

}  // namespace ds
