"""The 8-bit KV caches' quality on the bundled model: int8 with row scales against fp8 e5m2.

The engine's held-out logits (16 windows of 128 tokens of the model directory's heldout.txt, as
``latlab optimize`` gates engine recipes) with each ``kv_cache_dtype``, against the same engine
with its cache in the weights' dtype, for the model loaded in float32 and in bf16: top-1
agreement, KL and perplexity. Each window is prefilled in one pass, so every position's
attention reads its keys and values back from the quantized cache.

    nice -n 10 .venv/bin/python benchmarks/kv_cache_quality.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16", help="the model's dtypes")
    p.add_argument("--kv-cache-dtypes", default="int8,fp8_e5m2,bfloat16")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def main() -> None:
    from transformers import AutoTokenizer

    from latlab.assets import bundled_model_path
    from latlab.optimize.quality import compare_logits, engine_heldout_logits

    args = parse_args()
    path = str(bundled_model_path())
    text = (Path(path) / "heldout.txt").read_text()
    ids = AutoTokenizer.from_pretrained(path)(text)["input_ids"]
    rows = []
    for dtype in args.dtypes.split(","):

        def logits(kv: str, dtype: str = dtype):
            options = {"num_threads": 2, "dtype": dtype, "kv_cache_dtype": kv}
            return engine_heldout_logits(path, options, ids, 128, 16)

        base = logits("auto")
        for kv in args.kv_cache_dtypes.split(","):
            if kv == dtype:
                continue
            c = compare_logits(base[0], logits(kv)[0], base[1])
            rows.append({"dtype": dtype, "kv_cache_dtype": kv, "positions": c.positions,
                         "top1": c.top1_agreement, "mean_kl": c.mean_kl, "p99_kl": c.p99_kl,
                         "perplexity": [c.baseline_perplexity, c.perplexity]})  # fmt: skip
            print(f"model {dtype}, KV {kv}: {c.positions} positions, top-1 "
                  f"{c.top1_agreement:.3f}, KL {c.mean_kl:.2e} (p99 {c.p99_kl:.2e}), "
                  f"perplexity {c.baseline_perplexity:.3f} -> {c.perplexity:.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
