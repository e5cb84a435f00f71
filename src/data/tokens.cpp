// Pre-tokenized corpora (see ds/data/tokens.h): llm.c's and nanoGPT's .bin files, read with
// pread window by window.
#include "ds/data/tokens.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ds/common/error.h"

namespace ds {

namespace {

constexpr int32_t kLlmcMagic = 20240520;
constexpr int64_t kHeaderBytes = 256 * 4;

std::string base_name(const std::string& path) { return std::filesystem::path(path).filename().string(); }

}  // namespace

struct TokenDataset::File {
  std::string path, format;
  int fd = -1;
  int64_t offset = 0;  // of the first token
  int width = 2;       // bytes per token
  int64_t count = 0;   // tokens
  int64_t max_token = -1;

  ~File() {
    if (fd >= 0) ::close(fd);
  }

  void read(int64_t first, int64_t n, void* out) const {
    const size_t bytes = size_t(n) * size_t(width);
    size_t done = 0;
    while (done < bytes) {
      const ssize_t r = ::pread(fd, static_cast<char*>(out) + done, bytes - done, off_t(offset + first * width) + off_t(done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        throw Error(ds::str("token file '", path, "': read of tokens ", first, "..", first + n - 1, " failed: ",
                            r < 0 ? std::strerror(errno) : "the file got shorter"));
      done += size_t(r);
    }
  }

  // The tokens first..first+n-1 as int64.
  void tokens(int64_t first, int64_t n, int64_t* out) const {
    if (width == 2) {
      std::vector<uint16_t> raw(static_cast<size_t>(n));
      read(first, n, raw.data());
      for (int64_t i = 0; i < n; ++i) out[i] = raw[size_t(i)];
    } else {
      std::vector<uint32_t> raw(static_cast<size_t>(n));
      read(first, n, raw.data());
      for (int64_t i = 0; i < n; ++i) out[i] = raw[size_t(i)];
    }
  }

  // The largest token, read in 16 MiB chunks (the file is not kept): ~1 s per GB.
  int64_t largest() {
    if (max_token >= 0) return max_token;
    return max_token = width == 2 ? largest_of<uint16_t>() : largest_of<uint32_t>();
  }

  template <typename T>
  int64_t largest_of() const {
    const int64_t chunk = (int64_t(16) << 20) / width;
    std::vector<T> buf(static_cast<size_t>(std::min(chunk, count)));
    T m = 0;
    for (int64_t first = 0; first < count; first += chunk) {
      const int64_t n = std::min(chunk, count - first);
      read(first, n, buf.data());
      m = std::max(m, *std::max_element(buf.begin(), buf.begin() + n));
    }
    return count > 0 ? int64_t(m) : -1;
  }

  static std::unique_ptr<File> open(const std::string& path, Format format) {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) throw Error(ds::str("cannot read token file '", path, "': it does not exist"));
    if (!std::filesystem::is_regular_file(status))
      throw Error(ds::str("token file '", path, "' is not a regular file"));
    auto f = std::make_unique<File>();
    f->path = path;
    f->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) throw Error(ds::str("cannot read token file '", path, "': ", std::strerror(errno)));
    struct stat st {};
    ::fstat(f->fd, &st);
    const int64_t size = st.st_size;
    int32_t header[3] = {0, 0, 0};
    const bool has_header = size >= kHeaderBytes && ::pread(f->fd, header, sizeof header, 0) == ssize_t(sizeof header);
    const std::string name = base_name(path);
    const bool nanogpt_name = name == "train.bin" || name == "val.bin";
    if (format == Format::kLlmc || (format == Format::kAuto && !(nanogpt_name && header[0] != kLlmcMagic))) {
      if (!has_header || header[0] != kLlmcMagic)
        throw Error(ds::str("token file '", path, "': not llm.c's format (magic ", has_header ? header[0] : 0,
                            ", expected ", kLlmcMagic, "); for nanoGPT's raw uint16 tokens pass --data-format nanogpt"));
      if (header[1] != 1 && header[1] != 2)
        throw Error(ds::str("token file '", path, "': llm.c format version ", header[1],
                            " is unknown (1: uint16 tokens, 2: uint32)"));
      f->format = ds::str("llm.c v", header[1]);
      f->width = header[1] == 1 ? 2 : 4;
      f->offset = kHeaderBytes;
      f->count = header[2];
      if (header[2] < 0 || size != kHeaderBytes + int64_t(header[2]) * f->width)
        throw Error(ds::str("token file '", path, "': ", size, " bytes, but the header announces ", header[2],
                            " tokens of ", f->width, " bytes (", kHeaderBytes + int64_t(header[2]) * f->width,
                            " bytes with the header): truncated or not a token file"));
    } else {
      f->format = "nanoGPT uint16";
      if (size % 2 != 0)
        throw Error(ds::str("token file '", path, "': ", size, " bytes is not a whole number of uint16 tokens"));
      f->count = size / 2;
    }
    return f;
  }
};

TokenDataset::~TokenDataset() = default;

std::unique_ptr<TokenDataset> TokenDataset::open(const Options& o) {
  if (o.context < 1) throw ConfigError(ds::str("sequence length must be >= 1, got ", o.context));
  if (o.vocab_size < 0) throw ConfigError(ds::str("--vocab-size must be >= 1, got ", o.vocab_size));
  std::unique_ptr<TokenDataset> d(new TokenDataset());
  d->train_ = File::open(o.path, o.format);
  if (!o.val_path.empty()) d->val_ = File::open(o.val_path, o.format);
  d->context_ = o.context, d->seed_ = o.seed;
  const int64_t window = o.context + 1;
  if (d->val_) {
    d->train_end_ = d->train_->count, d->val_begin_ = 0, d->val_end_ = d->val_->count;
    if (d->val_end_ < window)
      throw ConfigError(ds::str("token file '", o.val_path, "' has ", d->val_end_, " tokens: too few for a window of ",
                                window, " (a shorter --seq-len?)"));
  } else {
    d->train_end_ = d->train_->count * 9 / 10, d->val_begin_ = d->train_end_, d->val_end_ = d->train_->count;
    if (d->val_end_ - d->val_begin_ < window)
      throw ConfigError(ds::str("token file '", o.path, "' has ", d->train_->count, " tokens: too few for held-out "
                                "windows of ", window, " in its last 10 % (give --val-data or a shorter --seq-len)"));
  }
  if (d->train_end_ < window)
    throw ConfigError(ds::str("token file '", o.path, "' has ", d->train_->count, " tokens: too few for a window of ",
                              window, " (a shorter --seq-len?)"));
  int64_t largest = d->train_->largest();
  if (d->val_) largest = std::max(largest, d->val_->largest());
  d->vocab_size_ = o.vocab_size > 0 ? o.vocab_size : largest + 1;
  if (largest >= d->vocab_size_)
    throw ConfigError(ds::str("token file '", o.path, d->val_ ? "' or '" + o.val_path : std::string(), "' holds token ",
                              largest, ", outside --vocab-size ", d->vocab_size_, " (raise it to at least ", largest + 1,
                              ")"));
  return d;
}

std::string TokenDataset::describe() const {
  std::string s = ds::str("tokens '", train_->path, "' (", train_->format, "): ", train_->count, " tokens, vocabulary ",
                          vocab_size_);
  s += val_ ? ds::str("; held out: '", val_->path, "', ", val_->count, " tokens")
            : ds::str(" (", train_end_, " for training, the rest held out)");
  return s;
}

Batch TokenDataset::windows(const File& file, const std::vector<int64_t>& starts) const {
  const int64_t n = int64_t(starts.size());
  at::Tensor tokens = at::empty({n, context_}, at::kLong), targets = at::empty({n, context_}, at::kLong);
  std::vector<int64_t> window(static_cast<size_t>(context_ + 1));
  for (int64_t b = 0; b < n; ++b) {
    file.tokens(starts[size_t(b)], context_ + 1, window.data());
    std::memcpy(tokens[b].data_ptr<int64_t>(), window.data(), size_t(context_) * sizeof(int64_t));
    std::memcpy(targets[b].data_ptr<int64_t>(), window.data() + 1, size_t(context_) * sizeof(int64_t));
  }
  return {tokens, targets};
}

Batch TokenDataset::batch(int64_t step, int64_t first, int64_t count) const {
  std::vector<int64_t> starts;
  const uint64_t span = uint64_t(train_end_ - context_);  // start + context + 1 <= train_end
  for (int64_t i = first; i < first + count; ++i) starts.push_back(int64_t(mix_seed(seed_, uint64_t(step), uint64_t(i)) % span));
  return windows(*train_, starts);
}

Batch TokenDataset::held_out(int64_t count) const {
  std::vector<int64_t> starts;
  const int64_t span = val_end_ - val_begin_ - context_;
  for (int64_t i = 0; i < count; ++i) starts.push_back(val_begin_ + (i * 7919) % span);
  return windows(val_ ? *val_ : *train_, starts);
}

}  // namespace ds
