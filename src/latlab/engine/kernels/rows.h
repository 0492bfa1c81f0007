// Row primitives shared by the step ops (step_ops.cpp) and the native decode steps
// (decode_step.cpp, decode_batch.cpp), so a bf16 step rounds at the same points with the same
// arithmetic on every path: widen a row to float32, narrow it back (round to nearest even),
// RMSNorm a float32 row, RoPE one head, SiLU * up, 16 lanes at a time where the CPU has AVX-512
// (norms and SiLU 8 at a time where its widest vectors are AVX2's, for float32 and bf16 rows);
// and the split of a parallel region's work over its threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "vec256.h"
#include "vec512.h"

namespace latlab {

// Thread t's share of n items among `threads`, in whole blocks of `block` items.
struct Span {
  int64_t lo, hi;
};
inline Span share(int64_t n, int64_t block, int t, int threads) {
  const int64_t blocks = (n + block - 1) / block;
  return {std::min(n, blocks * t / threads * block), std::min(n, blocks * (t + 1) / threads * block)};
}

template <typename T>
inline float f32(T x) {
  return static_cast<float>(x);
}

template <typename T>
void widen_row(const T* src, float* dst, int64_t n) {
#ifdef LATLAB_AVX512
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = latlab::tail_mask(n - j);
    _mm512_mask_storeu_ps(dst + j, m, latlab::load16(src + j, m));
  }
#else
  for (int64_t j = 0; j < n; ++j) dst[j] = f32(src[j]);
#endif
}

template <typename T>
void narrow_row(const float* src, T* dst, int64_t n) {
#ifdef LATLAB_AVX512
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = latlab::tail_mask(n - j);
    latlab::store16(dst + j, _mm512_maskz_loadu_ps(m, src + j), m);
  }
#else
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
#endif
}

// Row r's scale slot in an int8 cache's scales (kv_row_scales); nullptr for other caches.
inline float* row_scale(float* scales, int64_t r) { return scales ? scales + r : nullptr; }
inline const float* row_scale(const float* scales, int64_t r) {
  return scales ? scales + r : nullptr;
}

// One new K or V row into the cache: narrowed to the cache's dtype; `scale` (the row's slot in
// an int8 cache's scales, kernels.h) is unused there.
template <typename KV>
void store_kv_row(const float* src, KV* dst, float*, int64_t n) {
  narrow_row(src, dst, n);
}

// An int8 cache's row: scale = absmax / 127, values = x / scale rounded to nearest even (0 for a
// zero row), with float32 arithmetic in the order of the torch path's kv_int8.quantize, so
// every path writes the same bytes.
inline void store_kv_row(const float* src, int8_t* dst, float* scale, int64_t n) {
  float amax = 0.f;
  for (int64_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(src[j]));
  *scale = amax / 127.f;
  const float div = *scale > 0.f ? *scale : 1.f;
#ifdef LATLAB_AVX512
  const __m512 dv = _mm512_set1_ps(div), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = latlab::tail_mask(n - j);
    const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(m, src + j), dv),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi));
    _mm_mask_storeu_epi8(dst + j, m, _mm512_cvtepi32_epi8(v));
  }
#else
  for (int64_t j = 0; j < n; ++j) {
    dst[j] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(src[j] / div))));
  }
#endif
}

#ifdef LATLAB_AVX2
// Row dtypes with 8-lane loads and stores (vec256.h); fp16 rows take the scalar loops.
template <typename T>
constexpr bool kEightLanes = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;
#endif

template <typename T>
void norm_row(const float* x, const T* w, T* out, int64_t dim, float eps) {
#ifdef LATLAB_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < dim; j += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(latlab::tail_mask(dim - j), x + j);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float ss = _mm512_reduce_add_ps(acc);
  const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(ss / static_cast<float>(dim) + eps));
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = latlab::tail_mask(dim - j);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), inv);
    latlab::store16(out + j, _mm512_mul_ps(v, latlab::load16(w + j, m)), m);
  }
#else
  float ss = 0.f;
  int64_t j = 0;
#ifdef LATLAB_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= dim; j += 8) acc = _mm256_fmadd_ps(load8(x + j), load8(x + j), acc);
  ss = hsum8(acc);
#endif
  for (; j < dim; ++j) ss += x[j] * x[j];
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(dim) + eps);
  j = 0;
#ifdef LATLAB_AVX2
  if constexpr (kEightLanes<T>) {
    const __m256 iv = _mm256_set1_ps(inv);
    for (; j + 8 <= dim; j += 8) {
      store8(out + j, _mm256_mul_ps(_mm256_mul_ps(load8(x + j), iv), load8(w + j)));
    }
  }
#endif
  for (; j < dim; ++j) out[j] = static_cast<T>(x[j] * inv * f32(w[j]));
#endif
}

// x * cos + rotate_half(x) * sin for one head, all in float32 (x widened by the caller).
inline void rope(const float* x, const float* cos, const float* sin, float* out, int64_t d) {
  const int64_t half = d / 2;
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] + x[i + half] * sin[i];
#pragma omp simd
  for (int64_t i = half; i < d; ++i) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

// silu(gate) * up of one row of a fused gate_up projection [gate (inter), up (inter)].
template <typename T>
void silu_mul_row(const T* gate, T* out, int64_t inter) {
  const T* up = gate + inter;
#ifdef LATLAB_AVX512
  for (int64_t j = 0; j < inter; j += 16) {
    const __mmask16 m = latlab::tail_mask(inter - j);
    latlab::store16(out + j, latlab::silu_times(latlab::load16(gate + j, m), latlab::load16(up + j, m)), m);
  }
#else
  int64_t j = 0;
#ifdef LATLAB_AVX2
  if constexpr (kEightLanes<T>) {
    for (; j + 8 <= inter; j += 8) store8(out + j, silu_times8(load8(gate + j), load8(up + j)));
  }
#endif
  for (; j < inter; ++j) {
    const float g = f32(gate[j]);
    out[j] = static_cast<T>(g / (1.f + std::exp(-g)) * f32(up[j]));
  }
#endif
}

}  // namespace latlab
