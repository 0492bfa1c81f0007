"""The vLLM flags a memory plan implies: ``latlab plan MODEL --backend vllm``.

From the same arithmetic as every plan (weights, KV bytes per token, the budget per rank), this
picks what ``vllm serve`` needs to hold the planned load and says what vLLM will log:

- ``--max-model-len``: the planned context (vLLM refuses more than max_position_embeddings);
- ``--tensor-parallel-size``: the smallest TP (powers of two up to ``gpus_per_node``, dividing
  the heads) whose per-rank weights and KV fit the wanted concurrency at that context;
- ``--pipeline-parallel-size``: when even a full node of TP does not fit, one stage per node,
  each assumed to hold ceil(layers / stages) layers plus the embeddings and LM head
  (conservative: the first and last stages hold only one of the two);
- ``--max-num-seqs``: the wanted concurrency, else what the cache holds at that context,
  capped at vLLM's usual 256;
- ``--max-num-batched-tokens``: prompts up to min(context, 8192) prefill in one step, never
  below vLLM's chunked-prefill default 2048;
- ``--gpu-memory-utilization`` on GPUs; ``--kv-cache-memory-bytes`` on CPU (vLLM CPU otherwise
  sizes its cache from its own RSS at start-up) and whenever a KV budget is given;
- ``--kv-cache-dtype`` when the cache is quantized (fp8), ``--dtype`` always.

The capacity check: vLLM logs ``KV cache size: N tokens`` as ``int(blocks /
ceil(max_model_len / block) * max_model_len)``; :attr:`VllmPlan.kv_cache_tokens` is that figure
for the planned blocks (block 16 on GPU, 128 on vLLM's CPU backend).
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from latlab.errors import CapacityError, ConfigError
from latlab.plan.catalog import resolve_model
from latlab.plan.kv import check_tensor_parallel
from latlab.plan.memory_plan import MemoryPlan
from latlab.plan.planner import DEFAULT_RESERVE, plan_memory

CPU = "cpu"
DEFAULT_BLOCK_SIZE = {"cpu": 128, "cuda": 16}
MAX_NUM_SEQS_CAP = 256  # vLLM's default max_num_seqs for the OpenAI server on most GPUs
CHUNKED_PREFILL_DEFAULT = 2048
ONE_STEP_PREFILL_CAP = 8192
_DTYPE_FLAG = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_KV_DTYPE_FLAG = {"fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}


@dataclass(kw_only=True, slots=True)
class VllmPlan:
    """The ``vllm serve`` flags a plan implies, and the KV capacity vLLM will log with them."""

    model: str
    platform: str  # cpu | cuda
    flags: dict[str, Any]  # vLLM settings by name, in command-line order
    tensor_parallel_size: int
    pipeline_parallel_size: int
    block_size: int
    num_blocks: int  # per rank (per pipeline stage)
    kv_cache_tokens: int  # the "KV cache size: N tokens" vLLM logs
    memory: MemoryPlan  # the per-rank plan behind the flags
    notes: list[str] = field(default_factory=list)

    def argv(self, model_arg: str | None = None, vllm: str = "vllm") -> list[str]:
        from latlab.deploy.flags import to_flags

        return [*shlex.split(vllm), "serve", model_arg or self.model, *to_flags(self.flags)]

    @property
    def env(self) -> dict[str, str | None]:
        """Environment settings the flags need (None: unset): vLLM CPU's legacy KV variable
        would override --kv-cache-memory-bytes, so it is removed."""
        return {"VLLM_CPU_KVCACHE_SPACE": None} if self.platform == CPU else {}

    def command_line(self, model_arg: str | None = None, vllm: str = "vllm") -> str:
        """The copy-pasteable command, environment settings first."""
        from latlab.deploy.contract import shell_line

        return shell_line(self.argv(model_arg, vllm), self.env)

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "flags": dict(self.flags),
            "env": dict(self.env),
            "command": self.command_line(),
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "kv_cache_tokens": self.kv_cache_tokens,
            "notes": list(self.notes),
        }


def logged_kv_tokens(num_blocks: int, block_size: int, max_model_len: int) -> int:
    """vLLM's logged capacity: full-length requests that fit x their length (one group)."""
    per_request = math.ceil(max_model_len / block_size)
    return int(num_blocks / per_request * max_model_len)


