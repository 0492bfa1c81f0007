"""From a model directory to a smaller one on disk: what ``latlab prune`` and ``latlab distill``
call, and what the lab's model-level recipes reuse in memory (``build_student``, ``heal``).

Every bad input is refused before the slow work starts, in this order: the output directory
(never replaced without ``overwrite``), the sizes asked for against the model's config, the
corpus (missing, empty or binary files). Models are trained and pruned in float32 (bf16 is
emulated on CPUs without bf16 instructions, about 150x slower here) and saved in the source
checkpoint's dtype.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from latlab.compress.calibration import decoder_layers
from latlab.compress.checkpoint import CHECKPOINT_DIR, check_out_dir, prepare_out_dir, save_model
from latlab.compress.corpus import CorpusText, load_corpus, token_stream
from latlab.compress.distill import (
    Distiller,
    DistillSpec,
    ProgressFn,
    checkpoint_path,
    read_checkpoint_meta,
)
from latlab.compress.evaluate import compare_models, heldout_text_of
from latlab.compress.layers import remove_layers
from latlab.compress.prune import (
    PruneSpec,
    check_spec,
    model_shape,
    parameter_count,
    prune_model,
)
from latlab.errors import ConfigError
from latlab.model_files import load_causal_lm, load_model_config, load_tokenizer, resolve_model_path

Log = Any  # Callable[[str], None]


def _log(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


def _checkpoint_dtype(path: str) -> torch.dtype:
    config = load_model_config(path)
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return getattr(torch, name, torch.float32)


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, first and last included (DistilBERT-style init)."""
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return sorted({round(i * step) for i in range(student_layers)})


def build_student(
    teacher: Any, tokenizer: Any, spec: DistillSpec, corpus: CorpusText
) -> tuple[Any, dict[str, Any]]:
    """The untrained student: the teacher minus layers (and channels), as ``spec.init`` says."""
    teacher_layers = len(decoder_layers(teacher))
    layers = spec.student_layers(teacher_layers)
    if spec.init == "prune":
        prune = PruneSpec(
            layers=(teacher_layers - layers) or None, method=spec.method,
            mlp_fraction=spec.mlp_fraction,
        )  # fmt: skip
        return prune_model(teacher, tokenizer, prune, corpus)
    import copy

    keep = spread_layers(teacher_layers, layers)
    student = copy.deepcopy(teacher)
    drop = [i for i in range(teacher_layers) if i not in keep]
    if drop:
        remove_layers(student, drop)
    report: dict[str, Any] = {"init": "spread", "kept_layers": keep}
    if spec.mlp_fraction:
        student, width = prune_model(
            student, tokenizer, PruneSpec(mlp_fraction=spec.mlp_fraction), corpus
        )
        report["width"] = width
    return student.eval(), report


