// Decode attention over the paged KV cache, read in place (latlab engine, CPU).
//
// One query token per sequence. For each (sequence, KV head) the kernel walks the sequence's
// blocks through its block table, converts K and V to float32 as it reads them, and keeps the
// scores of the GQA group's query heads in float32: no gathered copy of the cache, no padding to
// the longest sequence, no dtype-converted copy. Work items (sequence x KV head) are spread over
// torch's own intra-op threads (at::parallel_for).
//
// Layouts (the engine's): q and out [B, H, D]; k_cache and v_cache [NB, KVH, BS, D] contiguous;
// block_tables [B, max_blocks] int64; seq_lens [B] int64 = keys to attend (the new one included).
// Query head h uses KV head h / (H / KVH), as transformers' repeat_kv does.

#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "lanes.h"
#include "rows.h"

namespace {

constexpr int64_t kMaxGroup = 16;  // query heads per KV head the vector path keeps in registers
// Sequences this long and longer score their keys on AMX tiles (where the thread has them).
// Over cold caches, batch 64: 1.11-1.13x the vector path at 128-1,024 tokens of context,
// 1.0x at 48-70, 0.91-0.99x at 26 (four runs; docs/engine.md).
constexpr int64_t kTileKeysFrom = 64;

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }
inline float to_float(c10::Float8_e5m2 x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }

// An int8 cache's values are scaled per row (kernels.h): scores and value weights take the
// row's scale; other dtypes hold the values themselves.
template <typename KV>
constexpr bool kScaled = std::is_same_v<KV, int8_t>;

template <typename KV>
inline void widen(const KV* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

template <>
inline void widen<float>(const float* src, float* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// The portable path (any head size, any CPU): one widened K/V row at a time. k_head and v_head:
// the item's KV head in block 0; block b starts `block_stride` elements further per block id.
template <typename Q, typename KV>
void attend_one(const Q* q, Q* out, const KV* k_head, const KV* v_head, const float* ks,
                const float* vs, const int64_t* table, int64_t seq_len, int64_t group,
                int64_t block_stride, int64_t bs, int64_t d, float scale,
                std::vector<float>& scratch) {
  const int64_t scale_stride = block_stride / d;  // an int8 cache's scales per block
  // scratch: group query rows, group score rows (seq_len each), one widened K/V row, group accs
  scratch.resize(group * d + group * seq_len + d + group * d);
  float* qf = scratch.data();
  float* scores = qf + group * d;
  float* row = scores + group * seq_len;
  float* acc = row + d;
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t i = 0; i < d; ++i) qf[g * d + i] = to_float(q[g * d + i]) * scale;
  }
  for (int64_t t = 0; t < seq_len; ++t) {
    widen(k_head + table[t / bs] * block_stride + (t % bs) * d, row, d);
    float row_scale = 1.f;
    if constexpr (kScaled<KV>) row_scale = ks[table[t / bs] * scale_stride + t % bs];
    for (int64_t g = 0; g < group; ++g) {
      scores[g * seq_len + t] = dot(qf + g * d, row, d) * row_scale;
    }
  }
  std::fill(acc, acc + group * d, 0.f);
  std::vector<float> denom(group);
  for (int64_t g = 0; g < group; ++g) {
    float* s = scores + g * seq_len;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < seq_len; ++t) m = s[t] > m ? s[t] : m;
    float sum = 0.f;
    for (int64_t t = 0; t < seq_len; ++t) {
      s[t] = std::exp(s[t] - m);
      sum += s[t];
    }
    denom[g] = sum;
  }
  for (int64_t t = 0; t < seq_len; ++t) {
    widen(v_head + table[t / bs] * block_stride + (t % bs) * d, row, d);
    float row_scale = 1.f;
    if constexpr (kScaled<KV>) row_scale = vs[table[t / bs] * scale_stride + t % bs];
    for (int64_t g = 0; g < group; ++g) {
      axpy(scores[g * seq_len + t] * row_scale, row, acc + g * d, d);
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    const float inv = 1.f / denom[g];
    for (int64_t i = 0; i < d; ++i) out[g * d + i] = static_cast<Q>(acc[g * d + i] * inv);
  }
}

