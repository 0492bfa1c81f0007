"""2:4 semi-structured sparsity: in every group of 4 weights along the input dimension, the 2
smallest by magnitude become zero, and the Linear layers run on sparse tensor-core kernels.

Only NVIDIA GPUs of compute capability 8.0 or newer (Ampere on) have those kernels
(cuSPARSELt / CUTLASS behind ``torch.sparse.to_sparse_semi_structured``). On a CPU the zeros
change the weights but not the time: the matmul stays dense. So the recipe is skipped off CUDA
with that reason rather than measured as a pretend speedup.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_CAPABILITY = (8, 0)


def why_not_semi_structured() -> str | None:
    """None where 2:4 sparse kernels can run; else the reason, in words."""
    if not torch.cuda.is_available():
        return (
            "2:4 sparse kernels exist only on NVIDIA GPUs (compute capability 8.0+, "
            "cuSPARSELt/CUTLASS); on this CPU a 2:4 mask leaves the matmuls dense and as slow"
        )
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return (
            f"2:4 sparse kernels need compute capability 8.0+; this GPU is "
            f"{capability[0]}.{capability[1]}"
        )
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    return None


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """True where a weight survives: the 2 largest |w| of every 4 consecutive inputs."""
    rows, cols = weight.shape
    if cols % 4:
        raise ValueError(f"2:4 sparsity needs the input dimension divisible by 4, not {cols}")
    groups = weight.abs().reshape(rows, cols // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def sparsify_linears(model: Any, skip: tuple[str, ...] = ("lm_head",)) -> int:  # pragma: no cover
    """Prune every eligible Linear to 2:4 and swap its weight for the sparse kernel's format."""
    from torch.sparse import to_sparse_semi_structured

    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] in skip:
            continue
        weight = module.weight.data
        if weight.shape[1] % 64 or weight.shape[0] % 64:  # the kernels' tile constraints
            continue
        pruned = weight * two_four_mask(weight)
        module.weight = torch.nn.Parameter(to_sparse_semi_structured(pruned), requires_grad=False)
        count += 1
    return count
