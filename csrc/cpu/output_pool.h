// Large CPU outputs of the RDA ops come from a pool of freed buffers.
//
// A coupled model makes every stage of every evolving weight anew at every step
// (9.4 MB for a 512x512x3x3 weight), in the forward, the recompute and the backward.
// glibc serves such blocks from the top of its heap or from mmap and gives them back
// to the system when they are freed, so each new output faults its pages in again;
// that cost a coupled ODE-ResNet about a tenth of its training step
// (docs/design_decisions.md, "Where a coupled model's training step goes"). The pool
// keeps freed buffers of at least kPooledBytes, up to kCachedBytesCap in all, and hands
// one back for an output of exactly its size. Buffers are reused only after their
// storage died, so no tensor can see another's data; storages and tensors are new
// objects each time.

#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace anode_ext {

constexpr size_t kPooledBytes = size_t(1) << 20;
constexpr size_t kCachedBytesCap = size_t(512) << 20;

// A new contiguous CPU tensor of `like`'s sizes and dtype, from the pool when large.
at::Tensor pooled_empty_like(const at::Tensor& like);

// Frees every buffer the pool holds; returns how many bytes that was.
size_t release_pooled_outputs();

// Bytes the pool holds for reuse.
size_t pooled_output_bytes();

}  // namespace anode_ext
