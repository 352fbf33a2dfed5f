#pragma once
// RdaLanes: the value type with which the CPU kernels run the per-slice math of
// rda.h on several filter slices at once, one slice per lane: 256-bit GCC/Clang
// vectors, lane by lane the same operations in the same order as one
// accumulator, and their tanh: lanes_tanh (lanes_tanh.h) for float, vector_tanh
// (rda_tanh.cpp) for double. (at::vec::Vectorized is, in an
// extension built for the baseline instruction set, its generic form of arrays
// and loops; GCC did not keep it in registers: the forward step was 2.4 ms with
// it against 0.9 ms with these types and the AVX2 build, one thread, 128x128x3x3.)

#include "../rda.h"
#include "lanes_tanh.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace anode_ext {

// tanh of each of `count` doubles in place: SLEEF's vectorized tanh (within 3.5
// ulp: the variant ATen's torch.tanh calls is within 1.0 ulp and 2.5 times slower
// here) where the CPU runs AVX and the values fill one 256-bit register,
// std::tanh otherwise. The baseline and AVX2 kernels call the same function, so
// their results are equal bit for bit (a NaN's sign and payload aside).
void vector_tanh(double* values, int count);

// 256-bit GCC/Clang vectors: one AVX register, or two SSE2 registers on a CPU
// the compiler may not assume AVX on.
template <typename acc_t>
struct RawLanes;
// `mask` is what a lane-wise comparison gives: all bits set where it holds.
template <>
struct RawLanes<float> {
  typedef Float8 type;  // lanes_tanh.h's types
  typedef Int8 mask;
};
template <>
struct RawLanes<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef int64_t mask __attribute__((vector_size(32)));
};

// GCC's __builtin_shuffle builds the in-register transpose; other compilers take the
// lane-by-lane path.
#if defined(__GNUC__) && !defined(__clang__)
#define ANODE_EXT_RDA_TRANSPOSE 1
#endif

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
    if constexpr (std::is_same_v<acc_t, float>) {
      return RdaLanes(lanes_tanh(x.v));
    } else {
      alignas(32) acc_t values[kLanes];
      x.store(values);
      vector_tanh(values, kLanes);
      return load(values);
    }
  }
  // Selections by bit masks (x > 0 keeps x, or 1; NaN and -0 give +0, as the scalar form).
  friend RdaLanes rda_relu(RdaLanes x) { return RdaLanes(keep_where_positive(x.v, x.v)); }
  friend RdaLanes rda_relu_slope(RdaLanes x) { return RdaLanes(keep_where_positive(x.v, Raw{} + acc_t(1))); }

 private:
  static Raw keep_where_positive(Raw x, Raw value) {
    using Mask = typename RawLanes<acc_t>::mask;
    const Mask positive = x > Raw{};
    return (Raw)((Mask)value & positive);
  }
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

#ifdef ANODE_EXT_RDA_TRANSPOSE
// The square transpose of kLanes vectors of kLanes lanes, in registers:
// rows[l][e] becomes rows[e][l]. Three rounds of shuffles for float (8 x 8), two
// for double (4 x 4).
inline void transpose(RawLanes<float>::type* rows) {
  using V = RawLanes<float>::type;
  typedef int32_t Mask __attribute__((vector_size(32)));
  const Mask lo{0, 8, 1, 9, 4, 12, 5, 13}, hi{2, 10, 3, 11, 6, 14, 7, 15};
  const Mask lo2{0, 1, 8, 9, 4, 5, 12, 13}, hi2{2, 3, 10, 11, 6, 7, 14, 15};
  const Mask lo4{0, 1, 2, 3, 8, 9, 10, 11}, hi4{4, 5, 6, 7, 12, 13, 14, 15};
  V t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = __builtin_shuffle(rows[k], rows[k + 1], lo);
    t[k + 1] = __builtin_shuffle(rows[k], rows[k + 1], hi);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = __builtin_shuffle(t[k], t[k + 2], lo2);
    u[k + 1] = __builtin_shuffle(t[k], t[k + 2], hi2);
    u[k + 2] = __builtin_shuffle(t[k + 1], t[k + 3], lo2);
    u[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], hi2);
  }
  for (int k = 0; k < 4; ++k) {
    rows[k] = __builtin_shuffle(u[k], u[k + 4], lo4);
    rows[k + 4] = __builtin_shuffle(u[k], u[k + 4], hi4);
  }
}

