// float32 linear layers on AVX2 FMA (latlab engine, CPUs without AVX-512 or bf16 instructions).
//
// On an AVX2-only EPYC the engine computes in float32, and at batch 64 a decode step is its
// GEMMs: oneDNN's packed GEMM ran the reference model's shapes at 64 rows at 90-97 GFLOP/s on
// two cores whose FMA peak is ~176 (54%; docs/engine.md). Its bare 6 x 16 register block runs
// at ~90% of peak with everything in L1; what it lost was the first pass over each weight block,
// which waits on memory: at full FMA speed one 16-column panel consumes a 64-byte line every 6
// cycles (~32 GB/s a core), more than a core streams. Here each weight block (256 K x 16
// columns, 16 KiB) is read from memory once and used by every 6-row group of x while the groups
// ask, a slice each, for the next block to be brought into L2: 108-114 GFLOP/s on the same
// shapes against oneDNN's 84-93 in the same runs (1.23-1.29x; 1.6x at 8 rows, the same at 256;
// benchmarks/f32_gemm.py, docs/engine.md).
//
// Numerics: float32 products summed in float32, K in order within each block of 256 and the
// blocks in order: the same sums as a plain loop over K, but a different order from oneDNN's
// or F.linear's, so the last bits differ.
//
// Layouts: x [M, K] float32 row-major, or (f32_panel's callers that make their rows as they go)
// grouped, [M/6][K][6] (kernels.h); weight [N, K] (nn.Linear's); packed [N/16, K, 16]: for each
// 16-column panel, K rows of 16 weights. N must be a multiple of 16; K and M any.

#include "kernels.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LATLAB_F32_PANELS 1
#endif

namespace {

constexpr int64_t kPanel = 16;   // columns of a panel: two 8-lane vectors
constexpr int64_t kGroup = kF32Group;  // rows a register block covers (12 sums, 2 weights, 1 x)
constexpr int64_t kBlockK = 256; // K of a weight block: 16 KiB, held in L1 across row groups

#ifdef LATLAB_F32_PANELS
// Sums of MR rows of x against panel rows [k0, k1), added to y's 16 columns (or written, for the
// first K block); `bias` (16 values, or null) added after the last block. x is either rows
// (row-major, `k_dim` apart: the broadcasts read the rows where they are) or one group of the
// grouped layout (kernels.h: [K][6], so one k's six broadcasts read one line).
template <int MR, bool Grouped>
void panel_block(const float* x, const float* panel, int64_t k0, int64_t k1, float* y,
                 int64_t n_dim, bool first, const float* bias, int64_t k_dim) {
  constexpr int64_t step = Grouped ? kF32Group : 1;
  const int64_t row_stride = Grouped ? 1 : k_dim;
  // Every loop over the block's rows fully unrolled: otherwise GCC 12 keeps the last row's
  // sums in memory and stores them on every k (seen in the object code).
  __m256 lo[MR], hi[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) lo[r] = _mm256_setzero_ps(), hi[r] = _mm256_setzero_ps();
  const float* xp = x + k0 * step;
  const float* w = panel + k0 * kPanel;
  for (int64_t k = k0; k < k1; ++k, xp += step, w += kPanel) {
    const __m256 w0 = _mm256_load_ps(w), w1 = _mm256_load_ps(w + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(xp + r * row_stride);
      lo[r] = _mm256_fmadd_ps(w0, b, lo[r]);
      hi[r] = _mm256_fmadd_ps(w1, b, hi[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* out = y + r * n_dim;
    if (!first) lo[r] = _mm256_add_ps(lo[r], _mm256_loadu_ps(out));
    if (!first) hi[r] = _mm256_add_ps(hi[r], _mm256_loadu_ps(out + 8));
    if (bias) lo[r] = _mm256_add_ps(lo[r], _mm256_loadu_ps(bias));
    if (bias) hi[r] = _mm256_add_ps(hi[r], _mm256_loadu_ps(bias + 8));
    _mm256_storeu_ps(out, lo[r]);
    _mm256_storeu_ps(out + 8, hi[r]);
  }
}

using BlockFn = void (*)(const float*, const float*, int64_t, int64_t, float*, int64_t, bool,
                         const float*, int64_t);
template <bool Grouped>
constexpr BlockFn kBlocks[kGroup] = {
    &panel_block<1, Grouped>, &panel_block<2, Grouped>, &panel_block<3, Grouped>,
    &panel_block<4, Grouped>, &panel_block<5, Grouped>, &panel_block<6, Grouped>};

// One panel's 16 columns of y for all m rows, K block by K block. While a block is in L1, each
// row group asks for a slice of the next block (this panel's next K, or the next panel's
// first) to be brought into L2, so the next block's first group does not wait on memory.
// A group starts at x + g * 6 * k_dim in both layouts of x.
void panel_columns(const float* x, int64_t m, int64_t k_dim, const float* panel,
                   const float* next_panel, const float* bias, float* y, int64_t n_dim,
                   bool grouped) {
  const BlockFn* blocks = grouped ? kBlocks<true> : kBlocks<false>;
  const int64_t groups = (m + kGroup - 1) / kGroup;
  for (int64_t k0 = 0; k0 < k_dim; k0 += kBlockK) {
    const int64_t k1 = std::min(k_dim, k0 + kBlockK);
    const char* next = reinterpret_cast<const char*>(k1 < k_dim ? panel + k1 * kPanel : next_panel);
    const int64_t next_k = k1 < k_dim ? std::min(kBlockK, k_dim - k1) : std::min(kBlockK, k_dim);
    const int64_t next_bytes = next != nullptr ? next_k * kPanel * 4 : 0;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t at = next_bytes * g / groups; at < next_bytes * (g + 1) / groups; at += 64) {
        _mm_prefetch(next + at, _MM_HINT_T1);
      }
      const int64_t rows = std::min(kGroup, m - g * kGroup);
      blocks[rows - 1](x + g * kGroup * k_dim, panel, k0, k1, y + g * kGroup * n_dim, n_dim,
                        k0 == 0, k1 == k_dim ? bias : nullptr, k_dim);
    }
  }
}

// y = x @ w.T (+ bias) in one parallel region. From 32 rows up the threads first copy x's rows
// into the grouped layout (a share of the rows each) and meet: the model's GEMMs, copy
// included, ran 1.05-1.07x faster so at 32 and 384 rows (a prompt's prefill), 0.89-1.07x at 64
// (f32_gemm.py against the build before, in one process; docs/engine.md). Under 32 rows a K
// block of x fits in L1 and the copy did not pay (0.97x at 8 rows): there the blocks read the
// rows. (On one thread while the others waited, the copy cost more than it saved: session 21.)
constexpr int64_t kGroupedRows = 32;
void panels_linear(const float* x, int64_t m, int64_t k, const float* w, const float* bias,
                   int64_t n, float* y) {
  const bool grouped = m >= kGroupedRows;
  torch::Tensor copy;  // a last group's missing rows are never read
  if (grouped) copy = torch::empty({f32_grouped_size(m, k)}, torch::dtype(torch::kFloat));
  float* rows = grouped ? copy.data_ptr<float>() : nullptr;
  const int64_t panels = n / kPanel;
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), panels));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (grouped) {
      for (int64_t i = m * t / nt; i < m * (t + 1) / nt; ++i) {
        f32_group_row(x + i * k, i, 0, k, k, rows);
      }
#pragma omp barrier
    }
    const int64_t lo = panels * t / nt, hi = panels * (t + 1) / nt;
    f32_panel_columns(grouped ? rows : x, m, k, w, bias, lo, hi, n, y, grouped);
  }
}
#endif

}  // namespace

