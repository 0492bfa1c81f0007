"""Distillation: the loss, the student's size rules, training that lowers the KL to the teacher,
and checkpoints that survive Ctrl-C and resume to the same place."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from latlab.compress.api import build_student, distill_checkpoint, heal, spread_layers
from latlab.compress.corpus import load_corpus
from latlab.compress.distill import DistillInterrupted, DistillSpec, distill_loss, step_lr
from latlab.errors import ConfigError
from latlab.model_files import load_causal_lm, load_tokenizer

FAST = {"batch_size": 2, "seq_len": 32, "lr": 3e-3}


def test_loss_is_cross_entropy_alone_when_student_equals_teacher() -> None:
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    loss, kl, ce = distill_loss(logits, logits.clone(), targets, 2.0, 0.5)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert float(ce) == pytest.approx(float(expected))
    assert float(loss) == pytest.approx(0.5 * float(expected))
    _, kl_far, _ = distill_loss(torch.randn(2, 5, 11), logits, targets, 2.0, 0.5)
    assert float(kl_far) > 0.01


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (DistillSpec(layers=5), "larger than its teacher"),
        (DistillSpec(layers=4), "as large as its teacher"),
        (DistillSpec(layers=0), "at least 1 layer"),
    ],
)
def test_student_size_rules(spec: DistillSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec.student_layers(4)


def test_defaults_and_settings_checks() -> None:
    assert DistillSpec().student_layers(4) == 2
    assert DistillSpec(layers=4, mlp_fraction=0.5).student_layers(4) == 4
    assert spread_layers(4, 2) == [0, 3] and spread_layers(12, 4) == [0, 4, 7, 11]
    with pytest.raises(ConfigError, match="kl_weight"):
        DistillSpec(kl_weight=1.5)
    with pytest.raises(ConfigError, match="init"):
        DistillSpec(init="random")


def test_the_learning_rate_warms_up_from_the_first_step_and_decays_to_a_tenth() -> None:
    spec = DistillSpec(steps=100, lr=1e-3, warmup_fraction=0.1)
    rates = [step_lr(spec, step, 0.0) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4)  # not 0: the first step trains
    assert rates[9] == pytest.approx(1e-3) and max(rates) == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(1e-4) and rates[50] > rates[90]
    timed = DistillSpec(steps=100_000, lr=1e-3, warmup_fraction=0.1, time_budget_s=100.0)
    assert 0 < step_lr(timed, 0, 0.0) < step_lr(timed, 5, 5.0) == pytest.approx(5e-4)


@pytest.mark.parametrize("init", ["prune", "spread"])
def test_training_brings_the_student_closer_to_its_teacher(
    docs_corpus: Path, four_layer_dir: Path, init: str
) -> None:
    from latlab.compress.evaluate import compare_models

    tokenizer = load_tokenizer(None)  # the bundled model: a trained teacher worth imitating
    teacher = load_causal_lm(None, dtype="float32")
    corpus = load_corpus([docs_corpus])
    spec = DistillSpec(layers=2, init=init, steps=40, batch_size=4, seq_len=64, lr=1e-3)
    student, report = build_student(teacher, tokenizer, spec, corpus)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert report.get("kept_layers", [0, 3]) == [0, 3]
    text = (four_layer_dir / "heldout.txt").read_text(encoding="utf-8")  # not trained on
    before = compare_models(teacher, student, tokenizer, text, window=32, windows=4)
    stats = heal(teacher, student, tokenizer, spec, corpus)
    after = compare_models(teacher, student, tokenizer, text, window=32, windows=4)
    assert stats["step"] == 40 and stats["tokens"] == 40 * 4 * 64
    assert after["mean_kl"] < 0.8 * before["mean_kl"], (before, after)
    assert after["top1_agreement"] > before["top1_agreement"], (before, after)


def test_checkpoint_run_writes_a_model_and_removes_its_checkpoint(
    four_layer_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"
    report = distill_checkpoint(
        str(four_layer_dir), out, DistillSpec(layers=3, steps=3, **FAST), [str(corpus_file)]
    )
    assert report["training"]["step"] == 3 and report["after"]["num_hidden_layers"] == 3
    assert report["quality"]["top1_agreement"] > 0  # scored on the teacher's heldout.txt
    assert not (out / "checkpoint").exists()
    saved = json.loads((out / "latlab-compress.json").read_text())
    assert saved["kind"] == "distill" and saved["corpus"] == str(corpus_file)
    assert load_causal_lm(out).config.num_hidden_layers == 3
    with pytest.raises(ConfigError, match="exists and is not empty: pass --overwrite"):
        distill_checkpoint(str(four_layer_dir), out, DistillSpec(layers=3, steps=1, **FAST),
                           [str(corpus_file)])  # fmt: skip
    assert (out / "model.safetensors").is_file()  # refused: nothing was touched


def test_ctrl_c_keeps_a_checkpoint_that_resumes(
    four_layer_dir: Path, corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"
    spec = DistillSpec(layers=2, steps=6, checkpoint_every_s=3600, **FAST)

    def press_ctrl_c(progress) -> None:
        if progress.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # deferred to the end of the step

    with pytest.raises(DistillInterrupted, match=r"step 2 of 6.*--resume"):
        distill_checkpoint(str(four_layer_dir), out, spec, [str(corpus_file)],
                           progress=press_ctrl_c)  # fmt: skip
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] == 2 and not (out / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="another corpus_fingerprint"):
        distill_checkpoint(str(four_layer_dir), out, spec, [str(four_layer_dir / "heldout.txt")],
                           resume=True)  # fmt: skip
    with pytest.raises(ConfigError, match="another student or training settings"):
        distill_checkpoint(str(four_layer_dir), out, DistillSpec(layers=3, steps=6, **FAST),
                           [str(corpus_file)], resume=True)  # fmt: skip
    steps_seen: list[int] = []
    report = distill_checkpoint(str(four_layer_dir), out, spec, [str(corpus_file)], resume=True,
                                progress=lambda p: steps_seen.append(p.step))  # fmt: skip
    assert steps_seen == [3, 4, 5, 6] and report["training"]["step"] == 6
    assert report["training"]["tokens"] == 6 * 2 * 32


def test_resume_without_a_checkpoint_is_refused(four_layer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        distill_checkpoint(str(four_layer_dir), tmp_path / "empty", DistillSpec(), resume=True)


def test_healing_twice_from_the_same_teacher_trains_both_students(
    four_layer_dir: Path, corpus_file: Path
) -> None:
    """In the lab the teacher is the baseline model, and later recipes copy it: training one
    student must leave it so the next copy trains too (every parameter, none frozen)."""
    import copy

    teacher = load_causal_lm(four_layer_dir, dtype="float32")
    tokenizer = load_tokenizer(four_layer_dir)
    corpus = load_corpus([corpus_file])
    spec = DistillSpec(layers=None, steps=2, **FAST)  # step 1 is warm-up at learning rate 0
    for _ in range(2):
        student = copy.deepcopy(teacher)
        before = [p.detach().clone() for p in student.parameters()]
        assert heal(teacher, student, tokenizer, spec, corpus)["step"] == 2
        changed = [not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True)]
        assert all(changed)
    assert all(p.requires_grad for p in teacher.parameters())
