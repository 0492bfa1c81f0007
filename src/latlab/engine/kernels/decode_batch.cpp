// Decode steps of 5-64 sequences as one native call (latlab engine, CPU): in bf16 on AMX tiles,
// or in float32 on the AVX2 FMA panel GEMM (f32_panels.cpp) where the CPU has no bf16 GEMMs.
// With W8A8 weights (int8, a scale per output channel) the GEMMs run on AMX int8 tiles, each
// GEMM input quantized per row as it is produced (amx_int8.cpp); everything else as in bf16.
//
// At batch 64 a bf16 decode step of the ~106M model took ~26 ms, of which the native calls (the
// AMX GEMMs, attention, the fused norms, RoPE and SiLU) were ~23 ms; ~3 ms went to Python and
// torch dispatch between them, ~100 calls a step, each also forking and joining the thread pool
// (docs/engine.md). Here one OpenMP parallel region runs the whole step: the elementwise work
// splits the rows over the threads, the GEMMs split their 16-column blocks (amx_linear.cpp's
// kernel), attention splits its (sequence, KV head) items, and the threads meet at a barrier
// between phases that read what other threads wrote.
//
// In float32 on an AVX2 EPYC a batch-64 step of the same model spent ~10 ms of ~132 outside its
// native kernels and ~6 ms in the norms, RoPE and SiLU, each a call whose threads start cold
// (benchmarks/engine_profile.py, docs/engine.md); the float32 step is the same region over the
// panel GEMM's column panels.
//
// Numerics: exactly the step-ops path's (models/llama.py, step_ops.cpp): a residual stream in
// the model's dtype and every op rounded to it where that path rounds, through the same row
// primitives (rows.h), the same column kernels (AMX, or the float32 panels) and the same
// attention kernel, so both give the same logits bit for bit (tested).
//
// Layouts (the engine's): packed weights as amx_pack makes them ([N/16, K/32, 16, 16, 2]) or
// f32_pack ([N/16, K, 16]);
// cos/sin tables [positions, D] (sin with rotate_half's sign folded in); k_cache, v_cache
// [NB, KVH, BS, D]; block_tables [M, max_blocks]; seq_lens [M] (the new key included).

#include "kernels.h"
#include "phase_clock.h"
#include "rows.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using BF16 = c10::BFloat16;
using latlab::narrow_row;
using latlab::norm_row;
using latlab::Phase;
using latlab::PhaseClock;
using latlab::sync;
using latlab::widen_row;

constexpr int64_t kMinRows = 5;   // 1-4 rows: the GEMV step (decode_step.cpp)
constexpr int64_t kMaxRows = 64;  // the batches it was built and measured for

using latlab::Span;
// Thread t's share of n items, item by item.
inline Span share(int64_t n, int t, int nt) { return latlab::share(n, 1, t, nt); }

// One decoder layer: norms and qkv bias (empty for none) in the step's dtype, packed weights,
// caches;
// for W8A8, int8 weights packed by amx_pack_int8 and their float32 scales per output channel
// (empty for bf16 weights).
struct Layer {
  torch::Tensor norm1, qkv, b_qkv, o, norm2, gate_up, down, k_cache, v_cache;
  torch::Tensor s_qkv, s_o, s_gate_up, s_down;
  float *k_scales = nullptr, *v_scales = nullptr;  // an int8 cache's row scales (kv_row_scales)
  bool int8() const { return s_qkv.numel() > 0; }
};

template <typename T>
constexpr bool kBf16 = std::is_same_v<T, BF16>;
template <typename T>
T* ptr(const torch::Tensor& t) {
  return t.data_ptr<T>();
}

struct Dims {
  int64_t hidden, heads, kv_heads, d, inter, vocab, positions, blocks, block_size;
  int64_t q_dim() const { return heads * d; }
  int64_t qkv_dim() const { return (heads + 2 * kv_heads) * d; }
};

using Inputs = StepIndices;

// A GEMM input's int8 rows (whole 16-row tiles, padding rows zero) and their scales (W8A8).
struct Quantized {
  torch::Tensor q, scale;
  Quantized() = default;
  Quantized(int64_t padded, int64_t dim)
      : q(torch::zeros({padded, dim}, torch::dtype(torch::kChar))),
        scale(torch::ones({padded}, torch::dtype(torch::kFloat))) {}
};

