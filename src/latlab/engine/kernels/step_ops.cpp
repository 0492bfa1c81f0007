// The elementwise work of a step of any size, fused (latlab engine, CPU).
//
// Between its GEMMs a decoder layer runs ~20 small torch ops: RMSNorm (F.rms_norm dispatches
// ~10 on CPU), RoPE (a roll, two multiplies, an add), the K/V cache writes (two index_copy_ of
// transposed views), a contiguous copy of q, SiLU and the gate multiply, the residual adds. In
// bf16 every one of them also converts to float32 and back. At batch 64 on a 2-core Xeon they
// took about a quarter of a bf16 decode step (docs/engine.md); here each group is one pass over
// its rows, in float32 registers, rounded once to the tensor's dtype, rows split over torch's
// intra-op threads.
//
// Numerics: float32 inside, like F.rms_norm; RoPE and SiLU * up are rounded once where torch's
// bf16 ops round after each op, so bf16 results can differ from the torch path in the last bit.
//
// Layouts (the engine's): x, delta [N, hidden]; qkv [N, (H + 2 KVH) * D] (q, k, v heads);
// cos, sin [N, D] (sin with rotate_half's sign folded in); k_cache, v_cache [NB, KVH, BS, D];
// slot_mapping [N] (flat cache slot of each token); gate_up [N, 2 I].

#include "kernels.h"
#include "rows.h"
#include "vec512.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace {

// Rows per thread at least, so small steps do not pay a fork and join.
int64_t grain(int64_t row_elems) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_elems)); }

using latlab::f32;
using latlab::narrow_row;
using latlab::norm_row;
using latlab::rope;
using latlab::silu_mul_row;
using latlab::store_kv_row;
using latlab::widen_row;

template <typename T>
void rms_norm_impl(const torch::Tensor& x, const torch::Tensor& w, torch::Tensor& out, float eps) {
  const int64_t n = x.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, n, grain(dim), [&](int64_t lo, int64_t hi) {
    std::vector<float> row(dim);
    for (int64_t i = lo; i < hi; ++i) {
      widen_row(xp + i * dim, row.data(), dim);
      norm_row(row.data(), wp, op + i * dim, dim, eps);
    }
  });
}

// sum = x + delta (rounded to T, as torch's add), normed = RMSNorm(sum).
template <typename T>
void add_rms_norm_impl(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& w,
                       torch::Tensor& sum, torch::Tensor& normed, float eps) {
  const int64_t n = x.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* dp = delta.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* sp = sum.data_ptr<T>();
  T* np = normed.data_ptr<T>();
  at::parallel_for(0, n, grain(dim), [&](int64_t lo, int64_t hi) {
    std::vector<float> row(dim), other(dim);
    for (int64_t i = lo; i < hi; ++i) {
      widen_row(xp + i * dim, row.data(), dim);
      widen_row(dp + i * dim, other.data(), dim);
      for (int64_t j = 0; j < dim; ++j) row[j] += other[j];
      narrow_row(row.data(), sp + i * dim, dim);
      widen_row(sp + i * dim, row.data(), dim);  // the norm reads the sum as stored
      norm_row(row.data(), wp, np + i * dim, dim, eps);
    }
  });
}

