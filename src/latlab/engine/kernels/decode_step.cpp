// Decode steps of 1-4 sequences on CPU (latlab engine): the whole step is one native call.
//
// At batch 1 a decode step must stream every weight once; everything else is overhead. On the
// ~106M bf16 model (2 threads, a Xeon with AMX; docs/engine.md) a step with one native call per
// layer spent ~1.2 ms of its ~9 ms outside the GEMVs: 12 Python calls and their tensors, five
// fork/joins of the thread pool a layer, and ~10 torch ops around the layers (embedding, RoPE
// tables, the final norm, ~0.1 ms each on a thread pool that had gone to sleep). Here one
// OpenMP parallel region runs the embedding, every layer and the head: each thread keeps its
// own copy of the residual stream (the norms and the SiLU are recomputed per thread, cheaper
// than a barrier), the GEMVs split their rows over the threads (each weight streamed once, 4
// rows of W at a time, every row prefetched ahead), and the threads meet at one barrier after
// each GEMV and after attention (a thread that reaches a barrier early asking for its next
// share of weights meanwhile measured no gain: 0-128 KiB ahead, docs/engine.md). Attention is
// the same paged kernel as the other paths (paged_attention.cpp), one (sequence, KV head) item
// per thread, which also rotates and writes that item's new K/V, so no barrier sits between
// the cache write and its read.
//
// Numerics: float32 activations from the embedding to the logits whatever the weights' dtype
// (bf16 weights widen exactly); a GEMV sums each dot product in its own order (8 or 16 lanes,
// then across lanes), so logits differ from F.linear's in the last bits; greedy outputs stay
// those of transformers in the engine's parity tests.
//
// Layouts (the engine's): w_qkv [(H + 2 KVH) * D, hidden] (q, k, v rows); w_gate_up
// [2 I, hidden]; cos/sin tables [positions, D] (sin with rotate_half's sign folded in); k_cache,
// v_cache [NB, KVH, BS, D]; block_tables [M, max_blocks]; seq_lens [M] (keys to attend, the new
// one included).

#include "kernels.h"
#include "lanes.h"
#include "rows.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kMaxRows = 4;
// Rows of W handed to one thread at least: ~64 KiB of weights, so a small matrix is not
// split into pieces whose fork/join costs more than reading them.
constexpr int64_t kGrainBytes = 64 * 1024;

#ifdef LATLAB_AVX2
// The vector width of a GEMV: 8 float32 lanes (AVX2) or 16 (AVX-512), as one set of names.
using latlab::Ymm;
#ifdef LATLAB_AVX512
using latlab::Zmm;
#endif

// bf16 and int8 weights on an AVX-512 CPU go 16 lanes a step, each weight row asked for 2 KiB
// ahead. Without the prefetch a bf16 GEMV (and torch's own sum over bf16) read at ~70% of the
// float32 rate on a Xeon with AMX (9 against 13 GB/s a core: the hardware prefetcher runs out
// ahead of half-width rows); with it 11.4 and 22-24 GB/s at 1 and 2 threads (512 B-4 KiB ahead
// measured alike; docs/engine.md).
constexpr int64_t kPrefetchBytes = 2048;
#endif  // LATLAB_AVX2

// Float32 weights in GEMV blocks (models/gemv_blocks.py): [N/4][K/8][4][8], each 4 rows
// interleaved 8 floats at a time, so a thread streams one run of memory where 4 plain rows are
// 4 runs at once. On the AVX2 EPYC that read 1.04-1.09x faster at 1 and 2 threads over the
// reference model's shapes, and a single-row stream did not (docs/engine.md, lever table).
constexpr int64_t kBlockRows = 4, kBlockLanes = 8;

// A weight matrix as a GEMV reads it: [n_dim, k_dim] of W (float32, bf16 or int8: plain rows,
// or float32 GEMV blocks), the int8 rows' scales (else null) and a bias (or null):
// y = scale * (x . w_row) + bias.
template <typename W>
struct Matrix {
  const W* w;
  const float* scale;
  const float* bias;
  int64_t n_dim, k_dim;
  bool blocked = false;
};

inline float finish(float sum, const float* scale, const float* bias, int64_t row) {
  if (scale) sum *= scale[row];
  return bias ? sum + bias[row] : sum;
}

#ifdef LATLAB_AVX2
// Rows n..n+R of w against the M rows of x: R*M*U independent accumulators, each weight
// vector loaded once for all M rows (sums in float32).
template <typename V, bool kPrefetch, int M, int R, int U, typename W>
inline void dot_rows_with(const float* x, const Matrix<W>& mat, int64_t n, float* y) {
  constexpr int L = V::kLanes;
  const int64_t k_dim = mat.k_dim;
  typename V::T acc[M][R][U];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[m][r][u] = V::zero();
  const W* wr = mat.w + n * k_dim;
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
      y[m * mat.n_dim + n + r] = finish(s, mat.scale, mat.bias, n + r);
    }
  }
}

