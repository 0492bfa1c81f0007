// The AMX weight-streaming loops shared by the bf16 (amx_linear.cpp) and int8 (amx_int8.cpp)
// linear kernels. The two differ only in the tile multiply (bf16 pairs into float32 sums, or
// int8 quads into int32 sums); a K block is 64 bytes of a row either way (32 bf16 or 64 int8
// values), and a packed weight tile is 1 KiB.
//
// Two column blocks at a time (tile_sums_pair): 2 row tiles x 2 weight tiles into 4 sum tiles,
// so each tile loaded feeds two multiplies. A step's rows come in passes of 32; the pair's
// weights are read from memory by the first pass (prefetched into L2 two tiles ahead, which
// the hardware prefetcher does not do for tile loads) and from L2 by the others. At 64 rows
// loading tiles costs more than the multiplies (~2 cycles a 64-byte line), and the one-block
// form (one weight tile against 4 row tiles) loads 5 tiles for 4 multiplies where this form
// loads 4: the model's GEMMs at 64 rows ran 1.17x faster (benchmarks/int8_gemm.py, bf16 and
// int8; docs/engine.md). The one-block form stays for an odd last column block.
#pragma once

#include <cstdint>

#include "vec512.h"

namespace latlab {

constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes
constexpr int64_t kPrefetchTiles = 2;

#ifdef LATLAB_AMX
// The 16 lines of the weight tile `ahead` into L2.
inline void prefetch_tile(const char* ahead) {
  for (int64_t line = 0; line < kTileBytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T1);
}

// The tile multiply C += A . B. GCC's intrinsics paste the tile numbers into the instruction
// text, so each (C, A, B) the loops below use is spelled out: the one-block form's (C, 4, 5) and
// the pair form's (0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7).
#define LATLAB_TILE_MULTIPLY(OP)                                     \
  template <int C, int A, int B>                                     \
  static void multiply() {                                           \
    if constexpr (A == 4 && B == 5) {                                \
      if constexpr (C == 0) OP(0, 4, 5);                             \
      if constexpr (C == 1) OP(1, 4, 5);                             \
      if constexpr (C == 2) OP(2, 4, 5);                             \
      if constexpr (C == 3) OP(3, 4, 5);                             \
    } else {                                                         \
      static_assert(B == 6 + C % 2 && A == 4 + C / 2, "a pair tile"); \
      if constexpr (C == 0) OP(0, 4, 6);                             \
      if constexpr (C == 1) OP(1, 4, 7);                             \
      if constexpr (C == 2) OP(2, 5, 6);                             \
      if constexpr (C == 3) OP(3, 5, 7);                             \
    }                                                                \
  }
struct Bf16Pairs {
  LATLAB_TILE_MULTIPLY(_tile_dpbf16ps)
};
#ifdef LATLAB_AMX_INT8
struct Int8Quads {
  LATLAB_TILE_MULTIPLY(_tile_dpbssd)
};
#endif
#undef LATLAB_TILE_MULTIPLY

// Sums of MB x 16 rows of x (row stride `stride` bytes) against column block `b`, all of K,
// stored as MB tiles of 16 x 16 (float32 or int32) at `sums`.
template <int MB, typename Dot>
void tile_sums(const char* a, int64_t stride, const char* b, int64_t kblocks, void* sums) {
  _tile_zero(0);
  if constexpr (MB > 1) _tile_zero(1);
  if constexpr (MB > 2) _tile_zero(2);
  if constexpr (MB > 3) _tile_zero(3);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    prefetch_tile(b + (kb + kPrefetchTiles) * kTileBytes);
    _tile_loadd(5, b + kb * kTileBytes, 64);
    _tile_loadd(4, a + kb * 64, stride);
    Dot::template multiply<0, 4, 5>();
    if constexpr (MB > 1) {
      _tile_loadd(4, a + 16 * stride + kb * 64, stride);
      Dot::template multiply<1, 4, 5>();
    }
    if constexpr (MB > 2) {
      _tile_loadd(4, a + 32 * stride + kb * 64, stride);
      Dot::template multiply<2, 4, 5>();
    }
    if constexpr (MB > 3) {
      _tile_loadd(4, a + 48 * stride + kb * 64, stride);
      Dot::template multiply<3, 4, 5>();
    }
  }
  char* out = static_cast<char*>(sums);
  _tile_stored(0, out, 64);
  if constexpr (MB > 1) _tile_stored(1, out + 1024, 64);
  if constexpr (MB > 2) _tile_stored(2, out + 2048, 64);
  if constexpr (MB > 3) _tile_stored(3, out + 3072, 64);
}

// Sums of MT x 16 rows of x (MT = 1 or 2) against column blocks b0 and b1, all of K, stored
// as [MT x 16 rows][32 columns] (block 0 in columns 0-15, block 1 in 16-31). `first`: this
// pass reads the weights from memory (prefetch them); later passes find them in L2.
template <int MT, typename Dot>
void tile_sums_pair(const char* a, int64_t stride, const char* b0, const char* b1,
                    int64_t kblocks, bool first, void* sums) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (MT > 1) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    if (first) {
      prefetch_tile(b0 + (kb + kPrefetchTiles) * kTileBytes);
      prefetch_tile(b1 + (kb + kPrefetchTiles) * kTileBytes);
    }
    _tile_loadd(6, b0 + kb * kTileBytes, 64);
    _tile_loadd(7, b1 + kb * kTileBytes, 64);
    _tile_loadd(4, a + kb * 64, stride);
    Dot::template multiply<0, 4, 6>();
    Dot::template multiply<1, 4, 7>();
    if constexpr (MT > 1) {
      _tile_loadd(5, a + 16 * stride + kb * 64, stride);
      Dot::template multiply<2, 5, 6>();
      Dot::template multiply<3, 5, 7>();
    }
  }
  char* out = static_cast<char*>(sums);
  _tile_stored(0, out, 128);
  _tile_stored(1, out + 64, 128);
  if constexpr (MT > 1) {
    _tile_stored(2, out + 2048, 128);
    _tile_stored(3, out + 2048 + 64, 128);
  }
}

// Pass `r0` of a column pair: the rows left, in one or two row tiles.
template <typename Dot>
void pair_pass(const char* a, int64_t stride, const char* b0, const char* b1, int64_t kblocks,
               int64_t rows_left, bool first, void* sums) {
  if (rows_left > 16) {
    tile_sums_pair<2, Dot>(a, stride, b0, b1, kblocks, first, sums);
  } else {
    tile_sums_pair<1, Dot>(a, stride, b0, b1, kblocks, first, sums);
  }
}

// Column blocks [lo, hi) two at a time: pair(nb) for blocks nb and nb + 1, block(nb) for an
// odd last one.
template <typename Pair, typename Block>
void each_column_pair(int64_t lo, int64_t hi, Pair pair, Block block) {
  for (int64_t nb = lo; nb < hi; nb += 2) {
    if (nb + 1 < hi) {
      pair(nb);
    } else {
      block(nb);
    }
  }
}

using TileSums = void (*)(const char*, int64_t, const char*, int64_t, void*);
// The form for 1-4 row tiles.
template <typename Dot>
constexpr TileSums kTileSums[4] = {&tile_sums<1, Dot>, &tile_sums<2, Dot>, &tile_sums<3, Dot>,
                                   &tile_sums<4, Dot>};
#endif

}  // namespace latlab
