"""How the model's weights are held and multiplied: chosen once, from the dtype, CPU and options.

The checkpoint's dtype (or ``EngineConfig.dtype``) says what the numbers are; it does not have
to be what the CPU multiplies. On a CPU without bf16 instructions a bf16 GEMM measured 5-6x
slower than a float32 one at batch 64 (docs/engine.md), so there the engine computes in float32
on packed float32 copies of the bf16 weights (twice the weight memory) while the KV cache stays
in the requested dtype. Where the CPU has AMX, bf16 linears get copies packed for the engine's
AMX-tile GEMM (1.23x oneDNN's at decode sizes) beside the plain weights the native decode steps
stream; where it has neither AVX-512 nor bf16 (an AVX2 EPYC), float32 linears get copies packed
for the engine's AVX2 panel GEMM (1.23-1.29x oneDNN's at 64 rows). ``quantization`` stores linear
weights as int8 instead. The plan records the choice and the reason; the engine's start-up
report prints it.
"""

from __future__ import annotations

import dataclasses

import torch

from latlab.engine.hardware import CpuCapabilities
from latlab.engine.kernels import DECODE_MAX_ROWS, amx_int8, amx_linear, f32_panels
from latlab.engine.models.amx_linear import AmxPackedLinear, amx_fits, pack_linears_amx
from latlab.engine.models.int8_linear import kernels_in, quantize_linears
from latlab.engine.models.llama import LlamaForCausalLM
from latlab.engine.models.packed_linear import onednn_available, pack_linears
from latlab.engine.models.panel_linear import pack_linears_panels
from latlab.errors import ConfigError

LINEAR_KERNELS = (
    "plain", "onednn-packed", "amx-packed", "f32-panels", "int8", "int8-weight-only",
)  # fmt: skip
PACKED_KERNELS = ("onednn-packed", "amx-packed", "f32-panels")  # copies packed for the GEMMs
QUANTIZATIONS = ("int8", "int8-weight-only")


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class WeightPlan:
    """What the engine does with the weights, and why."""

    dtype: torch.dtype  # the requested dtype: the KV cache's unless kv_cache_dtype says otherwise
    compute_dtype: torch.dtype  # activations and the weights left in floating point
    linear: str  # one of LINEAR_KERNELS
    reason: str
    keep_plain: bool = False  # packed copies beside the plain weights (the native decode reads)

    def as_dict(self) -> dict[str, str]:
        return {
            "dtype": _name(self.dtype),
            "compute_dtype": _name(self.compute_dtype),
            "linear": self.linear,
            "reason": self.reason,
        }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _native(dtype: torch.dtype, caps: CpuCapabilities) -> bool:
    if dtype == torch.bfloat16:
        return caps.native_bf16
    if dtype == torch.float16:
        return caps.native_fp16
    return True


def plan_weights(
    *,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None,
    packed_linear: bool | None,
    compile: bool,
    caps: CpuCapabilities,
    max_rows: int = 1,
) -> WeightPlan:
    """The plan for these settings on this CPU (ConfigError for combinations that cannot run).

    ``max_rows``: the most rows a step can have (max_num_seqs). float32 packs by default only
    when steps can be larger than the native decode steps' (``DECODE_MAX_ROWS``): below that the
    plain weights are all a step reads, and a packed copy would be memory for nothing.
    """
    _refuse_conflicts(quantization, packed_linear, compile)
    if device.type != "cpu":
        linear = quantization or "plain"
        return WeightPlan(dtype=dtype, compute_dtype=dtype, linear=linear, reason="not a CPU")
    native = _native(dtype, caps)
    compute = dtype if native else torch.float32
    widened = "" if native else f"; computed in float32: this CPU has no {_name(dtype)} GEMM"
    if quantization:
        why = f"quantization={quantization!r}: int8 weights, one scale per output channel"
        return WeightPlan(dtype=dtype, compute_dtype=compute, linear=quantization, reason=why)
    if packed_linear is False or compile:
        why = "packed_linear=False" if packed_linear is False else "compile=True"
        return WeightPlan(dtype=dtype, compute_dtype=dtype, linear="plain", reason=why)
    if dtype == torch.float32 or (dtype == torch.bfloat16 and native):
        return _streamed_plan(dtype, packed_linear, max_rows, caps=caps)
    if compute == torch.float32 and _panels_cpu(caps):
        why = "weights packed once for the engine's AVX2 panel GEMM" + widened
        return WeightPlan(dtype=dtype, compute_dtype=compute, linear="f32-panels", reason=why)
    why = "weights reordered once for oneDNN's GEMM" + widened
    return WeightPlan(dtype=dtype, compute_dtype=compute, linear="onednn-packed", reason=why)


def _panels_cpu(caps: CpuCapabilities) -> bool:
    """float32 GEMMs on the engine's AVX2 panels: on a CPU whose widest vectors are AVX2's
    (1.23-1.29x oneDNN's packed GEMM at 64 rows on the AVX2 EPYC). With AVX-512 oneDNN's 16-lane
    GEMM stays: the panels' 8 lanes were not measured against it."""
    return caps.isa == "AVX2"


