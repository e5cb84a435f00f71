// AlignedBuffer and BufferPool.
#include "ds/aio/buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds::aio {

AlignedBuffer::AlignedBuffer(size_t bytes, size_t alignment) : size_(bytes), alignment_(alignment) {
  DS_CHECK(alignment >= sizeof(void*) && (alignment & (alignment - 1)) == 0,
           "buffer alignment must be a power of two >= ", sizeof(void*), ", got ", alignment);
  if (bytes == 0) return;
  DS_CHECK(bytes <= SIZE_MAX - alignment, "buffer of ", bytes, " bytes is too large");
  capacity_ = (bytes + alignment - 1) / alignment * alignment;
  const int rc = ::posix_memalign(&data_, alignment, capacity_);
  if (rc != 0) {
    data_ = nullptr;
    throw ds::SystemError(ds::str("allocating ", ds::format_bytes(static_cast<double>(capacity_)),
                                  " aligned to ", alignment, " bytes: ", std::strerror(rc)));
  }
}

AlignedBuffer::~AlignedBuffer() { release(); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)),
      alignment_(other.alignment_),
      locked_(std::exchange(other.locked_, false)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
    alignment_ = other.alignment_;
    locked_ = std::exchange(other.locked_, false);
  }
  return *this;
}

bool AlignedBuffer::lock_pages() {
  if (locked_) return true;
  if (data_ == nullptr) return false;
  locked_ = ::mlock(data_, capacity_) == 0;
  return locked_;
}

void AlignedBuffer::release() noexcept {
  if (data_ == nullptr) return;
  if (locked_) ::munlock(data_, capacity_);
  std::free(data_);
  data_ = nullptr;
  locked_ = false;
}

// ---- BufferPool ----

struct BufferPool::Lease::State {
  std::mutex mutex;
  std::condition_variable returned;
  std::vector<AlignedBuffer> buffers;
  std::vector<size_t> free_list;  // indices of buffers not leased
  size_t buffer_bytes = 0;
  size_t locked = 0;
};

BufferPool::BufferPool(size_t count, size_t buffer_bytes, const Options& options)
    : state_(std::make_shared<Lease::State>()) {
  DS_CHECK(count > 0, "a buffer pool needs at least one buffer");
  DS_CHECK(buffer_bytes > 0, "a buffer pool needs buffers of at least one byte");
  state_->buffer_bytes = buffer_bytes;
  state_->buffers.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    state_->buffers.emplace_back(buffer_bytes, options.alignment);
    if (options.lock_pages && state_->buffers.back().lock_pages()) ++state_->locked;
  }
  for (size_t i = count; i-- > 0;) state_->free_list.push_back(i);
}

BufferPool::Lease BufferPool::acquire() {
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->returned.wait(lock, [&] { return !state_->free_list.empty(); });
  const size_t index = state_->free_list.back();
  state_->free_list.pop_back();
  return Lease(state_, &state_->buffers[index], index);
}

std::optional<BufferPool::Lease> BufferPool::try_acquire() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->free_list.empty()) return std::nullopt;
  const size_t index = state_->free_list.back();
  state_->free_list.pop_back();
  return Lease(state_, &state_->buffers[index], index);
}

size_t BufferPool::count() const { return state_->buffers.size(); }
size_t BufferPool::buffer_bytes() const { return state_->buffer_bytes; }
size_t BufferPool::locked_count() const { return state_->locked; }

size_t BufferPool::available() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->free_list.size();
}

BufferPool::Lease::Lease(Lease&& other) noexcept
    : state_(std::move(other.state_)), buffer_(std::exchange(other.buffer_, nullptr)), index_(other.index_) {}

BufferPool::Lease& BufferPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    buffer_ = std::exchange(other.buffer_, nullptr);
    index_ = other.index_;
  }
  return *this;
}

void BufferPool::Lease::release() noexcept {
  if (buffer_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->free_list.push_back(index_);
  }
  state_->returned.notify_one();
  buffer_ = nullptr;
  state_.reset();
}

}  // namespace ds::aio