template <typename T, typename KV>
void rope_cache_impl(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                     torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& slots,
                     torch::Tensor& q, int64_t heads) {
  const int64_t n = qkv.size(0), d = k_cache.size(3), kv_heads = k_cache.size(1);
  const int64_t width = qkv.size(1), bs = k_cache.size(2);
  const T* xp = qkv.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* sp = sin.data_ptr<T>();
  KV* kp = k_cache.data_ptr<KV>();
  KV* vp = v_cache.data_ptr<KV>();
  float* ks = kv_row_scales(k_cache);
  float* vs = kv_row_scales(v_cache);
  const int64_t* slot = slots.data_ptr<int64_t>();
  T* qp = q.data_ptr<T>();
  at::parallel_for(0, n, grain(width), [&](int64_t lo, int64_t hi) {
    std::vector<float> buf(width + 3 * d);
    float *x = buf.data(), *c = x + width, *sn = c + d, *tmp = sn + d;
    for (int64_t i = lo; i < hi; ++i) {
      widen_row(xp + i * width, x, width);
      widen_row(cp + i * d, c, d);
      widen_row(sp + i * d, sn, d);
      for (int64_t h = 0; h < heads + kv_heads; ++h) {
        rope(x + h * d, c, sn, tmp, d);
        if (h < heads) {
          narrow_row(tmp, qp + (i * heads + h) * d, d);
        } else {
          const int64_t r = kv_row(slot[i], h - heads, kv_heads, bs);
          store_kv_row(tmp, kp + r * d, latlab::row_scale(ks, r), d);
        }
      }
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t r = kv_row(slot[i], h, kv_heads, bs);
        store_kv_row(x + (heads + kv_heads + h) * d, vp + r * d, latlab::row_scale(vs, r), d);
      }
    }
  });
}

template <typename T>
void silu_mul_impl(const torch::Tensor& gate_up, torch::Tensor& out) {
  const int64_t n = out.size(0), inter = out.size(1);
  const T* gp = gate_up.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, n, grain(2 * inter), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) silu_mul_row(gp + i * 2 * inter, op + i * inter, inter);
  });
}

void check_rows(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.device().is_cpu(), name,
              ": contiguous 2-D CPU tensor expected");
}

void check_same(const torch::Tensor& a, const torch::Tensor& b, const char* name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), name, ": dtypes differ (", a.scalar_type(),
              " and ", b.scalar_type(), ")");
}

template <typename F>
void by_dtype(at::ScalarType type, const char* name, F&& f) {
  switch (type) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, name, ": unsupported dtype ", type);
  }
}

// A KV cache's dtypes: the activations', fp8 e5m2 and int8 (with row scales).
template <typename F>
void by_kv_dtype(at::ScalarType type, const char* name, F&& f) {
  if (type == at::kFloat8_e5m2) return f(c10::Float8_e5m2{});
  if (type == at::kChar) return f(int8_t{});
  by_dtype(type, name, std::forward<F>(f));
}

}  // namespace

float* kv_row_scales(const torch::Tensor& cache) {
  if (cache.scalar_type() != at::kChar) return nullptr;
  TORCH_CHECK(cache.dim() == 4 && cache.is_contiguous() && cache.size(3) > 0,
              "int8 KV cache: a contiguous [NB, KVH, BS, D] tensor expected");
  const int64_t values = cache.numel(), rows = values / cache.size(3);
  const int64_t used = cache.storage_offset() + values + rows * static_cast<int64_t>(sizeof(float));
  TORCH_CHECK(static_cast<int64_t>(cache.storage().nbytes()) >= used && values % 4 == 0,
              "int8 KV cache: its storage must hold one float32 scale per row after the values "
              "(allocate it with latlab.engine.kv_int8.zeros)");
  return reinterpret_cast<float*>(cache.data_ptr<int8_t>() + values);
}

torch::Tensor rms_norm_rows(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  check_rows(x, "rms_norm");
  check_same(x, w, "rms_norm");
  TORCH_CHECK(w.numel() == x.size(1) && w.is_contiguous(), "rms_norm: weight size != row size");
  auto out = torch::empty_like(x);
  by_dtype(x.scalar_type(), "rms_norm", [&](auto t) {
    rms_norm_impl<decltype(t)>(x, w, out, static_cast<float>(eps));
  });
  return out;
}

