// Datasets for ds-train: byte-level tokens (vocabulary 256), examples addressed by
// (step, index in the global batch) so that the data a step sees depends only on the seed
// and the global batch size, never on how the batch is split over ranks and micro-batches.
//
//   auto data = ds::make_task("reverse", /*seed=*/1234);           // embedded, no files
//   auto text = ds::TextDataset::open("input.txt", /*context=*/64, 1234);
//   ds::Batch b = data->batch(step, /*first=*/rank * micro, /*count=*/micro);
//   double acc = ds::exact_match_accuracy(*data, model_fn, 512);    // held-out
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ds {

struct Batch {
  at::Tensor tokens;   // [B, T] int64
  at::Tensor targets;  // [B, T] int64; -1 where no loss is taken
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::string describe() const = 0;
  // Tokens per example fed to the model (the model's context must be at least this).
  virtual int64_t context() const = 0;
  // Examples first .. first+count-1 of the global batch of `step` (training stream).
  virtual Batch batch(int64_t step, int64_t first, int64_t count) const = 0;
  // `count` held-out examples, never drawn by batch().
  virtual Batch held_out(int64_t count) const = 0;
  // Whether exact-match accuracy of the answer is meaningful (synthetic tasks).
  virtual bool has_answers() const { return false; }
  // Tokens are 0 .. vocab_size() - 1 (bytes: 256).
  virtual int64_t vocab_size() const { return 256; }
};

// Embedded synthetic tasks that need no files:
//   "reverse":  8 random letters, '=', the same letters reversed  (e.g. "qxbmafgk=kgfambxq")
//   "add":      two 4-digit numbers and their sum, every number least-significant digit
//               first, so that carries flow left to right   (e.g. "4321+7890=12220": 1234+987=2221)
// The loss is taken on the answer only; exact-match accuracy is the share of held-out
// examples whose whole answer is predicted right (greedy, which under teacher forcing is
// the same as every answer token being the arg-max).
std::vector<std::string> task_names();
std::unique_ptr<Dataset> make_task(const std::string& name, uint64_t seed);

// Any text file as bytes: training windows are drawn from the first 90 %, held-out windows
// from the last 10 %. Throws ds::Error for a missing/unreadable file or one shorter than
// two windows of context + 1 bytes.
class TextDataset final : public Dataset {
 public:
  static std::unique_ptr<TextDataset> open(const std::string& path, int64_t context, uint64_t seed);
  std::string describe() const override;
  int64_t context() const override { return context_; }
  Batch batch(int64_t step, int64_t first, int64_t count) const override;
  Batch held_out(int64_t count) const override;

 private:
  TextDataset() = default;
  Batch windows(const std::vector<int64_t>& starts) const;
  std::string path_;
  std::vector<uint8_t> bytes_;
  int64_t context_ = 0, train_end_ = 0;
  uint64_t seed_ = 0;
};

// `b` with every sequence padded at its end to a multiple of `multiple` tokens: token 0,
// target -1 (no loss is taken there, and under causal attention no earlier position sees
// them). Sequence parallelism splits sequences so padded into equal slices.
Batch pad_sequences(Batch b, int64_t multiple);
// Slice `rank` of `ranks` equal slices of every padded sequence (tokens and targets): what a
// rank of a sequence group trains on.
Batch sequence_slice(Batch b, int64_t rank, int64_t ranks);

// Share of examples whose answer tokens (targets != -1) are all arg-max of the logits that
// `logits_of(tokens)` returns; evaluated in chunks of 256.
double exact_match_accuracy(const Dataset& data, const std::function<at::Tensor(const at::Tensor&)>& logits_of,
                            int64_t examples);
// Mean loss over held-out examples, using `loss_of(tokens, targets)`.
double held_out_loss(const Dataset& data, const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& loss_of,
                     int64_t examples);

// A 64-bit mix of (seed, a, b): the per-example random stream (splitmix64).
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b);

}  // namespace ds