template <int M, int R, int U, typename W>
inline void dot_rows(const float* x, const Matrix<W>& mat, int64_t n, float* y) {
#ifdef LATLAB_AVX512
  if constexpr (!std::is_same_v<W, float>) {
    return dot_rows_with<Zmm, true, M, R, U>(x, mat, n, y);
  }
#endif
  dot_rows_with<Ymm, false, M, R, U>(x, mat, n, y);
}
#else
template <int M, int R, int U, typename W>
inline void dot_rows(const float* x, const Matrix<W>& mat, int64_t n, float* y) {
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < R; ++r) {
      const W* wr = mat.w + (n + r) * mat.k_dim;
      const float* xm = x + m * mat.k_dim;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < mat.k_dim; ++k) s += xm[k] * static_cast<float>(wr[k]);
      y[m * mat.n_dim + n + r] = finish(s, mat.scale, mat.bias, n + r);
    }
  }
}
#endif

#ifdef LATLAB_AVX2
// GEMV block n..n+4 against the M rows of x: the same sums in the same order as dot_rows_with
// on plain rows (U accumulators a row, 8 lanes each), so both layouts give the same bits.
template <int M, int U>
inline void dot_block(const float* x, const Matrix<float>& mat, int64_t n, float* y) {
  const int64_t k_dim = mat.k_dim;
  __m256 acc[M][kBlockRows][U];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < kBlockRows; ++r)
      for (int u = 0; u < U; ++u) acc[m][r][u] = Ymm::zero();
  const float* block = mat.w + n * k_dim;
  for (int64_t k = 0; k < k_dim; k += kBlockLanes * U) {
    for (int u = 0; u < U; ++u) {
      __m256 xv[M];
      for (int m = 0; m < M; ++m) xv[m] = Ymm::rows(x + m * k_dim + k + kBlockLanes * u);
      const float* wk = block + (k + kBlockLanes * u) * kBlockRows;
      for (int r = 0; r < kBlockRows; ++r) {
        const __m256 wv = Ymm::rows(wk + r * kBlockLanes);
        for (int m = 0; m < M; ++m) acc[m][r][u] = Ymm::fma(wv, xv[m], acc[m][r][u]);
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < kBlockRows; ++r) {
      for (int u = 1; u < U; ++u) acc[m][r][0] = Ymm::add(acc[m][r][0], acc[m][r][u]);
      y[m * mat.n_dim + n + r] = finish(Ymm::sum(acc[m][r][0]), mat.scale, mat.bias, n + r);
    }
  }
}
#else
template <int M, int U>
inline void dot_block(const float* x, const Matrix<float>& mat, int64_t n, float* y) {
  const float* block = mat.w + n * mat.k_dim;
  for (int m = 0; m < M; ++m) {
    for (int r = 0; r < kBlockRows; ++r) {
      const float* xm = x + m * mat.k_dim;
      float s = 0.f;
      for (int64_t k = 0; k < mat.k_dim; ++k) {
        s += xm[k] * block[(k / kBlockLanes) * kBlockRows * kBlockLanes + r * kBlockLanes +
                           k % kBlockLanes];
      }
      y[m * mat.n_dim + n + r] = finish(s, mat.scale, mat.bias, n + r);
    }
  }
}
#endif

// Rows [lo, hi) (whole blocks) of GEMV blocks against the M rows of x. The blocking of plain
// rows per row count (4 rows x 2 accumulators at M=1, 4 x 1 at M=2, 2 x 1 at 3-4); 3-4 rows
// of x take a block twice, two rows of x at a time (the second pass reads it from the cache).
inline void gemv_blocks(const float* x, int64_t m, const Matrix<float>& mat, float* y,
                        int64_t lo, int64_t hi) {
  const int64_t k2 = 2 * mat.k_dim, n2 = 2 * mat.n_dim;
  for (int64_t n = lo; n < hi; n += kBlockRows) {
    switch (m) {
      case 1: dot_block<1, 2>(x, mat, n, y); break;
      case 2: dot_block<2, 1>(x, mat, n, y); break;
      case 3: dot_block<2, 1>(x, mat, n, y), dot_block<1, 1>(x + k2, mat, n, y + n2); break;
      case 4: dot_block<2, 1>(x, mat, n, y), dot_block<2, 1>(x + k2, mat, n, y + n2); break;
      default: TORCH_CHECK(false, "native GEMV: 1 to ", kMaxRows, " rows, got ", m);
    }
  }
}

