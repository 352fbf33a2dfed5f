// The CPU side of the sample gather (sample_gather.h), and the hook the CUDA build sets.

#include "sample_gather.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstring>

namespace anode_ext {

DeviceGather& cuda_sample_gather() {
  static DeviceGather gather = nullptr;
  return gather;
}

namespace {
std::atomic<bool> gather_enabled{true};
}  // namespace

bool set_sample_gather(bool enabled) {
  return gather_enabled.exchange(enabled);
}

bool gathers_on(const at::Device& device) {
  return gather_enabled.load() && (device.is_cpu() || (device.is_cuda() && cuda_sample_gather() != nullptr));
}

void gather_samples(const std::vector<SampleSource>& sources, const at::Tensor& out) {
  if (sources.empty()) {
    return;
  }
  if (out.is_cuda()) {
    TORCH_CHECK(cuda_sample_gather() != nullptr, "gather_samples: this build of anode_ext has no CUDA kernels");
    cuda_sample_gather()(sources, out);
    return;
  }
  TORCH_CHECK(out.is_cpu(), "gather_samples: a buffer on ", out.device(), ", expected the CPU or a CUDA device");
  char* buffer = static_cast<char*>(out.mutable_data_ptr());
  for (const SampleSource& s : sources) {
    char* to = buffer + s.offset;
    if (s.address == nullptr) {
      std::memset(to, 0, kSampled * s.element_size);
      continue;
    }
    const char* from = static_cast<const char*>(s.address);
    for (int64_t j = 0; j < kSampled; ++j) {
      std::memcpy(to + j * s.element_size, from + j * s.stride_bytes, s.element_size);
    }
  }
}

}  // namespace anode_ext