// The float32 panels of a GEMM, claimed one at a time: each thread takes its own share front to
// back (the next one prefetched, as f32_panel_columns does), then the other threads' remaining
// panels from the back. This VM's two cores run at speeds that differ from minute to minute
// (other VMs' memory traffic), and with fixed shares the faster one waited at the barrier after
// every GEMM (~5 ms of a ~108 ms batch-64 float32 step; benchmarks/decode_phases.py). Each
// range is (lo << 32 | hi) in one atomic word: owner and thieves claim with one CAS. A thread
// opens its range at a GEMM's start (after the barrier that ended the last GEMM, by which all
// ranges are empty): a thief that looks earlier finds it empty and moves on. Which thread
// computes a panel changes no bit of it.
class PanelClaims {
 public:
  explicit PanelClaims(int threads) : ranges_(threads) {}
  Span open(int64_t panels, int t, int nt) {
    const Span own = latlab::share(panels, 1, t, nt);
    ranges_[t].store(pack(own.lo, own.hi), std::memory_order_release);
    return own;
  }
  // The next panel of thread v's range, from its front (the owner) or back (a thief); -1: none.
  int64_t take(int v, bool front) {
    auto& range = ranges_[v];
    uint64_t seen = range.load(std::memory_order_acquire);
    for (;;) {
      const auto lo = static_cast<int64_t>(seen >> 32), hi = static_cast<int64_t>(seen & kLow);
      if (lo >= hi) return -1;
      const uint64_t claimed = front ? pack(lo + 1, hi) : pack(lo, hi - 1);
      if (range.compare_exchange_weak(seen, claimed, std::memory_order_acq_rel)) {
        return front ? lo : hi - 1;
      }
    }
  }

 private:
  static constexpr uint64_t kLow = 0xffffffffu;
  static uint64_t pack(int64_t lo, int64_t hi) {
    return (static_cast<uint64_t>(lo) << 32) | static_cast<uint64_t>(hi);
  }
  std::vector<std::atomic<uint64_t>> ranges_;  // zero: empty
};

// y [m, n] = x @ w.T (+ bias) on the float32 panels, this thread's claims of them; x in the
// panels' grouped layout (kernels.h).
void claimed_panels(const float* x, int64_t m, const torch::Tensor& packed, const float* bias,
                    float* y, PanelClaims& claims, int t, int nt) {
  const int64_t k = packed.size(1), n = packed.size(0) * 16;
  const float* w = ptr<float>(packed);
  const Span own = claims.open(packed.size(0), t, nt);
  for (int64_t p = claims.take(t, true); p >= 0; p = claims.take(t, true)) {
    f32_panel(x, m, k, w, bias, p, p + 1 < own.hi ? p + 1 : -1, n, y, true);
  }
  for (int i = 1; i < nt; ++i) {
    const int v = (t + i) % nt;
    for (int64_t p = claims.take(v, false); p >= 0; p = claims.take(v, false)) {
      f32_panel(x, m, k, w, bias, p, p - 1, n, y, true);
    }
  }
}

// The step's activations in its dtype. GEMM inputs hold whole 16-row tiles (AMX's; harmless
// for the panels): their padding rows stay zero (only the first m rows are written). With int8
// weights, the GEMM inputs as int8 too. In float32 the GEMMs read their inputs from grouped
// copies (kernels.h's layout), which the producers fill row by row.
template <typename T>
struct Buffers {
  torch::Tensor x, h, qkv, attn, o, gate_up, act, down, head_in, head_out;
  torch::Tensor h_grouped, attn_grouped, act_grouped, head_grouped;  // float32 only
  Quantized hq, attnq, actq;
  std::unique_ptr<PanelClaims> claims;  // float32: the GEMMs' panels, claimed (PanelClaims)
  Buffers(const Dims& s, int64_t m, int64_t rows, bool int8, int threads)
      : claims(std::make_unique<PanelClaims>(threads)) {
    const auto opts = torch::dtype(c10::CppTypeToScalarType<T>::value);
    const int64_t padded = (m + 15) / 16 * 16, head_rows = (rows + 15) / 16 * 16;
    x = torch::empty({m, s.hidden}, opts), h = torch::zeros({padded, s.hidden}, opts);
    qkv = torch::empty({m, s.qkv_dim()}, opts), attn = torch::zeros({padded, s.q_dim()}, opts);
    o = torch::empty({m, s.hidden}, opts), gate_up = torch::empty({m, 2 * s.inter}, opts);
    act = torch::zeros({padded, s.inter}, opts), down = torch::empty({m, s.hidden}, opts);
    head_in = torch::zeros({head_rows, s.hidden}, opts);
    if (kBf16<T>) head_out = torch::empty({rows, s.vocab}, opts);  // float32: straight to logits
    if (!kBf16<T>) {  // a last group's missing rows are never read: nothing to zero
      h_grouped = torch::empty({f32_grouped_size(m, s.hidden)}, opts);
      attn_grouped = torch::empty({f32_grouped_size(m, s.q_dim())}, opts);
      act_grouped = torch::empty({f32_grouped_size(m, s.inter)}, opts);
      head_grouped = torch::empty({f32_grouped_size(rows, s.hidden)}, opts);
    }
    if (int8) {
      hq = Quantized(padded, s.hidden), attnq = Quantized(padded, s.q_dim());
      actq = Quantized(padded, s.inter);
    }
  }
};