std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                        const torch::Tensor& w, double eps) {
  check_rows(x, "add_rms_norm");
  check_rows(delta, "add_rms_norm");
  check_same(x, delta, "add_rms_norm");
  check_same(x, w, "add_rms_norm");
  TORCH_CHECK(x.sizes() == delta.sizes(), "add_rms_norm: x and delta differ in shape");
  TORCH_CHECK(w.numel() == x.size(1) && w.is_contiguous(), "add_rms_norm: weight size != row size");
  auto sum = torch::empty_like(x);
  auto normed = torch::empty_like(x);
  by_dtype(x.scalar_type(), "add_rms_norm", [&](auto t) {
    add_rms_norm_impl<decltype(t)>(x, delta, w, sum, normed, static_cast<float>(eps));
  });
  return {sum, normed};
}

torch::Tensor rope_cache(const torch::Tensor& qkv, const torch::Tensor& cos,
                         const torch::Tensor& sin, torch::Tensor k_cache, torch::Tensor v_cache,
                         const torch::Tensor& slot_mapping, int64_t heads) {
  check_rows(qkv, "rope_cache");
  check_rows(cos, "rope_cache");
  check_rows(sin, "rope_cache");
  check_same(qkv, cos, "rope_cache");
  check_same(qkv, sin, "rope_cache");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes(),
              "rope_cache: caches [NB, KVH, BS, D], contiguous, of one shape");
  const int64_t d = k_cache.size(3), kv_heads = k_cache.size(1), n = qkv.size(0);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * d && cos.size(1) == d && cos.size(0) == n &&
                  sin.sizes() == cos.sizes(),
              "rope_cache: qkv, cos or sin do not match the heads and the cache");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == n &&
                  slot_mapping.is_contiguous(),
              "rope_cache: one int64 slot per token");
  const int64_t cache_tokens = k_cache.size(0) * k_cache.size(2);
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {  // written in place: a bad slot would land outside the cache
    TORCH_CHECK(slots[i] >= 0 && slots[i] < cache_tokens, "rope_cache: slot ", slots[i],
                " outside the cache's ", cache_tokens, " token slots");
  }
  auto q = torch::empty({n, heads, d}, qkv.options());
  by_dtype(qkv.scalar_type(), "rope_cache", [&](auto t) {
    using T = decltype(t);
    by_kv_dtype(k_cache.scalar_type(), "rope_cache", [&](auto kv) {
      rope_cache_impl<T, decltype(kv)>(qkv, cos, sin, k_cache, v_cache, slot_mapping, q, heads);
    });
  });
  return q;
}

torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  check_rows(gate_up, "silu_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_mul: gate and up halves of one size expected");
  auto out = torch::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  by_dtype(gate_up.scalar_type(), "silu_mul", [&](auto t) {
    silu_mul_impl<decltype(t)>(gate_up, out);
  });
  return out;
}

namespace {

struct Best {
  float value;
  int64_t index;
};

// The first column of [lo, hi) holding the row's largest value (NaNs never win).
Best best_of(const float* row, int64_t lo, int64_t hi) {
  Best best{-std::numeric_limits<float>::infinity(), lo};
#ifdef LATLAB_AVX512
  const __m512 lowest = _mm512_set1_ps(best.value);  // the lanes past the end: no candidate
  __m512 top = lowest;
  for (int64_t j = lo; j < hi; j += 16) {
    top = _mm512_max_ps(top, _mm512_mask_loadu_ps(lowest, latlab::tail_mask(hi - j), row + j));
  }
  best.value = _mm512_reduce_max_ps(top);
  // The second pass 16 columns at a time too: scalar, it was two thirds of the op's time.
  const __m512 target = _mm512_set1_ps(best.value);
  for (int64_t j = lo; j < hi; j += 16) {
    const __mmask16 tail = latlab::tail_mask(hi - j);
    const __mmask16 hit =
        _mm512_mask_cmp_ps_mask(tail, _mm512_maskz_loadu_ps(tail, row + j), target, _CMP_EQ_OQ);
    if (hit) return Best{best.value, j + __builtin_ctz(static_cast<unsigned>(hit))};
  }
#else
  for (int64_t j = lo; j < hi; ++j) best.value = row[j] > best.value ? row[j] : best.value;
  for (int64_t j = lo; j < hi; ++j) {
    if (row[j] == best.value) return Best{best.value, j};
  }
#endif
  return best;
}

}  // namespace