inline void transpose(RawLanes<double>::type* rows) {
  using V = RawLanes<double>::type;
  typedef int64_t Mask __attribute__((vector_size(32)));
  const Mask lo{0, 4, 2, 6}, hi{1, 5, 3, 7}, lo2{0, 1, 4, 5}, hi2{2, 3, 6, 7};
  const V t0 = __builtin_shuffle(rows[0], rows[1], lo), t1 = __builtin_shuffle(rows[0], rows[1], hi);
  const V t2 = __builtin_shuffle(rows[2], rows[3], lo), t3 = __builtin_shuffle(rows[2], rows[3], hi);
  rows[0] = __builtin_shuffle(t0, t2, lo2);
  rows[1] = __builtin_shuffle(t1, t3, lo2);
  rows[2] = __builtin_shuffle(t0, t2, hi2);
  rows[3] = __builtin_shuffle(t1, t3, hi2);
}

#endif

// Lane l of tap e from src[l * stride + e]: built in registers from the scalars
// (writing them to memory and loading one vector would stall on store
// forwarding).
template <typename acc_t, typename scalar_t, size_t... L>
inline RdaLanes<acc_t> lanes_of(const scalar_t* src, int64_t stride, std::index_sequence<L...>) {
  return RdaLanes<acc_t>(typename RdaLanes<acc_t>::Raw{static_cast<acc_t>(src[L * stride])...});
}

#ifdef ANODE_EXT_RDA_TRANSPOSE
// Taps c .. c + kLanes - 1 of kLanes slices of `taps` values from `from` (a full
// group, tensor dtype equal to acc_t): unaligned row loads and one transpose.
template <typename acc_t>
inline void gather_block(RdaLanes<acc_t>* dst, const acc_t* from, int taps, int c) {
  constexpr int L = RdaLanes<acc_t>::kLanes;
  typename RdaLanes<acc_t>::Raw rows[L];
  for (int l = 0; l < L; ++l) {
    std::memcpy(&rows[l], from + l * taps + c, sizeof(rows[l]));
  }
  transpose(rows);
  for (int e = 0; e < L; ++e) {
    dst[c + e] = RdaLanes<acc_t>(rows[e]);
  }
}

// The inverse of gather_block.
template <typename acc_t>
inline void scatter_block(acc_t* to, const RdaLanes<acc_t>* src, int taps, int c) {
  constexpr int L = RdaLanes<acc_t>::kLanes;
  typename RdaLanes<acc_t>::Raw rows[L];
  for (int e = 0; e < L; ++e) {
    rows[e] = src[c + e].v;
  }
  transpose(rows);
  for (int l = 0; l < L; ++l) {
    std::memcpy(to + l * taps + c, &rows[l], sizeof(rows[l]));
  }
}

// Calls fn(c) for the first tap c of each block of kLanes taps covering `taps`
// (at least kLanes): the last block overlaps the one before when kLanes does not
// divide taps.
template <int L, typename Fn>
inline void for_each_block(int taps, const Fn& fn) {
  for (int c = 0; c + L <= taps; c += L) {
    fn(c);
  }
  if (taps % L != 0) {
    fn(taps - L);
  }
}
#endif

// Lanes of `count` consecutive slices of `taps` values each, starting at slice
// `first` of src: dst[e] holds tap e of every slice; lanes past `count` are 0.
// A full group of slices of at least kLanes taps in the accumulation dtype is read
// by rows and transposed in registers, block by block (for_each_block); a single
// tap is one contiguous vector.
template <typename scalar_t, typename acc_t>
inline void gather_slices(RdaLanes<acc_t>* dst, const scalar_t* src, int64_t first, int count, int taps) {
  constexpr int L = RdaLanes<acc_t>::kLanes;
  const scalar_t* from = src + first * taps;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (count == L && taps == 1) {
      dst[0] = RdaLanes<acc_t>::load(from);
      return;
    }
#ifdef ANODE_EXT_RDA_TRANSPOSE
    if (count == L && taps >= L) {
      for_each_block<L>(taps, [&](int c) { gather_block(dst, from, taps, c); });
      return;
    }
#endif
  }
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
  scalar_t* to = dst + first * taps;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (count == L && taps == 1) {
      src[0].store(to);
      return;
    }
#ifdef ANODE_EXT_RDA_TRANSPOSE
    if (count == L && taps >= L) {
      for_each_block<L>(taps, [&](int c) { scatter_block(to, src, taps, c); });
      return;
    }
#endif
  }
  alignas(32) acc_t values[L];
  for (int e = 0; e < taps; ++e) {
    src[e].store(values);
    for (int l = 0; l < count; ++l) {
      to[l * taps + e] = static_cast<scalar_t>(values[l]);
    }
  }
}

}  // namespace anode_ext