// Each thread's scratch rows, and its phase clock (a no-op unless the step is timed).
template <typename T>
struct Scratch {
  std::vector<float> row, other, head, cos, sin;
  std::vector<T> q;
  std::vector<float> attention;
  bool tiles = false;  // this thread's AMX tiles are configured
  PhaseClock clock;
  Scratch(const Dims& s, latlab::PhaseTotals* totals)
      : row(s.hidden), other(s.hidden), head(s.d), cos(s.d), sin(s.d),
        q(s.heads / s.kv_heads * s.d), clock(totals) {}
};

// Rows [lo, hi): x += delta rounded to T (no delta: x as it is), then h = RMSNorm(x), as
// the step ops' rms_norm and add_rms_norm do.
template <typename T>
void add_norm_rows(T* x, const T* delta, const T* w, T* h, int64_t dim, float eps, Span rows,
                   Scratch<T>& sc) {
  for (int64_t i = rows.lo; i < rows.hi; ++i) {
    widen_row(x + i * dim, sc.row.data(), dim);
    if (delta != nullptr) {
      widen_row(delta + i * dim, sc.other.data(), dim);
      for (int64_t j = 0; j < dim; ++j) sc.row[j] += sc.other[j];
      narrow_row(sc.row.data(), x + i * dim, dim);
      widen_row(x + i * dim, sc.row.data(), dim);  // the norm reads the sum as stored
    }
    norm_row(sc.row.data(), w, h + i * dim, dim, eps);
  }
}

// Rows [lo, hi) of x [., dim] into the panels' grouped copy (float32; bf16 GEMMs read the rows).
template <typename T>
void group_rows(const T* x, int64_t dim, Span rows, const torch::Tensor& grouped) {
  if constexpr (!kBf16<T>) {
    float* out = grouped.data_ptr<float>();
    for (int64_t i = rows.lo; i < rows.hi; ++i) f32_group_row(x + i * dim, i, 0, dim, dim, out);
  }
}

// What a GEMM reads: in float32 the grouped copy of its input rows, in bf16 the rows.
template <typename T>
const T* gemm_input(const torch::Tensor& rows, const torch::Tensor& grouped) {
  if constexpr (kBf16<T>) return ptr<T>(rows);
  return ptr<T>(grouped);
}

// Column blocks [blocks.lo, blocks.hi) of y [m, n_dim] = x @ w.T (+ bias) on AMX bf16 tiles.
void columns(const BF16* x, int64_t m, int64_t k_dim, const torch::Tensor& packed,
             const BF16* bias, Span blocks, int64_t n_dim, BF16* y) {
  amx_columns(x, m, k_dim, ptr<BF16>(packed), bias, blocks.lo, blocks.hi, n_dim, y);
}

// K of a packed weight: AMX bf16 [N/16, K/32, ..], AMX int8 [N/16, K/64, ..], panels [N/16, K, 16].
template <typename T>
int64_t packed_k(const torch::Tensor& packed, bool int8) {
  if constexpr (kBf16<T>) return packed.size(1) * (int8 ? 64 : 32);
  return packed.size(1);
}

// This thread's part of y [m, n] = x @ w.T (+ bias): the float32 panels it claims, or its share
// of the 16-column blocks on bf16 tiles, or with int8 weights (a scale per output channel) of
// the rows of x as quantized in `xq`. On AMX column blocks are shared in pairs (its kernels'
// unit): only the very last can run alone.
template <typename T>
void gemm_share(const T* x, const Quantized& xq, int64_t m, const torch::Tensor& packed,
                const torch::Tensor& scale, const T* bias, T* y, PanelClaims& claims, int t,
                int nt) {
  if constexpr (!kBf16<T>) {
    claimed_panels(x, m, packed, bias, y, claims, t, nt);
  } else {
    const Span blocks = latlab::share(packed.size(0), 2, t, nt);
    const int64_t n = packed.size(0) * 16;
    if (scale.numel() == 0) {
      return columns(x, m, packed_k<T>(packed, false), packed, bias, blocks, n, y);
    }
    amx_int8_columns(xq.q.data_ptr<int8_t>(), xq.scale.data_ptr<float>(), m,
                     packed_k<T>(packed, true), packed.data_ptr<int8_t>(),
                     scale.data_ptr<float>(), bias, blocks.lo, blocks.hi, n, y);
  }
}

