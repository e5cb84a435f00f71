// Token files written by Python (an independent writer): llm.c's v1 (uint16) and v2 (uint32)
// and nanoGPT's raw uint16 files read back token for token, windows drawn like text's, a
// separate held-out file, and every malformed file one line.
#include "ds/data/tokens.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "support/errors.h"
#include "support/files.h"

namespace ds {
namespace {

// Token i of a written file: spread over the vocabulary, every value checkable.
int64_t token_at(int64_t i, int64_t vocab) { return (i * 7919 + 13) % vocab; }

// python3 writes `n` tokens in `format` ("v1", "v2", "raw") to `path`; `mangle` is applied to
// the header fields (magic, version, count) before writing.
void write_tokens(const std::string& path, const std::string& format, int64_t n, int64_t vocab,
                  const std::string& mangle = "") {
  const std::string script = ds::str(
      "import struct,sys\n"
      "n, vocab = ", n, ", ", vocab, "\n",
      "toks = [(i * 7919 + 13) % vocab for i in range(n)]\n"
      "magic, version, count = 20240520, ", format == "v2" ? 2 : 1, ", n\n", mangle, "\n",
      "with open(sys.argv[1], 'wb') as f:\n"
      "    if '", format, "' != 'raw':\n"
      "        f.write(struct.pack('<256i', magic, version, count, *([0] * 253)))\n"
      "    f.write(struct.pack('<%d%s' % (n, 'I' if '", format, "' == 'v2' else 'H'), *toks))\n");
  test::TempDir dir("ds_tok_script");
  const std::string py = dir.write("w.py", script);
  ASSERT_EQ(std::system(("/usr/bin/python3 " + py + " " + path).c_str()), 0) << script;
}

TokenDataset::Options options(const std::string& path, int64_t context = 16) {
  TokenDataset::Options o;
  o.path = path, o.context = context, o.seed = 5;
  return o;
}

TEST(TokenFiles, EveryFormatReadsBackWhatPythonWrote) {
  test::TempDir dir("ds_tokens");
  struct Case {
    std::string format, name;
    int64_t vocab;
  } cases[] = {{"v1", "a.bin", 50257}, {"v2", "b.bin", 100000}, {"raw", "train.bin", 50257}};
  for (const Case& c : cases) {
    const int64_t n = 5000;
    const std::string path = dir.file(c.name);
    write_tokens(path, c.format, n, c.vocab);
    auto data = TokenDataset::open(options(path));
    int64_t largest = 0;
    for (int64_t i = 0; i < n; ++i) largest = std::max(largest, token_at(i, c.vocab));
    EXPECT_EQ(data->vocab_size(), largest + 1) << c.format;
    // Every window is consecutive file tokens, targets shifted by one, within the first 90 %.
    const Batch b = data->batch(3, 0, 8);
    ASSERT_EQ(b.tokens.sizes(), (at::IntArrayRef{8, 16}));
    for (int64_t r = 0; r < 8; ++r) {
      const int64_t first = b.tokens[r][0].item<int64_t>();
      int64_t start = -1;
      for (int64_t i = 0; i < n * 9 / 10 && start < 0; ++i)
        if (token_at(i, c.vocab) == first && token_at(i + 1, c.vocab) == b.tokens[r][1].item<int64_t>()) start = i;
      ASSERT_GE(start, 0) << c.format;
      for (int64_t t = 0; t < 16; ++t) {
        EXPECT_EQ(b.tokens[r][t].item<int64_t>(), token_at(start + t, c.vocab));
        EXPECT_EQ(b.targets[r][t].item<int64_t>(), token_at(start + t + 1, c.vocab));
      }
    }
    // The same step's examples do not depend on how the batch is split.
    EXPECT_TRUE(at::equal(data->batch(3, 4, 4).tokens, b.tokens.slice(0, 4, 8)));
    EXPECT_NE(data->describe().find(c.format == "raw" ? "nanoGPT uint16" : "llm.c v"), std::string::npos);
  }
}

TEST(TokenFiles, TheVocabularyIsTheLargestTokenOrTheGivenSize) {
  test::TempDir dir("ds_tokens_vocab");
  write_tokens(dir.file("a.bin"), "v1", 3000, 1000);
  EXPECT_EQ(TokenDataset::open(options(dir.file("a.bin")))->vocab_size(), 1000);  // 999 occurs
  auto o = options(dir.file("a.bin"));
  o.vocab_size = 50257;
  EXPECT_EQ(TokenDataset::open(o)->vocab_size(), 50257);
  o.vocab_size = 500;
  EXPECT_ERROR_HAS(TokenDataset::open(o), "holds token 999, outside --vocab-size 500 (raise it to at least 1000)");
}

TEST(TokenFiles, AHeldOutFileIsReadForHeldOutWindows) {
  test::TempDir dir("ds_tokens_val");
  write_tokens(dir.file("train.bin"), "raw", 4000, 300);
  write_tokens(dir.file("val.bin"), "raw", 100, 300);
  auto o = options(dir.file("train.bin"));
  o.val_path = dir.file("val.bin");
  auto data = TokenDataset::open(o);
  const Batch h = data->held_out(4);
  EXPECT_EQ(h.tokens[0][0].item<int64_t>(), token_at(0, 300));  // the held-out file's first window
  EXPECT_NE(data->describe().find("held out: '" + dir.file("val.bin") + "', 100 tokens"), std::string::npos);
}

TEST(TokenFiles, MalformedFilesAreOneLineNamingTheProblem) {
  test::TempDir dir("ds_tokens_bad");
  write_tokens(dir.file("magic.bin"), "v1", 1000, 100, "magic = 12345");
  EXPECT_ERROR_HAS(TokenDataset::open(options(dir.file("magic.bin"))),
                   "not llm.c's format (magic 12345, expected 20240520); for nanoGPT's raw uint16 tokens pass "
                   "--data-format nanogpt");
  write_tokens(dir.file("version.bin"), "v1", 1000, 100, "version = 3");
  EXPECT_ERROR_HAS(TokenDataset::open(options(dir.file("version.bin"))), "llm.c format version 3 is unknown");
  write_tokens(dir.file("count.bin"), "v1", 1000, 100, "count = 2000");
  EXPECT_ERROR_HAS(TokenDataset::open(options(dir.file("count.bin"))),
                   "3024 bytes, but the header announces 2000 tokens of 2 bytes");
  dir.write("train.bin", std::string(2001, 'x'));
  EXPECT_ERROR_HAS(TokenDataset::open(options(dir.file("train.bin"))), "2001 bytes is not a whole number of uint16 tokens");
  write_tokens(dir.file("short.bin"), "v1", 100, 100);
  EXPECT_ERROR_HAS(TokenDataset::open(options(dir.file("short.bin"), 64)), "too few for");
  EXPECT_ERROR_HAS(TokenDataset::open(options(dir.file("missing.bin"))), "it does not exist");
}

}  // namespace
}  // namespace ds
