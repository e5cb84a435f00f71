#include "ds/offload/optimizer_swapper.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "ds/ckpt/checksum.h"
#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/offload/swap_dir.h"

namespace ds::offload {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kAlign = aio::kDirectIoAlignment;

uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Sub-groups of at most `size` elements over the units' chunks laid end to end.
template <typename G>
std::vector<G> make_groups(const std::vector<int64_t>& lengths, int64_t size) {
  std::vector<G> groups;
  const int64_t step = std::max<int64_t>(1, size);
  int64_t total = 0;
  for (int64_t n : lengths) total += n;
  for (int64_t begin = 0; begin < total; begin += step) {
    G g;
    g.begin = begin;
    g.length = std::min(step, total - begin);
    int64_t unit_begin = 0;
    for (size_t u = 0; u < lengths.size(); ++u) {
      const int64_t lo = std::max(begin, unit_begin), hi = std::min(begin + g.length, unit_begin + lengths[u]);
      if (lo < hi) g.segments.push_back({u, lo - unit_begin, hi - lo});
      unit_begin += lengths[u];
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

}  // namespace

uint64_t OptimizerSwapper::bytes_needed(const std::vector<int64_t>& unit_lengths, size_t tensors, int64_t sub_group_size) {
  uint64_t bytes = 0;
  for (const Group& g : make_groups<Group>(unit_lengths, sub_group_size))
    bytes += align_up(uint64_t(g.length) * sizeof(float)) * tensors;
  return bytes;
}

OptimizerSwapper::OptimizerSwapper(SwapOptions options, std::vector<int64_t> unit_lengths, size_t num_states,
                                   bool swap_master, const std::function<std::vector<at::Tensor>(int64_t)>& initial)
    : options_(std::move(options)), unit_lengths_(std::move(unit_lengths)), num_states_(num_states),
      swap_master_(swap_master) {
  if (options_.sub_group_size < 1)
    throw ConfigError(ds::str("zero_optimization.sub_group_size must be >= 1, got ", options_.sub_group_size));
  groups_ = make_groups<Group>(unit_lengths_, options_.sub_group_size);
  uint64_t largest = 0;
  for (Group& g : groups_) {
    g.file_offset = file_bytes_;
    g.slot_bytes = align_up(uint64_t(g.length) * sizeof(float));
    file_bytes_ += group_bytes(g);
    largest = std::max(largest, group_bytes(g));
  }
  // Pre-flight: the directory exists, is writable, takes O_DIRECT and has the space.
  remove_stale_swap_dirs(options_.nvme_path);  // what killed runs left takes space the check counts
  aio::check_swap_path(options_.nvme_path, file_bytes_);
  swap_dir_ = std::make_unique<SwapDir>(options_.nvme_path, "swap", options_.rank, "optimizer_states.swp");
  file_path_ = swap_dir_->file();
  try {
    aio_ = std::make_unique<aio::AioHandle>(options_.aio);
    file_ = aio::File(file_path_, {aio::OpenMode::ReadWrite, true, true});
    file_.allocate(file_bytes_);  // ENOSPC now, with the size, rather than during a step
    const size_t count = size_t(std::max<int64_t>(3, options_.buffer_count));
    for (size_t i = 0; i < count && largest > 0; ++i) {
      buffers_.emplace_back(largest);
      if (options_.pin_memory) buffers_.back().lock_pages();
    }
    // The initial states (and zero masters, set by the engine afterwards) of each sub-group.
    for (const Group& g : groups_) {
      aio::AlignedBuffer& buf = buffers_[0];
      std::memset(buf.data(), 0, group_bytes(g));
      std::vector<at::Tensor> init = initial(g.length);
      DS_CHECK(init.size() == num_states_, "the optimizer made ", init.size(), " states, expected ", num_states_);
      for (size_t k = 0; k < num_states_; ++k) view(buf, g, k, 0, g.length).copy_(init[k]);
      checksums_.push_back(ckpt::xxh64(buf.data(), group_bytes(g)));
      aio_->sync_pwrite(file_, buf.data(), group_bytes(g), g.file_offset);
    }
  } catch (const aio::IoError& e) {
    file_ = aio::File();
    swap_dir_.reset();
    throw Error(ds::str("offload_optimizer: cannot set up the swap file (", file_bytes_, " bytes) under ",
                        options_.nvme_path, ": ", e.what()));
  } catch (...) {
    file_ = aio::File();
    swap_dir_.reset();
    throw;
  }
}

OptimizerSwapper::~OptimizerSwapper() {
  aio_.reset();  // waits for anything in flight
  file_ = aio::File();
  swap_dir_.reset();  // removes the file and its directory
}

const std::string& OptimizerSwapper::directory() const { return swap_dir_->dir(); }

int64_t OptimizerSwapper::buffer_bytes() const {
  int64_t n = 0;
  for (const auto& b : buffers_) n += int64_t(b.size());
  return n;
}

// Elements [offset, offset + length) of tensor `slot` of group g, inside `buf`.
at::Tensor OptimizerSwapper::view(aio::AlignedBuffer& buf, const Group& g, size_t slot, int64_t offset, int64_t length) {
  auto* base = reinterpret_cast<float*>(buf.bytes() + g.slot_bytes * slot) + offset;
  return at::from_blob(base, {length}, at::TensorOptions().dtype(at::kFloat));
}

void OptimizerSwapper::for_each(const SegmentFn& fn, bool write_back) { run(fn, write_back, -1); }

// The sub-groups holding `only_unit` (all when negative), pipelined.
void OptimizerSwapper::run(const SegmentFn& fn, bool write_back, int64_t only_unit) {
  const auto start = Clock::now();
  std::vector<size_t> order;
  for (size_t i = 0; i < groups_.size(); ++i)
    for (const SwapSegment& s : groups_[i].segments)
      if (only_unit < 0 || s.unit == size_t(only_unit)) {
        order.push_back(i);
        break;
      }
  const size_t n = order.size(), nb = buffers_.size();
  std::vector<aio::AioTicket> reads(nb), writes(nb);
  auto wait = [&](aio::AioTicket& t) {
    if (!t.valid()) return;
    const auto w = Clock::now();
    t.wait();
    stats_.io_wait_s += since(w);
    t = aio::AioTicket();
  };
  auto read = [&](size_t i) {
    aio::AlignedBuffer& buf = buffers_[i % nb];
    wait(writes[i % nb]);  // the buffer's previous sub-group must be on disk first
    const Group& g = groups_[order[i]];
    reads[i % nb] = aio_->pread(file_, buf.data(), group_bytes(g), g.file_offset);
    stats_.bytes_read += group_bytes(g);
  };
  try {
    if (n > 0) read(0);
    for (size_t i = 0; i < n; ++i) {
      wait(reads[i % nb]);
      if (i + 1 < n) read(i + 1);  // read ahead while this one computes
      const Group& g = groups_[order[i]];
      aio::AlignedBuffer& buf = buffers_[i % nb];
      verify(order[i], buf);
      int64_t at = 0;
      for (const SwapSegment& s : g.segments) {
        std::vector<at::Tensor> states;
        for (size_t k = 0; k < num_states_; ++k) states.push_back(view(buf, g, k, at, s.length));
        at::Tensor master = swap_master_ ? view(buf, g, num_states_, at, s.length) : at::Tensor();
        fn(s, master, states);
        at += s.length;
      }
      if (write_back) {  // write behind: the next sub-group computes meanwhile
        const auto hash_start = Clock::now();
        checksums_[order[i]] = ckpt::xxh64(buf.data(), group_bytes(g));
        stats_.checksum_s += since(hash_start);
        writes[i % nb] = aio_->pwrite(file_, buf.data(), group_bytes(g), g.file_offset);
        stats_.bytes_written += group_bytes(g);
      }
    }
    for (auto& t : writes) wait(t);
  } catch (...) {
    for (auto& t : reads) t = aio::AioTicket();  // waits quietly
    for (auto& t : writes) t = aio::AioTicket();
    throw;
  }
  stats_.step_s += since(start);
}

// Each sub-group's bytes are hashed when written and checked when read back: a swap file
// changed behind the run (another process, a failing disk) is named, instead of training on
// whatever came back.
void OptimizerSwapper::verify(size_t group, const aio::AlignedBuffer& buf) {
  const Group& g = groups_[group];
  const auto start = Clock::now();
  const uint64_t got = ckpt::xxh64(buf.data(), group_bytes(g));
  stats_.checksum_s += since(start);
  if (got != checksums_[group])
    throw Error(ds::str("offload_optimizer: ", file_path_, " changed on disk since it was written: sub-group ", group,
                        " (", group_bytes(g), " bytes at offset ", g.file_offset, ") reads back with another "
                        "checksum; was the file modified, or is the disk failing? The run cannot continue from it"));
}

void OptimizerSwapper::read_unit(size_t unit, at::Tensor* master, std::vector<at::Tensor>* states) {
  const int64_t length = unit_lengths_[unit];
  states->clear();
  for (size_t k = 0; k < num_states_; ++k) states->push_back(at::empty({length}));
  if (swap_master_ && master) *master = at::empty({length});
  run([&](const SwapSegment& s, at::Tensor m, std::vector<at::Tensor>& st) {
    if (s.unit != unit) return;
    for (size_t k = 0; k < num_states_; ++k) (*states)[k].slice(0, s.offset, s.offset + s.length).copy_(st[k]);
    if (swap_master_ && master) master->slice(0, s.offset, s.offset + s.length).copy_(m);
  }, /*write_back=*/false, int64_t(unit));
}

void OptimizerSwapper::write_unit(size_t unit, const at::Tensor& master, const std::vector<at::Tensor>& states) {
  DS_CHECK(states.empty() || states.size() == num_states_, "write_unit: ", states.size(), " states, expected ", num_states_);
  run([&](const SwapSegment& s, at::Tensor m, std::vector<at::Tensor>& st) {
    if (s.unit != unit) return;
    for (size_t k = 0; k < states.size(); ++k) st[k].copy_(states[k].slice(0, s.offset, s.offset + s.length));
    if (swap_master_) m.copy_(master.slice(0, s.offset, s.offset + s.length));
  }, /*write_back=*/true, int64_t(unit));
}

}  // namespace ds::offload