// Rows [lo, hi) of x [., dim] as int8 with a scale each (a no-op without int8 weights).
template <typename T>
void quantize_rows(const T* x, const Quantized& xq, int64_t dim, Span rows) {
  if (!xq.q.defined()) return;
  if constexpr (kBf16<T>) {
    for (int64_t i = rows.lo; i < rows.hi; ++i) {
      quantize_row_int8(x + i * dim, dim, xq.q.data_ptr<int8_t>() + i * dim,
                        xq.scale.data_ptr<float>() + i);
    }
  }
}

// The rows just made (by phase `done`) quantized for W8A8's next GEMM, then the barrier.
template <typename T>
void quantize_and_sync(const T* x, const Quantized& xq, int64_t dim, Span rows,
                       PhaseClock& clock, Phase done) {
  if (!xq.q.defined()) return sync(clock, done);
  clock.mark(done);
  quantize_rows(x, xq, dim, rows);
  sync(clock, latlab::kQuantize);
}

template <typename T>
void check_dtype(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == c10::CppTypeToScalarType<T>::value && t.is_contiguous() &&
                  t.device().is_cpu(),
              name, ": a contiguous ", (kBf16<T> ? "bf16" : "float32"), " CPU tensor expected");
}

template <typename T>
void check_packed(const torch::Tensor& t, int64_t n, int64_t k, const char* name) {
  check_dtype<T>(t, name);
  if constexpr (kBf16<T>) {
    TORCH_CHECK(t.dim() == 5 && t.size(0) * 16 == n && t.size(1) * 32 == k, name,
                ": an AMX-packed weight of ", n, " x ", k, " expected");
  } else {
    TORCH_CHECK(t.dim() == 3 && t.size(0) * 16 == n && t.size(1) == k && t.size(2) == 16, name,
                ": a weight of ", n, " x ", k, " packed by f32_pack expected");
  }
}

// A weight packed by amx_pack or f32_pack, or (bf16 steps, with a scale) an int8 one packed by
// amx_pack_int8.
template <typename T>
void check_weight(const torch::Tensor& t, const torch::Tensor& scale, int64_t n, int64_t k,
                  const char* name) {
  if (scale.numel() == 0) return check_packed<T>(t, n, k, name);
  TORCH_CHECK(t.scalar_type() == at::kChar && t.is_contiguous() && t.dim() == 4 &&
                  t.size(0) * 16 == n && t.size(1) * 64 == k,
              name, ": an int8 weight packed by amx_pack_int8 of ", n, " x ", k, " expected");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n,
              name, ": a float32 scale per output channel expected");
}

template <typename T>
class BatchDecodeModel {
 public:
  BatchDecodeModel(std::vector<torch::Tensor> model,
                   std::vector<std::vector<torch::Tensor>> layers, int64_t num_heads,
                   double eps, double scale);
  torch::Tensor step(const torch::Tensor& ids, const torch::Tensor& positions,
                     const torch::Tensor& slots, const torch::Tensor& tables,
                     const torch::Tensor& lens, const torch::Tensor& logit_rows) const;
  // Time the phases of the steps from here on (or stop), from zero.
  void time_phases(bool on);
  // Seconds per phase since timing started or was last read, summed over the threads.
  std::vector<std::pair<std::string, double>> phase_seconds();

 private:
  void check_layer(const Layer& layer) const;
  Inputs checked(const torch::Tensor& ids, const torch::Tensor& positions,
                 const torch::Tensor& slots, const torch::Tensor& tables,
                 const torch::Tensor& lens, const torch::Tensor& logit_rows) const;
  template <typename KV>
  void run(const Inputs& in, const Buffers<T>& b, float* logits) const;
  template <typename KV>
  void layer_step(const Layer& layer, const Inputs& in, const Buffers<T>& b, const T* pending,
                  Scratch<T>& sc, int t, int nt) const;
  template <typename KV>
  void attend_items(const Layer& layer, const Inputs& in, const Buffers<T>& b, Scratch<T>& sc,
                    int t, int nt) const;
  void head(const Inputs& in, const Buffers<T>& b, float* logits, Scratch<T>& sc, int t,
            int nt) const;