// Rows [lo, hi) of the matrix against the M rows of x, R rows of W at a time (the tail one by
// one).
template <int M, int R, int U, typename W>
void gemv_span(const float* x, const Matrix<W>& mat, float* y, int64_t lo, int64_t hi) {
  int64_t n = lo;
  for (; n + R <= hi; n += R) dot_rows<M, R, U>(x, mat, n, y);
  for (; n < hi; ++n) dot_rows<M, 1, 1>(x, mat, n, y);
}

// y [m, n_dim] rows [lo, hi) = x [m, k_dim] @ w[lo:hi]^T, scaled, + bias; register blocking per
// row count (measured: 4 rows of W x 2 accumulators at M=1; fewer W rows as M grows).
template <typename W>
void gemv_part(const float* x, int64_t m, const Matrix<W>& mat, float* y, int64_t lo,
               int64_t hi) {
  if constexpr (std::is_same_v<W, float>) {
    if (mat.blocked) return gemv_blocks(x, m, mat, y, lo, hi);
  }
  switch (m) {
    case 1: return gemv_span<1, 4, 2>(x, mat, y, lo, hi);
    case 2: return gemv_span<2, 4, 1>(x, mat, y, lo, hi);
    case 3: return gemv_span<3, 2, 1>(x, mat, y, lo, hi);
    case 4: return gemv_span<4, 2, 1>(x, mat, y, lo, hi);
    default: TORCH_CHECK(false, "native GEMV: 1 to ", kMaxRows, " rows, got ", m);
  }
}

// The whole GEMV on torch's intra-op threads (small_linear: one call, one fork/join).
template <typename W>
void gemv(const float* x, int64_t m, const Matrix<W>& mat, float* y) {
  const int64_t blocks = (mat.n_dim + 3) / 4;
  const int64_t row_bytes = mat.k_dim * static_cast<int64_t>(sizeof(W));
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / (4 * row_bytes));
  at::parallel_for(0, blocks, grain, [&](int64_t lo, int64_t hi) {
    gemv_part(x, m, mat, y, lo * 4, std::min(mat.n_dim, hi * 4));
  });
}

using latlab::share;
using latlab::Span;
using latlab::widen_row;

// transformers' LlamaRMSNorm in float32 over m rows: w * (x * rsqrt(mean(x^2) + eps)).
void rms_norm(const float* x, const float* w, float* out, int64_t m, int64_t dim, float eps) {
  for (int64_t i = 0; i < m; ++i) latlab::norm_row(x + i * dim, w, out + i * dim, dim, eps);
}

void check_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), name, ": contiguous CPU tensor expected");
}

void check_f32(const torch::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, ": float32 expected");
}

void check_long(const torch::Tensor& t, int64_t n, const char* who, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.numel() == n &&
                  t.is_contiguous() && t.device().is_cpu(),
              who, ": ", name, " must be int64 [", n, "]");
}

// Weights: contiguous CPU float32, bf16 (a bf16 model's plain weights, streamed at half the
// bytes) or int8 with a scale per row (weight-only int8: a quarter of float32's bytes); the
// activations and sums stay float32. Plain rows [N, K], or float32 GEMV blocks [N/4, K/8, 32]
// with K a multiple of 16.
void check_weight(const torch::Tensor& t, at::ScalarType type, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK((type == at::kFloat || type == at::kBFloat16 || type == at::kChar) &&
                  t.scalar_type() == type,
              name, ": weights float32, bf16 or int8, all of one dtype expected");
  const bool blocks = t.dim() == 3 && type == at::kFloat && t.size(1) % 2 == 0 &&
                      t.size(2) == kBlockRows * kBlockLanes;
  TORCH_CHECK(t.dim() == 2 || blocks, name,
              ": weight rows [N, K], or float32 GEMV blocks [N/4, K/8, 32] (K a multiple of 16)");
}

// A weight's rows and columns as the GEMV sees them (plain rows or GEMV blocks).
int64_t weight_rows(const torch::Tensor& w) {
  return w.dim() == 3 ? w.size(0) * kBlockRows : w.size(0);
}
int64_t weight_cols(const torch::Tensor& w) {
  return w.dim() == 3 ? w.size(1) * kBlockLanes : w.size(1);
}

// An int8 weight's scales: float32, one per row.
void check_scale(const torch::Tensor& scale, const torch::Tensor& w, const char* name) {
  check_f32(scale, name);
  TORCH_CHECK(scale.numel() == weight_rows(w), name,
              ": one float32 scale per weight row expected");
}