#ifdef LATLAB_AVX2
// The vector path (head size a multiple of the vector's lanes, up to kMaxGroup query heads per
// KV head), written once over V: latlab::Zmm (16 lanes) where the CPU has AVX-512, latlab::Ymm
// (8 lanes) where its widest vectors are AVX2's. At batch 64 the portable path cost a third of
// a bf16 decode step on a Xeon with AMX (docs/engine.md), and on an AVX2 EPYC it read a float32
// cache at ~4.7 GB/s of ~19: each key row was widened into a buffer, each score summed on its
// own, each exp scalar. Here a key row is converted in registers, a vector at a time, once for
// the whole GQA group; a block's rows are read in order; exp runs a vector of scores at a time;
// no allocation per item.

// Ask for a cache block's rows before they are read: blocks lie anywhere in the cache, so the
// hardware prefetcher cannot see the next one coming.
template <typename KV>
inline void prefetch_rows(const KV* rows, int64_t n, int64_t d) {
  const char* p = reinterpret_cast<const char*>(rows);
  for (int64_t off = 0; off < n * d * static_cast<int64_t>(sizeof(KV)); off += 64) {
    _mm_prefetch(p + off, _MM_HINT_T0);
  }
}

// Softmax numerators in place over n scores; returns their sum.
template <class V>
float exp_less_max(float* s, int64_t n) {
  constexpr int64_t w = V::kLanes;
  const float lowest = -std::numeric_limits<float>::infinity();
  typename V::T mv = V::set1(lowest);
  for (int64_t t = 0; t < n; t += w) mv = V::max(mv, V::load_tail(s + t, n - t, lowest));
  const typename V::T m = V::set1(V::max_of(mv));
  typename V::T sum = V::zero();
  for (int64_t t = 0; t < n; t += w) {
    const typename V::T e = V::exp(V::sub(V::load_tail(s + t, n - t, 0.f), m));
    V::store_tail(s + t, e, n - t);
    sum = V::add_tail(sum, e, n - t);
  }
  return V::sum(sum);
}

// scores[g * stride + j] = q_g . k_j for n key rows in a row (times each row's scale for an
// int8 cache). C: the head size in vectors, a template argument so a key row stays in C
// registers.
template <class V, int C, typename KV>
void score_rows(const float* qf, const KV* rows, const float* row_scales, int64_t n,
                int64_t group, float* scores, int64_t stride) {
  constexpr int64_t w = V::kLanes, d = w * C;
  for (int64_t j = 0; j < n; ++j) {
    typename V::T kv[C];
    for (int c = 0; c < C; ++c) kv[c] = V::weights(rows + j * d + w * c);
    for (int64_t g = 0; g < group; ++g) {
      typename V::T acc = V::mul(kv[0], V::rows(qf + g * d));
      for (int c = 1; c < C; ++c) acc = V::fma(kv[c], V::rows(qf + g * d + w * c), acc);
      float sum = V::sum(acc);
      if constexpr (kScaled<KV>) sum *= row_scales[j];
      scores[g * stride + j] = sum;
    }
  }
}

// scores[g * stride + t] = q_g . k_t for every key t of the sequence, block by block (qf: the
// queries times the scale, float32).
template <class V, int C, typename KV>
void score_keys(const float* qf, const KV* k_head, const float* ks, const int64_t* table,
                int64_t seq_len, int64_t block_stride, int64_t group, int64_t bs, float* scores,
                int64_t stride) {
  constexpr int64_t d = V::kLanes * C;
  for (int64_t t0 = 0; t0 < seq_len; t0 += bs) {
    const KV* block = k_head + table[t0 / bs] * block_stride;
    const int64_t n = std::min(bs, seq_len - t0);
    if (t0 + bs < seq_len) {
      prefetch_rows(k_head + table[t0 / bs + 1] * block_stride, std::min(bs, seq_len - t0 - bs), d);
    }
    const float* row_scales = kScaled<KV> ? ks + table[t0 / bs] * (block_stride / d) : nullptr;
    score_rows<V, C>(qf, block, row_scales, n, group, scores + t0, stride);
  }
}
#endif

