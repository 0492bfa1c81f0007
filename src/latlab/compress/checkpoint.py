"""Writing a compressed model as an ordinary model directory, and never over one by accident.

A pruned or distilled model is saved like any Hugging Face checkpoint (``config.json`` whose
``num_hidden_layers``/``intermediate_size``/head counts match the weights, ``model.safetensors``,
the source model's tokenizer files byte for byte, its ``heldout.txt`` so the lab can score the
result) plus ``latlab-compress.json``, which records what was done to it and why. Files are
written to a temporary directory inside the target and moved into place, so an interrupted
save leaves no half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError

REPORT_FILE = "latlab-compress.json"
CHECKPOINT_DIR = "checkpoint"  # a distillation in progress (see distill.py)
# Copied from the source model as they are: the student speaks the teacher's tokenizer.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "heldout.txt",
)


def check_out_dir(path: str | os.PathLike[str], *, overwrite: bool, resume: bool = False) -> Path:
    """The output directory as a Path; ConfigError when it may not be written (nothing changes).

    ``resume`` needs a directory holding a distillation checkpoint; a directory holding
    anything else is refused unless ``overwrite`` is given.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file; give a directory")
    if resume:
        if not any((out / name).is_dir() for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old")):
            raise ConfigError(
                f"nothing to resume: {out} holds no distillation checkpoint ({CHECKPOINT_DIR}/); "
                "run without --resume to start one"
            )
        return out
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = (
            " or --resume to continue the distillation checkpointed there"
            if (out / CHECKPOINT_DIR).is_dir()
            else ""
        )
        raise ConfigError(
            f"output directory {out} exists and is not empty: pass --overwrite to replace "
            f"it{hint}, or choose another directory"
        )
    return out


def prepare_out_dir(path: str | os.PathLike[str], *, overwrite: bool, resume: bool = False) -> Path:
    """Check the directory, then empty it (``overwrite``) and create it; call once every other
    input has been checked: this is the only place latlab deletes a user's files."""
    out = check_out_dir(path, overwrite=overwrite, resume=resume)
    if not resume and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_model(
    model: Any, out_dir: str | os.PathLike[str], source_dir: str | None, report: dict[str, Any]
) -> Path:
    """Weights, config, the source's tokenizer and held-out text, and the report, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".saving-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        if source_dir is not None:
            for name in SIDE_FILES:
                source = Path(source_dir) / name
                if source.is_file():
                    shutil.copyfile(source, staging / name)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