template <typename W>
Matrix<W> matrix(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& bias) {
  const auto given = [](const torch::Tensor& t) { return t.defined() && t.numel() > 0; };
  return {w.data_ptr<W>(), given(scale) ? scale.data_ptr<float>() : nullptr,
          given(bias) ? bias.data_ptr<float>() : nullptr, weight_rows(w), weight_cols(w),
          w.dim() == 3};
}

template <typename W>
torch::Tensor run_small_linear(const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& scale, const torch::Tensor& bias) {
  auto y = torch::empty({x.size(0), weight_rows(w)}, x.options());
  gemv(x.data_ptr<float>(), x.size(0), matrix<W>(w, scale, bias), y.data_ptr<float>());
  return y;
}

}  // namespace

StepIndices check_step_indices(const StepLimits& lim, const torch::Tensor& ids,
                               const torch::Tensor& positions, const torch::Tensor& slots,
                               const torch::Tensor& tables, const torch::Tensor& lens,
                               const torch::Tensor& logit_rows) {
  const int64_t m = ids.numel(), rows = logit_rows.numel();
  TORCH_CHECK(m >= lim.min_rows && m <= lim.max_rows, lim.who, ": ", lim.min_rows, " to ",
              lim.max_rows, " sequences, got ", m);
  TORCH_CHECK(rows <= lim.max_logit_rows, lim.who, ": at most ", lim.max_logit_rows, " logit rows");
  check_long(ids, m, lim.who, "ids"), check_long(positions, m, lim.who, "positions");
  check_long(slots, m, lim.who, "slots"), check_long(lens, m, lim.who, "seq_lens");
  check_long(logit_rows, rows, lim.who, "logit rows");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.dim() == 2 && tables.size(0) == m &&
                  tables.is_contiguous() && tables.device().is_cpu(),
              lim.who, ": block tables must be int64 [", m, ", max_blocks]");
  const StepIndices in{m, rows, tables.size(1), ids.data_ptr<int64_t>(),
                       positions.data_ptr<int64_t>(), slots.data_ptr<int64_t>(),
                       tables.data_ptr<int64_t>(), lens.data_ptr<int64_t>(),
                       logit_rows.data_ptr<int64_t>()};
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK(in.ids[i] >= 0 && in.ids[i] < lim.vocab, lim.who, ": token id ", in.ids[i],
                " outside the vocabulary");
    TORCH_CHECK(in.positions[i] >= 0 && in.positions[i] < lim.positions, lim.who, ": position ",
                in.positions[i], " outside the RoPE tables");
    TORCH_CHECK(in.slots[i] >= 0 && in.slots[i] < lim.blocks * lim.block_size, lim.who,
                ": slot ", in.slots[i], " outside the cache");
    TORCH_CHECK(in.lens[i] >= 1 && in.lens[i] <= in.max_blocks * lim.block_size, lim.who,
                ": sequence length ", in.lens[i], " beyond its block table");
    for (int64_t b = 0; b < (in.lens[i] + lim.block_size - 1) / lim.block_size; ++b) {
      const int64_t block = in.tables[i * in.max_blocks + b];
      TORCH_CHECK(block >= 0 && block < lim.blocks, lim.who, ": block ", block,
                  " outside the cache");
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(in.logit_rows[r] >= 0 && in.logit_rows[r] < m, lim.who, ": logit row ",
                in.logit_rows[r], " is not one of the step's ", m, " rows");
  }
  return in;
}

torch::Tensor small_linear(const torch::Tensor& x, const torch::Tensor& w,
                           const std::optional<torch::Tensor>& bias,
                           const std::optional<torch::Tensor>& scale) {
  check_f32(x, "small_linear x");
  check_weight(w, w.scalar_type(), "small_linear weight");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weight_cols(w),
              "small_linear: x [M, K] and weight [N, K] (or its GEMV blocks) expected");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "small_linear: 1 to ", kMaxRows,
              " rows, got ", x.size(0));
  const auto none = torch::empty({0});
  const torch::Tensor& b = bias.has_value() ? *bias : none;
  if (bias.has_value()) {
    check_f32(b, "small_linear bias");
    TORCH_CHECK(b.numel() == weight_rows(w), "small_linear: bias of the weight's rows expected");
  }
  const bool int8 = w.scalar_type() == at::kChar;
  TORCH_CHECK(int8 == scale.has_value(), "small_linear: int8 weights take a scale per row, "
              "float32 and bf16 weights none");
  if (int8) check_scale(*scale, w, "small_linear scale");
  switch (w.scalar_type()) {
    case at::kChar: return run_small_linear<int8_t>(x, w, *scale, b);
    case at::kBFloat16: return run_small_linear<c10::BFloat16>(x, w, none, b);
    default: return run_small_linear<float>(x, w, none, b);
  }
}

