// vector_tanh (rda_lanes.h), for double lanes. SLEEF ships inside libtorch_cpu on
// x86-64 (ATen's vectorized CPU math calls it). Sleef_tanhd4_u35 (within 3.5 ulp)
// takes AVX registers, so only the small wrapper below is compiled for AVX, and it
// runs only on a CPU that has it. The declaration is weak: a torch without
// SLEEF leaves it null and every value goes through std::tanh.

#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ANODE_EXT_SLEEF_TANH 1
extern "C" __m256d Sleef_tanhd4_u35(__m256d) __attribute__((weak));
#endif

namespace anode_ext {
namespace {

#ifdef ANODE_EXT_SLEEF_TANH
bool cpu_has_avx() {
  static const bool has = (__builtin_cpu_init(), __builtin_cpu_supports("avx"));
  return has;
}

__attribute__((target("avx"))) void tanh4(double* values) {
  _mm256_storeu_pd(values, Sleef_tanhd4_u35(_mm256_loadu_pd(values)));
}
#endif

template <typename T>
void scalar_tanh(T* values, int count) {
  for (int i = 0; i < count; ++i) {
    values[i] = std::tanh(values[i]);
  }
}

}  // namespace

void vector_tanh(double* values, int count) {
#ifdef ANODE_EXT_SLEEF_TANH
  if (count == 4 && Sleef_tanhd4_u35 != nullptr && cpu_has_avx()) {
    tanh4(values);
    return;
  }
#endif
  scalar_tanh(values, count);
}

}  // namespace anode_ext