#ifdef LATLAB_AMX
// The group's bf16 queries as AMX B tiles, one per 32 dims: row r of tile c holds, for each of
// 16 columns (the query heads), the pair of dims (32 c + 2r, + 1). Columns past the group are
// left as they are: each column's sums depend on that column alone, and those are not read.
void query_tiles(const c10::BFloat16* q, int64_t group, int64_t d, uint32_t* tiles) {
  for (int64_t g = 0; g < group; ++g) {
    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(q + g * d);
    for (int64_t p = 0; p < d / 2; ++p) tiles[(p / 16) * 256 + (p % 16) * 16 + g] = pairs[p];
  }
}

// score_keys on AMX tiles (the calling thread has configured them: 16 rows x 64 bytes each).
// A tile is 16 key rows x 32 dims read straight from the cache, so one multiply gives 16 keys'
// sums for all the group's heads, where the vector path needs a horizontal sum per key and
// head. The products of bf16 pairs are exact in float32; only the order of the sums differs
// from the vector path's, and the scale is applied to the sums, not to the queries. The last
// rows of a sequence, fewer than a tile, go the vector way (score_rows with qf): a tile would
// read the block's unused rows from memory too, 1.1x slower at 26 tokens of context.
template <int C>
void score_keys_tiles(const uint32_t* qtiles, const float* qf, const c10::BFloat16* k_head,
                      const int64_t* table, int64_t seq_len, int64_t block_stride, int64_t group,
                      int64_t bs, float scale, float* sums, float* scores, int64_t stride) {
  constexpr int64_t d = 16 * C;
  const __m512i column = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80,
                                          64, 48, 32, 16, 0);
  const __m512 sv = _mm512_set1_ps(scale);
  for (int64_t t0 = 0; t0 < seq_len; t0 += bs) {
    const c10::BFloat16* block = k_head + table[t0 / bs] * block_stride;
    if (t0 + bs < seq_len) {
      prefetch_rows(k_head + table[t0 / bs + 1] * block_stride, std::min(bs, seq_len - t0 - bs), d);
    }
    for (int64_t j0 = 0; j0 < std::min(bs, seq_len - t0); j0 += 16) {
      if (seq_len - t0 - j0 < 16) {
        score_rows<latlab::Zmm, C>(qf, block + j0 * d, nullptr, seq_len - t0 - j0, group,
                                   scores + t0 + j0, stride);
        break;
      }
      _tile_zero(0);
      for (int c = 0; c < C / 2; ++c) {
        _tile_loadd(1, block + j0 * d + 32 * c, d * 2);
        _tile_loadd(2, qtiles + 256 * c, 64);
        _tile_dpbf16ps(0, 1, 2);
      }
      _tile_stored(0, sums, 64);
      for (int64_t g = 0; g < group; ++g) {
        const __m512i at = _mm512_add_epi32(column, _mm512_set1_epi32(static_cast<int>(g)));
        const __m512 s = _mm512_i32gather_ps(at, sums, 4);
        _mm512_storeu_ps(scores + g * stride + t0 + j0, _mm512_mul_ps(s, sv));
      }
    }
  }
}
#endif