  torch::Tensor embed_, cos_, sin_, norm_, head_;
  std::vector<Layer> layers_;
  Dims dims_{};
  float eps_, scale_;
  std::atomic<bool> timed_{false};  // set between steps, maybe from another thread
  mutable latlab::PhaseTotals phase_ns_{};
};

template <typename T>
BatchDecodeModel<T>::BatchDecodeModel(std::vector<torch::Tensor> model,
                                      std::vector<std::vector<torch::Tensor>> layers,
                                      int64_t num_heads, double eps, double scale)
    : eps_(static_cast<float>(eps)), scale_(static_cast<float>(scale)) {
  if constexpr (kBf16<T>) {
    TORCH_CHECK(amx_available(), "BatchDecodeModel: no AMX-BF16 here");
  } else {
    TORCH_CHECK(f32_panels_available(), "BatchDecodeModel: no AVX2 FMA panels in this build");
  }
  TORCH_CHECK(model.size() == 5, "BatchDecodeModel: [embed, cos, sin, norm, packed head] expected");
  TORCH_CHECK(!layers.empty(), "BatchDecodeModel: no layers");
  embed_ = model[0], cos_ = model[1], sin_ = model[2], norm_ = model[3], head_ = model[4];
  for (const auto* t : {&embed_, &cos_, &sin_, &norm_}) check_dtype<T>(*t, "BatchDecodeModel");
  for (const auto& l : layers) {
    TORCH_CHECK(l.size() == 9 || l.size() == 13,
                "BatchDecodeModel: 9 tensors per layer expected (13 with int8 weights' scales)");
    Layer layer{l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8]};
    if (l.size() == 13) layer.s_qkv = l[9], layer.s_o = l[10], layer.s_gate_up = l[11], layer.s_down = l[12];
    layer.k_scales = kv_row_scales(layer.k_cache), layer.v_scales = kv_row_scales(layer.v_cache);
    layers_.push_back(layer);
  }
  const Layer& first = layers_.front();
  const int64_t packed_dims = kBf16<T> ? (first.int8() ? 4 : 5) : 3;
  TORCH_CHECK(first.k_cache.dim() == 4 && first.down.dim() == packed_dims,
              "BatchDecodeModel: caches [NB, KVH, BS, D] and packed weights expected");
  dims_ = Dims{embed_.size(1), num_heads, first.k_cache.size(1), first.k_cache.size(3),
               packed_k<T>(first.down, first.int8()), embed_.size(0), cos_.size(0),
               first.k_cache.size(0), first.k_cache.size(2)};
  check_packed<T>(head_, dims_.vocab, dims_.hidden, "BatchDecodeModel head");
  TORCH_CHECK(norm_.numel() == dims_.hidden && cos_.size(1) == dims_.d && sin_.sizes() == cos_.sizes() &&
                  dims_.heads % dims_.kv_heads == 0 && dims_.d % 16 == 0,
              "BatchDecodeModel: norm, RoPE tables or heads do not match the model");
  for (const auto& layer : layers_) check_layer(layer);
}

template <typename T>
void BatchDecodeModel<T>::check_layer(const Layer& layer) const {
  const Dims& s = dims_;
  for (const auto* t : {&layer.norm1, &layer.norm2}) check_dtype<T>(*t, "BatchDecodeModel norm");
  TORCH_CHECK(layer.norm1.numel() == s.hidden && layer.norm2.numel() == s.hidden,
              "BatchDecodeModel: norms of the hidden size expected");
  TORCH_CHECK(layer.int8() == layers_.front().int8(), "BatchDecodeModel: int8 weights in every "
              "layer or in none");
  TORCH_CHECK(!layer.int8() || kBf16<T>, "BatchDecodeModel: int8 weights run in bf16 steps only");
  TORCH_CHECK(!layer.int8() || amx_int8_available(), "BatchDecodeModel: no AMX-INT8 here");
  check_weight<T>(layer.qkv, layer.s_qkv, s.qkv_dim(), s.hidden, "BatchDecodeModel qkv");
  check_weight<T>(layer.o, layer.s_o, s.hidden, s.q_dim(), "BatchDecodeModel o");
  check_weight<T>(layer.gate_up, layer.s_gate_up, 2 * s.inter, s.hidden,
                  "BatchDecodeModel gate_up");
  check_weight<T>(layer.down, layer.s_down, s.hidden, s.inter, "BatchDecodeModel down");
  if (layer.b_qkv.numel() > 0) {
    check_dtype<T>(layer.b_qkv, "BatchDecodeModel qkv bias");
    TORCH_CHECK(layer.b_qkv.numel() == s.qkv_dim(), "BatchDecodeModel: a qkv bias per column");
  }
  const auto& first = layers_.front().k_cache;
  TORCH_CHECK(layer.k_cache.sizes() == first.sizes() && layer.v_cache.sizes() == first.sizes() &&
                  layer.k_cache.scalar_type() == first.scalar_type() &&
                  layer.v_cache.scalar_type() == first.scalar_type() &&
                  layer.k_cache.is_contiguous() && layer.v_cache.is_contiguous(),
              "BatchDecodeModel: contiguous caches of one shape and dtype expected");
}

