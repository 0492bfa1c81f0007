// The engine's native CPU kernels (one extension module, registered in paged_attention.cpp).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

// Decode attention over the paged KV cache, read in place (paged_attention.cpp).
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache,
                                     const torch::Tensor& block_tables,
                                     const torch::Tensor& seq_lens, double scale, bool tiles);

// x [M, K] @ w[N, K]^T (* scale) (+ bias) for M <= 4 float32 rows, streaming w once: w float32,
// bf16, or int8 with a float32 scale per row (decode_step.cpp).
torch::Tensor small_linear(const torch::Tensor& x, const torch::Tensor& w,
                           const std::optional<torch::Tensor>& bias,
                           const std::optional<torch::Tensor>& scale);

// The index inputs of a native decode step (token ids, positions, cache slots, block tables,
// sequence lengths, the rows whose logits are wanted) as pointers, once checked against what
// they index: a bad one would make the step read or write outside its tensors. Each sequence's
// new slot must lie in its own blocks (the block manager's invariant): its (sequence, KV head)
// items write and read it on one thread, with no barrier between.
struct StepIndices {
  int64_t m, rows, max_blocks;
  const int64_t *ids, *positions, *slots, *tables, *lens, *logit_rows;
};
struct StepLimits {
  const char* who;  // the step's name in error messages
  int64_t min_rows, max_rows, max_logit_rows, vocab, positions, blocks, block_size;
};
StepIndices check_step_indices(const StepLimits& limits, const torch::Tensor& ids,
                               const torch::Tensor& positions, const torch::Tensor& slots,
                               const torch::Tensor& tables, const torch::Tensor& lens,
                               const torch::Tensor& logit_rows);

// A whole decode step of M <= 4 sequences as one native call: the class DecodeModel, holding
// the model's weights and caches (decode_step.cpp).
void register_decode_model(pybind11::module_& m);

// A whole bf16 decode step of 5-64 sequences on AMX tiles as one native call: the class
// BatchDecodeModel (decode_batch.cpp).
void register_batch_decode_model(pybind11::module_& m);

// The KV cache layout of every path: [NB, KVH, BS, D], each block holding all its KV heads side
// by side, so a sequence's (sequence, KV head) items read neighbouring memory. Against [KVH, NB,
// BS, D]: attention over scattered blocks 1.4-1.6x, batch-64 decode steps 1.06x at ~100 tokens of
// context and 1.13x at ~260 (docs/engine.md). The row (of D values) of token slot `slot` (block *
// BS + offset) for KV head kvh:
inline int64_t kv_row(int64_t slot, int64_t kvh, int64_t kv_heads, int64_t bs) {
  return ((slot / bs) * kv_heads + kvh) * bs + slot % bs;
}

// An int8 KV cache (kv_cache_dtype="int8") keeps one float32 scale per row (token, KV head):
// its storage holds, right after the cache's NB*KVH*BS*D values, NB*KVH*BS float32 scales in
// the rows' order (row r's scale at index r, r as kv_row gives it). A value is int8 * its row's
// scale; the scale is the row's absmax / 127 (rows.h's store_kv_row, kv_int8.py). The scales of
// such a cache (checked to lie inside its storage); nullptr for a cache of any other dtype.
float* kv_row_scales(const torch::Tensor& cache);

// One (sequence, KV head) item of decode attention: the query rows of the GQA group in (float32
// or bf16), their outputs out in the same dtype (paged_attention.cpp). tiles: the calling thread
// has configured AMX tiles (amx_thread_begin), so bf16 scores may run on them.
// k_scales, v_scales: an int8 cache's row scales (kv_row_scales), else nullptr.
template <typename Q, typename KV>
void attend_group(const Q* q, Q* out, const KV* k_cache, const KV* v_cache,
                  const float* k_scales, const float* v_scales, const int64_t* table,
                  int64_t seq_len, int64_t kvh, int64_t group, int64_t kv_heads, int64_t bs,
                  int64_t d, float scale, bool tiles, std::vector<float>& scratch);

// The elementwise work of a step of any size, fused (step_ops.cpp).
torch::Tensor rms_norm_rows(const torch::Tensor& x, const torch::Tensor& w, double eps);
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                        const torch::Tensor& w, double eps);
torch::Tensor rope_cache(const torch::Tensor& qkv, const torch::Tensor& cos,
                         const torch::Tensor& sin, torch::Tensor k_cache, torch::Tensor v_cache,
                         const torch::Tensor& slot_mapping, int64_t heads);
torch::Tensor silu_mul(const torch::Tensor& gate_up);
// Each row's first largest logit's column (greedy sampling; [rows, vocab]): contiguous float32
// CPU logits with the columns split over the threads as the batch decode step's head phase
// splits them, other layouts by torch's max.
torch::Tensor greedy_argmax(const torch::Tensor& logits);
// A repeated decode step's index tensors in one call (steady_batch.py): positions = ends +
// offset, seq_lens = positions + 1, each position's cache slot from its row of `tables`
// (int64 [rows, cols], rows >= len(ends)), and the first `width` columns of those rows copied.
std::vector<torch::Tensor> decode_inputs(const torch::Tensor& ends, int64_t offset,
                                         const torch::Tensor& tables, int64_t width,
                                         int64_t block_size);

