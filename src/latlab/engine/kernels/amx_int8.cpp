// W8A8 linear layers on Intel AMX int8 tiles (latlab engine, CPU).
//
// At batch 64 a decode step's GEMMs are bound by reading the weights (amx_linear.cpp): int8
// weights are half of bf16's bytes, and AMX multiplies int8 at twice its bf16 rate. fbgemm's
// int8 GEMM (the torch path's W8A8 kernel) ran at 441-533 GFLOP/s on this CPU against 1,000+
// for the bf16 tiles (docs/engine.md), so W8A8 was the slower choice at batch 64.
//
// Numerics: the weight is int8 with one float32 scale per output channel (symmetric, absmax /
// 127: int8_linear.py's quantize_per_channel); each activation row is quantized on the fly the
// same way, one scale per row (per token). Sums are exact int32; y = sum * x_scale * w_scale
// (+ bias), rounded to bf16.
//
// Layouts: x rows [M, K] bf16; the quantized rows [M padded to 16, K] int8 and their scales
// [M]; packed [N/16, K/64, 16, 64]: for column block nb and K block kb a 1 KiB tile whose row r
// holds, for each of the 16 columns, the 4 bytes k = 64 kb + 4r .. 4r + 3. K must be a multiple
// of 64, N of 16.

#include "amx_tiles.h"
#include "kernels.h"
#include "vec512.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

using latlab::kTileBytes;

#ifdef LATLAB_AMX_INT8
using latlab::Int8Quads;
using latlab::kTileSums;

// y[:, 16 nb : 16 nb + 32] for `rows` quantized rows (whole tiles read), scaled back, bias added.
void column_pair(const int8_t* xq, const float* xs, int64_t rows, int64_t k_dim, const int8_t* b,
                 const float* ws, const c10::BFloat16* bias, int64_t nb, int64_t n_dim,
                 c10::BFloat16* y) {
  alignas(64) int32_t sums[32 * 32];
  const int64_t kblocks = k_dim / 64;
  const char* b0 = reinterpret_cast<const char*>(b);
  const char* b1 = b0 + kblocks * kTileBytes;
  const __m512 wv[2] = {_mm512_loadu_ps(ws + nb * 16), _mm512_loadu_ps(ws + nb * 16 + 16)};
  __m512 bv[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  if (bias) bv[0] = latlab::load16(bias + nb * 16), bv[1] = latlab::load16(bias + nb * 16 + 16);
  for (int64_t r0 = 0; r0 < rows; r0 += 32) {
    latlab::pair_pass<Int8Quads>(reinterpret_cast<const char*>(xq + r0 * k_dim), k_dim, b0, b1,
                                 kblocks, rows - r0, r0 == 0, sums);
    for (int64_t r = 0; r < std::min<int64_t>(32, rows - r0); ++r) {
      const __m512 xv = _mm512_set1_ps(xs[r0 + r]);
      for (int half = 0; half < 2; ++half) {
        const __m512 s = _mm512_cvtepi32_ps(_mm512_load_si512(sums + r * 32 + half * 16));
        const __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(s, xv), wv[half], bv[half]);
        latlab::store16(y + (r0 + r) * n_dim + nb * 16 + half * 16, v,
                        static_cast<__mmask16>(0xFFFF));
      }
    }
  }
}

// y[:, 16 nb : 16 nb + 16] for `rows` quantized rows (whole tiles read), scaled back, bias added.
void column_block(const int8_t* xq, const float* xs, int64_t rows, int64_t k_dim, const int8_t* b,
                  const float* ws, const c10::BFloat16* bias, int64_t nb, int64_t n_dim,
                  c10::BFloat16* y) {
  alignas(64) int32_t sums[4 * 256];
  const __m512 wv = _mm512_loadu_ps(ws + nb * 16);
  const __m512 bv = bias ? latlab::load16(bias + nb * 16) : _mm512_setzero_ps();
  for (int64_t r0 = 0; r0 < rows; r0 += 64) {
    const int64_t tiles = std::min<int64_t>(4, (rows - r0 + 15) / 16);
    kTileSums<Int8Quads>[tiles - 1](reinterpret_cast<const char*>(xq + r0 * k_dim), k_dim,
                                    reinterpret_cast<const char*>(b), k_dim / 64, sums);
    for (int64_t r = 0; r < std::min<int64_t>(64, rows - r0); ++r) {
      const __m512 s = _mm512_cvtepi32_ps(_mm512_load_si512(sums + r * 16));
      const __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_set1_ps(xs[r0 + r])), wv, bv);
      latlab::store16(y + (r0 + r) * n_dim + nb * 16, v, static_cast<__mmask16>(0xFFFF));
    }
  }
}
#endif

void check_int8_shapes(int64_t n, int64_t k, const char* name) {
  TORCH_CHECK(n % 16 == 0 && k % 64 == 0, name, ": N a multiple of 16 and K of 64 expected, got ",
              n, " x ", k);
}

}  // namespace

bool amx_int8_available() {
#ifdef LATLAB_AMX_INT8
  return amx_available();
#else
  return false;
#endif
}

