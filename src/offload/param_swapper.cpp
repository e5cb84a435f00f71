#include "ds/offload/param_swapper.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "ds/common/error.h"
#include "ds/common/strings.h"
#include "ds/offload/swap_dir.h"

namespace ds::offload {

namespace {

constexpr uint64_t kAlign = aio::kDirectIoAlignment;
constexpr size_t kKeepFree = 4;       // spare buffers kept for reuse
constexpr size_t kWritesInFlight = 4;  // staged units being written at once, at most

uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

uint64_t ParamSwapper::bytes_needed(const std::vector<int64_t>& lengths, at::ScalarType dtype) {
  uint64_t bytes = 0;
  for (int64_t n : lengths) bytes += align_up(uint64_t(n) * c10::elementSize(dtype));
  return bytes;
}

ParamSwapper::ParamSwapper(ParamSwapOptions options, std::vector<int64_t> lengths, at::ScalarType dtype)
    : lengths_(std::move(lengths)), dtype_(dtype), units_(lengths_.size()) {
  const uint64_t element = c10::elementSize(dtype);
  for (size_t u = 0; u < units_.size(); ++u) {
    units_[u].offset = file_bytes_;
    units_[u].bytes = uint64_t(lengths_[u]) * element;
    units_[u].aligned_bytes = align_up(units_[u].bytes);
    file_bytes_ += units_[u].aligned_bytes;
  }
  remove_stale_swap_dirs(options.nvme_path);  // what killed runs left takes space the check counts
  aio::check_swap_path(options.nvme_path, file_bytes_);
  swap_dir_ = std::make_unique<SwapDir>(options.nvme_path, "params", options.rank, "params.swp");
  path_ = swap_dir_->file();
  try {
    aio_ = std::make_unique<aio::AioHandle>(options.aio);
    file_ = aio::File(path_, {aio::OpenMode::ReadWrite, true, true});
    file_.allocate(file_bytes_);  // ENOSPC now, with the size, rather than during a step
  } catch (const std::exception& e) {
    aio_.reset();
    file_ = aio::File();
    swap_dir_.reset();
    throw Error(ds::str("offload_param: cannot set up ", path_, " (", file_bytes_, " bytes): ", e.what()));
  }
}

ParamSwapper::~ParamSwapper() {
  for (Unit& u : units_) u.read = aio::AioTicket(), u.write = aio::AioTicket();  // wait quietly
  aio_.reset();
  file_ = aio::File();
  swap_dir_.reset();  // removes the file and its directory
}

aio::AlignedBuffer ParamSwapper::buffer_for(uint64_t bytes) {
  for (size_t i = 0; i < free_.size(); ++i) {
    if (free_[i].size() != bytes) continue;
    aio::AlignedBuffer b = std::move(free_[i]);
    free_.erase(free_.begin() + std::ptrdiff_t(i));
    return b;
  }
  return aio::AlignedBuffer(bytes);
}

void ParamSwapper::recycle(aio::AlignedBuffer buffer) {
  if (buffer.size() == 0) return;
  if (free_.size() >= kKeepFree) free_.erase(free_.begin());
  free_.push_back(std::move(buffer));
}

at::Tensor ParamSwapper::view(aio::AlignedBuffer& buffer, size_t u) {
  return at::from_blob(buffer.data(), {lengths_[u]}, at::TensorOptions().dtype(dtype_));
}

void ParamSwapper::start_read(int ui) {
  Unit& u = units_[size_t(ui)];
  if (u.reading) return;
  if (u.write.valid()) {  // the disk must hold the newest values first
    u.write.wait();
    u.write = aio::AioTicket();
    recycle(std::move(u.staging));
  }
  u.read_buffer = buffer_for(u.aligned_bytes);
  if (u.aligned_bytes > 0) u.read = aio_->pread(file_, u.read_buffer.data(), u.aligned_bytes, u.offset);
  u.reading = true;
  stats_.bytes_read += u.aligned_bytes;
  ++stats_.reads;
}

at::Tensor ParamSwapper::take(int ui) {
  Unit& u = units_[size_t(ui)];
  if (!u.reading) start_read(ui);
  if (u.read.valid()) {
    u.read.wait();
    u.read = aio::AioTicket();
  }
  return view(u.read_buffer, size_t(ui));
}

void ParamSwapper::give_back(int ui) {
  Unit& u = units_[size_t(ui)];
  if (u.read.valid()) u.read.wait();  // never recycle a buffer the kernel still writes into
  u.read = aio::AioTicket();
  u.reading = false;
  recycle(std::move(u.read_buffer));
}

at::Tensor ParamSwapper::staging(size_t ui) {
  Unit& u = units_[ui];
  if (u.reading) give_back(int(ui));  // a read of the old values must not be used after this write
  if (u.write.valid()) {  // an earlier write of this unit still reads from the buffer
    u.write.wait();
    u.write = aio::AioTicket();
  }
  if (u.staging.size() == 0) {
    u.staging = buffer_for(u.aligned_bytes);
    if (u.aligned_bytes > u.bytes) std::memset(u.staging.bytes() + u.bytes, 0, u.aligned_bytes - u.bytes);
    u.staged = 0;
  }
  return view(u.staging, ui);
}

void ParamSwapper::staged(size_t ui, int64_t elements) {
  Unit& u = units_[ui];
  u.staged += elements;
  DS_CHECK(u.staged <= lengths_[ui], "unit ", ui, ": ", u.staged, " elements staged of ", lengths_[ui]);
  if (u.staged == lengths_[ui]) write_staging(ui);
}

void ParamSwapper::write_staging(size_t ui) {
  // Bound what is in flight (and so the staging memory): settle the finished writes, and the
  // oldest ones beyond kWritesInFlight.
  std::vector<size_t> pending;
  for (size_t v = 0; v < units_.size(); ++v) {
    Unit& w = units_[v];
    if (!w.write.valid()) continue;
    if (w.write.done()) {
      w.write.wait();
      w.write = aio::AioTicket();
      recycle(std::move(w.staging));
    } else {
      pending.push_back(v);
    }
  }
  for (size_t i = 0; i + kWritesInFlight <= pending.size(); ++i) {
    Unit& w = units_[pending[i]];
    w.write.wait();
    w.write = aio::AioTicket();
    recycle(std::move(w.staging));
  }
  Unit& u = units_[ui];
  u.staged = 0;
  if (u.aligned_bytes > 0) u.write = aio_->pwrite(file_, u.staging.data(), u.aligned_bytes, u.offset);
  else recycle(std::move(u.staging));
  stats_.bytes_written += u.aligned_bytes;
  ++stats_.writes;
}

void ParamSwapper::write(size_t ui, const at::Tensor& values) {
  DS_CHECK(values.numel() == lengths_[ui], "ParamSwapper::write: ", values.numel(), " values for a shard of ",
           lengths_[ui]);
  staging(ui).copy_(values.reshape({-1}));
  units_[ui].staged = 0;
  staged(ui, lengths_[ui]);
}

void ParamSwapper::flush() {
  for (size_t v = 0; v < units_.size(); ++v) {
    Unit& u = units_[v];
    DS_CHECK(u.staged == 0, "unit ", v, " was staged in part (", u.staged, " of ", lengths_[v], " elements)");
    if (!u.write.valid()) continue;
    u.write.wait();
    u.write = aio::AioTicket();
    recycle(std::move(u.staging));
  }
}

at::Tensor ParamSwapper::read(size_t ui) {
  Unit& u = units_[ui];
  if (u.write.valid()) {
    u.write.wait();
    u.write = aio::AioTicket();
    recycle(std::move(u.staging));
  }
  aio::AlignedBuffer buffer(u.aligned_bytes);  // not the coordinator's: it may be reading this unit
  if (u.aligned_bytes > 0) aio_->sync_pread(file_, buffer.data(), u.aligned_bytes, u.offset);
  return view(buffer, ui).clone();
}

}  // namespace ds::offload