namespace {

// What one decoder layer's step reads: float32 norms and qkv bias (copies in a bf16 model),
// the plain weights in the model's dtype (or int8 with their float32 scales: else empty), the
// layer's two caches.
struct Layer {
  torch::Tensor norm1, w_qkv, b_qkv, w_o, norm2, w_gate_up, w_down, k_cache, v_cache;
  torch::Tensor s_qkv, s_o, s_gate_up, s_down;
  float *k_scales = nullptr, *v_scales = nullptr;  // an int8 cache's row scales (kv_row_scales)
};

struct Dims {
  int64_t hidden, heads, kv_heads, d, inter, vocab, positions, blocks, block_size;
  int64_t q_dim() const { return heads * d; }
  int64_t kv_dim() const { return kv_heads * d; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
};

using StepInputs = StepIndices;

// Activations the threads share: each GEMV's output (written in row shares, read whole after
// the barrier) and attention's output.
struct Shared {
  std::vector<float> qkv, attn, o, gate_up, down;
  Shared(const Dims& s, int64_t m)
      : qkv(m * s.qkv_dim()), attn(m * s.q_dim()), o(m * s.hidden), gate_up(m * 2 * s.inter),
        down(m * s.hidden) {}
};

// The thread's own: residual stream, normed rows, the MLP activation, rotated q and k, the
// position tables' rows widened and attention's scratch.
struct Local {
  std::vector<float> x, h, act, q, k, cos, sin, scratch;
  Local(const Dims& s, int64_t m)
      : x(m * s.hidden), h(std::max(m, kMaxRows) * s.hidden), act(m * s.inter), q(s.q_dim()), k(s.d), cos(m * s.d),
        sin(m * s.d) {}
};

class DecodeModel {
 public:
  DecodeModel(std::vector<torch::Tensor> model, std::vector<std::vector<torch::Tensor>> layers,
              int64_t num_heads, double eps, double scale);
  torch::Tensor step(const torch::Tensor& ids, const torch::Tensor& positions,
                     const torch::Tensor& slots, const torch::Tensor& tables,
                     const torch::Tensor& lens, const torch::Tensor& logit_rows) const;

 private:
  void add_layer(const std::vector<torch::Tensor>& tensors);
  void check_shapes() const;
  template <typename WM, typename WL, typename KV>
  void run(const StepInputs& in, float* logits) const;
  template <typename WM, typename KV>
  void run_layers(const StepInputs& in, float* logits) const;
  template <typename W, typename KV>
  void layer_step(const Layer& layer, const StepInputs& in, Shared& sh, Local& lo, int t,
                  int nt) const;
  template <typename W>
  void embed(const StepInputs& in, Local& lo) const;
  template <typename W>
  void head(const StepInputs& in, Local& lo, float* logits, int t, int nt) const;
  template <typename KV>
  void attend_items(const Layer& layer, const StepInputs& in, Shared& sh, Local& lo, int t,
                    int nt) const;