template <typename T>
Inputs BatchDecodeModel<T>::checked(const torch::Tensor& ids, const torch::Tensor& positions,
                                 const torch::Tensor& slots, const torch::Tensor& tables,
                                    const torch::Tensor& lens,
                                    const torch::Tensor& logit_rows) const {
  const Dims& s = dims_;
  const StepLimits limits{"batch decode step", kMinRows, kMaxRows, kMaxRows, s.vocab,
                          s.positions, s.blocks, s.block_size};
  return check_step_indices(limits, ids, positions, slots, tables, lens, logit_rows);
}

// This thread's (sequence, KV head) items: RoPE on the new k (into the cache, with v) and on
// the group's queries, then attention; as rope_cache and paged attention do, item by item.
template <typename T>
template <typename KV>
void BatchDecodeModel<T>::attend_items(const Layer& layer, const Inputs& in, const Buffers<T>& b,
                                       Scratch<T>& sc, int t, int nt) const {
  const Dims& s = dims_;
  const int64_t group = s.heads / s.kv_heads, d = s.d;
  KV* k_cache = layer.k_cache.data_ptr<KV>();
  KV* v_cache = layer.v_cache.data_ptr<KV>();
  float *ks = layer.k_scales, *vs = layer.v_scales;
  const Span items = share(in.m * s.kv_heads, t, nt);
  for (int64_t item = items.lo; item < items.hi; ++item) {
    const int64_t i = item / s.kv_heads, kvh = item % s.kv_heads;
    const T* row = ptr<T>(b.qkv) + i * s.qkv_dim();
    widen_row(ptr<T>(cos_) + in.positions[i] * d, sc.cos.data(), d);
    widen_row(ptr<T>(sin_) + in.positions[i] * d, sc.sin.data(), d);
    const int64_t slot = kv_row(in.slots[i], kvh, s.kv_heads, s.block_size);
    widen_row(row + (s.heads + kvh) * d, sc.other.data(), d);
    latlab::rope(sc.other.data(), sc.cos.data(), sc.sin.data(), sc.head.data(), d);
    latlab::store_kv_row(sc.head.data(), k_cache + slot * d, latlab::row_scale(ks, slot), d);
    widen_row(row + (s.heads + s.kv_heads + kvh) * d, sc.other.data(), d);
    latlab::store_kv_row(sc.other.data(), v_cache + slot * d, latlab::row_scale(vs, slot), d);
    for (int64_t g = 0; g < group; ++g) {
      widen_row(row + (kvh * group + g) * d, sc.other.data(), d);
      latlab::rope(sc.other.data(), sc.cos.data(), sc.sin.data(), sc.head.data(), d);
      narrow_row(sc.head.data(), sc.q.data() + g * d, d);
    }
    T* out = ptr<T>(b.attn) + i * s.q_dim() + kvh * group * d;
    attend_group<T, KV>(sc.q.data(), out, k_cache, v_cache, ks, vs, in.tables + i * in.max_blocks,
                        in.lens[i], kvh, group, s.kv_heads, s.block_size, d, scale_, sc.tiles,
                        sc.attention);
    if constexpr (!kBf16<T>) {
      float* grouped = ptr<float>(b.attn_grouped);
      f32_group_row(out, i, kvh * group * d, group * d, s.q_dim(), grouped);
    }
  }
}

