"""vLLM recipes: each one ``vllm serve`` flag (or environment setting) tried as its own launch.

A recipe here is the same small object as every other (latlab.optimize.recipes.Recipe): it
says what it changes, why it cannot run on this hardware (no GPU, one device, no checkpoint),
and applies itself by adding flags to the setup's ``engine_options`` (vLLM's settings by
name) or variables to its ``engine_env``. The served lab launches each candidate and measures
it interleaved with the baseline launch.

Every vLLM recipe changes how the server computes, so each is gated like a model change: the
HTTP logprob gate (top-1 agreement, KL, perplexity on held-out text scored by the candidate
server). None is flagged ``exact``: greedy outputs of a scheduling change (batch size,
chunking, caching) may differ from the baseline in bfloat16, where a different batch shape
rounds differently; the greedy match rate is reported beside the gate.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError
from latlab.optimize.recipes import Recipe
from latlab.optimize.subject import Setup

BACKEND = "vllm"


@cache
def accelerator() -> tuple[str, int]:
    """("cuda", GPUs) when nvidia-smi lists GPUs here, else ("cpu", cores)."""
    import shutil
    import subprocess

    from latlab.deploy.preflight import rank_slots

    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10,
                             check=False)  # fmt: skip
        if any(line.startswith("GPU ") for line in out.stdout.splitlines()):
            return "cuda", rank_slots()
    return "cpu", rank_slots()


@cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """AVX512-BF16 or AMX here. Without either, bf16 matmuls are emulated (measured on an
    AVX2-only EPYC: 150x slower than float32), and vLLM CPU's bf16 default crawls."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return True  # unknown: keep vLLM's default
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")),
                 None)  # fmt: skip
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & set(flags))


def _needs_gpu(what: str) -> Callable[[Setup], str | None]:
    def why_not(_: Setup) -> str | None:
        if accelerator()[0] != "cuda":
            return f"{what} needs a CUDA GPU; this machine has none (vLLM CPU)"
        return None

    return why_not


def _needs_cpu(what: str) -> Callable[[Setup], str | None]:
    def why_not(_: Setup) -> str | None:
        if accelerator()[0] != "cpu":
            return f"{what} is a vLLM CPU setting; this machine runs vLLM on GPUs"
        return None

    return why_not


def _already(options: dict[str, Any], source: Callable[[Setup], dict[str, Any]]) -> Any:
    def why_not(setup: Setup) -> str | None:
        current = source(setup)
        if all(current.get(k) == v for k, v in options.items()):
            return f"the baseline already has {options}"
        return None

    return why_not


def _both(*checks: Callable[[Setup], str | None]) -> Callable[[Setup], str | None]:
    def why_not(setup: Setup) -> str | None:
        return next((r for r in (c(setup) for c in checks) if r), None)

    return why_not


def flag_recipe(
    name: str,
    changes: str,
    group: str,
    flags: dict[str, Any],
    why_not: Callable[[Setup], str | None] | None = None,
    *,
    level: str = "engine",
    env: dict[str, str | None] | None = None,
    model_path: str | None = None,
) -> Recipe:
    """A recipe that adds vLLM flags (and environment settings) to the baseline's launch."""
    settings = dict(flags)
    variables = dict(env or {})
    checks = [_already(settings, lambda s: s.engine_options)] if settings else []
    if variables:
        checks.append(_already(variables, lambda s: s.engine_env))
    if why_not is not None:
        checks.insert(0, why_not)

    def apply(setup: Setup) -> Setup:
        return setup.derive(name, engine_options={**setup.engine_options, **settings},
                            engine_env={**setup.engine_env, **variables},
                            model_path=model_path or setup.model_path)  # fmt: skip

    return Recipe(name=name, level=level, changes=changes, backend=BACKEND, exact=False,
                  changes_model=True, group=group, check=_both(*checks),
                  build=apply)  # fmt: skip


def max_num_seqs(value: int = 4) -> Recipe:
    return flag_recipe(f"vllm-max-num-seqs-{value}", f"--max-num-seqs {value}", "max_num_seqs",
                       {"max_num_seqs": value})  # fmt: skip


def max_num_batched_tokens(tokens: int = 512) -> Recipe:
    return flag_recipe(f"vllm-batched-tokens-{tokens}",
                       f"--max-num-batched-tokens {tokens} (prefill chunk per step)",
                       "batched_tokens", {"max_num_batched_tokens": tokens})  # fmt: skip


