#pragma once
// Vector loads and stores for elementwise CUDA kernels: N elements of the operand
// type per access, N = 16 bytes' worth of the kernel's scalar type (an operand of
// the wider accumulation type then moves 32 bytes, as two 16-byte accesses). A
// kernel takes the vector path only when every operand is aligned for its N
// elements; the element count need not be a multiple of N (the tail is scalar).

#include <c10/macros/Macros.h>

#include <cstdint>

namespace anode_ext {

constexpr int kVectorBytes = 16;

template <typename T>
constexpr int vector_width() {
  return kVectorBytes / static_cast<int>(sizeof(T));
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

// True when `p` can be read and written as Packed<T, N>.
template <int N, typename T>
inline bool is_packed_aligned(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// Loads elements [vec_index * N, vec_index * N + N) of `base`, widened to acc_t.
template <int N, typename acc_t, typename scalar_t>
__device__ __forceinline__ void load_widened(acc_t (&dst)[N], const scalar_t* base,
                                             int64_t vec_index) {
  const Packed<scalar_t, N> packed = reinterpret_cast<const Packed<scalar_t, N>*>(base)[vec_index];
#pragma unroll
  for (int e = 0; e < N; ++e) {
    dst[e] = static_cast<acc_t>(packed.v[e]);
  }
}

// Stores `src`, rounded to scalar_t, at elements [vec_index * N, vec_index * N + N).
template <int N, typename acc_t, typename scalar_t>
__device__ __forceinline__ void store_narrowed(scalar_t* base, int64_t vec_index,
                                               const acc_t (&src)[N]) {
  Packed<scalar_t, N> packed;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    packed.v[e] = static_cast<scalar_t>(src[e]);
  }
  reinterpret_cast<Packed<scalar_t, N>*>(base)[vec_index] = packed;
}

}  // namespace anode_ext
