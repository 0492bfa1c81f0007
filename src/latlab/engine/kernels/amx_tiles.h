// The AMX weight-streaming loop shared by the bf16 (amx_linear.cpp) and int8 (amx_int8.cpp)
// linear kernels: one column block of packed weights against up to 4 tiles of 16 rows, the
// weight tiles prefetched into L2 two tiles ahead. The two differ only in the tile multiply
// (bf16 pairs into float32 sums, or int8 quads into int32 sums); a K block is 64 bytes of a
// row either way (32 bf16 or 64 int8 values), and a packed weight tile is 1 KiB.
#pragma once

#include <cstdint>

#include "vec512.h"

namespace latlab {

constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes
constexpr int64_t kPrefetchTiles = 2;

#ifdef LATLAB_AMX
// The tile multiply C += A(tile 4) . B(tile 5) into sum tile C (the intrinsics take the tile
// numbers as literals, hence one branch each).
struct Bf16Pairs {
  template <int C>
  static void multiply() {
    if constexpr (C == 0) _tile_dpbf16ps(0, 4, 5);
    if constexpr (C == 1) _tile_dpbf16ps(1, 4, 5);
    if constexpr (C == 2) _tile_dpbf16ps(2, 4, 5);
    if constexpr (C == 3) _tile_dpbf16ps(3, 4, 5);
  }
};
#ifdef LATLAB_AMX_INT8
struct Int8Quads {
  template <int C>
  static void multiply() {
    if constexpr (C == 0) _tile_dpbssd(0, 4, 5);
    if constexpr (C == 1) _tile_dpbssd(1, 4, 5);
    if constexpr (C == 2) _tile_dpbssd(2, 4, 5);
    if constexpr (C == 3) _tile_dpbssd(3, 4, 5);
  }
};
#endif

// Sums of MB x 16 rows of x (row stride `stride` bytes) against column block `b`, all of K,
// stored as MB tiles of 16 x 16 (float32 or int32) at `sums`.
template <int MB, typename Dot>
void tile_sums(const char* a, int64_t stride, const char* b, int64_t kblocks, void* sums) {
  _tile_zero(0);
  if constexpr (MB > 1) _tile_zero(1);
  if constexpr (MB > 2) _tile_zero(2);
  if constexpr (MB > 3) _tile_zero(3);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const char* ahead = b + (kb + kPrefetchTiles) * kTileBytes;
    for (int64_t line = 0; line < kTileBytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T1);
    _tile_loadd(5, b + kb * kTileBytes, 64);
    _tile_loadd(4, a + kb * 64, stride);
    Dot::template multiply<0>();
    if constexpr (MB > 1) {
      _tile_loadd(4, a + 16 * stride + kb * 64, stride);
      Dot::template multiply<1>();
    }
    if constexpr (MB > 2) {
      _tile_loadd(4, a + 32 * stride + kb * 64, stride);
      Dot::template multiply<2>();
    }
    if constexpr (MB > 3) {
      _tile_loadd(4, a + 48 * stride + kb * 64, stride);
      Dot::template multiply<3>();
    }
  }
  char* out = static_cast<char*>(sums);
  _tile_stored(0, out, 64);
  if constexpr (MB > 1) _tile_stored(1, out + 1024, 64);
  if constexpr (MB > 2) _tile_stored(2, out + 2048, 64);
  if constexpr (MB > 3) _tile_stored(3, out + 3072, 64);
}

using TileSums = void (*)(const char*, int64_t, const char*, int64_t, void*);
// The form for 1-4 row tiles.
template <typename Dot>
constexpr TileSums kTileSums[4] = {&tile_sums<1, Dot>, &tile_sums<2, Dot>, &tile_sums<3, Dot>,
                                   &tile_sums<4, Dot>};
#endif

}  // namespace latlab
