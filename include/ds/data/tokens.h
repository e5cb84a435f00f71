// Pre-tokenized corpora, as Python tokenizers write them:
//   llm.c   a 256 x int32 header (magic 20240520, version 1: uint16 tokens / 2: uint32, the
//           token count), then the tokens, little-endian
//   nanoGPT raw uint16 tokens (train.bin / val.bin), no header
// Training windows of context + 1 tokens are drawn like TextDataset's (by seed, step and
// index in the global batch); held-out windows come from `val_path` when given, else from the
// file's last 10 %. Windows are read with pread: nothing of the file is kept in memory, so a
// rank's RSS does not grow with the corpus (mapped pages would count in it as they are touched).
//
//   ds::TokenDataset::Options o;  o.path = "fineweb_train_000001.bin";  o.context = 1024;
//   auto data = ds::TokenDataset::open(o);   data->vocab_size();
#pragma once

#include <memory>
#include <string>

#include "ds/data/dataset.h"

namespace ds {

class TokenDataset final : public Dataset {
 public:
  enum class Format { kAuto, kLlmc, kNanoGpt };
  struct Options {
    std::string path, val_path;  // val_path "" = the last 10 % of path
    int64_t context = 64;
    uint64_t seed = 0;
    int64_t vocab_size = 0;      // 0: the largest token in the files + 1
    Format format = Format::kAuto;  // auto: llm.c by its magic; nanoGPT for files named train.bin / val.bin
  };
  // Throws ds::Error (ds::ConfigError for options) naming the file and what is wrong: a missing
  // file, a wrong magic or version, a size that is not whole tokens, a token >= vocab_size,
  // fewer tokens than two windows.
  static std::unique_ptr<TokenDataset> open(const Options& options);
  ~TokenDataset() override;

  std::string describe() const override;
  int64_t context() const override { return context_; }
  int64_t vocab_size() const override { return vocab_size_; }
  Batch batch(int64_t step, int64_t first, int64_t count) const override;
  Batch held_out(int64_t count) const override;

  struct File;  // an open token file (tokens.cpp)

 private:
  TokenDataset() = default;
  Batch windows(const File& file, const std::vector<int64_t>& starts) const;
  std::unique_ptr<File> train_, val_;
  int64_t train_end_ = 0, val_begin_ = 0, val_end_ = 0;  // in tokens
  int64_t context_ = 0, vocab_size_ = 0;
  uint64_t seed_ = 0;
};

}  // namespace ds