// One layer: `pending` is the previous layer's MLP output (null for the first layer), added to
// the residual stream inside the first norm, as the step-ops path fuses it.
template <typename T>
template <typename KV>
void BatchDecodeModel<T>::layer_step(const Layer& layer, const Inputs& in, const Buffers<T>& b,
                                     const T* pending, Scratch<T>& sc, int t, int nt) const {
  const Dims& s = dims_;
  const int64_t m = in.m, h = s.hidden;
  const Span rows = share(m, t, nt);
  const T* bias = layer.b_qkv.numel() > 0 ? ptr<T>(layer.b_qkv) : nullptr;
  PhaseClock& clock = sc.clock;
  add_norm_rows(ptr<T>(b.x), pending, ptr<T>(layer.norm1), ptr<T>(b.h), h, eps_, rows, sc);
  group_rows(ptr<T>(b.h), h, rows, b.h_grouped);
  quantize_and_sync(ptr<T>(b.h), b.hq, h, rows, clock, latlab::kNorm);
  PanelClaims& claims = *b.claims;
  const T* h_in = gemm_input<T>(b.h, b.h_grouped);
  gemm_share<T>(h_in, b.hq, m, layer.qkv, layer.s_qkv, bias, ptr<T>(b.qkv), claims, t, nt);
  sync(clock, latlab::kQkv);
  attend_items<KV>(layer, in, b, sc, t, nt);
  sync(clock, latlab::kAttention);
  if (layer.int8()) {  // a row's heads came from several threads: quantize once all are in
    quantize_rows(ptr<T>(b.attn), b.attnq, s.q_dim(), rows);
    sync(clock, latlab::kQuantize);
  }
  gemm_share<T>(gemm_input<T>(b.attn, b.attn_grouped), b.attnq, m, layer.o, layer.s_o, nullptr,
                ptr<T>(b.o), claims, t, nt);
  sync(clock, latlab::kO);
  add_norm_rows(ptr<T>(b.x), ptr<T>(b.o), ptr<T>(layer.norm2), ptr<T>(b.h), h, eps_, rows, sc);
  group_rows(ptr<T>(b.h), h, rows, b.h_grouped);
  quantize_and_sync(ptr<T>(b.h), b.hq, h, rows, clock, latlab::kNorm);
  gemm_share<T>(h_in, b.hq, m, layer.gate_up, layer.s_gate_up, nullptr, ptr<T>(b.gate_up),
                claims, t, nt);
  sync(clock, latlab::kGateUp);
  for (int64_t i = rows.lo; i < rows.hi; ++i) {
    latlab::silu_mul_row(ptr<T>(b.gate_up) + i * 2 * s.inter, ptr<T>(b.act) + i * s.inter, s.inter);
  }
  group_rows(ptr<T>(b.act), s.inter, rows, b.act_grouped);
  quantize_and_sync(ptr<T>(b.act), b.actq, s.inter, rows, clock, latlab::kSiluMul);
  gemm_share<T>(gemm_input<T>(b.act, b.act_grouped), b.actq, m, layer.down, layer.s_down, nullptr,
                ptr<T>(b.down), claims, t, nt);
  sync(clock, latlab::kDown);
}

// The last residual add and the final norm of the logit rows, then the head's column blocks,
// widened to float32 by the thread that computed them.
template <typename T>
void BatchDecodeModel<T>::head(const Inputs& in, const Buffers<T>& b, float* logits,
                               Scratch<T>& sc, int t, int nt) const {
  const Dims& s = dims_;
  const int64_t h = s.hidden;
  const Span rows = share(in.rows, t, nt);
  for (int64_t r = rows.lo; r < rows.hi; ++r) {
    const int64_t i = in.logit_rows[r];
    widen_row(ptr<T>(b.x) + i * h, sc.row.data(), h);
    widen_row(ptr<T>(b.down) + i * h, sc.other.data(), h);
    for (int64_t j = 0; j < h; ++j) sc.row[j] += sc.other[j];
    narrow_row(sc.row.data(), ptr<T>(b.head_in) + r * h, h);  // the sum as stored, then its norm
    widen_row(ptr<T>(b.head_in) + r * h, sc.row.data(), h);
    norm_row(sc.row.data(), ptr<T>(norm_), ptr<T>(b.head_in) + r * h, h, eps_);
  }
  group_rows(ptr<T>(b.head_in), h, rows, b.head_grouped);
  sync(sc.clock, latlab::kNorm);
  if constexpr (kBf16<T>) {
    const Span blocks = latlab::share(head_.size(0), 2, t, nt);
    columns(ptr<T>(b.head_in), in.rows, h, head_, nullptr, blocks, s.vocab, ptr<T>(b.head_out));
    for (int64_t r = 0; r < in.rows; ++r) {
      widen_row(ptr<T>(b.head_out) + r * s.vocab + blocks.lo * 16,
                logits + r * s.vocab + blocks.lo * 16, (blocks.hi - blocks.lo) * 16);
    }
  } else {  // float32 logits: the panels write them where they go
    claimed_panels(ptr<T>(b.head_grouped), in.rows, head_, nullptr, logits, *b.claims, t, nt);
  }
  sc.clock.mark(latlab::kHead);
}

