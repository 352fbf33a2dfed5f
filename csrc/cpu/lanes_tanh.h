#pragma once
// tanh of eight float lanes, inline, in GCC/Clang vector arithmetic: the RDA CPU
// kernels' reaction (rda_lanes.h). Inline, it stays in registers among the
// stencil arithmetic (a call to SLEEF's vector tanh went through memory: the forward
// step of one 128x128x3x3 weight, midpoint, one thread, took 563 us with it and 413
// with this).
//
//   |x| < 0.5:  tanh x = x + x^3 P(x^2), P of degree 3 (only this when every lane
//               is so small, as convolution weights nearly always are);
//   otherwise:  tanh |x| = 1 - 2 / (exp(2|x|) + 1), exp by n ln 2 + r with
//               |r| <= ln 2 / 2 (a two-part ln 2, so n ln 2 is exact) and a degree-6
//               polynomial in r, 2^n by the exponent bits, then the sign of x.
//
// Each lane's value does not depend on the other lanes. At most 2.04 ulp from tanh
// on 2.2 million floats of every binade (tests/test_rda_ops.py bounds it by 2.5);
// NaN stays NaN, and large values of either sign give +-1 (infinities too). The
// coefficients are least-squares fits of this library (relative error, Chebyshev
// nodes): P to (tanh x - x) / x^3 on (0, 0.5], the exp polynomial on
// [-ln 2 / 2, ln 2 / 2]. Every operation is a plain IEEE one without fused
// multiply-adds, in one fixed order, so the baseline and the AVX2 kernels give the
// same bits.

#include <cstdint>

namespace anode_ext {

typedef float Float8 __attribute__((vector_size(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));

inline Float8 select_lanes(Int8 mask, Float8 yes, Float8 no) {
  return (Float8)((mask & (Int8)yes) | (~mask & (Int8)no));
}

// Whether a lane-wise comparison held in every lane.
inline bool all_lanes(Int8 mask) {
  typedef int64_t Int4x64 __attribute__((vector_size(32)));
  const Int4x64 halves = (Int4x64)mask;
  return (halves[0] & halves[1] & halves[2] & halves[3]) == -1;
}

inline Float8 lanes_tanh(Float8 x) {
  // |x| < 0.5: |x| + |x|^3 P(x^2), then the sign of x (so tanh(-0) = -0). Convolution
  // weights are nearly all this small, and a group of lanes that all are skips the rest.
  const Int8 sign_bit = Int8{} + INT32_MIN;
  const Int8 sign = sign_bit & (Int8)x;
  const Float8 a = (Float8)(~sign_bit & (Int8)x);
  const Float8 t = a * a;
  Float8 q = Float8{} + 0.017268860712647438f;
  q = q * t + -0.053059328347444534f;
  q = q * t + 0.13326095044612885f;
  q = q * t + -0.33333152532577515f;
  const Float8 small = (Float8)((Int8)(a + a * (t * q)) | sign);
  const Int8 is_small = a < 0.5f;
  if (all_lanes(is_small)) {
    return small;
  }

  // exp(y), y = 2|x| clamped to 40 (NaN too: tanh(20) rounds to 1 already).
  const Float8 one = Float8{} + 1.0f;
  Float8 y = a + a;
  y = select_lanes(y < 40.0f, y, Float8{} + 40.0f);
  const Float8 shifter = Float8{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const Float8 n = (y * 1.44269504f + shifter) - shifter;
  const Float8 r = (y - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  Float8 p = Float8{} + 0.001385929062962532f;
  p = p * r + 0.008374763652682304f;
  p = p * r + 0.04166772589087486f;
  p = p * r + 0.1666642129421234f;
  p = p * r + 0.4999999403953552f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Int8 exponent = (__builtin_convertvector(n, Int8) + 127) << 23;
  const Float8 large = one - 2.0f / (p * (Float8)exponent + one);
  const Float8 signed_large = (Float8)((Int8)large | sign);
  return select_lanes(x == x, select_lanes(is_small, small, signed_large), x);
}

}  // namespace anode_ext
