// Decode steps of 1-4 sequences on CPU (latlab engine): one native call per decoder layer.
//
// At batch 1 a decode step must stream every weight once; everything else is overhead. Two
// kinds of it were measured on the ~106M model (float32, 1 thread, docs/engine.md): torch's
// F.linear at 1-4 rows read the weights at ~80% of the machine's read bandwidth at 1 row and
// ~40% at 2-4 rows (sgemv/sgemm for tiny M), and the ~100 torch ops per layer around the
// linears (norm, RoPE, cache writes, SiLU, residuals, views) cost ~0.5 ms a layer in dispatch.
// Here each layer is one call: GEMVs that stream each weight matrix once for all M rows
// (4 rows of W at a time, AVX2/FMA with several accumulators, rows split over torch's
// intra-op threads), and the small elementwise work inline. Attention is the same in-place
// paged kernel the torch path calls (paged_attention.cpp).
//
// Numerics: float32 throughout, like the torch path, but a GEMV sums each dot product in its
// own order (8 lanes, then across lanes), so logits differ from F.linear's in the last bits;
// greedy outputs stay those of transformers in the engine's parity tests.
//
// Layouts (the engine's): x [M, hidden]; cos, sin [M, head_dim] (sin with rotate_half's sign
// folded in); w_qkv [(H + 2 KVH) * D, hidden] (q, k, v rows); w_gate_up [2 I, hidden];
// k_cache, v_cache [KVH, NB, BS, D]; slot_mapping [M]; block_tables [M, max_blocks];
// seq_lens [M] (keys to attend, the new one included).

#include "kernels.h"
#include "vec512.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LATLAB_AVX2 1
#endif

namespace {

constexpr int64_t kMaxRows = 4;
// Rows of W handed to one thread at least: ~64 KiB of weights, so a small matrix is not
// split into pieces whose fork/join costs more than reading them.
constexpr int64_t kGrainBytes = 64 * 1024;

#ifdef LATLAB_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 weights as float32: float32 as they are, bf16 widened exactly (its bits are float32's top half).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// The vector width of a GEMV: 8 float32 lanes (AVX2) or 16 (AVX-512), as one set of names.
struct Ymm {
  using T = __m256;
  static constexpr int kLanes = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T rows(const float* p) { return _mm256_loadu_ps(p); }
  template <typename W>
  static T weights(const W* p) { return load8(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static float sum(T v) { return hsum(v); }
};

#ifdef LATLAB_AVX512
struct Zmm {
  using T = __m512;
  static constexpr int kLanes = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T rows(const float* p) { return _mm512_loadu_ps(p); }
  template <typename W>
  static T weights(const W* p) { return latlab::load16(p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static float sum(T v) { return _mm512_reduce_add_ps(v); }
};
#endif

// bf16 weights on an AVX-512 CPU go 16 lanes a step, each weight row asked for 2 KiB ahead.
// Without the prefetch a bf16 GEMV (and torch's own sum over bf16) read at ~70% of the float32
// rate on a Xeon with AMX (9 against 13 GB/s a core: the hardware prefetcher runs out ahead of
// half-width rows); with it 11.4 and 22-24 GB/s at 1 and 2 threads (512 B-4 KiB ahead measured
// alike; docs/engine.md).
constexpr int64_t kPrefetchBytes = 2048;

// Rows n..n+R of w against the M rows of x: R*M*U independent accumulators, each weight
// vector loaded once for all M rows. W: the weights' type (float32 or bf16; sums in float32).
template <typename V, bool kPrefetch, int M, int R, int U, typename W>
inline void dot_rows_with(const float* x, int64_t k_dim, const W* w, int64_t n, int64_t n_dim,
                          float* y, const float* bias) {
  constexpr int L = V::kLanes;
  typename V::T acc[M][R][U];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[m][r][u] = V::zero();
  const W* wr = w + n * k_dim;
  int64_t k = 0;
  for (; k + L * U <= k_dim; k += L * U) {
    for (int u = 0; u < U; ++u) {
      typename V::T xv[M];
      for (int m = 0; m < M; ++m) xv[m] = V::rows(x + m * k_dim + k + L * u);
      for (int r = 0; r < R; ++r) {
        if constexpr (kPrefetch) {
          if (u == 0) {
            const char* row = reinterpret_cast<const char*>(wr + r * k_dim + k);
            _mm_prefetch(row + kPrefetchBytes, _MM_HINT_T0);
          }
        }
        const auto wv = V::weights(wr + r * k_dim + k + L * u);
        for (int m = 0; m < M; ++m) acc[m][r][u] = V::fma(wv, xv[m], acc[m][r][u]);
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) {
      for (int u = 1; u < U; ++u) acc[m][r][0] = V::add(acc[m][r][0], acc[m][r][u]);
      float s = V::sum(acc[m][r][0]);
      for (int64_t kk = k; kk < k_dim; ++kk) {
        s += x[m * k_dim + kk] * static_cast<float>(wr[r * k_dim + kk]);
      }
      y[m * n_dim + n + r] = bias ? s + bias[n + r] : s;
    }
  }
}

template <int M, int R, int U, typename W>
inline void dot_rows(const float* x, int64_t k_dim, const W* w, int64_t n, int64_t n_dim,
                     float* y, const float* bias) {
#ifdef LATLAB_AVX512
  if constexpr (std::is_same_v<W, c10::BFloat16>) {
    return dot_rows_with<Zmm, true, M, R, U>(x, k_dim, w, n, n_dim, y, bias);
  }
#endif
  dot_rows_with<Ymm, false, M, R, U>(x, k_dim, w, n, n_dim, y, bias);
}
#else
template <int M, int R, int U, typename W>
inline void dot_rows(const float* x, int64_t k_dim, const W* w, int64_t n, int64_t n_dim,
                     float* y, const float* bias) {
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) {
      const W* wr = w + (n + r) * k_dim;
      const float* xm = x + m * k_dim;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < k_dim; ++k) s += xm[k] * static_cast<float>(wr[k]);
      y[m * n_dim + n + r] = bias ? s + bias[n + r] : s;
    }
  }
}
#endif

template <int M, int R, int U, typename W>
void gemv_rows(const float* x, const W* w, const float* bias, float* y, int64_t n_dim,
               int64_t k_dim) {
  const int64_t blocks = n_dim / R;
  const int64_t row_bytes = k_dim * static_cast<int64_t>(sizeof(W));
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / (R * row_bytes));
  at::parallel_for(0, blocks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) dot_rows<M, R, U>(x, k_dim, w, i * R, n_dim, y, bias);
  });
  for (int64_t n = blocks * R; n < n_dim; ++n) dot_rows<M, 1, 1>(x, k_dim, w, n, n_dim, y, bias);
}

