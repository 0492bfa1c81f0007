// One set of names for a vector of float32 lanes, 8 (AVX2, Ymm) or 16 (AVX-512, Zmm), so a
// kernel is written once and instantiated for the widest vectors the build's CPU has: the
// GEMVs of the native decode steps (decode_step.cpp) and the paged decode attention
// (paged_attention.cpp). Each operation is the one instruction (or the few) the kernels used
// before they were shared, so their numbers did not change.
#pragma once

#include <cstdint>

#include "vec256.h"
#include "vec512.h"

namespace latlab {

#ifdef LATLAB_AVX2
struct Ymm {
  using T = __m256;
  static constexpr int kLanes = 8;
  // accumulators a loop may keep in registers beside its operands (16 registers in all)
  static constexpr int kAccumulators = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T rows(const float* p) { return _mm256_loadu_ps(p); }
  template <typename W>
  static T weights(const W* p) { return load8(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T exp(T x) { return exp8(x); }
  static float sum(T v) { return hsum8(v); }
  static float max_of(T v) { return hmax8(v); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  template <typename Q>
  static void store(Q* p, T v) { store8(p, v); }
  // the first `left` lanes of p (the rest `fill`), and their stores and sums
  static T load_tail(const float* p, int64_t left, float fill) {
    const __m256i m = tail_mask8(left);
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store_tail(float* p, T v, int64_t left) {
    _mm256_maskstore_ps(p, tail_mask8(left), v);
  }
  static T add_tail(T sum, T v, int64_t left) {
    return _mm256_add_ps(sum, _mm256_and_ps(v, _mm256_castsi256_ps(tail_mask8(left))));
  }
};
#endif

#ifdef LATLAB_AVX512
struct Zmm {
  using T = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kAccumulators = 16;  // of 32 registers
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T rows(const float* p) { return _mm512_loadu_ps(p); }
  template <typename W>
  static T weights(const W* p) { return load16(p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T exp(T x) { return exp16(x); }
  static float sum(T v) { return _mm512_reduce_add_ps(v); }
  static float max_of(T v) { return _mm512_reduce_max_ps(v); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  template <typename Q>
  static void store(Q* p, T v) { store16(p, v, static_cast<__mmask16>(0xFFFF)); }
  static T load_tail(const float* p, int64_t left, float fill) {
    return _mm512_mask_loadu_ps(set1(fill), tail_mask(left), p);
  }
  static void store_tail(float* p, T v, int64_t left) {
    _mm512_mask_storeu_ps(p, tail_mask(left), v);
  }
  static T add_tail(T sum, T v, int64_t left) {
    return _mm512_mask_add_ps(sum, tail_mask(left), sum, v);
  }
};
#endif

}  // namespace latlab