template <typename T>
template <typename KV>
void BatchDecodeModel<T>::run(const Inputs& in, const Buffers<T>& b, float* logits) const {
  const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    Scratch<T> sc(dims_, timed_.load(std::memory_order_relaxed) ? &phase_ns_ : nullptr);
    if constexpr (kBf16<T>) sc.tiles = amx_thread_begin();  // per thread; checked at construction
    const Span rows = share(in.m, t, nt);
    for (int64_t i = rows.lo; i < rows.hi; ++i) {
      std::copy_n(ptr<T>(embed_) + in.ids[i] * dims_.hidden, dims_.hidden,
                  ptr<T>(b.x) + i * dims_.hidden);
    }
    sc.clock.mark(latlab::kEmbed);
    const T* pending = nullptr;
    for (const Layer& layer : layers_) {
      layer_step<KV>(layer, in, b, pending, sc, t, nt);
      pending = ptr<T>(b.down);
    }
    head(in, b, logits, sc, t, nt);
    if constexpr (kBf16<T>) amx_thread_end();
  }
}

template <typename T>
torch::Tensor BatchDecodeModel<T>::step(const torch::Tensor& ids, const torch::Tensor& positions,
                                        const torch::Tensor& slots, const torch::Tensor& tables,
                                        const torch::Tensor& lens,
                                        const torch::Tensor& logit_rows) const {
  const Inputs in = checked(ids, positions, slots, tables, lens, logit_rows);
  const Buffers<T> b(dims_, in.m, in.rows, layers_.front().int8(), at::get_num_threads());
  auto logits = torch::empty({in.rows, dims_.vocab}, torch::dtype(torch::kFloat));
  switch (layers_.front().k_cache.scalar_type()) {
    case at::kFloat: run<float>(in, b, logits.data_ptr<float>()); break;
    case at::kBFloat16: run<BF16>(in, b, logits.data_ptr<float>()); break;
    case at::kHalf: run<c10::Half>(in, b, logits.data_ptr<float>()); break;
    case at::kFloat8_e5m2: run<c10::Float8_e5m2>(in, b, logits.data_ptr<float>()); break;
    case at::kChar: run<int8_t>(in, b, logits.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "batch decode step: unsupported KV dtype");
  }
  return logits;
}

template <typename T>
void BatchDecodeModel<T>::time_phases(bool on) {
  for (auto& ns : phase_ns_) ns.store(0);
  timed_.store(on, std::memory_order_relaxed);
}

template <typename T>
std::vector<std::pair<std::string, double>> BatchDecodeModel<T>::phase_seconds() {
  std::vector<std::pair<std::string, double>> out;
  for (int p = 0; p < latlab::kPhases; ++p) {
    out.emplace_back(latlab::kPhaseNames[p], 1e-9 * static_cast<double>(phase_ns_[p].exchange(0)));
  }
  return out;
}

template <typename T>
void register_batch_class(pybind11::module_& m, const char* name, const char* doc) {
  using Model = BatchDecodeModel<T>;
  pybind11::class_<Model>(m, name, doc)
      .def(pybind11::init<std::vector<torch::Tensor>, std::vector<std::vector<torch::Tensor>>,
                          int64_t, double, double>(),
           pybind11::arg("model"), pybind11::arg("layers"), pybind11::arg("num_heads"),
           pybind11::arg("eps"), pybind11::arg("scale"))
      .def("step", &Model::step, pybind11::arg("ids"), pybind11::arg("positions"),
           pybind11::arg("slots"), pybind11::arg("block_tables"), pybind11::arg("seq_lens"),
           pybind11::arg("logit_rows"), pybind11::call_guard<pybind11::gil_scoped_release>())
      .def("time_phases", &Model::time_phases, pybind11::arg("on"),
           "time each phase of the steps from here on (off: stop), from zero")
      .def("phase_seconds", &Model::phase_seconds,
           "[(phase, seconds summed over the threads)] since timing started or was last read; "
           "reading resets them");
}

}  // namespace

void register_batch_decode_model(pybind11::module_& m) {
  register_batch_class<BF16>(m, "BatchDecodeModel",
                             "a whole bf16 decode step of 5-64 sequences on AMX tiles, one call");
  register_batch_class<float>(
      m, "F32BatchDecodeModel",
      "a whole float32 decode step of 5-64 sequences on the AVX2 FMA panels, one call");
}
