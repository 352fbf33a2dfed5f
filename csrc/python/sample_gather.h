#pragma once
// The gather behind the saved-tensor samples of saved_ledger.cpp: a few elements of
// many tensors copied, as bytes, into one buffer by one pass (one kernel launch on a
// GPU rather than one copy per tensor, which was the ledger's main cost per saved
// tensor there).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace anode_ext {

// Elements sampled per tensor (saved_ledger.cpp says which).
constexpr int64_t kSampled = 3;

// One region of the buffer: kSampled elements of element_size bytes, the first at
// `address` and each next one stride_bytes further, written to bytes
// [offset, offset + kSampled * element_size) of the buffer. A null address writes zeros.
struct SampleSource {
  const void* address;
  int64_t stride_bytes;
  int64_t element_size;
  int64_t offset;
};

// Writes every source into `out` (a contiguous byte tensor on the CPU, or on the GPU the
// addresses are on, whose current stream runs the copy). Each address must be readable
// for its region: the caller holds the tensors and checked their storage bounds.
void gather_samples(const std::vector<SampleSource>& sources, const at::Tensor& out);

// Whether gather_samples reads addresses on the device of `out` (the CPU, and CUDA
// devices where the extension is built with CUDA), while the gather is enabled.
bool gathers_on(const at::Device& device);

// Turns the gather on or off (off: every sample is copied by a clone of its own, as
// before the gather existed), so that a benchmark can time both in one process; returns
// the previous setting. Results are the same either way.
bool set_sample_gather(bool enabled);

// The CUDA gather, set when the library is loaded by cuda/sample_gather_cuda.cu; null
// in a build without CUDA.
using DeviceGather = void (*)(const std::vector<SampleSource>&, const at::Tensor&);
DeviceGather& cuda_sample_gather();

}  // namespace anode_ext