// bf16 linear layers on AMX tiles (amx_linear.cpp).
bool amx_available();
torch::Tensor amx_pack(const torch::Tensor& weight);
torch::Tensor amx_linear(const torch::Tensor& x, const torch::Tensor& packed,
                         const std::optional<torch::Tensor>& bias);
// For a caller's own parallel region: each thread configures its tiles (false without AMX),
// computes column blocks [nb_lo, nb_hi) of y = x @ w.T + bias (bf16; x padded with zero rows
// to whole 16-row tiles), two at a time (a range of odd length runs its last block alone),
// and releases its tiles.
bool amx_thread_begin();
void amx_thread_end();
void amx_columns(const c10::BFloat16* x, int64_t rows, int64_t k_dim, const c10::BFloat16* packed,
                 const c10::BFloat16* bias, int64_t nb_lo, int64_t nb_hi, int64_t n_dim,
                 c10::BFloat16* y);

// float32 linear layers on AVX2 FMA (f32_panels.cpp): a weight [N, K] packed once in 16-column
// panels ([N/16, K, 16]), then y = x @ w.T (+ bias) for any number of float32 rows.
bool f32_panels_available();
torch::Tensor f32_pack(const torch::Tensor& weight);
torch::Tensor f32_panel_linear(const torch::Tensor& x, const torch::Tensor& packed,
                               const std::optional<torch::Tensor>& bias);
// For a caller's own parallel region: panels [p_lo, p_hi) of y [m, n_dim] = x @ w.T (+ bias),
// x [m, k_dim] row-major, w packed by f32_pack; the same sums as f32_panel_linear's.
void f32_panel_columns(const float* x, int64_t m, int64_t k_dim, const float* packed,
                       const float* bias, int64_t p_lo, int64_t p_hi, int64_t n_dim, float* y,
                       bool grouped = false);
// One panel p of the same; panel `next` (-1: none) is brought toward L2 while it runs, for the
// caller to take next. grouped: x is in the grouped layout below, not rows.
void f32_panel(const float* x, int64_t m, int64_t k_dim, const float* packed, const float* bias,
               int64_t p, int64_t next, int64_t n_dim, float* y, bool grouped = false);
// The panels' grouped layout of GEMM rows: the rows in groups of 6 (the register block's), each
// group [K][6], row i's value k at ((i / 6) * K + k) * 6 + i % 6. A block's six broadcasts of one
// k then read one cache line, where from rows they read six lines K apart (six streams from L2
// per panel). The batch step's producers (norms, attention, SiLU) write their rows this way as
// they make them (~1 ms of a ~100 ms batch-64 float32 step); its GEMMs then took 82 ms where
// they took 86-88 (one A/B, 1.02-1.03x a step; docs/engine.md). A copy made on one thread per
// call cost more than it saved (session 21); f32_panel_linear makes it on all of them.
constexpr int64_t kF32Group = 6;
inline int64_t f32_grouped_size(int64_t m, int64_t k_dim) {
  return (m + kF32Group - 1) / kF32Group * kF32Group * k_dim;
}
// Values [c0, c0 + n) of row i (of rows K = k_dim long) into the grouped layout.
inline void f32_group_row(const float* values, int64_t i, int64_t c0, int64_t n, int64_t k_dim,
                          float* grouped) {
  float* dst = grouped + ((i / kF32Group) * k_dim + c0) * kF32Group + i % kF32Group;
  for (int64_t j = 0; j < n; ++j) dst[j * kF32Group] = values[j];
}

// W8A8 linear layers on AMX int8 tiles (amx_int8.cpp): an int8 weight [N, K] packed once, with
// a float32 scale per output channel; activation rows quantized per row (symmetric int8).
bool amx_int8_available();
torch::Tensor amx_pack_int8(const torch::Tensor& weight);
torch::Tensor amx_int8_linear(const torch::Tensor& x, const torch::Tensor& packed,
                              const torch::Tensor& w_scale,
                              const std::optional<torch::Tensor>& bias);
// One bf16 row as int8 and its scale (absmax / 127; values rounded to nearest even).
void quantize_row_int8(const c10::BFloat16* x, int64_t k, int8_t* q, float* scale);
// For a caller's own parallel region with its tiles configured (amx_thread_begin): column
// blocks [nb_lo, nb_hi) of y = (xq @ w.T) * xs * ws (+ bias), bf16, two at a time; xq padded
// to whole 16-row tiles.
void amx_int8_columns(const int8_t* xq, const float* xs, int64_t rows, int64_t k_dim,
                      const int8_t* packed, const float* ws, const c10::BFloat16* bias,
                      int64_t nb_lo, int64_t nb_hi, int64_t n_dim, c10::BFloat16* y);