  torch::Tensor embed_, cos_, sin_, norm_, head_;
  std::vector<Layer> layers_;
  Dims dims_{};
  float eps_, scale_;
};

DecodeModel::DecodeModel(std::vector<torch::Tensor> model,
                         std::vector<std::vector<torch::Tensor>> layers, int64_t num_heads,
                         double eps, double scale)
    : eps_(static_cast<float>(eps)), scale_(static_cast<float>(scale)) {
  TORCH_CHECK(model.size() == 5, "DecodeModel: [embed, cos, sin, norm, head] expected");
  TORCH_CHECK(!layers.empty(), "DecodeModel: no layers");
  embed_ = model[0], cos_ = model[1], sin_ = model[2], norm_ = model[3], head_ = model[4];
  const auto type = embed_.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kBFloat16,
              "DecodeModel: a float32 or bf16 embedding expected");
  check_weight(embed_, type, "DecodeModel embedding"), check_weight(head_, type, "DecodeModel head");
  TORCH_CHECK(embed_.dim() == 2, "DecodeModel: an embedding of rows [vocab, hidden] expected");
  TORCH_CHECK(cos_.scalar_type() == sin_.scalar_type() && cos_.sizes() == sin_.sizes() &&
                  (cos_.scalar_type() == type || cos_.scalar_type() == at::kFloat),
              "DecodeModel: cos/sin tables of one shape, in float32 or the weights' dtype");
  check_cpu(cos_, "DecodeModel cos"), check_cpu(sin_, "DecodeModel sin");
  check_f32(norm_, "DecodeModel final norm");
  for (const auto& l : layers) add_layer(l);
  const Layer& first = layers_.front();
  dims_ = Dims{embed_.size(1), num_heads, first.k_cache.size(1), first.k_cache.size(3),
               weight_cols(first.w_down), weight_rows(head_), cos_.size(0), first.k_cache.size(0),
               first.k_cache.size(2)};
  check_shapes();
}

// 9 tensors (norm1, w_qkv, b_qkv, w_o, norm2, w_gate_up, w_down, k_cache, v_cache), or 13 with
// int8 weights: then their 4 scales follow. Layer weights are the model's dtype or int8.
void DecodeModel::add_layer(const std::vector<torch::Tensor>& l) {
  TORCH_CHECK(l.size() == 9 || l.size() == 13,
              "DecodeModel: 9 tensors per layer expected (13 with int8 weights' scales)");
  const auto none = torch::empty({0});
  Layer layer{l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8], none, none, none, none};
  const auto type = layers_.empty() ? layer.w_qkv.scalar_type() : layers_[0].w_qkv.scalar_type();
  for (const auto* t : {&layer.w_qkv, &layer.w_o, &layer.w_gate_up, &layer.w_down})
    check_weight(*t, type, "DecodeModel layer weights");
  TORCH_CHECK(type == embed_.scalar_type() || type == at::kChar,
              "DecodeModel: layer weights in the embedding's dtype or int8 expected");
  TORCH_CHECK((type == at::kChar) == (l.size() == 13),
              "DecodeModel: int8 layer weights take 4 scales, other weights none");
  if (l.size() == 13) {
    layer.s_qkv = l[9], layer.s_o = l[10], layer.s_gate_up = l[11], layer.s_down = l[12];
    check_scale(layer.s_qkv, layer.w_qkv, "DecodeModel qkv scale");
    check_scale(layer.s_o, layer.w_o, "DecodeModel o scale");
    check_scale(layer.s_gate_up, layer.w_gate_up, "DecodeModel gate_up scale");
    check_scale(layer.s_down, layer.w_down, "DecodeModel down scale");
  }
  check_f32(layer.norm1, "DecodeModel norm1"), check_f32(layer.norm2, "DecodeModel norm2");
  if (layer.b_qkv.numel() > 0) check_f32(layer.b_qkv, "DecodeModel qkv bias");
  TORCH_CHECK(layer.k_cache.dim() == 4 && layer.k_cache.is_contiguous() &&
                  layer.v_cache.is_contiguous() && layer.v_cache.sizes() == layer.k_cache.sizes() &&
                  layer.v_cache.scalar_type() == layer.k_cache.scalar_type(),
              "DecodeModel: contiguous caches [NB, KVH, BS, D] of one dtype expected");
  layer.k_scales = kv_row_scales(layer.k_cache), layer.v_scales = kv_row_scales(layer.v_cache);
  layers_.push_back(std::move(layer));
}

void DecodeModel::check_shapes() const {
  const Dims& s = dims_;
  const Layer& first = layers_.front();
  for (const auto& layer : layers_) {
    TORCH_CHECK(weight_rows(layer.w_qkv) == s.qkv_dim() && weight_cols(layer.w_qkv) == s.hidden &&
                    weight_rows(layer.w_o) == s.hidden && weight_cols(layer.w_o) == s.q_dim() &&
                    weight_rows(layer.w_gate_up) == 2 * s.inter &&
                    weight_cols(layer.w_gate_up) == s.hidden &&
                    weight_rows(layer.w_down) == s.hidden &&
                    layer.k_cache.sizes() == first.k_cache.sizes() &&
                    layer.norm1.numel() == s.hidden && layer.norm2.numel() == s.hidden &&
                    (layer.b_qkv.numel() == 0 || layer.b_qkv.numel() == s.qkv_dim()),
                "DecodeModel: weight shapes do not match the heads and the cache");
  }
  TORCH_CHECK(weight_cols(head_) == s.hidden && norm_.numel() == s.hidden && cos_.size(1) == s.d &&
                  s.d % 2 == 0 && s.heads % s.kv_heads == 0,
              "DecodeModel: head, norm or RoPE tables do not match the model");
}

template <typename W>
void DecodeModel::embed(const StepInputs& in, Local& lo) const {
  const Dims& s = dims_;
  const bool float_tables = cos_.scalar_type() == at::kFloat;
  for (int64_t i = 0; i < in.m; ++i) {
    widen_row(embed_.data_ptr<W>() + in.ids[i] * s.hidden, lo.x.data() + i * s.hidden, s.hidden);
    const int64_t at = in.positions[i] * s.d;
    float *cos = lo.cos.data() + i * s.d, *sin = lo.sin.data() + i * s.d;
    if (float_tables) {
      widen_row(cos_.data_ptr<float>() + at, cos, s.d);
      widen_row(sin_.data_ptr<float>() + at, sin, s.d);
    } else {
      widen_row(cos_.data_ptr<W>() + at, cos, s.d);
      widen_row(sin_.data_ptr<W>() + at, sin, s.d);
    }
  }
}