#ifdef LATLAB_AVX2
// out_g = sum_t probs[g * stride + t] * v_t for G query heads at once (G * C accumulators in
// registers): each value row is loaded and widened once for the G heads, not once per head.
template <class V, int C, int G, typename KV>
void weigh_values(const float* probs, const KV* v_head, const float* vs, const int64_t* table,
                  int64_t seq_len, int64_t block_stride, int64_t bs, float* out,
                  int64_t stride) {
  constexpr int64_t w = V::kLanes, d = w * C;
  typename V::T acc[G][C];
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < C; ++c) acc[g][c] = V::zero();
  }
  for (int64_t t0 = 0; t0 < seq_len; t0 += bs) {
    const KV* block = v_head + table[t0 / bs] * block_stride;
    const int64_t n = std::min(bs, seq_len - t0);
    if (t0 + bs < seq_len) {
      prefetch_rows(v_head + table[t0 / bs + 1] * block_stride, std::min(bs, seq_len - t0 - bs),
                    d);
    }
    const float* row_scales = kScaled<KV> ? vs + table[t0 / bs] * (block_stride / d) : nullptr;
    for (int64_t j = 0; j < n; ++j) {
      typename V::T row[C];
      for (int c = 0; c < C; ++c) row[c] = V::weights(block + j * d + w * c);
      for (int g = 0; g < G; ++g) {
        float p = probs[g * stride + t0 + j];
        if constexpr (kScaled<KV>) p *= row_scales[j];
        const typename V::T pj = V::set1(p);
        for (int c = 0; c < C; ++c) acc[g][c] = V::fma(pj, row[c], acc[g][c]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < C; ++c) V::store(out + g * d + w * c, acc[g][c]);
  }
}

// The value sums of a GQA group, as many heads at a time as keep their accumulators in registers
// (V::kAccumulators of them, at most 4 heads: with 16-lane vectors 4 heads of head size 64 or
// less, 2 of 128, 1 of 256; with 8 lanes 2 of 32, 1 of 64 or more). Each head's sum adds the
// same products in the same order whatever the chunk. Against one head at a time (16 lanes):
// attention 1.03-1.05x over cold caches, 1.06-1.10x over hot ones (batch 64, 2 query heads per
// KV head, head size 64, 26-256 tokens; docs/engine.md).
template <class V, int C, typename KV>
void weigh_group(const float* probs, const KV* v_head, const float* vs, const int64_t* table,
                 int64_t seq_len, int64_t block_stride, int64_t group, int64_t bs, float* out,
                 int64_t stride) {
  constexpr int64_t kMost = std::clamp(V::kAccumulators / C, 1, 4);
  for (int64_t g0 = 0; g0 < group; g0 += kMost) {
    const int64_t n = std::min(kMost, group - g0);
    const float* p = probs + g0 * stride;
    float* o = out + g0 * V::kLanes * C;
    if (n == 1) {
      weigh_values<V, C, 1>(p, v_head, vs, table, seq_len, block_stride, bs, o, stride);
    } else if constexpr (kMost >= 2) {
      if (n == 2) {
        weigh_values<V, C, 2>(p, v_head, vs, table, seq_len, block_stride, bs, o, stride);
      } else if constexpr (kMost >= 4) {
        if (n == 3) {
          weigh_values<V, C, 3>(p, v_head, vs, table, seq_len, block_stride, bs, o, stride);
        } else {
          weigh_values<V, C, 4>(p, v_head, vs, table, seq_len, block_stride, bs, o, stride);
        }
      }
    }
  }
}

// Scratch floats in front of an item's accumulators and scores: the group's scaled queries,
// and on tiles the query tiles and one tile of sums after them.
inline int64_t front_floats(int64_t group, int64_t d, bool tiles) {
  return group * d + (tiles ? d / 32 * 256 + 256 : 0);
}

// Tiles (16-lane vectors only): the scores on AMX (score_keys_tiles) for bf16 queries and keys
// from kTileKeysFrom keys; else the vector path.
template <class V, int C, bool Tiles, typename Q, typename KV>
void attend_one_vector(const Q* q, Q* out, const KV* k_head, const KV* v_head, const float* ks,
                       const float* vs, const int64_t* table, int64_t seq_len, int64_t group,
                       int64_t block_stride, int64_t bs, float scale, std::vector<float>& scratch) {
  constexpr int64_t w = V::kLanes, d = w * C;
  const int64_t stride = (seq_len + 15) / 16 * 16, front = front_floats(group, d, Tiles);
  if (static_cast<int64_t>(scratch.size()) < front + group * d + group * stride) {
    scratch.resize(front + group * d + group * stride);
  }
  float* qf = scratch.data();
  float* acc = qf + front;
  float* scores = acc + group * d;
  prefetch_rows(k_head + table[0] * block_stride, std::min(bs, seq_len), d);
  const typename V::T sv = V::set1(scale);
  for (int64_t i = 0; i < group * d; i += w) V::store(qf + i, V::mul(V::weights(q + i), sv));
  bool scored = false;
#ifdef LATLAB_AMX
  if constexpr (Tiles) {
    if (seq_len >= kTileKeysFrom) {
      uint32_t* qtiles = reinterpret_cast<uint32_t*>(qf + group * d);
      query_tiles(q, group, d, qtiles);
      score_keys_tiles<C>(qtiles, qf, k_head, table, seq_len, block_stride, group, bs, scale,
                          qf + group * d + d / 32 * 256, scores, stride);
      scored = true;
    }
  }
#endif
  if (!scored) {
    score_keys<V, C>(qf, k_head, ks, table, seq_len, block_stride, group, bs, scores, stride);
  }
  prefetch_rows(v_head + table[0] * block_stride, std::min(bs, seq_len), d);
  float inv[kMaxGroup];
  for (int64_t g = 0; g < group; ++g) inv[g] = 1.f / exp_less_max<V>(scores + g * stride, seq_len);
  weigh_group<V, C>(scores, v_head, vs, table, seq_len, block_stride, group, bs, acc, stride);
  for (int64_t g = 0; g < group; ++g) {  // vector conversions: scalar bf16 rounding cost more
    const typename V::T iv = V::set1(inv[g]);  // than the whole item at short contexts
    for (int64_t i = 0; i < d; i += w) {
      V::store(out + g * d + i, V::mul(V::rows(acc + g * d + i), iv));
    }
  }
}
#endif

// One (sequence, KV head) item with a uniform signature: the vector path for the common head
// sizes (the head size a template argument there), else the portable one.
template <typename Q, typename KV>
using AttendFn = void (*)(const Q*, Q*, const KV*, const KV*, const float*, const float*,
                          const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, float,
                          std::vector<float>&);

#ifdef LATLAB_AVX2
template <class V, int C, bool Tiles, typename Q, typename KV>
void attend_vector(const Q* q, Q* out, const KV* k, const KV* v, const float* ks,
                   const float* vs, const int64_t* table, int64_t seq_len, int64_t group,
                   int64_t block_stride, int64_t bs, int64_t, float scale,
                   std::vector<float>& scratch) {
  attend_one_vector<V, C, Tiles, Q, KV>(q, out, k, v, ks, vs, table, seq_len, group,
                                        block_stride, bs, scale, scratch);
}

// The tile path for bf16 queries and keys when the thread has its tiles, else the vector path
// (the AVX2 one where the vectors are 8 lanes, or the KV dtype's loads need F16C and it is
// missing: then the portable path).
template <int Dim, typename Q, typename KV>
AttendFn<Q, KV> vector_or_tiles(bool tiles) {
#ifdef LATLAB_AVX512
  constexpr int C = Dim / 16;
#ifdef LATLAB_AMX
  if constexpr (std::is_same_v<Q, c10::BFloat16> && std::is_same_v<KV, c10::BFloat16>) {
    if (tiles) return &attend_vector<latlab::Zmm, C, true, Q, KV>;
  }
#endif
  return &attend_vector<latlab::Zmm, C, false, Q, KV>;
#else
  (void)tiles;
#ifndef LATLAB_AVX2_HALF
  if constexpr (std::is_same_v<KV, c10::Half> || std::is_same_v<KV, c10::Float8_e5m2>) {
    return &attend_one<Q, KV>;
  } else
#endif
  {
    return &attend_vector<latlab::Ymm, Dim / 8, false, Q, KV>;
  }
#endif
}
#endif

// tiles: the calling thread has configured AMX tiles (amx_thread_begin); used for bf16 queries
// and keys in blocks of whole 16-row tiles.
template <typename Q, typename KV>
AttendFn<Q, KV> choose_attend(int64_t d, int64_t group, int64_t bs, bool tiles) {
#ifdef LATLAB_AVX2
  tiles = tiles && bs % 16 == 0;
  if (group <= kMaxGroup) {
    switch (d) {
      case 32: return vector_or_tiles<32, Q, KV>(tiles);
      case 64: return vector_or_tiles<64, Q, KV>(tiles);
      case 128: return vector_or_tiles<128, Q, KV>(tiles);
      case 256: return vector_or_tiles<256, Q, KV>(tiles);
      default: break;
    }
  }
#endif
  return &attend_one<Q, KV>;
}

template <typename Q, typename KV>
constexpr bool kTileable = std::is_same_v<Q, c10::BFloat16> && std::is_same_v<KV, c10::BFloat16>;

template <typename Q, typename KV>
void run(torch::Tensor& out, const torch::Tensor& q, const torch::Tensor& k_cache,
         const torch::Tensor& v_cache, const torch::Tensor& block_tables,
         const torch::Tensor& seq_lens, double scale, bool tiles) {
  const int64_t b = q.size(0), h = q.size(1), d = q.size(2);
  const int64_t kv_heads = k_cache.size(1), bs = k_cache.size(2), block_stride = kv_heads * bs * d;
  const int64_t group = h / kv_heads, max_blocks = block_tables.size(1);
  const Q* qp = q.data_ptr<Q>();
  Q* op = out.data_ptr<Q>();
  const KV* kp = k_cache.data_ptr<KV>();
  const KV* vp = v_cache.data_ptr<KV>();
  const float* ks = kv_row_scales(k_cache);
  const float* vs = kv_row_scales(v_cache);
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const float sc = static_cast<float>(scale);
  tiles = tiles && kTileable<Q, KV>;
  at::parallel_for(0, b * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    const bool mine = tiles && amx_thread_begin();  // tile state is per thread
    const AttendFn<Q, KV> attend = choose_attend<Q, KV>(d, group, bs, mine);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / kv_heads, kvh = item % kv_heads;
      const int64_t offset = (s * h + kvh * group) * d;
      attend(qp + offset, op + offset, kp + kvh * bs * d, vp + kvh * bs * d,
             latlab::row_scale(ks, kvh * bs), latlab::row_scale(vs, kvh * bs),
             tables + s * max_blocks, lens[s], group, block_stride, bs, d, sc, scratch);
    }
    if (mine) amx_thread_end();
  });
}