def chunked_prefill(enabled: bool = False) -> Recipe:
    state = "on" if enabled else "off"
    return flag_recipe(f"vllm-chunked-prefill-{state}", f"chunked prefill {state}", "chunked",
                       {"enable_chunked_prefill": enabled})  # fmt: skip


def prefix_caching(enabled: bool = False) -> Recipe:
    state = "on" if enabled else "off"
    return flag_recipe(f"vllm-prefix-caching-{state}", f"prefix caching {state}", "prefix",
                       {"enable_prefix_caching": enabled})  # fmt: skip


def kv_cache_dtype(dtype: str = "fp8") -> Recipe:
    return flag_recipe(f"vllm-kv-cache-{dtype}", f"--kv-cache-dtype {dtype}", "kv_dtype",
                       {"kv_cache_dtype": dtype}, level="model")  # fmt: skip


def quantization(method: str = "fp8", checkpoint: str = "") -> Recipe:
    """fp8: vLLM quantizes at load (GPU); awq / gptq: a pre-quantized checkpoint is served."""
    if method not in ("fp8", "awq", "gptq"):
        raise ConfigError(f"quantization method must be fp8, awq or gptq, not {method!r}")
    flags: dict[str, Any] = {"quantization": method}
    checks = [_needs_gpu(f"{method} quantization")]
    if method != "fp8":

        def needs_checkpoint(_: Setup) -> str | None:
            return None if checkpoint else (
                f"{method.upper()} needs a pre-quantized checkpoint: set checkpoint = "
                "'<dir>' for this recipe in the plan")  # fmt: skip

        checks.insert(0, needs_checkpoint)
    return flag_recipe(f"vllm-quantization-{method}", f"--quantization {method}",
                       "quantization", flags, _both(*checks), level="model",
                       model_path=checkpoint or None)  # fmt: skip


def enforce_eager(enabled: bool = True) -> Recipe:
    what = "CUDA graphs and torch.compile off" if enabled else "CUDA graphs / torch.compile on"
    return flag_recipe(f"vllm-enforce-eager-{'on' if enabled else 'off'}",
                       f"--{'' if enabled else 'no-'}enforce-eager ({what})", "eager",
                       {"enforce_eager": enabled}, level="system")  # fmt: skip


def _ranks(kind: str, size: int, on_cpu: bool) -> Callable[[Setup], str | None]:
    def why_not(_: Setup) -> str | None:
        platform, slots = accelerator()
        if platform == "cpu" and not on_cpu:
            return (f"on vLLM CPU, {kind} parallel splits one machine's cores between ranks; "
                    f"try it with {{ name = 'vllm-{kind}-parallel', size = {size}, "
                    "on_cpu = true } in a plan")  # fmt: skip
        if slots < size:
            return f"{kind} parallel {size} needs {size} devices; this machine has {slots}"
        return None

    return why_not