// This thread's (sequence, KV head) items: rotate the new k, write k and v to the cache,
// rotate the group's queries and attend. The item's own thread writes the slot it then reads.
template <typename KV>
void DecodeModel::attend_items(const Layer& layer, const StepInputs& in, Shared& sh, Local& lo,
                               int t, int nt) const {
  const Dims& s = dims_;
  const int64_t group = s.heads / s.kv_heads;
  KV* k_cache = layer.k_cache.data_ptr<KV>();
  KV* v_cache = layer.v_cache.data_ptr<KV>();
  float *ks = layer.k_scales, *vs = layer.v_scales;
  const Span items = share(in.m * s.kv_heads, 1, t, nt);
  for (int64_t item = items.lo; item < items.hi; ++item) {
    const int64_t i = item / s.kv_heads, kvh = item % s.kv_heads;
    const float* row = sh.qkv.data() + i * s.qkv_dim();
    const float *c = lo.cos.data() + i * s.d, *sn = lo.sin.data() + i * s.d;
    latlab::rope(row + s.q_dim() + kvh * s.d, c, sn, lo.k.data(), s.d);
    const float* v = row + s.q_dim() + s.kv_dim() + kvh * s.d;
    const int64_t cache_row = kv_row(in.slots[i], kvh, s.kv_heads, s.block_size);
    KV* k_dst = k_cache + cache_row * s.d;
    KV* v_dst = v_cache + cache_row * s.d;
    latlab::store_kv_row(lo.k.data(), k_dst, latlab::row_scale(ks, cache_row), s.d);
    latlab::store_kv_row(v, v_dst, latlab::row_scale(vs, cache_row), s.d);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t head = kvh * group + g;
      latlab::rope(row + head * s.d, c, sn, lo.q.data() + g * s.d, s.d);
    }
    attend_group<float, KV>(lo.q.data(), sh.attn.data() + i * s.q_dim() + kvh * group * s.d, k_cache,
                     v_cache, ks, vs, in.tables + i * in.max_blocks, in.lens[i], kvh, group, s.kv_heads,
                     s.block_size, s.d, scale_, false, lo.scratch);
  }
}

// One layer on thread t of nt: a barrier after each GEMV and after attention.
template <typename W, typename KV>
void DecodeModel::layer_step(const Layer& layer, const StepInputs& in, Shared& sh, Local& lo,
                             int t, int nt) const {
  const Dims& s = dims_;
  const int64_t m = in.m, h = s.hidden;
  const auto none = torch::Tensor();
  const Matrix<W> qkv = matrix<W>(layer.w_qkv, layer.s_qkv, layer.b_qkv);
  const Matrix<W> o = matrix<W>(layer.w_o, layer.s_o, none);
  const Matrix<W> gu = matrix<W>(layer.w_gate_up, layer.s_gate_up, none);
  const Matrix<W> down = matrix<W>(layer.w_down, layer.s_down, none);
  const Span qkv_rows = share(qkv.n_dim, 4, t, nt), o_rows = share(h, 4, t, nt);
  const Span gu_rows = share(gu.n_dim, 4, t, nt), down_rows = share(h, 4, t, nt);

  rms_norm(lo.x.data(), layer.norm1.data_ptr<float>(), lo.h.data(), m, h, eps_);
  gemv_part(lo.h.data(), m, qkv, sh.qkv.data(), qkv_rows.lo, qkv_rows.hi);
#pragma omp barrier
  attend_items<KV>(layer, in, sh, lo, t, nt);
#pragma omp barrier
  gemv_part(sh.attn.data(), m, o, sh.o.data(), o_rows.lo, o_rows.hi);
#pragma omp barrier
  for (int64_t j = 0; j < m * h; ++j) lo.x[j] += sh.o[j];
  rms_norm(lo.x.data(), layer.norm2.data_ptr<float>(), lo.h.data(), m, h, eps_);
  gemv_part(lo.h.data(), m, gu, sh.gate_up.data(), gu_rows.lo, gu_rows.hi);
#pragma omp barrier
  for (int64_t i = 0; i < m; ++i) {
    latlab::silu_mul_row(sh.gate_up.data() + i * 2 * s.inter, lo.act.data() + i * s.inter, s.inter);
  }
  gemv_part(lo.act.data(), m, down, sh.down.data(), down_rows.lo, down_rows.hi);
#pragma omp barrier
  for (int64_t j = 0; j < m * h; ++j) lo.x[j] += sh.down[j];
}