template <typename Q>
void dispatch_kv(torch::Tensor& out, const torch::Tensor& q, const torch::Tensor& k,
                 const torch::Tensor& v, const torch::Tensor& tables, const torch::Tensor& lens,
                 double scale, bool tiles) {
  switch (k.scalar_type()) {
    case at::kFloat: return run<Q, float>(out, q, k, v, tables, lens, scale, tiles);
    case at::kBFloat16: return run<Q, c10::BFloat16>(out, q, k, v, tables, lens, scale, tiles);
    case at::kHalf: return run<Q, c10::Half>(out, q, k, v, tables, lens, scale, tiles);
    case at::kFloat8_e5m2:
      return run<Q, c10::Float8_e5m2>(out, q, k, v, tables, lens, scale, tiles);
    case at::kChar: return run<Q, int8_t>(out, q, k, v, tables, lens, scale, tiles);
    default: TORCH_CHECK(false, "paged attention: unsupported KV dtype ", k.scalar_type());
  }
}

// The vector path's float32 lanes in this build, for the engine's report.
int64_t attention_lanes() {
#if defined(LATLAB_AVX512)
  return 16;
#elif defined(LATLAB_AVX2)
  return 8;
#else
  return 0;
#endif
}

}  // namespace

torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache,
                                     const torch::Tensor& block_tables,
                                     const torch::Tensor& seq_lens, double scale, bool tiles) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4, "paged attention: q [B,H,D], cache [NB,KVH,BS,D]");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "paged attention: contiguous tensors only");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && seq_lens.scalar_type() == at::kLong,
              "paged attention: int64 block tables and lengths");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0 && q.size(2) == k_cache.size(3),
              "paged attention: head counts or sizes do not match the cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == k_cache.scalar_type(),
              "paged attention: the K and V caches differ in shape or dtype");
  auto out = torch::empty_like(q);
  switch (q.scalar_type()) {
    case at::kFloat:
      dispatch_kv<float>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, tiles);
      break;
    case at::kBFloat16:
      dispatch_kv<c10::BFloat16>(out, q, k_cache, v_cache, block_tables, seq_lens, scale, tiles);
      break;
    default: TORCH_CHECK(false, "paged attention: unsupported query dtype ", q.scalar_type());
  }
  return out;
}

