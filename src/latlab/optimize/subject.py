"""What the lab measures: one configuration of model, decoding loop, engine and request handling.

A recipe never edits a ``Setup`` in place: it returns a new one (with its own copy of the model
when it changes weights), so the baseline stays intact for the next recipe and reverting is
dropping the copy. Process-wide knobs (thread count, TF32) are stored here and only switched on
inside ``activated()``, which restores them on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS = ("transformers", "engine")


@dataclass(slots=True)
class Setup:
    """One configuration under test. ``backend`` picks the loop that serves the requests."""

    backend: str
    model_path: str
    tokenizer: Any
    model: Any = None  # the transformers model (transformers backend only)
    decode: str = "greedy"  # or "prompt_lookup"
    prompt_lookup: Any = None  # generation.PromptLookupConfig when decode == "prompt_lookup"
    engine_options: dict[str, Any] = field(default_factory=dict)  # EngineConfig overrides
    # A launched server's environment settings (None: unset); its flags are engine_options.
    engine_env: dict[str, str | None] = field(default_factory=dict)
    static_batching: bool = False
    num_threads: int | None = None
    tf32: bool = False
    response_cache: bool = False
    prompt_token_budget: int | None = None
    group_by_prefix: bool = False
    changes: list[str] = field(default_factory=list)  # what recipes did, in order

    def derive(self, change: str, **updates: Any) -> Setup:
        """A copy with ``updates`` applied and ``change`` appended to the change log."""
        return dataclasses.replace(self, changes=[*self.changes, change], **updates)


@contextlib.contextmanager
def activated(setup: Setup) -> Iterator[None]:
    """Switch on the setup's process-wide knobs; restore the previous values on exit."""
    threads = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32 if torch.cuda.is_available() else None
    try:
        if setup.num_threads is not None:
            torch.set_num_threads(setup.num_threads)
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = setup.tf32
        yield
    finally:
        torch.set_num_threads(threads)
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32


def tensor_bytes(tensor: torch.Tensor, seen: set[int]) -> int:
    """Bytes of storage a tensor really holds; tensor subclasses (torchao) are unpacked.

    ``numel() * element_size()`` is wrong for quantized subclasses, which report the logical
    dtype; the inner tensors are what occupies memory. Storages seen before (tied embeddings)
    count once.
    """
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, name), seen) for name in names)
    if tensor.device.type == "meta":
        return 0
    storage = tensor.untyped_storage()
    key = storage.data_ptr()
    if key in seen or key == 0:
        return 0
    seen.add(key)
    return storage.nbytes()


def model_bytes(model: Any) -> int:
    """Bytes held by the model's parameters and buffers, as stored (after quantization)."""
    seen: set[int] = set()
    total = sum(tensor_bytes(p, seen) for p in model.parameters())
    return total + sum(tensor_bytes(b, seen) for b in model.buffers())


def load_model(path: str, dtype: str = "auto") -> Any:
    """The eval-mode transformers model (through latlab.model_files: one loading path)."""
    from latlab.model_files import load_causal_lm

    return load_causal_lm(path, dtype=dtype)