def plan_vllm(
    model: str | os.PathLike[str] | Mapping[str, Any],
    *,
    device: str | None = None,
    memory: str | int | None = None,
    kv_cache_bytes: str | int | None = None,
    gpu_memory_utilization: float = 0.9,
    reserve: str | int = DEFAULT_RESERVE,
    weight_dtype: str = "bf16",
    weight_group_size: int | None = None,
    kv_dtype: str = "auto",
    kv_scales: str = "tensor",
    context: int | None = None,
    concurrency: int | None = None,
    tp: int | None = None,
    gpus_per_node: int = 8,
    block_size: int | None = None,
) -> VllmPlan:
    """Plan ``vllm serve`` for ``model``: ``device="cpu"`` is vLLM's CPU backend on this RAM."""
    if context is None:
        raise ConfigError("--backend vllm needs --context N (it becomes --max-model-len)")
    if gpus_per_node < 1:
        raise ConfigError(f"--gpus-per-node must be at least 1, got {gpus_per_node}")
    if kv_scales != "tensor":
        raise ConfigError("--backend vllm: vLLM's fp8 cache keeps per-tensor scales "
                          "(--kv-scales tensor)")  # fmt: skip
    if kv_dtype not in ("auto", "bf16", "fp16", "fp32", *_KV_DTYPE_FLAG):
        raise ConfigError(
            f"--kv-dtype {kv_dtype} with --backend vllm: the planner models vLLM's auto and "
            "fp8 caches; vLLM's per-token-head int8/int4 caches are not modelled"
        )
    spec = resolve_model(model)
    _check_context(spec.config, context)
    platform = CPU if device is not None and device.lower() == CPU else "cuda"
    block = block_size or DEFAULT_BLOCK_SIZE[platform]
    common = dict(gpu_memory_utilization=gpu_memory_utilization, reserve=reserve,
                  weight_dtype=weight_dtype, weight_group_size=weight_group_size,
                  kv_dtype=kv_dtype, kv_scales=kv_scales, context=context,
                  concurrency=concurrency, block_size=block)  # fmt: skip
    if platform == CPU:
        if memory is None and kv_cache_bytes is None:
            memory = _ram_bytes()
        per_rank = plan_memory(spec.config, memory=memory, kv_cache_bytes=kv_cache_bytes,
                               tp=tp or 1, **common)  # fmt: skip
        tp_size, pp_size = tp or 1, 1
    else:
        if device is None and memory is None and kv_cache_bytes is None:
            raise ConfigError("--backend vllm needs --device NAME (or cpu), --memory SIZE or "
                              "--kv-cache-bytes SIZE to size the cache")  # fmt: skip
        budget = {"device": device, "memory": memory, "kv_cache_bytes": kv_cache_bytes}
        per_rank, tp_size, pp_size = _parallelism(
            spec.config, budget, common, concurrency, tp, gpus_per_node
        )
    per_rank.model = spec.name
    return _vllm_plan(spec.name, platform, per_rank, tp_size, pp_size, concurrency,
                      explicit_kv=kv_cache_bytes is not None, block_given=block_size)  # fmt: skip


def _check_context(config: Mapping[str, Any], context: int) -> None:
    limit = config.get("max_position_embeddings")
    if limit and context > int(limit):
        raise ConfigError(
            f"--context {context:,} is longer than the model's max_position_embeddings "
            f"{int(limit):,}; vLLM refuses such a --max-model-len"
        )


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        raise ConfigError("cannot read this machine's RAM size: pass --memory") from None


def _tp_candidates(config: Mapping[str, Any], gpus_per_node: int) -> list[int]:
    sizes = []
    size = 1
    while size <= gpus_per_node:
        try:
            check_tensor_parallel(config, size)
        except ConfigError:
            pass
        else:
            sizes.append(size)
        size *= 2
    return sizes


def stage_config(config: Mapping[str, Any], stages: int) -> dict[str, Any]:
    """The config one pipeline stage holds: ceil(layers / stages) layers (all else kept)."""
    layers = int(config["num_hidden_layers"])
    per_stage = math.ceil(layers / stages)
    out = dict(config, num_hidden_layers=per_stage)
    if isinstance(config.get("layer_types"), list):
        out["layer_types"] = list(config["layer_types"])[:per_stage]
    return out


