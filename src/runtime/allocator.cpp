#include "ds/runtime/allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "ds/common/error.h"
#include "ds/common/strings.h"

namespace ds {

namespace {

constexpr size_t kMinCached = size_t(1) << 20;  // smaller blocks: the default allocator
constexpr size_t kAlignment = 64;               // c10's CPU alignment

// Sizes rounded up to 1/16 of their power of two (at most ~6 % more than asked).
size_t size_class(size_t n) {
  size_t p = 1;
  while (p * 2 <= n) p *= 2;
  const size_t step = std::max<size_t>(p / 16, kAlignment);
  return (n + step - 1) / step * step;
}

// Every block carries a header of kAlignment bytes in front of what the caller sees: its size
// class, or 0 for a small block that goes straight back to the system. The data pointer and the
// deleter's context are the same pointer, as c10's raw_allocate/raw_deallocate require.
constexpr size_t kHeader = kAlignment;
size_t& header_of(void* user) { return *reinterpret_cast<size_t*>(static_cast<char*>(user) - kHeader); }

void* system_block(size_t bytes) {
  void* p = nullptr;
  if (::posix_memalign(&p, kAlignment, bytes + kHeader) != 0 || !p) throw std::bad_alloc();
  return static_cast<char*>(p) + kHeader;
}
void free_block(void* user) { std::free(static_cast<char*>(user) - kHeader); }

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(int64_t limit) : limit_(limit) {}

  c10::DataPtr allocate(size_t n) const override {
    if (n == 0) return {nullptr, nullptr, &CachingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
    void* p = nullptr;
    if (n < kMinCached) {
      p = system_block(n);
      header_of(p) = 0;
    } else {
      const size_t bytes = size_class(n);
      p = take(bytes);
      if (!p) {
        p = system_block(bytes);
        header_of(p) = bytes;
      }
    }
    return {p, p, &CachingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &CachingCpuAllocator::release; }

  CachingAllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  static CachingCpuAllocator* instance;

 private:
  // A cached block of exactly `bytes`, or null. On a miss, cached blocks of other sizes (oldest
  // first) go back to the system until what is cached plus what is live fits under the largest
  // live total seen so far: the cache fills the gap between this moment's live blocks and the
  // program's own peak and never raises that peak (stage 3's freed gather buffers are reused
  // for the next gathers, not kept on top of them).
  void* take(size_t bytes) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_size_.find(bytes);
    if (it != by_size_.end() && !it->second.empty()) {
      auto pos = it->second.back();
      it->second.pop_back();
      void* p = *pos;
      age_.erase(pos);
      stats_.cached_bytes -= int64_t(bytes);
      stats_.live_bytes += int64_t(bytes);
      stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
      ++stats_.hits;
      return p;
    }
    ++stats_.misses;
    stats_.live_bytes += int64_t(bytes);
    stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
    evict(stats_.cached_bytes + stats_.live_bytes - stats_.peak_live_bytes);
    return nullptr;
  }

  // Frees the oldest cached blocks until `bytes` are freed or the cache is empty.
  void evict(int64_t bytes) const {
    while (bytes > 0 && !age_.empty()) {
      void* p = age_.front();
      const size_t size = header_of(p);
      auto& stack = by_size_[size];
      stack.erase(std::find(stack.begin(), stack.end(), age_.begin()));
      age_.pop_front();
      bytes -= int64_t(size);
      stats_.cached_bytes -= int64_t(size);
      stats_.released_bytes += int64_t(size);
      free_block(p);
    }
  }

  void put(void* p) const {
    const size_t size = header_of(p);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.live_bytes -= int64_t(size);
    if (int64_t(size) > limit_) {
      stats_.released_bytes += int64_t(size);
      free_block(p);
      return;
    }
    evict(stats_.cached_bytes + int64_t(size) - limit_);
    age_.push_back(p);
    by_size_[size].push_back(std::prev(age_.end()));
    stats_.cached_bytes += int64_t(size);
  }

  static void release(void* p) {
    if (!p) return;
    if (header_of(p) == 0) return free_block(p);
    instance->put(p);
  }

  int64_t limit_;
  mutable std::mutex mu_;
  mutable std::list<void*> age_;  // cached, least recently freed first
  mutable std::unordered_map<size_t, std::vector<std::list<void*>::iterator>> by_size_;  // by size class
  mutable CachingAllocatorStats stats_;
};

CachingCpuAllocator* CachingCpuAllocator::instance = nullptr;
std::mutex g_install_mu;
std::string g_line;

int64_t default_limit() {
  if (const char* mb = std::getenv("DS_ALLOCATOR_CACHE_MB"); mb && *mb) {
    char* end = nullptr;
    const long long v = std::strtoll(mb, &end, 10);
    if (*end != '\0' || v < 0) throw ConfigError(ds::str("DS_ALLOCATOR_CACHE_MB='", mb, "': expected megabytes (>= 0)"));
    return int64_t(v) << 20;
  }
  const int64_t physical = int64_t(::sysconf(_SC_PHYS_PAGES)) * int64_t(::sysconf(_SC_PAGESIZE));
  return std::min<int64_t>(physical / 4, int64_t(8) << 30);
}

}  // namespace

std::string install_caching_allocator(int64_t limit_bytes) {
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (!g_line.empty()) return g_line;
  const char* choice = std::getenv("DS_ALLOCATOR");
  const std::string mode = choice && *choice ? choice : "caching";
  if (mode == "system") {
    g_line = "CPU allocator: LibTorch's own (DS_ALLOCATOR=system)";
    return g_line;
  }
  if (mode != "caching") throw ConfigError(ds::str("DS_ALLOCATOR=", mode, ": expected caching or system"));
  const int64_t limit = limit_bytes > 0 ? limit_bytes : default_limit();
  // Intentionally never freed: tensors may outlive every other object of the program.
  CachingCpuAllocator::instance = new CachingCpuAllocator(limit);
  c10::SetCPUAllocator(CachingCpuAllocator::instance, /*priority=*/1);
  g_line = ds::str("CPU allocator: caching blocks of 1 MiB and more, up to ", format_bytes(double(limit)),
                   " (DS_ALLOCATOR=system: LibTorch's own)");
  return g_line;
}

bool caching_allocator_installed() { return CachingCpuAllocator::instance != nullptr; }

CachingAllocatorStats caching_allocator_stats() {
  return CachingCpuAllocator::instance ? CachingCpuAllocator::instance->stats() : CachingAllocatorStats{};
}

}  // namespace ds
