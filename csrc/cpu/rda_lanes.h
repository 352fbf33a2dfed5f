#pragma once
// RdaLanes: the value type with which the CPU kernels run the per-slice math of
// rda.h on several filter slices at once, one slice per lane: 256-bit GCC/Clang
// vectors, lane by lane the same operations in the same order as one
// accumulator, and vector_tanh (rda_tanh.cpp). (at::vec::Vectorized is, in an
// extension built for the baseline instruction set, its generic form of arrays
// and loops; GCC did not keep it in registers: the forward step was 2.4 ms with
// it against 0.9 ms with these types and the AVX2 build, one thread, 128x128x3x3.)

#include "../rda.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

namespace anode_ext {

// tanh of each of `count` values in place: SLEEF's vectorized tanh (within 3.5
// ulp: the variant ATen's torch.tanh calls is within 1.0 ulp and 2.5 times slower
// here) where the CPU runs AVX and the values fill one 256-bit register,
// std::tanh otherwise. The baseline and AVX2 kernels call the same function, so
// their results are equal bit for bit.
void vector_tanh(float* values, int count);
void vector_tanh(double* values, int count);

// 256-bit GCC/Clang vectors: one AVX register, or two SSE2 registers on a CPU
// the compiler may not assume AVX on.
template <typename acc_t>
struct RawLanes;
template <>
struct RawLanes<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct RawLanes<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename acc_t>
struct RdaLanes {
  using Raw = typename RawLanes<acc_t>::type;
  static constexpr int kLanes = 32 / static_cast<int>(sizeof(acc_t));

  Raw v;

  RdaLanes() = default;
  explicit RdaLanes(acc_t c) : v(Raw{} + c) {}
  explicit RdaLanes(Raw x) : v(x) {}

  static RdaLanes load(const acc_t* values) {
    Raw x;
    std::memcpy(&x, values, sizeof(x));
    return RdaLanes(x);
  }
  void store(acc_t* values) const { std::memcpy(values, &v, sizeof(v)); }

  friend RdaLanes operator+(RdaLanes a, RdaLanes b) { return RdaLanes(a.v + b.v); }
  friend RdaLanes operator-(RdaLanes a, RdaLanes b) { return RdaLanes(a.v - b.v); }
  friend RdaLanes operator*(RdaLanes a, RdaLanes b) { return RdaLanes(a.v * b.v); }
  RdaLanes& operator+=(RdaLanes b) { v = v + b.v; return *this; }
  RdaLanes& operator-=(RdaLanes b) { v = v - b.v; return *this; }

  friend RdaLanes rda_tanh(RdaLanes x) {
    alignas(32) acc_t values[kLanes];
    x.store(values);
    vector_tanh(values, kLanes);
    return load(values);
  }
  friend RdaLanes rda_relu(RdaLanes x) { return RdaLanes(x.v > Raw{} ? x.v : Raw{}); }
  friend RdaLanes rda_relu_slope(RdaLanes x) { return RdaLanes(x.v > Raw{} ? Raw{} + acc_t(1) : Raw{}); }
};

// x rounded to scalar_t and back in every lane: the value a stored stage tensor holds.
template <typename scalar_t, typename acc_t>
inline RdaLanes<acc_t> rda_round(RdaLanes<acc_t> x) {
  alignas(32) acc_t values[RdaLanes<acc_t>::kLanes];
  x.store(values);
  for (acc_t& value : values) {
    value = static_cast<acc_t>(static_cast<scalar_t>(value));
  }
  return RdaLanes<acc_t>::load(values);
}

// Lane l of tap e from src[l * stride + e]: built in registers from the scalars
// (writing them to memory and loading one vector would stall on store
// forwarding).
template <typename acc_t, typename scalar_t, size_t... L>
inline RdaLanes<acc_t> lanes_of(const scalar_t* src, int64_t stride, std::index_sequence<L...>) {
  return RdaLanes<acc_t>(typename RdaLanes<acc_t>::Raw{static_cast<acc_t>(src[L * stride])...});
}

// Lanes of `count` consecutive slices of `taps` values each, starting at slice
// `first` of src: dst[e] holds tap e of every slice; lanes past `count` are 0.
template <typename scalar_t, typename acc_t>
inline void gather_slices(RdaLanes<acc_t>* dst, const scalar_t* src, int64_t first, int count, int taps) {
  constexpr int L = RdaLanes<acc_t>::kLanes;
  const scalar_t* from = src + first * taps;
  scalar_t padded[L * kRdaMaxTaps];
  if (count < L) {
    std::fill(std::copy(from, from + count * taps, padded), padded + L * taps, scalar_t(0));
    from = padded;
  }
  for (int e = 0; e < taps; ++e) {
    dst[e] = lanes_of<acc_t>(from + e, taps, std::make_index_sequence<L>{});
  }
}

// The inverse of gather_slices for the first `count` lanes.
template <typename scalar_t, typename acc_t>
inline void scatter_slices(scalar_t* dst, const RdaLanes<acc_t>* src, int64_t first, int count, int taps) {
  constexpr int L = RdaLanes<acc_t>::kLanes;
  alignas(32) acc_t values[L];
  for (int e = 0; e < taps; ++e) {
    src[e].store(values);
    for (int l = 0; l < count; ++l) {
      dst[(first + l) * taps + e] = static_cast<scalar_t>(values[l]);
    }
  }
}

}  // namespace anode_ext