def _parallelism(
    config: Mapping[str, Any],
    budget: dict[str, Any],
    common: dict[str, Any],
    concurrency: int | None,
    tp: int | None,
    gpus_per_node: int,
) -> tuple[MemoryPlan, int, int]:
    """(per-rank plan, tp, pp): the given TP, else the smallest TP, then PP, that fits."""
    need = concurrency or 1
    if tp is not None:
        return plan_memory(config, tp=tp, **budget, **common), tp, 1
    sizes = _tp_candidates(config, gpus_per_node)
    last_error: CapacityError | None = None
    layers = int(config["num_hidden_layers"])
    for pp in range(1, layers + 1):
        stage = stage_config(config, pp)
        for size in sizes if pp == 1 else sizes[-1:]:  # across nodes: full TP inside each
            try:
                plan = plan_memory(stage, tp=size, **budget, **common)
            except CapacityError as exc:
                last_error = exc
                continue
            if (plan.max_concurrency or 0) >= need:
                return plan, size, pp
        if budget.get("kv_cache_bytes") is not None:
            break  # a fixed budget per rank: more stages do not add KV room per rank
    raise CapacityError(
        f"{need} sequence(s) of {common['context']:,} tokens do not fit on any layout up to "
        f"tensor parallel {sizes[-1]} x pipeline {layers} with this memory"
        + (f" ({last_error})" if last_error else "")
    )


def _vllm_plan(
    name: str,
    platform: str,
    plan: MemoryPlan,
    tp: int,
    pp: int,
    concurrency: int | None,
    *,
    explicit_kv: bool,
    block_given: int | None,
) -> VllmPlan:
    context = int(plan.context or 0)
    fits = int(plan.max_concurrency or 0)
    notes: list[str] = []
    if concurrency is not None and concurrency > fits:
        notes.append(f"only {fits} sequences of {context:,} tokens fit, not {concurrency}")
    seqs = min(concurrency, fits) if concurrency else min(fits, MAX_NUM_SEQS_CAP)
    flags: dict[str, Any] = {"max_model_len": context}
    flags["dtype"] = _DTYPE_FLAG.get(plan.weight_dtype, "auto")
    if plan.weight_dtype == "fp8":
        flags["quantization"] = "fp8"
    elif plan.weight_dtype in ("int8", "int4"):
        notes.append(f"{plan.weight_dtype} weights need a pre-quantized (AWQ/GPTQ) checkpoint; "
                     "vLLM reads its quantization from the checkpoint")  # fmt: skip
    if plan.kv_dtype in _KV_DTYPE_FLAG:
        flags["kv_cache_dtype"] = _KV_DTYPE_FLAG[plan.kv_dtype]
    if tp > 1:
        flags["tensor_parallel_size"] = tp
    if pp > 1:
        flags["pipeline_parallel_size"] = pp
        notes.append(f"pipeline stages assumed to hold ceil(layers / {pp}) layers plus the "
                     "embeddings and LM head each (conservative)")  # fmt: skip
    if platform == CPU or explicit_kv:
        flags["kv_cache_memory_bytes"] = int(plan.kv_budget_bytes or 0)
    else:
        flags["gpu_memory_utilization"] = plan.gpu_memory_utilization
        notes.append(
            "vLLM sizes its cache from a profiling run at start-up; the plan's reserve stands "
            "in for activations and CUDA graphs. To pin the planned capacity, add "
            f"--kv-cache-memory-bytes {int(plan.kv_budget_bytes or 0)}"
        )
    flags["max_num_seqs"] = max(1, seqs)
    one_step = min(context, ONE_STEP_PREFILL_CAP)
    flags["max_num_batched_tokens"] = max(CHUNKED_PREFILL_DEFAULT, one_step)
    if block_given:
        flags["block_size"] = block_given
    if platform == CPU:
        notes.append("VLLM_CPU_KVCACHE_SPACE, when set, overrides --kv-cache-memory-bytes on "
                     "vLLM CPU (and an empty value crashes it): the command unsets it")  # fmt: skip
    blocks = int(plan.num_blocks or 0)
    return VllmPlan(
        model=name, platform=platform, flags=flags, tensor_parallel_size=tp,
        pipeline_parallel_size=pp, block_size=plan.block_size, num_blocks=blocks,
        kv_cache_tokens=logged_kv_tokens(blocks, plan.block_size, context), memory=plan,
        notes=notes,
    )  # fmt: skip
