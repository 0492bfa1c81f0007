"""What the attention benchmarks share: the reference model's heads, block tables scattered over
a cache in the engine's layout, and one timed pass of the kernel over a step's layers.

Used by attention_builds.py, attention_tiles.py and kv_huge_pages.py (benchmarks/ is not a
package: each puts this folder on sys.path).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 12, 6, 64, 16  # the ~106M reference model's attention


def scattered_tables(batch: int, context: int, cache_blocks: int, seed: int):
    """Block tables [batch, blocks a sequence] drawn without repeats in random order from the
    cache (decode steps find a sequence's blocks anywhere), and every sequence's length."""
    import torch

    per_seq = -(-context // BLOCK)
    order = random.Random(seed).sample(range(cache_blocks), batch * per_seq)
    tables = torch.tensor(order, dtype=torch.long).view(batch, per_seq)
    return tables, torch.full((batch,), context, dtype=torch.long)


def layers_pass(
    attend: Callable,
    q,
    caches: list,
    tables,
    lens,
    *,
    layers: int,
    flush=None,
    hot: bool = False,
    **kwargs,
) -> float:
    """Seconds of ``attend`` over ``layers`` layers: each layer's own K and V (``caches`` holds
    them in pairs) after ``flush`` is streamed through the caches as a step's weights stream
    them, or the first layer's pair every time when ``hot``."""
    if flush is not None:
        flush.add_(1.0)
    start = time.perf_counter()
    for layer in range(layers):
        k, v = caches[0:2] if hot else caches[2 * layer : 2 * layer + 2]
        attend(q, k, v, tables, lens, HEAD_DIM**-0.5, **kwargs)
    return time.perf_counter() - start