// y [m, n_dim] = x [m, k_dim] @ w[n_dim, k_dim]^T (+ bias); register blocking per row count
// (measured: 4 rows of W x 2 accumulators at M=1; fewer W rows as M grows, 16 ymm registers).
template <typename W>
void gemv(const float* x, int64_t m, const W* w, const float* bias, float* y, int64_t n_dim,
          int64_t k_dim) {
  switch (m) {
    case 1: return gemv_rows<1, 4, 2>(x, w, bias, y, n_dim, k_dim);
    case 2: return gemv_rows<2, 4, 1>(x, w, bias, y, n_dim, k_dim);
    case 3: return gemv_rows<3, 2, 1>(x, w, bias, y, n_dim, k_dim);
    case 4: return gemv_rows<4, 2, 1>(x, w, bias, y, n_dim, k_dim);
    default: TORCH_CHECK(false, "small_linear: 1 to ", kMaxRows, " rows, got ", m);
  }
}

// transformers' LlamaRMSNorm in float32: w * (x * rsqrt(mean(x^2) + eps)).
void rms_norm(const float* x, const float* w, float* out, int64_t m, int64_t dim, float eps) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * dim;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < dim; ++j) ss += xi[j] * xi[j];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int64_t j = 0; j < dim; ++j) out[i * dim + j] = w[j] * (xi[j] * inv);
  }
}

// x * cos + rotate_half(x) * sin for one head in place (sin carries rotate_half's sign).
void rope_head(float* x, const float* cos, const float* sin, int64_t d, float* tmp) {
  const int64_t half = d / 2;
  std::memcpy(tmp, x, d * sizeof(float));
  for (int64_t i = 0; i < d; ++i) x[i] = tmp[i] * cos[i] + tmp[(i + half) % d] * sin[i];
}

template <typename KV>
void write_kv(const float* src, KV* cache, int64_t slot, int64_t kv_heads, int64_t cache_tokens,
              int64_t d) {
  for (int64_t h = 0; h < kv_heads; ++h) {
    KV* dst = cache + (h * cache_tokens + slot) * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<KV>(src[h * d + i]);
  }
}

