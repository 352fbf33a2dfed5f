// The CUDA gather of saved-tensor samples (python/sample_gather.h): the sources go to
// the device through pinned memory in one asynchronous copy, and one kernel, a thread
// per source, copies their bytes; both on the current stream of the buffer's device.

#include "../python/sample_gather.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

namespace anode_ext {
namespace {

constexpr int kThreads = 128;
constexpr int kFields = 4;  // address, stride_bytes, element_size, offset

__global__ void gather_samples_kernel(const int64_t* sources, int64_t count, uint8_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) {
    return;
  }
  const int64_t* s = sources + i * kFields;
  const uint8_t* from = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(s[0]));
  const int64_t stride = s[1];
  const int64_t size = s[2];
  uint8_t* to = out + s[3];
  for (int64_t j = 0; j < kSampled; ++j) {
    for (int64_t b = 0; b < size; ++b) {
      to[j * size + b] = from == nullptr ? uint8_t(0) : from[j * stride + b];
    }
  }
}

void gather_samples_cuda(const std::vector<SampleSource>& sources, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t count = static_cast<int64_t>(sources.size());
  at::Tensor host = at::empty({count, kFields}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const SampleSource& s = sources[i];
    h[i * kFields + 0] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(s.address));
    h[i * kFields + 1] = s.stride_bytes;
    h[i * kFields + 2] = s.element_size;
    h[i * kFields + 3] = s.offset;
  }
  // The caching host allocator keeps the pinned block until the copy has run.
  const at::Tensor device_sources = host.to(out.device(), /*non_blocking=*/true);
  const int blocks = static_cast<int>((count + kThreads - 1) / kThreads);
  gather_samples_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      device_sources.const_data_ptr<int64_t>(), count, static_cast<uint8_t*>(out.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

[[maybe_unused]] const bool registered = (cuda_sample_gather() = &gather_samples_cuda, true);

}  // namespace
}  // namespace anode_ext
