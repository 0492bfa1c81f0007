// Decode attention over the paged KV cache, read in place (latlab engine, CPU).
//
// One query token per sequence. For each (sequence, KV head) the kernel walks the sequence's
// blocks through its block table, converts K and V to float32 as it reads them, and keeps the
// scores of the GQA group's query heads in float32: no gathered copy of the cache, no padding to
// the longest sequence, no dtype-converted copy. Work items (sequence x KV head) are spread over
// torch's own intra-op threads (at::parallel_for).
//
// Layouts (the engine's): q and out [B, H, D]; k_cache and v_cache [KVH, NB, BS, D] contiguous;
// block_tables [B, max_blocks] int64; seq_lens [B] int64 = keys to attend (the new one included).
// Query head h uses KV head h / (H / KVH), as transformers' repeat_kv does.

#include "kernels.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }

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

template <typename Q, typename KV>
void attend_one(const Q* q, Q* out, const KV* k_cache, const KV* v_cache, const int64_t* table,
                int64_t seq_len, int64_t kvh, int64_t group, int64_t nb, int64_t bs, int64_t d,
                float scale, std::vector<float>& scratch) {
  // scratch: group query rows, group score rows (seq_len each), one widened K/V row, group accs
  scratch.resize(group * d + group * seq_len + d + group * d);
  float* qf = scratch.data();
  float* scores = qf + group * d;
  float* row = scores + group * seq_len;
  float* acc = row + d;
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t i = 0; i < d; ++i) qf[g * d + i] = to_float(q[g * d + i]) * scale;
  }
  const int64_t head_base = kvh * nb;
  for (int64_t t = 0; t < seq_len; ++t) {
    const int64_t slot = (head_base + table[t / bs]) * bs + t % bs;
    widen(k_cache + slot * d, row, d);
    for (int64_t g = 0; g < group; ++g) scores[g * seq_len + t] = dot(qf + g * d, row, d);
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
    const int64_t slot = (head_base + table[t / bs]) * bs + t % bs;
    widen(v_cache + slot * d, row, d);
    for (int64_t g = 0; g < group; ++g) axpy(scores[g * seq_len + t], row, acc + g * d, d);
  }
  for (int64_t g = 0; g < group; ++g) {
    const float inv = 1.f / denom[g];
    for (int64_t i = 0; i < d; ++i) out[g * d + i] = static_cast<Q>(acc[g * d + i] * inv);
  }
}

template <typename Q, typename KV>
void run(torch::Tensor& out, const torch::Tensor& q, const torch::Tensor& k_cache,
         const torch::Tensor& v_cache, const torch::Tensor& block_tables,
         const torch::Tensor& seq_lens, double scale) {
  const int64_t b = q.size(0), h = q.size(1), d = q.size(2);
  const int64_t kv_heads = k_cache.size(0), nb = k_cache.size(1), bs = k_cache.size(2);
  const int64_t group = h / kv_heads, max_blocks = block_tables.size(1);
  const Q* qp = q.data_ptr<Q>();
  Q* op = out.data_ptr<Q>();
  const KV* kp = k_cache.data_ptr<KV>();
  const KV* vp = v_cache.data_ptr<KV>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  at::parallel_for(0, b * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / kv_heads, kvh = item % kv_heads;
      const int64_t offset = (s * h + kvh * group) * d;
      attend_one<Q, KV>(qp + offset, op + offset, kp, vp, tables + s * max_blocks, lens[s], kvh,
                        group, nb, bs, d, static_cast<float>(scale), scratch);
    }
  });
}

template <typename Q>
void dispatch_kv(torch::Tensor& out, const torch::Tensor& q, const torch::Tensor& k,
                 const torch::Tensor& v, const torch::Tensor& tables, const torch::Tensor& lens,
                 double scale) {
  switch (k.scalar_type()) {
    case at::kFloat: return run<Q, float>(out, q, k, v, tables, lens, scale);
    case at::kBFloat16: return run<Q, c10::BFloat16>(out, q, k, v, tables, lens, scale);
    case at::kHalf: return run<Q, c10::Half>(out, q, k, v, tables, lens, scale);
    default: TORCH_CHECK(false, "paged attention: unsupported KV dtype ", k.scalar_type());
  }
}

}  // namespace

torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache,
                                     const torch::Tensor& block_tables,
                                     const torch::Tensor& seq_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4, "paged attention: q [B,H,D], cache [KVH,NB,BS,D]");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "paged attention: contiguous tensors only");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && seq_lens.scalar_type() == at::kLong,
              "paged attention: int64 block tables and lengths");
  TORCH_CHECK(q.size(1) % k_cache.size(0) == 0 && q.size(2) == k_cache.size(3),
              "paged attention: head counts or sizes do not match the cache");
  auto out = torch::empty_like(q);
  switch (q.scalar_type()) {
    case at::kFloat: dispatch_kv<float>(out, q, k_cache, v_cache, block_tables, seq_lens, scale); break;
    case at::kBFloat16:
      dispatch_kv<c10::BFloat16>(out, q, k_cache, v_cache, block_tables, seq_lens, scale);
      break;
    default: TORCH_CHECK(false, "paged attention: unsupported query dtype ", q.scalar_type());
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention over the paged KV cache, read in place");
  m.def("small_linear", &small_linear, "x @ w.T (+ bias) for up to 4 float32 rows (GEMV)");
  m.def("decode_layer", &decode_layer, "one decoder layer of a decode step of up to 4 rows");
}