void store_kv(const float* k, const float* v, const torch::Tensor& k_cache,
              const torch::Tensor& v_cache, int64_t slot, int64_t kv_heads, int64_t d) {
  const int64_t tokens = k_cache.size(1) * k_cache.size(2);
  switch (k_cache.scalar_type()) {
    case at::kFloat:
      write_kv(k, k_cache.data_ptr<float>(), slot, kv_heads, tokens, d);
      return write_kv(v, v_cache.data_ptr<float>(), slot, kv_heads, tokens, d);
    case at::kBFloat16:
      write_kv(k, k_cache.data_ptr<c10::BFloat16>(), slot, kv_heads, tokens, d);
      return write_kv(v, v_cache.data_ptr<c10::BFloat16>(), slot, kv_heads, tokens, d);
    case at::kHalf:
      write_kv(k, k_cache.data_ptr<c10::Half>(), slot, kv_heads, tokens, d);
      return write_kv(v, v_cache.data_ptr<c10::Half>(), slot, kv_heads, tokens, d);
    default: TORCH_CHECK(false, "decode_layer: unsupported KV dtype ", k_cache.scalar_type());
  }
}

void check_f32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(), name,
              ": contiguous float32 CPU tensor expected");
}

// Weights: contiguous CPU float32 or bf16 (a bf16 model's plain weights, streamed at half the
// bytes; the activations and sums stay float32).
void check_weight(const torch::Tensor& t, at::ScalarType type, const char* name) {
  TORCH_CHECK((type == at::kFloat || type == at::kBFloat16) && t.scalar_type() == type &&
                  t.is_contiguous() && t.device().is_cpu(),
              name, ": contiguous CPU weights, float32 or bf16, all of one dtype expected");
}

struct Dims {
  int64_t m, hidden, heads, kv_heads, d, inter;
};

// RMSNorm, the fused QKV GEMV, RoPE on q and k, the K/V cache writes and paged attention:
// returns the attention output [M, H * D].
template <typename W>
torch::Tensor attention_block(const torch::Tensor& x, const Dims& s, const torch::Tensor& cos,
                              const torch::Tensor& sin, const torch::Tensor& norm1, float eps,
                              const torch::Tensor& w_qkv, const float* b_qkv,
                              const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& slots, const torch::Tensor& tables,
                              const torch::Tensor& lens, double scale) {
  const int64_t q_dim = s.heads * s.d, kv_dim = s.kv_heads * s.d;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  auto h = torch::empty({s.m, s.hidden}, x.options());
  auto qkv = torch::empty({s.m, qkv_dim}, x.options());
  auto q = torch::empty({s.m, s.heads, s.d}, x.options());
  rms_norm(x.data_ptr<float>(), norm1.data_ptr<float>(), h.data_ptr<float>(), s.m, s.hidden,
           eps);
  gemv(h.data_ptr<float>(), s.m, w_qkv.data_ptr<W>(), b_qkv, qkv.data_ptr<float>(), qkv_dim,
       s.hidden);
  std::vector<float> tmp(s.d);
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.m; ++i) {
    float* row = qkv.data_ptr<float>() + i * qkv_dim;
    const float* c = cos.data_ptr<float>() + i * s.d;
    const float* sn = sin.data_ptr<float>() + i * s.d;
    for (int64_t head = 0; head < s.heads + s.kv_heads; ++head)
      rope_head(row + head * s.d, c, sn, s.d, tmp.data());
    std::memcpy(q.data_ptr<float>() + i * q_dim, row, q_dim * sizeof(float));
    store_kv(row + q_dim, row + q_dim + kv_dim, k_cache, v_cache, slot[i], s.kv_heads, s.d);
  }
  return paged_decode_attention(q, k_cache, v_cache, tables, lens, scale).view({s.m, q_dim});
}

// out = x + o, then out += down(silu(gate) * up) of the post-attention norm of out.
template <typename W>
torch::Tensor mlp_block(const torch::Tensor& x, const torch::Tensor& attn, const Dims& s,
                        const torch::Tensor& w_o, const torch::Tensor& norm2, float eps,
                        const torch::Tensor& w_gate_up, const torch::Tensor& w_down) {
  auto out = torch::empty({s.m, s.hidden}, x.options());
  auto h = torch::empty({s.m, s.hidden}, x.options());
  auto gu = torch::empty({s.m, 2 * s.inter}, x.options());
  auto act = torch::empty({s.m, s.inter}, x.options());
  float* o = out.data_ptr<float>();
  gemv(attn.data_ptr<float>(), s.m, w_o.data_ptr<W>(), nullptr, o, s.hidden, s.heads * s.d);
  const float* xp = x.data_ptr<float>();
  for (int64_t j = 0; j < s.m * s.hidden; ++j) o[j] += xp[j];
  rms_norm(o, norm2.data_ptr<float>(), h.data_ptr<float>(), s.m, s.hidden, eps);
  gemv(h.data_ptr<float>(), s.m, w_gate_up.data_ptr<W>(), nullptr, gu.data_ptr<float>(),
       2 * s.inter, s.hidden);
  for (int64_t i = 0; i < s.m; ++i) {
    const float* g = gu.data_ptr<float>() + i * 2 * s.inter;
    float* a = act.data_ptr<float>() + i * s.inter;
    int64_t j = 0;
#ifdef LATLAB_AVX512  // a vector exp: scalar expf over the MLP width was ~4% of a batch-1 step
    for (; j + 16 <= s.inter; j += 16) {
      _mm512_storeu_ps(a + j, latlab::silu_times(_mm512_loadu_ps(g + j),
                                                 _mm512_loadu_ps(g + s.inter + j)));
    }
#endif
    for (; j < s.inter; ++j) a[j] = g[j] / (1.f + std::exp(-g[j])) * g[s.inter + j];
  }
  gemv(act.data_ptr<float>(), s.m, w_down.data_ptr<W>(), nullptr, h.data_ptr<float>(), s.hidden,
       s.inter);
  const float* dp = h.data_ptr<float>();
  for (int64_t j = 0; j < s.m * s.hidden; ++j) o[j] += dp[j];
  return out;
}

}  // namespace