def heal(
    teacher: Any,
    student: Any,
    tokenizer: Any,
    spec: DistillSpec,
    corpus: CorpusText,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train ``student`` on ``teacher`` in memory (no checkpoint); the training figures."""
    stream = token_stream(tokenizer, corpus, min_tokens=spec.seq_len + 2)
    started = time.perf_counter()
    state = Distiller(
        teacher=teacher, student=student, stream=stream, spec=spec, progress=progress
    ).train()
    return {**asdict(state), "wall_s": round(time.perf_counter() - started, 2)}


def prune_checkpoint(
    model: str | None,
    out_dir: str | os.PathLike[str],
    spec: PruneSpec,
    corpus_paths: list[str] | None = None,
    *,
    overwrite: bool = False,
    heal_spec: DistillSpec | None = None,
    progress: ProgressFn | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Prune MODEL (optionally heal it by distillation from itself) into OUT_DIR."""
    source = resolve_model_path(model)
    check_out_dir(out_dir, overwrite=overwrite)
    check_spec(spec, int(load_model_config(source)["num_hidden_layers"]))
    corpus = load_corpus(corpus_paths)
    out = prepare_out_dir(out_dir, overwrite=overwrite)
    _log(log, f"loading {source}")
    tokenizer = load_tokenizer(source)
    original = load_causal_lm(source, dtype="float32")
    _log(log, f"scoring on {corpus.source} and pruning {spec.describe()}")
    pruned, report = prune_model(original, tokenizer, spec, corpus)
    if heal_spec is not None:
        _log(log, f"healing: distilling from the unpruned model ({heal_spec.steps} steps)")
        report["heal"] = heal(original, pruned, tokenizer, heal_spec, corpus, progress)
    return _finish(original, pruned, tokenizer, source, out, report, "prune")


def _finish(
    teacher: Any, student: Any, tokenizer: Any, source: str, out: Path, report: dict, kind: str
) -> dict[str, Any]:
    text = heldout_text_of(source)
    report = {
        "kind": kind,
        "source": source,
        **report,
        "before": model_shape(teacher.config),
        "after": model_shape(student.config),
        "parameters": {"before": parameter_count(teacher), "after": parameter_count(student)},
        "quality": None if text is None else compare_models(teacher, student, tokenizer, text),
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
    }
    save_model(student.to(_checkpoint_dtype(source)), out, source, report)
    return report


def distill_checkpoint(
    teacher: str | None,
    out_dir: str | os.PathLike[str],
    spec: DistillSpec,
    corpus_paths: list[str] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressFn | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Build a student of TEACHER and train it by distillation into OUT_DIR (resumable)."""
    source = resolve_model_path(teacher)
    check_out_dir(out_dir, overwrite=overwrite, resume=resume)
    spec.student_layers(int(load_model_config(source)["num_hidden_layers"]))
    corpus = load_corpus(corpus_paths)
    meta = {"teacher": source, "corpus": corpus.source, "corpus_fingerprint": corpus.fingerprint()}
    previous = _check_resume(Path(out_dir), spec, meta) if resume else None
    out = prepare_out_dir(out_dir, overwrite=overwrite, resume=resume)
    _log(log, f"loading teacher {source}")
    tokenizer = load_tokenizer(source)
    teacher_model = load_causal_lm(source, dtype="float32")
    stream = token_stream(tokenizer, corpus, min_tokens=spec.seq_len + 2)
    if previous is None:
        _log(log, f"building the student ({spec.init} init) on {corpus.source}")
        student, report = build_student(teacher_model, tokenizer, spec, corpus)
    else:
        _log(log, f"resuming from step {previous['state']['step']}")
        student = load_causal_lm(str(checkpoint_path(out) / "student"), dtype="float32")
        report = previous.get("student_init", {})
    meta["student_init"] = report
    trainer = Distiller(teacher=teacher_model, student=student, stream=stream, spec=spec,
                        checkpoint_dir=out / CHECKPOINT_DIR, checkpoint_meta=meta,
                        progress=progress)  # fmt: skip
    if previous is not None:
        trainer.load_trainer_state(checkpoint_path(out), previous["state"])
    state = trainer.train()
    result = {"spec": asdict(spec), "corpus": corpus.source, "student_init": report,
              "training": {**asdict(state), "corpus_tokens": len(stream)}}  # fmt: skip
    result = _finish(teacher_model, trainer.student, tokenizer, source, out, result, "distill")
    for leftover in (out / CHECKPOINT_DIR, out / f"{CHECKPOINT_DIR}.old"):
        shutil.rmtree(leftover, ignore_errors=True)
    return result


def _check_resume(out: Path, spec: DistillSpec, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's metadata when it matches this run; ConfigError naming the mismatch."""
    previous = read_checkpoint_meta(out)
    saved = DistillSpec(**previous["spec"])
    differs = [k for k in ("teacher", "corpus_fingerprint") if previous.get(k) != meta[k]]
    if not spec.resumable_as(saved):
        differs.append("student or training settings")
    if differs:
        raise ConfigError(
            f"the checkpoint in {out} was made with another {', '.join(differs)}; resume with "
            "the same teacher, corpus and settings (steps may change), or start over with "
            "--overwrite"
        )
    return previous