void quantize_row_int8(const c10::BFloat16* x, int64_t k, int8_t* q, float* scale) {
#ifdef LATLAB_AVX512
  __m512 top = _mm512_setzero_ps();
  for (int64_t j = 0; j < k; j += 16) {
    const __mmask16 m = latlab::tail_mask(k - j);
    top = _mm512_max_ps(top, _mm512_abs_ps(latlab::load16(x + j, m)));
  }
  const float amax = std::max(_mm512_reduce_max_ps(top), 1e-8f);
  const __m512 inv = _mm512_set1_ps(127.f / amax);
  for (int64_t j = 0; j < k; j += 16) {  // round to nearest even, as torch.round; within +-127
    const __mmask16 m = latlab::tail_mask(k - j);
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(latlab::load16(x + j, m), inv));
    _mm_mask_storeu_epi8(q + j, m, _mm512_cvtsepi32_epi8(v));
  }
  *scale = amax / 127.f;
#else
  float amax = 1e-8f;
  for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(static_cast<float>(x[j])));
  for (int64_t j = 0; j < k; ++j) {
    q[j] = static_cast<int8_t>(std::nearbyint(static_cast<float>(x[j]) * (127.f / amax)));
  }
  *scale = amax / 127.f;
#endif
}

void amx_int8_columns(const int8_t* xq, const float* xs, int64_t rows, int64_t k_dim,
                      const int8_t* packed, const float* ws, const c10::BFloat16* bias,
                      int64_t nb_lo, int64_t nb_hi, int64_t n_dim, c10::BFloat16* y) {
#ifdef LATLAB_AMX_INT8
  const int64_t block_bytes = (k_dim / 64) * kTileBytes;
  latlab::each_column_pair(
      nb_lo, nb_hi,
      [&](int64_t nb) {
        column_pair(xq, xs, rows, k_dim, packed + nb * block_bytes, ws, bias, nb, n_dim, y);
      },
      [&](int64_t nb) {
        column_block(xq, xs, rows, k_dim, packed + nb * block_bytes, ws, bias, nb, n_dim, y);
      });
#else
  TORCH_CHECK(false, "amx_int8_columns: built without AMX-INT8");
#endif
}

torch::Tensor amx_pack_int8(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.device().is_cpu(),
              "amx_pack_int8: an int8 CPU weight [N, K] expected");
  const int64_t n = weight.size(0), k = weight.size(1);
  check_int8_shapes(n, k, "amx_pack_int8");
  auto w = weight.contiguous();
  auto out = torch::empty({n / 16, k / 64, 16, 64}, w.options());
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  at::parallel_for(0, n / 16, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t nb = lo; nb < hi; ++nb) {
      for (int64_t kb = 0; kb < k / 64; ++kb) {
        int8_t* tile = dst + (nb * (k / 64) + kb) * kTileBytes;
        for (int64_t r = 0; r < 16; ++r) {
          for (int64_t c = 0; c < 16; ++c) {
            std::copy_n(src + (nb * 16 + c) * k + kb * 64 + 4 * r, 4, tile + r * 64 + c * 4);
          }
        }
      }
    }
  });
  return out;
}

torch::Tensor amx_int8_linear(const torch::Tensor& x, const torch::Tensor& packed,
                              const torch::Tensor& w_scale,
                              const std::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.device().is_cpu(),
              "amx_int8_linear: bf16 CPU rows [M, K] expected");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kChar && packed.is_contiguous(),
              "amx_int8_linear: a weight packed by amx_pack_int8 expected");
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0) * 16;
  TORCH_CHECK(packed.size(1) * 64 == k, "amx_int8_linear: x has ", k, " columns, the weight ",
              packed.size(1) * 64);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.numel() == n && w_scale.is_contiguous(),
              "amx_int8_linear: a float32 scale per output channel expected");
  const c10::BFloat16* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->numel() == n && bias->is_contiguous(),
                "amx_int8_linear: a bf16 bias of N values expected");
    b = bias->data_ptr<c10::BFloat16>();
  }
  TORCH_CHECK(amx_int8_available(), "amx_int8_linear: no AMX-INT8 here (CPU, build or kernel)");
  auto rows = x.contiguous();
  const int64_t padded = (m + 15) / 16 * 16;
  auto xq = torch::zeros({padded, k}, torch::dtype(torch::kChar));
  auto xs = torch::empty({m}, torch::dtype(torch::kFloat));
  at::parallel_for(0, m, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      quantize_row_int8(rows.data_ptr<c10::BFloat16>() + i * k, k, xq.data_ptr<int8_t>() + i * k,
                        xs.data_ptr<float>() + i);
    }
  });
  auto y = torch::empty({m, n}, x.options());
  const int64_t blocks = n / 16;  // split in column pairs: an odd block only at the very end
  at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t lo, int64_t hi) {
    amx_thread_begin();  // tile state is per thread
    amx_int8_columns(xq.data_ptr<int8_t>(), xs.data_ptr<float>(), m, k, packed.data_ptr<int8_t>(),
                     w_scale.data_ptr<float>(), b, 2 * lo, std::min(2 * hi, blocks), n,
                     y.data_ptr<c10::BFloat16>());
    amx_thread_end();
  });
  return y;
}