template <typename Q, typename KV>
void attend_group(const Q* q, Q* out, const KV* k_cache, const KV* v_cache,
                  const float* k_scales, const float* v_scales, const int64_t* table,
                  int64_t seq_len, int64_t kvh, int64_t group, int64_t kv_heads, int64_t bs,
                  int64_t d, float scale, bool tiles, std::vector<float>& scratch) {
  const int64_t head = kvh * bs * d;
  choose_attend<Q, KV>(d, group, bs, tiles)(
      q, out, k_cache + head, v_cache + head, latlab::row_scale(k_scales, kvh * bs),
      latlab::row_scale(v_scales, kvh * bs), table, seq_len, group, kv_heads * bs * d, bs, d,
      scale, scratch);
}

#define LATLAB_ATTEND_GROUP(Q, KV)                                                             \
  template void attend_group<Q, KV>(const Q*, Q*, const KV*, const KV*, const float*,           \
                                    const float*, const int64_t*, int64_t, int64_t, int64_t,     \
                                    int64_t, int64_t, int64_t, float, bool, std::vector<float>&);
LATLAB_ATTEND_GROUP(float, float)
LATLAB_ATTEND_GROUP(float, c10::BFloat16)
LATLAB_ATTEND_GROUP(float, c10::Half)
LATLAB_ATTEND_GROUP(float, c10::Float8_e5m2)
LATLAB_ATTEND_GROUP(float, int8_t)
LATLAB_ATTEND_GROUP(c10::BFloat16, float)
LATLAB_ATTEND_GROUP(c10::BFloat16, c10::BFloat16)
LATLAB_ATTEND_GROUP(c10::BFloat16, c10::Half)
LATLAB_ATTEND_GROUP(c10::BFloat16, c10::Float8_e5m2)
LATLAB_ATTEND_GROUP(c10::BFloat16, int8_t)
#undef LATLAB_ATTEND_GROUP

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention over the paged KV cache, read in place (tiles: q.K on AMX tiles for "
        "bf16 where the CPU has them)",
        pybind11::arg("q"), pybind11::arg("k_cache"), pybind11::arg("v_cache"),
        pybind11::arg("block_tables"), pybind11::arg("seq_lens"), pybind11::arg("scale"),
        pybind11::arg("tiles") = true);
  m.def("attention_lanes", &attention_lanes,
        "float32 lanes of the attention's vector path in this build (16 AVX-512, 8 AVX2, 0 none)");
  m.def("small_linear", &small_linear,
        "x @ w.T (* scale, for int8 w) (+ bias) for up to 4 float32 rows (GEMV)",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none(),
        pybind11::arg("scale") = pybind11::none());
  register_decode_model(m);
  register_batch_decode_model(m);
  m.def("rms_norm", &rms_norm_rows, "RMSNorm of each row, float32 inside");
  m.def("add_rms_norm", &add_rms_norm, "x + delta and the RMSNorm of that sum");
  m.def("rope_cache", &rope_cache, "RoPE on q and k, k and v written to the paged cache; returns q");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a fused gate_up projection");
  m.def("greedy_argmax", &greedy_argmax, "each row's first largest logit's column");
  m.def("decode_inputs", &decode_inputs,
        "positions, slots, seq_lens and block tables of a repeated decode step",
        pybind11::arg("ends"), pybind11::arg("offset"), pybind11::arg("tables"),
        pybind11::arg("width"), pybind11::arg("block_size"));
  m.def("f32_panels_available", &f32_panels_available, "built with AVX2 and FMA");
  m.def("f32_pack", &f32_pack, "a float32 weight [N, K] in 16-column panels [N/16, K, 16]");
  m.def("f32_panel_linear", &f32_panel_linear, "x @ w.T (+ bias) in float32 on AVX2 FMA");
  m.def("amx_available", &amx_available, "built with AMX-BF16 and the OS grants its state");
  m.def("amx_pack", &amx_pack, "a bf16 weight [N, K] in AMX B-tile layout");
  m.def("amx_linear", &amx_linear, "x @ w.T (+ bias) in bf16 on AMX tiles");
  m.def("amx_int8_available", &amx_int8_available, "built with AMX-INT8 and the OS grants it");
  m.def("amx_pack_int8", &amx_pack_int8, "an int8 weight [N, K] in AMX int8 B-tile layout");
  m.def("amx_int8_linear", &amx_int8_linear,
        "bf16 rows quantized per row to int8, times an int8 weight on AMX tiles, scaled back",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("w_scale"),
        pybind11::arg("bias") = pybind11::none());
}
