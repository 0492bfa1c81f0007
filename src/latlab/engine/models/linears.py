"""Finding and replacing a model's ``nn.Linear`` layers, for the packed and quantized kinds."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Fits = Callable[[str, nn.Linear], bool]


def linear_children(model: nn.Module, fits: Fits) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every ``nn.Linear`` under ``model`` that ``fits(name, layer)``, with its parent and
    attribute name; listed in full before any is replaced, so a replacement is not visited."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and fits(name, child)
    ]


def replace_linears(model: nn.Module, fits: Fits, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace each fitting ``nn.Linear`` by ``make(layer)``; returns how many."""
    targets = linear_children(model, fits)
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return len(targets)
