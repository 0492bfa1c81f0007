// AVX-512 helpers shared by the engine's native kernels: 16 float32 lanes loaded from and
// stored to float32, bf16 or fp16 memory, and a vector exp. LATLAB_AVX512 is defined where the
// compiler targets AVX-512 (-march=native on such a CPU); kernels keep a portable path beside.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>

#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LATLAB_AVX512 1
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define LATLAB_AMX 1  // AMX-BF16 tiles; the OS must still grant their state (amx_thread_begin)
#if defined(__AMX_INT8__)
#define LATLAB_AMX_INT8 1
#endif
#endif

namespace latlab {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// fp8 e5m2 is the top byte of a float16: widen each byte to 16 bits, shift it up, convert.
inline __m512 load16(const c10::Float8_e5m2* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(raw), 8));
}

// int8 (an int8 KV cache's values, before their row's scale).
inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// exp(x) (x clamped to [-87, 88]): 2^n * e^r with |r| <= ln 2 / 2, e^r by its
// degree-6 Taylor polynomial (relative error ~1e-7, float32's own precision).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  }
  return _mm512_scalef_ps(p, n);
}

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load16(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 load16(const c10::Float8_e5m2* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, p)), 8));
}

inline __m512 load16(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

// Round to nearest even, as c10::BFloat16's conversion does (NaNs stay NaNs).
inline __m256i to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i out = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC00000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(out, 16));
}

inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
inline void store16(c10::BFloat16* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, to_bf16(v));
}
inline void store16(c10::Half* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Round to fp8 e5m2 as c10::Float8_e5m2's conversion does, 16 lanes: nearest even from float32
// (no float16 step, which would round twice); 65,536 and beyond become inf, NaN stays NaN;
// below the smallest normal (2^-14) an add of a magic number rounds to the subnormal grid.
inline __m128i to_e5m2(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i sign = _mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512i mag = _mm512_xor_si512(bits, sign);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(mag, 21), _mm512_set1_epi32(1));
  // normal range: drop 21 mantissa bits, rebias the exponent (127 -> 15), round to nearest even
  const uint32_t rebias = (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFFFu;
  const __m512i bias = _mm512_set1_epi32(static_cast<int>(rebias));
  const __m512i normal = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(mag, bias), odd), 21);
  // below 2^-14: adding 128.0f (biased exponent 134, an ulp of 2^-16, e5m2's subnormal step)
  // rounds the value to that grid, and the sum's low bits are the code
  const __m512i magic = _mm512_set1_epi32(134 << 23);
  const __m512 shifted = _mm512_add_ps(_mm512_castsi512_ps(mag), _mm512_castsi512_ps(magic));
  const __m512i small = _mm512_sub_epi32(_mm512_castps_si512(shifted), magic);
  const __mmask16 is_small = _mm512_cmplt_epu32_mask(mag, _mm512_set1_epi32(113 << 23));
  const __mmask16 is_inf = _mm512_cmpge_epu32_mask(mag, _mm512_set1_epi32(143 << 23));
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(255 << 23));
  __m512i out = _mm512_mask_mov_epi32(normal, is_small, small);
  out = _mm512_mask_mov_epi32(out, is_inf, _mm512_set1_epi32(0x7C));
  out = _mm512_mask_mov_epi32(out, is_nan, _mm512_set1_epi32(0x7F));
  out = _mm512_and_si512(out, _mm512_set1_epi32(0xFF));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(out, _mm512_srli_epi32(sign, 24)));
}
inline void store16(c10::Float8_e5m2* p, __m512 v, __mmask16 m) {
  _mm_mask_storeu_epi8(p, m, to_e5m2(v));
}

// silu(gate) * up, 16 lanes: gate / (1 + e^-gate) * up (the MLP's activation, float32).
inline __m512 silu_times(__m512 gate, __m512 up) {
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gate));
  return _mm512_mul_ps(_mm512_div_ps(gate, _mm512_add_ps(_mm512_set1_ps(1.f), e)), up);
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

}  // namespace latlab
#endif
