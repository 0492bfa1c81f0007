"""Native CPU kernels of the engine, compiled once per machine and cached.

torch's C++ extension JIT builds them (a C++ compiler and ninja must be present; about two
minutes of CPU on two cores, once: the build lands in torch's extension cache, keyed by the
sources, the flags and this CPU). Building is never on an engine's start-up path: ``make setup``
starts the build in the background and ``python -m latlab.engine.kernels`` builds in the
foreground. Until the build exists the engine runs its pure-torch path and says why
(``native_attention=True`` / ``native_decode=True`` wait for the build instead);
``LATLAB_NATIVE_KERNELS=0`` forces the torch path.

One module holds every kernel: the in-place paged decode attention (paged_attention.cpp), the
small-batch decode step with its GEMV (decode_step.cpp), which calls that attention, the
fused elementwise work of steps of any size (step_ops.cpp), bf16 linear layers on AMX tiles
(amx_linear.cpp), W8A8 ones on AMX int8 tiles (amx_int8.cpp) and float32 ones on AVX2 FMA
(f32_panels.cpp).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).parent
SOURCE = HERE / "paged_attention.cpp"  # holds the module's registrations
SOURCES = (
    SOURCE,
    HERE / "decode_step.cpp",
    HERE / "decode_batch.cpp",
    HERE / "step_ops.cpp",
    HERE / "amx_linear.cpp",
    HERE / "amx_int8.cpp",
    HERE / "f32_panels.cpp",
)
HEADERS = (
    HERE / "kernels.h",
    HERE / "vec256.h",
    HERE / "vec512.h",
    HERE / "lanes.h",
    HERE / "rows.h",
    HERE / "amx_tiles.h",
    HERE / "phase_clock.h",
)
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
BUILD_HINT = "`python -m latlab.engine.kernels` builds it; `make setup` does in the background"
ATTENTION = "native paged decode attention (in place)"
DECODE_MAX_ROWS = 4  # decode_step.cpp's register blocking covers steps of 1-4 rows
BATCH_MAX_ROWS = 64  # decode_batch.cpp: the AMX kernel's one-pass form, 4 row tiles
DECODE = "native decode steps (one call, one parallel region, streaming GEMVs) for 1-4 rows"
BATCH = f"native bf16 decode steps on AMX tiles (one call a step) for 5-{BATCH_MAX_ROWS} rows"
BATCH_INT8 = (
    f"native W8A8 decode steps on AMX int8 tiles (one call a step) for 5-{BATCH_MAX_ROWS} rows"
)
F32_BATCH = (
    f"native float32 decode steps on the AVX2 FMA panels (one call a step) for 5-{BATCH_MAX_ROWS} "
    "rows"
)
STEP_OPS = "native fused norms, RoPE + cache writes and SiLU * up"
AMX = "bf16 GEMMs on AMX tiles (weights packed once, streamed once a step)"
AMX_INT8 = "int8 GEMMs on AMX tiles (activations quantized per row, weights packed once)"
F32_PANELS = "float32 GEMMs on AVX2 FMA (weights packed once in 16-column panels)"


@dataclass(frozen=True, slots=True)
class Kernel:
    """A loaded kernel, or None with the reason it is not available."""

    fn: Callable[..., object] | None
    reason: str


@dataclass(frozen=True, slots=True)
class _Build:
    module: ModuleType | None
    reason: str  # why the module is missing ("" when loaded)


_loaded: dict[str, _Build] = {}


def _build_name() -> str:
    from latlab.engine.hardware import cpu_capabilities

    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    digest.update(cpu_capabilities().model.encode())
    return f"latlab_paged_attention_{digest.hexdigest()[:12]}"


def build_directory() -> Path:
    """Where torch builds (and caches) the kernels for these sources, flags and this CPU."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(_build_name(), verbose=False))


def is_built() -> bool:
    """True when a finished build is in the cache (a build in progress holds its lock file)."""
    directory = build_directory()
    library = directory / f"{_build_name()}.so"
    return library.is_file() and not (directory / "lock").exists()


