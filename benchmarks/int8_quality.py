"""W8A8's quality on the bundled model in bf16: the AMX int8 kernel against fbgemm's.

The engine's held-out logits (16 windows of 128 tokens of the model directory's heldout.txt, as
``latlab optimize`` gates engine recipes) with ``quantization="int8"`` on each kernel, against
the same engine in bf16: top-1 agreement, KL and perplexity. fbgemm is forced by hiding the
AMX int8 kernel from the weight plan.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/int8_quality.py
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock


def main() -> None:
    from transformers import AutoTokenizer

    from latlab.assets import bundled_model_path
    from latlab.optimize.quality import compare_logits, engine_heldout_logits

    path = str(bundled_model_path())
    text = (Path(path) / "heldout.txt").read_text()
    ids = AutoTokenizer.from_pretrained(path)(text)["input_ids"]

    def logits(**options):
        return engine_heldout_logits(path, {"num_threads": 2, **options}, ids, 128, 16)

    base = logits(dtype="bfloat16")
    runs = {"AMX int8": logits(dtype="bfloat16", quantization="int8")}
    with mock.patch("latlab.engine.weights.amx_int8", lambda wait=False: (None, "hidden")):
        runs["fbgemm"] = logits(dtype="bfloat16", quantization="int8")
    for name, candidate in runs.items():
        c = compare_logits(base[0], candidate[0], base[1])
        print(f"{name}: {c.positions} positions, top-1 {c.top1_agreement:.3f}, "
              f"KL {c.mean_kl:.2e} (p99 {c.p99_kl:.2e}), "
              f"perplexity {c.baseline_perplexity:.3f} -> {c.perplexity:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