def cpu_binding(ranks: int, cores: list[int]) -> dict[str, str]:
    """vLLM CPU's thread binding for ``ranks`` ranks on the given core ids.

    Its automatic binding needs a NUMA node per rank ("Not enough allowed NUMA nodes to bind
    threads of 2 local CPUWorkers" on a one-node machine); an explicit split works: the cores
    in equal shares, '|' between ranks, none held back.
    """
    per = max(1, len(cores) // ranks)
    shares = [cores[r * per : (r + 1) * per] or cores[-1:] for r in range(ranks)]
    bind = "|".join(",".join(str(c) for c in share) for share in shares)
    return {"VLLM_CPU_OMP_THREADS_BIND": bind, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def _parallel(kind: str, size: int, on_cpu: bool) -> Recipe:
    flag = f"{kind}_parallel_size"
    env = {}
    if accelerator()[0] == "cpu" and on_cpu:
        env = cpu_binding(size, sorted(os.sched_getaffinity(0)))
    return flag_recipe(f"vllm-{kind}-parallel-{size}", f"--{kind}-parallel-size {size}",
                       f"{kind}_parallel", {flag: size}, _ranks(kind, size, on_cpu),
                       level="system", env=env)  # fmt: skip


def tensor_parallel(size: int = 2, on_cpu: bool = False) -> Recipe:
    return _parallel("tensor", size, on_cpu)


def pipeline_parallel(size: int = 2, on_cpu: bool = False) -> Recipe:
    return _parallel("pipeline", size, on_cpu)


def gpu_memory_utilization(value: float = 0.95) -> Recipe:
    return flag_recipe(f"vllm-gpu-memory-{value:g}", f"--gpu-memory-utilization {value:g}",
                       "gpu_memory", {"gpu_memory_utilization": value},
                       _needs_gpu("--gpu-memory-utilization"), level="system")  # fmt: skip


def kv_offload(gib: float = 8.0) -> Recipe:
    return flag_recipe(f"vllm-kv-offload-{gib:g}", f"--kv-offloading-size {gib:g} (GiB of host "
                       "RAM behind the GPU cache)", "kv_offload", {"kv_offloading_size": gib},
                       _needs_gpu("KV offloading to host memory"), level="system")  # fmt: skip


def speculative_ngram(tokens: int = 4, max_ngram: int = 3) -> Recipe:
    config = {"method": "ngram", "num_speculative_tokens": tokens,
              "prompt_lookup_max": max_ngram, "prompt_lookup_min": 1}  # fmt: skip
    return flag_recipe("vllm-speculative-ngram", f"--speculative-config {config} (prompt "
                       "lookup)", "speculation", {"speculative_config": config})  # fmt: skip


def dtype(dtype: str = "float32") -> Recipe:
    return flag_recipe(f"vllm-dtype-{dtype}", f"--dtype {dtype}", "dtype", {"dtype": dtype},
                       level="model")  # fmt: skip


def cpu_kv_space(gib: int = 4) -> Recipe:
    return flag_recipe(f"vllm-cpu-kv-space-{gib}", f"VLLM_CPU_KVCACHE_SPACE={gib} (GiB of KV)",
                       "cpu_kv_space", {}, _needs_cpu("VLLM_CPU_KVCACHE_SPACE"),
                       level="system", env={"VLLM_CPU_KVCACHE_SPACE": str(gib)})  # fmt: skip


def cpu_threads(bind: str = "all", reserved: int = 0) -> Recipe:
    """vLLM CPU pins its OpenMP threads and keeps cores back (one of two here) for serving.

    ``all`` binds the one rank to every core this process may use, spelled as the core list
    vLLM parses ("0,1"): vLLM 0.32 takes a list, ``auto`` or ``nobind``, and fails to start on
    the word ``all``.
    """
    value = cpu_binding(1, sorted(os.sched_getaffinity(0)))["VLLM_CPU_OMP_THREADS_BIND"]
    env = {"VLLM_CPU_OMP_THREADS_BIND": value if bind == "all" else bind,
           "VLLM_CPU_NUM_OF_RESERVED_CPU": str(reserved)}  # fmt: skip
    return flag_recipe(f"vllm-cpu-threads-{bind}", f"VLLM_CPU_OMP_THREADS_BIND={bind}, "
                       f"VLLM_CPU_NUM_OF_RESERVED_CPU={reserved}", "cpu_threads", {},
                       _needs_cpu("thread binding"), level="system", env=env)  # fmt: skip


VLLM_RECIPES: dict[str, Callable[..., Recipe]] = {
    "vllm-max-num-seqs": max_num_seqs,
    "vllm-batched-tokens": max_num_batched_tokens,
    "vllm-chunked-prefill": chunked_prefill,
    "vllm-prefix-caching": prefix_caching,
    "vllm-kv-cache-dtype": kv_cache_dtype,
    "vllm-quantization": quantization,
    "vllm-enforce-eager": enforce_eager,
    "vllm-tensor-parallel": tensor_parallel,
    "vllm-pipeline-parallel": pipeline_parallel,
    "vllm-gpu-memory-utilization": gpu_memory_utilization,
    "vllm-kv-offload": kv_offload,
    "vllm-speculative-ngram": speculative_ngram,
    "vllm-dtype": dtype,
    "vllm-cpu-kv-space": cpu_kv_space,
    "vllm-cpu-threads": cpu_threads,
}


def for_servers(recipe: Recipe) -> Recipe:
    """A request-level recipe (response cache, trimming, grouping) for a launched server.

    They act in the client, before anything reaches the server, so they apply unchanged.
    """
    if recipe.level != "request":
        raise ConfigError(
            f"recipe {recipe.name!r} changes latlab's own engine or model; with a launched "
            "server use the vllm-* recipes (or request-level ones)"
        )
    return dataclasses.replace(recipe, backend=BACKEND)