def _module(*, wait: bool) -> _Build:
    """The kernels' module. ``wait=False`` loads it only when already built (never compiles:
    what an engine start does); ``wait=True`` builds it when missing, or waits for a build in
    progress."""
    if os.environ.get("LATLAB_NATIVE_KERNELS", "1") == "0":
        return _Build(None, "LATLAB_NATIVE_KERNELS=0")
    name = _build_name()
    if name in _loaded:
        return _loaded[name]
    if not wait:
        if not is_built():
            return _Build(None, f"native kernel not built yet ({BUILD_HINT})")
        _loaded[name] = _import_built(name)
    else:
        _loaded[name] = _build_and_load(name)
    return _loaded[name]


def _kernel(attribute: str, what: str, *, wait: bool) -> Kernel:
    build = _module(wait=wait)
    if build.module is None:
        return Kernel(None, build.reason)
    return Kernel(getattr(build.module, attribute), what)


def paged_decode_attention(*, wait: bool = True) -> Kernel:
    """The in-place paged decode attention kernel (see paged_attention.cpp); its reason says
    which vector path the build has, since the AVX2 and AVX-512 ones differ 1.4-2.5x from the
    portable loops (docs/engine.md)."""
    build = _module(wait=wait)
    if build.module is None:
        return Kernel(None, build.reason)
    lanes = build.module.attention_lanes()
    vectors = {16: "AVX-512", 8: "AVX2"}.get(lanes)
    how = (
        f"{lanes}-lane {vectors} vectors for head sizes 32/64/128/256"
        if vectors
        else "portable loops: no AVX2 in this build"
    )
    return Kernel(build.module.paged_decode_attention, f"{ATTENTION}; {how}")


def decode_model(*, wait: bool = True) -> Kernel:
    """The class ``DecodeModel(model, layers, num_heads, eps, scale)`` whose ``step`` runs a
    whole decode step of 1-4 rows as one native call (see decode_step.cpp)."""
    return _kernel("DecodeModel", DECODE, wait=wait)


def _checked_kernel(
    attribute: str, available: str, missing: str, what: str, *, wait: bool
) -> Kernel:
    """The module's ``attribute`` where its ``available()`` check passes (the CPU, the compiler and
    for AMX the OS's grant), else None and ``missing``."""
    build = _module(wait=wait)
    if build.module is None:
        return Kernel(None, build.reason)
    if not getattr(build.module, available)():
        return Kernel(None, missing)
    return Kernel(getattr(build.module, attribute), what)


def batch_decode_model(*, wait: bool = True) -> Kernel:
    """The class ``BatchDecodeModel(model, layers, num_heads, eps, scale)`` whose ``step`` runs a
    whole bf16 decode step of 5-64 rows on AMX tiles as one native call (decode_batch.cpp), or
    None where the build or the CPU has no AMX."""
    missing = "no AMX-BF16 here (CPU, compiler or the kernel's permission)"
    return _checked_kernel("BatchDecodeModel", "amx_available", missing, BATCH, wait=wait)


def f32_batch_decode_model(*, wait: bool = True) -> Kernel:
    """The class ``F32BatchDecodeModel(model, layers, num_heads, eps, scale)``: the same one-call
    decode step of 5-64 rows in float32 on the panel GEMM (decode_batch.cpp), or None where the
    build has no AVX2 FMA."""
    missing = "no AVX2 FMA in this build's CPU"
    return _checked_kernel(
        "F32BatchDecodeModel", "f32_panels_available", missing, F32_BATCH, wait=wait
    )


def small_linear(*, wait: bool = True) -> Kernel:
    """``x @ w.T (+ bias)`` for 1-4 float32 rows, streaming ``w`` once (decode_step.cpp)."""
    return _kernel("small_linear", "native GEMV for 1-4 rows", wait=wait)


