// The pool of freed RDA output buffers (output_pool.h has why).

#include "output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace anode_ext {
namespace {

struct Block {
  void* data;
  size_t size;
};

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kPooledBytes) {
      return c10::GetCPUAllocator()->allocate(n);
    }
    void* data = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_.find(n);
      if (found != free_.end() && !found->second.empty()) {
        data = found->second.back();
        found->second.pop_back();
        cached_ -= n;
      }
    }
    if (data == nullptr) {
      data = c10::alloc_cpu(n);
    }
    return {data, new Block{data, n}, &OutputPool::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t release_all() {
    std::unordered_map<size_t, std::vector<void*>> freed;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      freed.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    for (auto& entry : freed) {
      for (void* data : entry.second) {
        c10::free_cpu(data);
      }
    }
    return bytes;
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  // Never destroyed: storages may die during interpreter shutdown, after statics.
  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();
    return *pool;
  }

 private:
  static void give_back(void* context) {
    Block* block = static_cast<Block*>(context);
    OutputPool& pool = instance();
    bool kept = false;
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      if (pool.cached_ + block->size <= kCachedBytesCap) {
        pool.free_[block->size].push_back(block->data);
        pool.cached_ += block->size;
        kept = true;
      }
    }
    if (!kept) {
      c10::free_cpu(block->data);
    }
    delete block;
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

}  // namespace

at::Tensor pooled_empty_like(const at::Tensor& like) {
  return at::detail::empty_generic(like.sizes(), &OutputPool::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   like.scalar_type(), c10::MemoryFormat::Contiguous);
}

size_t release_pooled_outputs() { return OutputPool::instance().release_all(); }

size_t pooled_output_bytes() { return OutputPool::instance().cached(); }

}  // namespace anode_ext
