// The engine's native CPU kernels (one extension module, registered in paged_attention.cpp).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

// Decode attention over the paged KV cache, read in place (paged_attention.cpp).
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache,
                                     const torch::Tensor& block_tables,
                                     const torch::Tensor& seq_lens, double scale);

// x [M, K] @ w[N, K]^T (+ bias) for M <= 4 float32 rows, streaming w once (decode_layer.cpp).
torch::Tensor small_linear(const torch::Tensor& x, const torch::Tensor& w,
                           const std::optional<torch::Tensor>& bias);

// One Llama decoder layer for a pure decode step of M <= 4 sequences (decode_layer.cpp).
torch::Tensor decode_layer(const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin, const torch::Tensor& norm1,
                           const torch::Tensor& w_qkv, const std::optional<torch::Tensor>& b_qkv,
                           const torch::Tensor& w_o, const torch::Tensor& norm2,
                           const torch::Tensor& w_gate_up, const torch::Tensor& w_down,
                           const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                           const torch::Tensor& slot_mapping, const torch::Tensor& block_tables,
                           const torch::Tensor& seq_lens, int64_t num_heads, double eps,
                           double scale);

// The elementwise work of a step of any size, fused (step_ops.cpp).
torch::Tensor rms_norm_rows(const torch::Tensor& x, const torch::Tensor& w, double eps);
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                        const torch::Tensor& w, double eps);
torch::Tensor rope_cache(const torch::Tensor& qkv, const torch::Tensor& cos,
                         const torch::Tensor& sin, torch::Tensor k_cache, torch::Tensor v_cache,
                         const torch::Tensor& slot_mapping, int64_t heads);
torch::Tensor silu_mul(const torch::Tensor& gate_up);

// bf16 linear layers on AMX tiles (amx_linear.cpp).
bool amx_available();
torch::Tensor amx_pack(const torch::Tensor& weight);
torch::Tensor amx_linear(const torch::Tensor& x, const torch::Tensor& packed,
                         const std::optional<torch::Tensor>& bias);