torch::Tensor small_linear(const torch::Tensor& x, const torch::Tensor& w,
                           const std::optional<torch::Tensor>& bias) {
  check_f32(x, "small_linear x");
  check_weight(w, w.scalar_type(), "small_linear weight");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "small_linear: x [M, K] and weight [N, K] expected");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "small_linear: 1 to ", kMaxRows,
              " rows, got ", x.size(0));
  const float* b = nullptr;
  if (bias.has_value()) {
    check_f32(*bias, "small_linear bias");
    TORCH_CHECK(bias->numel() == w.size(0), "small_linear: bias of the weight's rows expected");
    b = bias->data_ptr<float>();
  }
  auto y = torch::empty({x.size(0), w.size(0)}, x.options());
  if (w.scalar_type() == at::kBFloat16) {
    gemv(x.data_ptr<float>(), x.size(0), w.data_ptr<c10::BFloat16>(), b, y.data_ptr<float>(),
         w.size(0), w.size(1));
  } else {
    gemv(x.data_ptr<float>(), x.size(0), w.data_ptr<float>(), b, y.data_ptr<float>(), w.size(0),
         w.size(1));
  }
  return y;
}

torch::Tensor decode_layer(const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin, const torch::Tensor& norm1,
                           const torch::Tensor& w_qkv, const std::optional<torch::Tensor>& b_qkv,
                           const torch::Tensor& w_o, const torch::Tensor& norm2,
                           const torch::Tensor& w_gate_up, const torch::Tensor& w_down,
                           const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                           const torch::Tensor& slot_mapping, const torch::Tensor& block_tables,
                           const torch::Tensor& seq_lens, int64_t num_heads, double eps,
                           double scale) {
  for (const auto* t : {&x, &cos, &sin, &norm1, &norm2}) check_f32(*t, "decode_layer");
  for (const auto* t : {&w_qkv, &w_o, &w_gate_up, &w_down})
    check_weight(*t, w_qkv.scalar_type(), "decode_layer");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              "decode_layer: contiguous caches [KVH, NB, BS, D] of one dtype expected");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, "decode_layer: int64 slot mapping");
  const Dims s{x.size(0), x.size(1), num_heads, k_cache.size(0), k_cache.size(3),
               w_down.size(1)};
  TORCH_CHECK(s.m >= 1 && s.m <= kMaxRows && slot_mapping.numel() == s.m,
              "decode_layer: 1 to ", kMaxRows, " decode rows, one slot each");
  TORCH_CHECK(w_qkv.size(0) == (s.heads + 2 * s.kv_heads) * s.d && w_qkv.size(1) == s.hidden &&
                  w_gate_up.size(0) == 2 * s.inter && w_o.size(1) == s.heads * s.d &&
                  cos.size(0) == s.m && cos.size(1) == s.d && s.d % 2 == 0,
              "decode_layer: weight shapes do not match the heads and the cache");
  const float* bias = nullptr;
  if (b_qkv.has_value()) {
    check_f32(*b_qkv, "decode_layer qkv bias");
    bias = b_qkv->data_ptr<float>();
  }
  const float e = static_cast<float>(eps);
  if (w_qkv.scalar_type() == at::kBFloat16) {
    using W = c10::BFloat16;
    auto attn = attention_block<W>(x, s, cos, sin, norm1, e, w_qkv, bias, k_cache, v_cache,
                                   slot_mapping, block_tables, seq_lens, scale);
    return mlp_block<W>(x, attn, s, w_o, norm2, e, w_gate_up, w_down);
  }
  auto attn = attention_block<float>(x, s, cos, sin, norm1, e, w_qkv, bias, k_cache, v_cache,
                                     slot_mapping, block_tables, seq_lens, scale);
  return mlp_block<float>(x, attn, s, w_o, norm2, e, w_gate_up, w_down);
}
