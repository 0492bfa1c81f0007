// bf16 linear layers on Intel AMX tiles (latlab engine, CPU).
//
// At batch 64 a bf16 decode step is its GEMMs first, and they are bound by reading the weights:
// 64 rows make 64 multiply-adds per weight, far below what AMX does per byte. oneDNN's packed
// GEMM read the reference model's weights at ~15 GB/s of a ~25 GB/s machine (docs/engine.md).
// Here the weights are packed once into AMX's B-tile layout, each 16-column block contiguous
// over K, and run two column blocks at a time against passes of 32 rows (amx_tiles.h): the
// first pass streams the pair from memory, prefetched into L2 two tiles ahead, and later passes
// find it in L2 (1.2x oneDNN on the model's shapes at 64 rows with one block at a time; the
// pairs another 1.17x, docs/engine.md). An odd last block runs alone, in up to 4 row tiles.
//
// Numerics: products of bf16 pairs summed in float32 (as oneDNN's), in another order, so the
// rounded bf16 outputs can differ from F.linear's in the last bit (~0.02% of them measured).
//
// Layouts: x [M, K] bf16 row-major; weight [N, K] bf16 (nn.Linear's); packed [N/16, K/32, 16,
// 16, 2]: for column block nb and K block kb a 1 KiB tile whose row r holds, for each of the
// 16 columns, the pair (k = 32 kb + 2r, 2r + 1). K must be a multiple of 32, N of 16.

#include "amx_tiles.h"
#include "kernels.h"
#include "vec512.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#ifdef LATLAB_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

using latlab::kTileBytes;

#ifdef LATLAB_AMX
struct TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Linux hands out AMX state only to a process that asks (ARCH_REQ_XCOMP_PERM, XTILEDATA).
bool amx_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

// Tiles 0-3: float32 sums of 16 rows x 16 columns; 4-5: 16 rows of x (or 4: rows, 5: weights);
// 6-7: the weight tiles of a column pair.
constexpr TileConfig tile_config() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  return cfg;
}

// A constant in memory, not a stack copy: GCC 12 drops the stores of a local config before
// ldtilecfg when the function is inlined (it does not see the instruction read them; the
// process then died of a general protection fault in the batched decode step's threads).
alignas(64) constexpr TileConfig kTileConfig = tile_config();

void configure_tiles() { _tile_loadconfig(&kTileConfig); }

using latlab::Bf16Pairs;
using latlab::kTileSums;

// y[:, 16 nb : 16 nb + 32] for `rows` rows of x (padded to whole tiles), bias added, rounded.
void column_pair(const c10::BFloat16* x, int64_t rows, int64_t k_dim, const char* b,
                 const c10::BFloat16* bias, int64_t nb, int64_t n_dim, c10::BFloat16* y) {
  alignas(64) float sums[32 * 32];
  const int64_t kblocks = k_dim / 32, stride = k_dim * 2;
  const char* b1 = b + kblocks * kTileBytes;
  __m512 bv[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  if (bias) bv[0] = latlab::load16(bias + nb * 16), bv[1] = latlab::load16(bias + nb * 16 + 16);
  for (int64_t r0 = 0; r0 < rows; r0 += 32) {
    const char* a = reinterpret_cast<const char*>(x + r0 * k_dim);
    latlab::pair_pass<Bf16Pairs>(a, stride, b, b1, kblocks, rows - r0, r0 == 0, sums);
    for (int64_t r = 0; r < std::min<int64_t>(32, rows - r0); ++r) {
      for (int half = 0; half < 2; ++half) {
        const __m512 v = _mm512_add_ps(_mm512_load_ps(sums + r * 32 + half * 16), bv[half]);
        latlab::store16(y + (r0 + r) * n_dim + nb * 16 + half * 16, v,
                        static_cast<__mmask16>(0xFFFF));
      }
    }
  }
}

// y[:, 16 nb : 16 nb + 16] for `rows` rows of x (padded to whole tiles), bias added, rounded.
void column_block(const c10::BFloat16* x, int64_t rows, int64_t k_dim, const char* b,
                  const c10::BFloat16* bias, int64_t nb, int64_t n_dim, c10::BFloat16* y) {
  alignas(64) float sums[4 * 256];
  const int64_t kblocks = k_dim / 32, stride = k_dim * 2;
  const __m512 bv = bias ? latlab::load16(bias + nb * 16) : _mm512_setzero_ps();
  for (int64_t r0 = 0; r0 < rows; r0 += 64) {
    const int64_t tiles = std::min<int64_t>(4, (rows - r0 + 15) / 16);
    kTileSums<Bf16Pairs>[tiles - 1](reinterpret_cast<const char*>(x + r0 * k_dim), stride, b,
                                    kblocks, sums);
    for (int64_t r = 0; r < std::min<int64_t>(64, rows - r0); ++r) {
      const __m512 v = _mm512_add_ps(_mm512_load_ps(sums + r * 16), bv);
      latlab::store16(y + (r0 + r) * n_dim + nb * 16, v, static_cast<__mmask16>(0xFFFF));
    }
  }
}
#endif

void check_shapes(int64_t n, int64_t k, const char* name) {
  TORCH_CHECK(n % 16 == 0 && k % 32 == 0, name, ": N a multiple of 16 and K of 32 expected, got ",
              n, " x ", k);
}

}  // namespace