def _streamed_plan(
    dtype: torch.dtype, packed_linear: bool | None, max_rows: int, *, caps: CpuCapabilities
) -> WeightPlan:
    """float32, or bf16 on a CPU with bf16 GEMMs: plain weights for steps of 1-4 rows (the
    native GEMV streams them), plus packed copies for larger steps: AMX tiles for bf16 where the
    CPU has them (1.23x oneDNN's packed GEMM at 8-64 rows), AVX2 panels for float32 on an
    AVX2-only CPU (1.23-1.29x oneDNN's at 64 rows), else oneDNN's (1.47x decode throughput at
    batch 64 over plain F.linear in float32 on the AVX2 EPYC; docs/engine.md)."""
    name = _name(dtype)
    if packed_linear is None and max_rows <= DECODE_MAX_ROWS:
        why = f"{name}, steps of at most {max_rows} rows: plain weights (the native GEMV's)"
        return WeightPlan(dtype=dtype, compute_dtype=dtype, linear="plain", reason=why)
    if caps.amx_bf16 and dtype == torch.bfloat16:
        linear, copies = "amx-packed", "copies packed once for AMX tiles for larger ones"
    elif dtype == torch.float32 and _panels_cpu(caps):
        linear, copies = "f32-panels", "copies packed once for the AVX2 panel GEMM for larger ones"
    else:
        linear, copies = "onednn-packed", "copies reordered once for oneDNN's GEMM for larger ones"
    why = (
        f"{name}: plain weights for steps of 1-{DECODE_MAX_ROWS} rows, {copies} (twice the "
        "linear weights' memory; packed_linear=False keeps one copy)"
    )
    return WeightPlan(dtype=dtype, compute_dtype=dtype, linear=linear, reason=why, keep_plain=True)


def _refuse_conflicts(quantization: str | None, packed_linear: bool | None, compile: bool) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {QUANTIZATIONS} or None")
    if compile and packed_linear:
        raise ConfigError(
            "packed_linear and compile cannot be combined (dynamo cannot trace oneDNN's "
            "prepacked op); leave packed_linear unset with compile=True"
        )
    if compile and quantization:
        raise ConfigError(
            "quantization and compile cannot be combined (dynamo cannot trace the int8 "
            "kernels); drop one of them"
        )


def apply_weight_plan(model: LlamaForCausalLM, plan: WeightPlan, batch_hint: int) -> WeightPlan:
    """Prepare the weights as planned; returns the plan as carried out.

    Linear layers are packed or quantized from the weights as loaded, then what is left in
    floating point (embeddings, norms, an unquantized head, RoPE tables) moves to the compute
    dtype. If oneDNN turns the packing down, the plan falls back to plain linears and says so.
    """
    if plan.linear in QUANTIZATIONS:
        plan = _quantize(model, plan)
    if plan.linear == "amx-packed":
        plan = _pack_amx(model, plan)
    if plan.linear == "f32-panels":
        plan = _pack_panels(model, plan)
    if plan.linear == "onednn-packed":
        packed = onednn_available() and (
            pack_linears(model, batch_hint, plan.compute_dtype, keep_plain=plan.keep_plain) > 0
        )
        if not packed:
            why = f"oneDNN cannot pack {_name(plan.compute_dtype)} linears here: plain F.linear"
            plan = dataclasses.replace(plan, linear="plain", reason=why, keep_plain=False)
    _cast_floating(model, plan.compute_dtype)
    return plan


def _quantize(model: LlamaForCausalLM, plan: WeightPlan) -> WeightPlan:
    """int8 linears; for W8A8 on bf16 weights, on the AMX int8 kernel where it is built, the
    head then packed for AMX bf16 tiles too (it stays bf16), so the native batch decode step
    can run every linear of a step."""
    amx = None
    if plan.linear == "int8" and plan.compute_dtype == torch.bfloat16:
        amx, _ = amx_int8(wait=False)
    quantize_linears(model, plan.linear, amx=amx)
    kernels = ", ".join(kernels_in(model))
    plan = dataclasses.replace(plan, reason=f"{plan.reason}; kernel: {kernels}")
    if "amx-int8" not in kernels or not amx_fits(model.lm_head):
        return plan
    bf16_tiles, _ = amx_linear(wait=False)
    if bf16_tiles is not None:
        model.lm_head = AmxPackedLinear(model.lm_head, bf16_tiles)
        plan = dataclasses.replace(plan, reason=f"{plan.reason}; head packed for AMX tiles")
    return plan


def _pack_amx(model: LlamaForCausalLM, plan: WeightPlan) -> WeightPlan:
    """AMX-packed copies where the kernel is built; else oneDNN's, saying why."""
    kernel, why_not = amx_linear(wait=False)
    if kernel is None:
        why = f"{_name(plan.dtype)}: AMX kernel unavailable ({why_not}); oneDNN-packed copies"
        return dataclasses.replace(plan, linear="onednn-packed", reason=why)
    packed = pack_linears_amx(model, kernel)
    total = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) + packed
    why = f"{plan.reason}; {packed} of {total} layers fit the tiles"
    return dataclasses.replace(plan, reason=why)


def _pack_panels(model: LlamaForCausalLM, plan: WeightPlan) -> WeightPlan:
    """Panel-packed float32 copies where the kernel is built; else oneDNN's, saying why."""
    kernel, why_not = f32_panels(wait=False)
    if kernel is None:
        why = f"{_name(plan.dtype)}: panel GEMM unavailable ({why_not}); oneDNN-packed copies"
        return dataclasses.replace(plan, linear="onednn-packed", reason=why)
    packed = pack_linears_panels(model, kernel, keep_plain=plan.keep_plain)
    total = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) + packed
    return dataclasses.replace(plan, reason=f"{plan.reason}; {packed} of {total} layers fit")


def held_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's parameters and buffers hold, each tensor once (a tied head counts
    once; packed copies and int8 weights count as stored): the weights' real memory."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _cast_floating(model: LlamaForCausalLM, dtype: torch.dtype) -> None:
    """Move parameters and the RoPE tables to ``dtype``; packed/int8 buffers stay as built."""
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    model.rebuild_rope_tables(dtype)