@dataclass(frozen=True, slots=True)
class StepOps:
    """The fused elementwise ops of a step of any size (step_ops.cpp)."""

    rms_norm: Callable[..., Any]
    add_rms_norm: Callable[..., Any]
    rope_cache: Callable[..., Any]
    silu_mul: Callable[..., Any]
    greedy_argmax: Callable[..., Any]
    decode_inputs: Callable[..., Any]


def step_ops(*, wait: bool = True) -> tuple[StepOps | None, str]:
    """The fused norm, RoPE + cache write and SiLU * up ops, or None and why not."""
    build = _module(wait=wait)
    if build.module is None:
        return None, build.reason
    m = build.module
    ops = StepOps(
        rms_norm=m.rms_norm, add_rms_norm=m.add_rms_norm, rope_cache=m.rope_cache,
        silu_mul=m.silu_mul, greedy_argmax=m.greedy_argmax, decode_inputs=m.decode_inputs,
    )  # fmt: skip
    return ops, STEP_OPS


@dataclass(frozen=True, slots=True)
class LinearKernel:
    """A native linear kernel: ``pack(weight)`` once, then ``linear(x, packed, bias or None)``
    (bf16 on AMX tiles, amx_linear.cpp; float32 on AVX2 FMA, f32_panels.cpp)."""

    pack: Callable[..., Any]
    linear: Callable[..., Any]


AmxLinear = LinearKernel


def _amx_module(wait: bool, available: str, what: str) -> tuple[ModuleType | None, str]:
    """The built module where its ``available()`` check passes (AMX in the CPU, the compiler
    and the OS's grant), else None and why."""
    build = _module(wait=wait)
    if build.module is None:
        return None, build.reason
    if not getattr(build.module, available)():
        return None, f"no {what} here (CPU, compiler or the kernel's permission)"
    return build.module, ""


def amx_linear(*, wait: bool = True) -> tuple[AmxLinear | None, str]:
    """The AMX linear kernel where the build has it and the OS grants AMX state, or why not."""
    m, why = _amx_module(wait, "amx_available", "AMX-BF16")
    return (AmxLinear(pack=m.amx_pack, linear=m.amx_linear), AMX) if m else (None, why)


def f32_panels(*, wait: bool = True) -> tuple[LinearKernel | None, str]:
    """The float32 panel GEMM where the build has AVX2 and FMA, or why not."""
    build = _module(wait=wait)
    if build.module is None:
        return None, build.reason
    m = build.module
    if not m.f32_panels_available():
        return None, "no AVX2 FMA in this build's CPU"
    return LinearKernel(pack=m.f32_pack, linear=m.f32_panel_linear), F32_PANELS


@dataclass(frozen=True, slots=True)
class AmxInt8:
    """W8A8 linear layers on AMX int8 tiles (amx_int8.cpp): ``pack(int8 weight)`` once, then
    ``linear(bf16 x, packed, float32 scale per channel, bf16 bias or None)``."""

    pack: Callable[..., Any]
    linear: Callable[..., Any]


def amx_int8(*, wait: bool = True) -> tuple[AmxInt8 | None, str]:
    """The AMX int8 linear kernel where the build has it and the OS grants AMX state, or why
    not."""
    m, why = _amx_module(wait, "amx_int8_available", "AMX-INT8")
    return (AmxInt8(pack=m.amx_pack_int8, linear=m.amx_int8_linear), AMX_INT8) if m else (None, why)


def _import_built(name: str) -> _Build:
    """Import the cached library as it is: no ninja run, so a source whose mtime changed (a git
    checkout) but whose content did not (same name) is not rebuilt on an engine's start."""
    import torch  # noqa: F401  (the library links against libtorch's symbols)

    path = build_directory() / f"{name}.so"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python extension module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # a library from another torch build: the torch path stays
        return _Build(None, f"native kernel in {path} does not load ({exc}; {BUILD_HINT})")
    return _Build(module, "")


def _build_and_load(name: str) -> _Build:
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name=name,
            sources=[str(s) for s in SOURCES],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a build error: the torch path stays
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _Build(None, f"native kernel unavailable ({first[:160]})")
    return _Build(module, "")