bool amx_thread_begin() {
#ifdef LATLAB_AMX
  if (!amx_permitted()) return false;
  configure_tiles();
  return true;
#else
  return false;
#endif
}

void amx_thread_end() {
#ifdef LATLAB_AMX
  _tile_release();
#endif
}

void amx_columns(const c10::BFloat16* x, int64_t rows, int64_t k_dim, const c10::BFloat16* packed,
                 const c10::BFloat16* bias, int64_t nb_lo, int64_t nb_hi, int64_t n_dim,
                 c10::BFloat16* y) {
#ifdef LATLAB_AMX
  const char* w = reinterpret_cast<const char*>(packed);
  const int64_t block_bytes = (k_dim / 32) * kTileBytes;
  latlab::each_column_pair(
      nb_lo, nb_hi,
      [&](int64_t nb) { column_pair(x, rows, k_dim, w + nb * block_bytes, bias, nb, n_dim, y); },
      [&](int64_t nb) { column_block(x, rows, k_dim, w + nb * block_bytes, bias, nb, n_dim, y); });
#else
  TORCH_CHECK(false, "amx_columns: built without AMX");
#endif
}

bool amx_available() {
#ifdef LATLAB_AMX
  return amx_permitted();
#else
  return false;
#endif
}

torch::Tensor amx_pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16 && weight.device().is_cpu(),
              "amx_pack: a bf16 CPU weight [N, K] expected");
  const int64_t n = weight.size(0), k = weight.size(1);
  check_shapes(n, k, "amx_pack");
  auto w = weight.contiguous();
  auto out = torch::empty({n / 16, k / 32, 16, 16, 2}, w.options());
  const auto* src = w.data_ptr<c10::BFloat16>();
  auto* dst = out.data_ptr<c10::BFloat16>();
  at::parallel_for(0, n / 16, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t nb = lo; nb < hi; ++nb) {
      for (int64_t kb = 0; kb < k / 32; ++kb) {
        c10::BFloat16* tile = dst + (nb * (k / 32) + kb) * 512;
        for (int64_t r = 0; r < 16; ++r) {
          for (int64_t c = 0; c < 16; ++c) {
            const c10::BFloat16* col = src + (nb * 16 + c) * k + kb * 32 + 2 * r;
            tile[(r * 16 + c) * 2] = col[0];
            tile[(r * 16 + c) * 2 + 1] = col[1];
          }
        }
      }
    }
  });
  return out;
}

torch::Tensor amx_linear(const torch::Tensor& x, const torch::Tensor& packed,
                         const std::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.device().is_cpu(),
              "amx_linear: bf16 CPU rows [M, K] expected");
  TORCH_CHECK(packed.dim() == 5 && packed.scalar_type() == at::kBFloat16 && packed.is_contiguous(),
              "amx_linear: a weight packed by amx_pack expected");
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0) * 16;
  TORCH_CHECK(packed.size(1) * 32 == k, "amx_linear: x has ", k, " columns, the weight ",
              packed.size(1) * 32);
  const c10::BFloat16* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->numel() == n && bias->is_contiguous(),
                "amx_linear: a bf16 bias of N values expected");
    b = bias->data_ptr<c10::BFloat16>();
  }
  auto y = torch::empty({m, n}, x.options());
#ifdef LATLAB_AMX
  TORCH_CHECK(amx_permitted(), "amx_linear: the kernel refused AMX state to this process");
  // Whole tiles of rows: a step whose row count is not a multiple of 16 is padded with zeros.
  const int64_t padded = (m + 15) / 16 * 16;
  auto rows = x.contiguous();
  if (padded != m) rows = torch::cat({rows, torch::zeros({padded - m, k}, x.options())});
  const auto* xp = rows.data_ptr<c10::BFloat16>();
  auto* yp = y.data_ptr<c10::BFloat16>();
  const int64_t blocks = n / 16;  // split in column pairs: an odd block only at the very end
  at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t lo, int64_t hi) {
    configure_tiles();  // tile state is per thread
    amx_columns(xp, m, k, packed.data_ptr<c10::BFloat16>(), b, 2 * lo, std::min(2 * hi, blocks),
                n, yp);
    _tile_release();
  });
#else
  TORCH_CHECK(false, "amx_linear: built without AMX (needs a CPU and compiler with AMX-BF16)");
#endif
  return y;
}
