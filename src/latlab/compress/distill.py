"""Knowledge distillation: a smaller student trained on its teacher's softened distributions.

The loss is the usual one (Hinton et al. 2015): ``kl_weight * T^2 * KL(teacher_T || student_T)
+ (1 - kl_weight) * CE(student, next token)``, where ``_T`` is the softmax at temperature T.
The student starts from the teacher, not from scratch: ``init="prune"`` removes the teacher's
least useful layers (the angular-distance score of ``layers``: pruned, then healed by this
training), ``init="spread"`` keeps evenly spaced teacher layers (DistilBERT's choice).

Training is resumable and interruptible without loss: a checkpoint (student weights,
optimizer, sampler state and counters) is written every ``checkpoint_every_s`` seconds and on
Ctrl-C, which is deferred to the end of the step in progress so the saved state is always
whole; ``resume`` continues from it. A second Ctrl-C stops at once (the last checkpoint stays).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from latlab.compress.checkpoint import CHECKPOINT_DIR
from latlab.compress.training import lr_at, sample_batch
from latlab.errors import ConfigError

INITS = ("prune", "spread")
UNLIMITED_STEPS = 10**9  # a run bounded by its time budget alone


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the checkpoint is and how to resume."""


@dataclass(kw_only=True, slots=True, frozen=True)
class DistillSpec:
    """The student and how it is trained (everything but the teacher, corpus and output)."""

    layers: int | None = None  # student layers; None = half the teacher's
    init: str = "prune"
    method: str = "angular"  # layer score for init="prune"
    mlp_fraction: float | None = None  # also remove this share of MLP channels
    steps: int = 300
    time_budget_s: float | None = None  # stop when this much training time has passed
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 5e-4
    warmup_fraction: float = 0.05
    temperature: float = 2.0
    kl_weight: float = 0.5
    seed: int = 0
    checkpoint_every_s: float = 60.0

    def __post_init__(self) -> None:
        checks = [
            (self.init in INITS, f"init must be one of {', '.join(INITS)}, not {self.init!r}"),
            (self.steps >= 1, f"steps must be >= 1, not {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size}"),
            (self.seq_len >= 2, f"seq_len must be >= 2, not {self.seq_len}"),
            (self.lr > 0, f"lr must be > 0, not {self.lr}"),
            (self.temperature > 0, f"temperature must be > 0, not {self.temperature}"),
            (0.0 <= self.kl_weight <= 1.0, f"kl_weight must be in [0, 1], not {self.kl_weight}"),
            (
                self.time_budget_s is None or self.time_budget_s > 0,
                f"time budget must be > 0 seconds, not {self.time_budget_s}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def student_layers(self, teacher_layers: int) -> int:
        """The student's layer count; ConfigError when it is not smaller than the teacher."""
        layers = self.layers if self.layers is not None else max(1, teacher_layers // 2)
        if layers < 1:
            raise ConfigError(f"a student needs at least 1 layer, not {layers}")
        if layers > teacher_layers:
            raise ConfigError(
                f"the student ({layers} layers) would be larger than its teacher "
                f"({teacher_layers} layers): give at most {teacher_layers} layers"
            )
        if layers == teacher_layers and not self.mlp_fraction:
            raise ConfigError(
                f"the student would be as large as its teacher ({teacher_layers} layers): give "
                f"fewer layers, or mlp_fraction to narrow it"
            )
        return layers

    def resumable_as(self, other: DistillSpec) -> bool:
        """Same student and objective; only the length of training may differ."""
        free = {"steps", "time_budget_s", "checkpoint_every_s"}
        mine, theirs = asdict(self), asdict(other)
        return all(mine[k] == theirs[k] for k in mine if k not in free)


@dataclass(kw_only=True, slots=True)
class TrainState:
    """Counters that survive a resume."""

    step: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    loss: float | None = None  # exponential moving averages
    kl: float | None = None
    ce: float | None = None

    def update(self, loss: float, kl: float, ce: float) -> None:
        def ema(old: float | None, new: float) -> float:
            return new if old is None else 0.95 * old + 0.05 * new

        self.loss, self.kl, self.ce = ema(self.loss, loss), ema(self.kl, kl), ema(self.ce, ce)


@dataclass(kw_only=True, slots=True)
class DistillProgress:
    """One line of progress: what a user watches during training."""

    step: int
    steps: int
    elapsed_s: float
    time_budget_s: float | None
    loss: float
    kl: float
    ce: float
    lr: float
    tokens_per_s: float


ProgressFn = Callable[[DistillProgress], None]


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    kl_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, KL term, CE term); KL is scaled by T^2 so its gradient keeps its size (Hinton)."""
    vocab = student_logits.shape[-1]
    s_log = torch.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, -1)
    t_log = torch.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, -1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1).mean() * temperature**2
    ce = torch.nn.functional.cross_entropy(
        student_logits.float().reshape(-1, vocab), targets.reshape(-1)
    )
    return kl_weight * kl + (1.0 - kl_weight) * ce, kl, ce


@dataclass(slots=True)
class _CtrlC:
    """Defers the first SIGINT to a step boundary; the second one interrupts at once."""

    pressed: bool = False
    previous: Any = None

    def __enter__(self) -> _CtrlC:
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, *_exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def step_lr(spec: DistillSpec, step: int, elapsed_s: float) -> float:
    """The learning rate of training step ``step`` (0-based): the schedule where the step ends,
    so warm-up starts above zero instead of spending the first step at learning rate 0."""
    progress = (step + 1) / spec.steps
    if spec.time_budget_s:
        progress = max(progress, elapsed_s / spec.time_budget_s)
    return lr_at(min(progress, 1.0), spec.warmup_fraction, spec.lr, spec.lr * 0.1)


@dataclass(kw_only=True)
class Distiller:
    """Trains ``student`` on ``teacher`` over random windows of ``stream``."""

    teacher: Any
    student: Any
    stream: torch.Tensor
    spec: DistillSpec
    checkpoint_dir: Path | None = None
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn | None = None
    state: TrainState = field(default_factory=TrainState)

    def __post_init__(self) -> None:
        # The teacher runs under no_grad and keeps its flags: in the lab it is the baseline
        # model, which later recipes copy. The student trains every parameter, whatever flags
        # the model it was copied from had.
        self.teacher.eval()
        for param in self.student.parameters():
            param.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            list(self.student.parameters()),
            lr=self.spec.lr,
            betas=(0.9, 0.95),
            weight_decay=0.01,
        )
        self.generator = torch.Generator().manual_seed(self.spec.seed)

    # ---- the loop --------------------------------------------------------------------
    def train(self) -> TrainState:
        """Train until the step count or the time budget; Ctrl-C checkpoints and raises."""
        self.student.train()
        last_save = time.perf_counter()
        with _CtrlC() as ctrl_c:
            while not self._done():
                self._step()
                if ctrl_c.pressed:
                    self._interrupted()
                if self.checkpoint_dir and (
                    time.perf_counter() - last_save >= self.spec.checkpoint_every_s
                ):
                    self.save_checkpoint()
                    last_save = time.perf_counter()
        self.student.eval()
        return self.state

    def _done(self) -> bool:
        budget = self.spec.time_budget_s
        return self.state.step >= self.spec.steps or (
            budget is not None and self.state.elapsed_s >= budget
        )

    def _step(self) -> None:
        spec, state = self.spec, self.state
        started = time.perf_counter()
        lr = step_lr(spec, state.step, state.elapsed_s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = sample_batch(self.stream, spec.batch_size, spec.seq_len, self.generator)
        device = self.student.device
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs, use_cache=False).logits
        student_logits = self.student(input_ids=inputs, use_cache=False).logits
        loss, kl, ce = distill_loss(
            student_logits, teacher_logits, targets, spec.temperature, spec.kl_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        took = time.perf_counter() - started
        state.step += 1
        state.elapsed_s += took
        state.tokens += inputs.numel()
        state.update(loss.item(), kl.item(), ce.item())
        if self.progress is not None:
            self.progress(
                DistillProgress(step=state.step, steps=spec.steps, elapsed_s=state.elapsed_s,
                                time_budget_s=spec.time_budget_s, loss=state.loss or 0.0,
                                kl=state.kl or 0.0, ce=state.ce or 0.0, lr=lr,
                                tokens_per_s=inputs.numel() / took if took > 0 else 0.0)
            )  # fmt: skip

    def _interrupted(self) -> None:
        where = ""
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
            where = f"; checkpoint kept in {self.checkpoint_dir}: rerun with --resume to continue"
        raise DistillInterrupted(
            f"distillation interrupted at step {self.state.step} of {self.spec.steps}{where}"
        )

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Student, optimizer, sampler and counters, swapped in whole (never half-written)."""
        assert self.checkpoint_dir is not None
        final = self.checkpoint_dir
        staging = final.with_name(final.name + ".tmp")
        previous = final.with_name(final.name + ".old")
        shutil.rmtree(staging, ignore_errors=True)
        self.student.save_pretrained(str(staging / "student"), safe_serialization=True)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()},
            staging / "trainer.pt",
        )
        meta = {**self.checkpoint_meta, "spec": asdict(self.spec), "state": asdict(self.state)}
        (staging / "state.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(previous, ignore_errors=True)
        if final.exists():
            final.rename(previous)
        staging.rename(final)
        shutil.rmtree(previous, ignore_errors=True)

    def load_trainer_state(self, directory: Path, state: dict[str, Any]) -> None:
        """Optimizer, sampler and counters from a checkpoint (the student is loaded apart)."""
        saved = torch.load(directory / "trainer.pt", weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.state = TrainState(**state)


def checkpoint_path(out_dir: Path) -> Path:
    """The live checkpoint, or the previous one when a swap was cut short."""
    live = out_dir / CHECKPOINT_DIR
    old = live.with_name(live.name + ".old")
    return live if live.is_dir() else old


def read_checkpoint_meta(out_dir: Path) -> dict[str, Any]:
    path = checkpoint_path(out_dir) / "state.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the checkpoint in {out_dir} cannot be read ({exc}); start over with --overwrite"
        ) from None