bool f32_panels_available() {
#ifdef LATLAB_F32_PANELS
  return true;
#else
  return false;
#endif
}

torch::Tensor f32_pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.device().is_cpu(),
              "f32_pack: a float32 CPU weight [N, K] expected");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n % kPanel == 0 && k > 0, "f32_pack: N a multiple of 16 expected, got ", n, " x ",
              k);
  const auto w = weight.contiguous();
  auto out = torch::empty({n / kPanel, k, kPanel}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, n / kPanel, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      for (int64_t kk = 0; kk < k; ++kk) {
        for (int64_t c = 0; c < kPanel; ++c) dst[(p * k + kk) * kPanel + c] = src[(p * kPanel + c) * k + kk];
      }
    }
  });
  return out;
}

void f32_panel(const float* x, int64_t m, int64_t k_dim, const float* packed, const float* bias,
               int64_t p, int64_t next, int64_t n_dim, float* y, bool grouped) {
#ifdef LATLAB_F32_PANELS
  const float* next_panel = next >= 0 ? packed + next * k_dim * kPanel : nullptr;
  const float* panel_bias = bias ? bias + p * kPanel : nullptr;
  panel_columns(x, m, k_dim, packed + p * k_dim * kPanel, next_panel, panel_bias, y + p * kPanel,
                n_dim, grouped);
#else
  TORCH_CHECK(false, "f32_panel: built without AVX2 and FMA");
#endif
}

void f32_panel_columns(const float* x, int64_t m, int64_t k_dim, const float* packed,
                       const float* bias, int64_t p_lo, int64_t p_hi, int64_t n_dim, float* y,
                       bool grouped) {
  for (int64_t p = p_lo; p < p_hi; ++p) {
    f32_panel(x, m, k_dim, packed, bias, p, p + 1 < p_hi ? p + 1 : -1, n_dim, y, grouped);
  }
}

torch::Tensor f32_panel_linear(const torch::Tensor& x, const torch::Tensor& packed,
                               const std::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "f32_panel_linear: float32 CPU rows [M, K] expected");
  TORCH_CHECK(packed.dim() == 3 && packed.scalar_type() == at::kFloat && packed.is_contiguous() &&
                  packed.size(2) == kPanel,
              "f32_panel_linear: a weight packed by f32_pack expected");
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0) * kPanel;
  TORCH_CHECK(packed.size(1) == k, "f32_panel_linear: x has ", k, " columns, the weight ",
              packed.size(1));
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == n && bias->is_contiguous(),
                "f32_panel_linear: a float32 bias of N values expected");
    b = bias->data_ptr<float>();
  }
  auto y = torch::empty({m, n}, x.options());
  if (m == 0) return y;
#ifdef LATLAB_F32_PANELS
  const auto rows = x.contiguous();
  panels_linear(rows.data_ptr<float>(), m, k, packed.data_ptr<float>(), b, n, y.data_ptr<float>());
#else
  TORCH_CHECK(false, "f32_panel_linear: built without AVX2 and FMA");
#endif
  return y;
}
