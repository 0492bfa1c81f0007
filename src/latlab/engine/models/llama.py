"""Llama-family decoder (Llama 2/3, Qwen2, Mistral) over a paged KV cache.

Tokens of all sequences in a step are one flat batch for the linear layers; attention
gathers each sequence's K/V through its block table into a padded batch and runs SDPA with
a mask, so the hot path has no per-sequence Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latlab.engine import kv_int8
from latlab.engine.kernels import StepOps
from latlab.engine.models.amx_linear import AmxPackedLinear
from latlab.engine.models.config import ModelArgs
from latlab.engine.models.gemv_blocks import gemv_weight
from latlab.engine.models.int8_linear import Int8Linear
from latlab.engine.models.panel_linear import PanelPackedLinear
from latlab.errors import ModelLoadError


@dataclass(slots=True)
class AttentionMetadata:
    """Per-step index tensors shared by every layer (built once by the model runner).

    slot_mapping: [N] flat cache slot of each new token.
    block_tables: [B, max_blocks] block ids per sequence (padding points at block 0).
    mask: [B, 1, max_q, max_blocks * block_size] True where a query may see a key (prefill).
    decode_bias: [1, B, 1, T] float32 0 / -inf, the same mask as an additive bias (decode).
    q_index: [B, max_q] flat token index per padded query slot; None when every sequence
        has exactly one new token (pure decode), where the padded layout is the flat one.
    out_index: [N] position of each real token in the flattened [B * max_q] output.
    seq_lens: [B] keys each sequence attends to (decode steps run by ``decode_kernel``).
    decode_kernel: the native in-place paged decode attention for this step, or None.
    native_step: the native decode step that runs this whole step in one call, when the runner
        hands it one: 1-4 rows (decode_step.cpp) or bf16 5-64 rows on AMX (decode_batch.cpp).
    step_ops: the native fused norms, RoPE + cache writes and SiLU * up (any step), or None.
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    mask: torch.Tensor | None
    decode_bias: torch.Tensor | None
    q_index: torch.Tensor | None
    out_index: torch.Tensor | None
    max_q: int
    seq_lens: torch.Tensor | None = None
    decode_kernel: Callable[..., torch.Tensor] | None = None
    native_step: Callable[..., torch.Tensor] | None = None
    step_ops: StepOps | None = None
    slot_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # see cache_rows

    @property
    def flat_blocks(self) -> torch.Tensor:
        """``block_tables`` flattened: the torch path's gather index."""
        return self.block_tables.view(-1)

    def cache_rows(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each new token's (block, row in the block): worked out by the first layer that asks,
        then shared by the others (the torch path's cache writes)."""
        if self.slot_rows is None:
            self.slot_rows = (self.slot_mapping // block_size, self.slot_mapping % block_size)
        return self.slot_rows


class RMSNorm(nn.Module):
    """Root-mean-square norm, one fused kernel (statistics in float32, as transformers does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies, including linear and Llama-3 scaling (as transformers does)."""
    dim = args.head_dim
    exps = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (args.rope_theta**exps)
    scaling = args.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half's minus sign folded into the table."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.num_heads = args.num_attention_heads
        self.num_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = args.head_dim**-0.5
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(args.hidden_size, q_size + 2 * kv_size, bias=args.attention_bias)
        self.o_proj = nn.Linear(q_size, args.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        n, heads, kv_heads = x.shape[0], self.num_heads, self.num_kv_heads
        if meta.step_ops is not None:  # RoPE, cache writes and q's copy in one native pass
            q = meta.step_ops.rope_cache(
                self.qkv_proj(x), cos.view(n, -1), sin.view(n, -1), k_cache, v_cache,
                meta.slot_mapping, heads,
            )  # fmt: skip
            return self.o_proj(self._paged_attention(q, k_cache, v_cache, meta))
        qkv = self.qkv_proj(x).view(n, heads + 2 * kv_heads, self.head_dim)
        qk = apply_rope(qkv[:, : heads + kv_heads], cos, sin)  # q and k heads in one go
        q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
        # cache layout [blocks, kv_heads, block_size, head_dim] (kernels.h): token slot s of
        # head h is row (s // block_size, h, s % block_size)
        blocks, offsets = meta.cache_rows(k_cache.shape[2])
        if k_cache.dtype == torch.int8:  # values and their row scales (kv_int8.py)
            kv_int8.write(k_cache, blocks, offsets, k)
            kv_int8.write(v_cache, blocks, offsets, v)
        else:
            k_cache[blocks, :, offsets] = k.to(k_cache.dtype)
            v_cache[blocks, :, offsets] = v.to(v_cache.dtype)
        out = self._paged_attention(q, k_cache, v_cache, meta)
        return self.o_proj(out)

    def _paged_attention(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        b = meta.block_tables.shape[0]
        if meta.decode_kernel is not None:  # reads the cache in place: no gather, no padding
            out = meta.decode_kernel(
                q.contiguous(), k_cache, v_cache, meta.block_tables, meta.seq_lens, self.scale
            )
            return out.view(b, self.num_heads * self.head_dim)
        keys = gather_cache(k_cache, meta.flat_blocks, b, q.dtype)
        values = gather_cache(v_cache, meta.flat_blocks, b, q.dtype)
        if meta.q_index is None:
            out = self._decode_attention(q, keys, values, meta.decode_bias)
        else:
            out = F.scaled_dot_product_attention(
                q[meta.q_index].transpose(1, 2),
                keys.transpose(0, 1),
                values.transpose(0, 1),
                attn_mask=meta.mask,
                enable_gqa=True,
            )
        out = out.transpose(1, 2).reshape(b * meta.max_q, self.num_heads * self.head_dim)
        if meta.out_index is not None:
            out = out[meta.out_index]
        return out

    def _decode_attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """One query per sequence: batched matmuls beat SDPA's CPU kernel ~2.5x at q_len 1
        (measured, docs/engine.md). Scores and softmax in float32."""
        b, group = keys.shape[1], self.num_heads // self.num_kv_heads
        qg = q.view(b, self.num_kv_heads, group, self.head_dim).transpose(0, 1)
        scores = torch.matmul(qg, keys.transpose(2, 3)).float() * self.scale + bias
        probs = scores.softmax(dim=-1).to(values.dtype)
        out = torch.matmul(probs, values)  # [kv_heads, B, group, head_dim]
        return out.transpose(0, 1).reshape(b, self.num_heads, 1, self.head_dim)


def gather_heads(cache: torch.Tensor, flat_blocks: torch.Tensor, b: int) -> torch.Tensor:
    """The blocks of ``b`` sequences' tables as [kv_heads, B, T, head_dim], the layout the batched
    matmuls and SDPA read. Whole blocks are gathered, then their heads moved to the front: 1.08x
    the time of one gather from a head-major cache ([64 x 8 blocks], 6 heads, bf16); gathering
    through a head-major view of this cache took 27x (index_select's strided path)."""
    _, kv_heads, bs, d = cache.shape
    blocks = cache.index_select(0, flat_blocks).view(b, -1, kv_heads, bs, d)
    return blocks.permute(2, 0, 1, 3, 4).reshape(kv_heads, b, -1, d)


def gather_cache(
    cache: torch.Tensor, flat_blocks: torch.Tensor, b: int, dtype: torch.dtype
) -> torch.Tensor:
    """gather_heads in ``dtype``; an int8 cache's values times their row scales."""
    rows = gather_heads(cache, flat_blocks, b)
    if cache.dtype != torch.int8:
        return rows.to(dtype)
    scales = gather_heads(kv_int8.row_scales(cache).unsqueeze(-1), flat_blocks, b)
    return kv_int8.dequantize(rows, scales, dtype)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, step_ops: StepOps | None = None) -> torch.Tensor:
        if step_ops is not None:
            return self.down_proj(step_ops.silu_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, k_cache, v_cache, meta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def fused_forward(self, x, pending, cos, sin, k_cache, v_cache, meta):
        """The layer on the native step ops, residual adds fused into the norms: ``pending`` is
        the previous layer's MLP output, not yet added to ``x``. Returns (x, this MLP's output),
        the same numbers as ``forward`` (each sum rounded to the dtype, as torch's add does)."""
        ops, norm1, norm2 = meta.step_ops, self.input_layernorm, self.post_attention_layernorm
        if pending is None:
            h = ops.rms_norm(x, norm1.weight, norm1.eps)
        else:
            x, h = ops.add_rms_norm(x, pending, norm1.weight, norm1.eps)
        attn = self.self_attn(h, cos, sin, k_cache, v_cache, meta)
        x, h = ops.add_rms_norm(x, attn, norm2.weight, norm2.eps)
        return x, self.mlp(h, ops)

    def native_tensors(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> list[torch.Tensor]:
        """What the native decode step reads of this layer (decode_step.cpp), in its order: the
        norms and the qkv bias as float32 (copies, made once, in a bf16 model; an empty tensor
        for no bias), the weights in the model's dtype (plain rows, or float32 GEMV blocks:
        gemv_blocks.py), the layer's caches; for
        weight-only int8 layers their int8 weights, then their float32 scales after the caches."""
        attn, mlp = self.self_attn, self.mlp
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        int8 = isinstance(attn.qkv_proj, Int8Linear)
        qkv, o, gate_up, down = (m.qweight if int8 else gemv_weight(m) for m in linears)
        bias = attn.qkv_proj.bias
        tensors = [
            self.input_layernorm.weight.float(), qkv,
            torch.empty(0) if bias is None else bias.float(), o,
            self.post_attention_layernorm.weight.float(), gate_up, down, k_cache, v_cache,
        ]  # fmt: skip
        return tensors + [m.scale for m in linears] if int8 else tensors


class LlamaForCausalLM(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(args, torch.float32)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    def rebuild_rope_tables(self, dtype: torch.dtype) -> None:
        """cos/sin in ``dtype``, computed in float32 first (as transformers does)."""
        cos, sin = rope_tables(self.args, dtype)
        device = self.embed_tokens.weight.device
        self.cos_table = cos.to(device)
        self.sin_table = sin.to(device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        logits_index: torch.Tensor,
    ) -> torch.Tensor:
        """Run the new tokens; returns float32 logits of the rows in ``logits_index``."""
        if meta.native_step is not None:  # a decode step the runner gave a native step to
            return meta.native_step(input_ids, positions, meta.slot_mapping, meta.block_tables,
                                    meta.seq_lens, logits_index)  # fmt: skip
        x = self.embed_tokens(input_ids)
        cos = self.cos_table[positions].unsqueeze(1)
        sin = self.sin_table[positions].unsqueeze(1)
        if meta.step_ops is not None:
            return self._fused_forward(x, cos, sin, kv_caches, meta, logits_index)
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, k_cache, v_cache, meta)
        x = self.norm(x[logits_index])
        return self.lm_head(x).float()

    def _fused_forward(self, x, cos, sin, kv_caches, meta, logits_index) -> torch.Tensor:
        """Every layer on the native step ops; the last residual add fused into the final norm."""
        pending = None
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            x, pending = layer.fused_forward(x, pending, cos, sin, k_cache, v_cache, meta)
        _, h = meta.step_ops.add_rms_norm(x, pending, self.norm.weight, self.norm.eps)
        return self.lm_head(h[logits_index]).float()

    def native_decoder(
        self, decoder_class: type, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> object:
        """The model as one native decode step over these caches (decode_step.cpp), built once.

        At 1-4 rows the torch ops around the linears cost more than their arithmetic and
        F.linear streams the weights slower than the native GEMV (docs/engine.md, lever table).
        The residual stream is float32 from the embedding to the head whatever the weights'
        dtype: a bf16 model streams its bf16 weights and rounds no activation to bf16 between
        ops, so its tokens there can differ from the torch ops' in the last bits."""
        model = [self.embed_tokens.weight, self.cos_table, self.sin_table,
                 self.norm.weight.float(), gemv_weight(self.lm_head)]  # fmt: skip
        pairs = zip(self.layers, kv_caches, strict=True)
        layers = [layer.native_tensors(k, v) for layer, (k, v) in pairs]
        attn = self.layers[0].self_attn
        return decoder_class(model, layers, attn.num_heads, self.norm.eps, attn.scale)

    def batch_decoder_tensors(
        self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[tuple[list, list] | None, str]:
        """What the one-call decode step of 5-64 rows reads (decode_batch.cpp): the embedding,
        RoPE tables and norms in the model's dtype, the packed weights of every linear (AMX bf16,
        or W8A8 on AMX int8 with their scales, the head AMX bf16; or all on the float32 panels),
        the caches; or None and why, when a linear is none of these."""
        qkv = self.layers[0].self_attn.qkv_proj
        if isinstance(qkv, Int8Linear) and qkv.kernel != "amx-int8":
            return None, f"the step ops per op (int8 linears on {qkv.kernel})"
        if not isinstance(self.lm_head, AmxPackedLinear | PanelPackedLinear):
            return None, "the head fits neither the AMX tiles nor the float32 panels"
        layers = []
        for layer, caches in zip(self.layers, kv_caches, strict=True):
            tensors = _batch_layer_tensors(layer, caches)
            if tensors is None:
                return None, "a linear layer fits none of the AMX tiles or the float32 panels"
            layers.append(tensors)
        model = [self.embed_tokens.weight, self.cos_table, self.sin_table, self.norm.weight,
                 self.lm_head.packed_weight]  # fmt: skip
        return (model, layers), ""


def _batch_layer_tensors(
    layer: DecoderLayer, caches: tuple[torch.Tensor, torch.Tensor]
) -> list[torch.Tensor] | None:
    """One layer's tensors for the batch decode step: 9 (AMX bf16 or float32 panel linears) or
    13 (AMX int8 linears, then their scales), or None."""
    attn, mlp = layer.self_attn, layer.mlp
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    packed = (AmxPackedLinear, PanelPackedLinear)
    if any(all(isinstance(m, kind) for m in linears) for kind in packed):
        weights, scales, bias = [m.packed_weight for m in linears], [], attn.qkv_proj.bias
    elif all(isinstance(m, Int8Linear) and m.kernel == "amx-int8" for m in linears):
        weights, scales = [m.qweight for m in linears], [m.scale for m in linears]
        bias = attn.qkv_proj.bias_bf16
    else:
        return None
    qkv, o, gate_up, down = weights
    return [
        layer.input_layernorm.weight, qkv, torch.empty(0) if bias is None else bias, o,
        layer.post_attention_layernorm.weight, gate_up, down, *caches, *scales,
    ]  # fmt: skip


def load_llama(
    model_dir: Path, args: ModelArgs, dtype: torch.dtype, device: str
) -> LlamaForCausalLM:
    """Build the model and fill it from the directory's safetensors (one file or shards)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(args)
    model = model.to_empty(device=device).to(dtype)
    state = _read_safetensors(Path(model_dir))
    _load_weights(model, args, state, dtype)
    model.rebuild_rope_tables(dtype)  # after the dtype cast, in the model's dtype
    return model.eval()


def rope_tables(args: ModelArgs, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin per position, computed in float32 then cast (as transformers)."""
    freqs = torch.outer(torch.arange(args.max_position_embeddings).float(), rope_inv_freq(args))
    half = freqs.shape[-1]
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, :half] = -sin[:, :half]
    return emb.cos().to(dtype), sin.to(dtype)


def _read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read weights file {f}: {exc}") from exc
    return state


def _load_weights(
    model: LlamaForCausalLM, args: ModelArgs, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> None:
    def take(name: str) -> torch.Tensor:
        for key in (name, name.removeprefix("model.")):
            if key in state:
                return state.pop(key).to(dtype)
        raise ModelLoadError(f"weights file has no tensor {name!r}")

    def put(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
        if param.shape != value.shape:
            raise ModelLoadError(f"{name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(value)

    put(model.embed_tokens.weight, take("model.embed_tokens.weight"), "embed_tokens")
    put(model.norm.weight, take("model.norm.weight"), "norm")
    if not args.tie_word_embeddings:
        put(model.lm_head.weight, take("lm_head.weight"), "lm_head")
    else:
        model.lm_head.weight = model.embed_tokens.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        attn = layer.self_attn
        qkv = [take(f"{p}self_attn.{n}_proj.weight") for n in "qkv"]
        put(attn.qkv_proj.weight, torch.cat(qkv), f"{p}qkv")
        if args.attention_bias:
            bias = [take(f"{p}self_attn.{n}_proj.bias") for n in "qkv"]
            put(attn.qkv_proj.bias, torch.cat(bias), f"{p}qkv bias")
        put(attn.o_proj.weight, take(f"{p}self_attn.o_proj.weight"), f"{p}o_proj")
        gate_up = [take(f"{p}mlp.gate_proj.weight"), take(f"{p}mlp.up_proj.weight")]
        put(layer.mlp.gate_up_proj.weight, torch.cat(gate_up), f"{p}gate_up")
        put(layer.mlp.down_proj.weight, take(f"{p}mlp.down_proj.weight"), f"{p}down_proj")
        put(layer.input_layernorm.weight, take(f"{p}input_layernorm.weight"), f"{p}norm1")
        norm2 = take(f"{p}post_attention_layernorm.weight")
        put(layer.post_attention_layernorm.weight, norm2, f"{p}norm2")