torch::Tensor greedy_argmax(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, "greedy_argmax: logits [rows, vocab]");
  // Other layouts take torch's max (the same first of ties), checked here rather than by the
  // sampler: five tensor attribute reads in Python cost ~45 us a step after a forward pass.
  if (logits.scalar_type() != at::kFloat || !logits.is_contiguous() || !logits.device().is_cpu()) {
    return std::get<1>(logits.max(-1));
  }
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int threads = at::get_num_threads();
  std::vector<Best> part(static_cast<size_t>(threads) * rows);
  auto out = torch::empty({rows}, torch::dtype(torch::kLong));
  const float* lp = logits.data_ptr<float>();
  // The columns split in 16-wide blocks as the batch decode step's head phase splits them:
  // each thread reads the logits its own core just wrote, from its own L2.
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const latlab::Span blocks = latlab::share((vocab + 15) / 16, 1, t, nt);
    const int64_t lo = blocks.lo * 16, hi = std::min(vocab, blocks.hi * 16);
    for (int64_t r = 0; r < rows; ++r) {
      part[t * rows + r] = lo < hi ? best_of(lp + r * vocab, lo, hi) : Best{0.f, -1};
    }
#pragma omp barrier
#pragma omp single
    for (int64_t r = 0; r < rows; ++r) {  // earlier threads hold earlier columns: ties stay first
      Best best{0.f, -1};
      for (int u = 0; u < nt; ++u) {
        const Best& p = part[u * rows + r];
        if (p.index >= 0 && (best.index < 0 || p.value > best.value)) best = p;
      }
      out.data_ptr<int64_t>()[r] = best.index;
    }
  }
  return out;
}

// After a forward pass has streamed the weights through the caches, each torch op a step's
// Python runs costs 15-90 us of cold code and data (measured with the caches flushed); the ~10
// ops that work these tensors out were ~0.2 ms of a 17 ms batch-64 step. One call, one pass.
std::vector<torch::Tensor> decode_inputs(const torch::Tensor& ends, int64_t offset,
                                         const torch::Tensor& tables, int64_t width,
                                         int64_t block_size) {
  const auto cpu_longs = [](const torch::Tensor& t, int64_t dims) {
    return t.dim() == dims && t.scalar_type() == at::kLong && t.is_contiguous() &&
           t.device().is_cpu();
  };
  TORCH_CHECK(cpu_longs(ends, 1) && cpu_longs(tables, 2),
              "decode_inputs: contiguous int64 CPU ends [batch] and tables [rows, cols] expected");
  const int64_t batch = ends.size(0), cols = tables.size(1);
  TORCH_CHECK(batch <= tables.size(0) && 0 < width && width <= cols && block_size > 0,
              "decode_inputs: ", batch, " rows of width ", width, " asked of tables ",
              tables.sizes(), " (block size ", block_size, ")");
  const auto longs = torch::dtype(torch::kLong);
  auto positions = torch::empty({batch}, longs), slots = torch::empty({batch}, longs);
  auto lens = torch::empty({batch}, longs), out = torch::empty({batch, width}, longs);
  const int64_t* e = ends.data_ptr<int64_t>();
  const int64_t* tab = tables.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t pos = e[r] + offset;
    TORCH_CHECK(pos >= 0 && pos / block_size < width, "decode_inputs: position ", pos,
                " of row ", r, " is past the ", width, " blocks of its table");
    std::copy(tab + r * cols, tab + r * cols + width, o + r * width);
    positions.data_ptr<int64_t>()[r] = pos;
    lens.data_ptr<int64_t>()[r] = pos + 1;
    slots.data_ptr<int64_t>()[r] = tab[r * cols + pos / block_size] * block_size + pos % block_size;
  }
  return {positions, slots, lens, out};
}