// The final norm of the rows whose logits are wanted, then the head's share of the vocabulary.
template <typename W>
void DecodeModel::head(const StepInputs& in, Local& lo, float* logits, int t, int nt) const {
  const Dims& s = dims_;
  const Span span = share(s.vocab, 4, t, nt);
  for (int64_t r0 = 0; r0 < in.rows; r0 += kMaxRows) {
    const int64_t n = std::min(kMaxRows, in.rows - r0);
    for (int64_t r = 0; r < n; ++r) {
      rms_norm(lo.x.data() + in.logit_rows[r0 + r] * s.hidden, norm_.data_ptr<float>(),
               lo.h.data() + r * s.hidden, 1, s.hidden, eps_);
    }
    const Matrix<W> mat = matrix<W>(head_, torch::Tensor(), torch::Tensor());
    gemv_part(lo.h.data(), n, mat, logits + r0 * s.vocab, span.lo, span.hi);
  }
}

// WM: the embedding's and head's type (float32, bf16); WL: the layers' (WM or int8).
template <typename WM, typename WL, typename KV>
void DecodeModel::run(const StepInputs& in, float* logits) const {
  Shared sh(dims_, in.m);
  const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    Local lo(dims_, in.m);
    embed<WM>(in, lo);
    for (const Layer& layer : layers_) layer_step<WL, KV>(layer, in, sh, lo, t, nt);
    head<WM>(in, lo, logits, t, nt);
  }
}

template <typename WM, typename KV>
void DecodeModel::run_layers(const StepInputs& in, float* logits) const {
  if (layers_.front().w_qkv.scalar_type() == at::kChar) return run<WM, int8_t, KV>(in, logits);
  run<WM, WM, KV>(in, logits);
}

torch::Tensor DecodeModel::step(const torch::Tensor& ids, const torch::Tensor& positions,
                                const torch::Tensor& slots, const torch::Tensor& tables,
                                const torch::Tensor& lens, const torch::Tensor& logit_rows) const {
  const Dims& s = dims_;
  const StepLimits limits{"decode step", 1, kMaxRows, std::numeric_limits<int64_t>::max(), embed_.size(0), s.positions,
                          s.blocks, s.block_size};
  const StepInputs in = check_step_indices(limits, ids, positions, slots, tables, lens, logit_rows);
  auto logits = torch::empty({in.rows, s.vocab}, torch::dtype(torch::kFloat));
  float* out = logits.data_ptr<float>();
  const bool bf16 = embed_.scalar_type() == at::kBFloat16;
  switch (layers_.front().k_cache.scalar_type()) {
    case at::kFloat:
      bf16 ? run_layers<c10::BFloat16, float>(in, out) : run_layers<float, float>(in, out);
      break;
    case at::kBFloat16:
      bf16 ? run_layers<c10::BFloat16, c10::BFloat16>(in, out)
           : run_layers<float, c10::BFloat16>(in, out);
      break;
    case at::kHalf:
      bf16 ? run_layers<c10::BFloat16, c10::Half>(in, out) : run_layers<float, c10::Half>(in, out);
      break;
    case at::kFloat8_e5m2:
      bf16 ? run_layers<c10::BFloat16, c10::Float8_e5m2>(in, out)
           : run_layers<float, c10::Float8_e5m2>(in, out);
      break;
    case at::kChar:
      bf16 ? run_layers<c10::BFloat16, int8_t>(in, out) : run_layers<float, int8_t>(in, out);
      break;
    default: TORCH_CHECK(false, "decode step: unsupported KV dtype");
  }
  return logits;
}

}  // namespace

void register_decode_model(pybind11::module_& m) {
  pybind11::class_<DecodeModel>(m, "DecodeModel",
                                "a whole decode step of 1-4 sequences as one native call")
      .def(pybind11::init<std::vector<torch::Tensor>, std::vector<std::vector<torch::Tensor>>,
                          int64_t, double, double>(),
           pybind11::arg("model"), pybind11::arg("layers"), pybind11::arg("num_heads"),
           pybind11::arg("eps"), pybind11::arg("scale"))
      .def("step", &DecodeModel::step, pybind11::arg("ids"), pybind11::arg("positions"),
           pybind11::arg("slots"), pybind11::arg("block_tables"), pybind11::arg("seq_lens"),
           pybind11::arg("logit_rows"), pybind11::call_guard<pybind11::gil_scoped_release>());
}
