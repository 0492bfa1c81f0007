"""Where plain greedy output first changes when only the batch shape changes (the bf16 anchor).

Speculative decoding in bf16 changes greedy tokens where two are within rounding of each other
(docs/engine.md, "What identical means"). This script measures the same effect without any
speculation: the same prompts decoded one at a time and all together, first differing token
per prompt, in the given dtype. In float32 the outputs should agree throughout.

    .venv/bin/python benchmarks/greedy_drift.py --dtype bfloat16
    .venv/bin/python benchmarks/greedy_drift.py --dtype float32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = [
    "def read_config(path):\n    return json.load(f)\n\n" * 2 + "def write_config(path, config):\n",
    "Return a new list of the items in the list.\n" * 4,
    "The module provides functions for reading and writing files.\n",
]


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--output-len", type=int, default=128)
    args = p.parse_args(argv)

    from engine_speed import ensure_model  # this folder's script: builds the reference model

    from latlab.engine import LLM, SamplingParams

    llm = LLM(str(ensure_model(args.model)), dtype=args.dtype)
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    alone = [llm.generate([prompt], params)[0].token_ids for prompt in PROMPTS]
    together = [out.token_ids for out in llm.generate(PROMPTS, params)]
    diffs = [first_difference(a, b) for a, b in zip(alone, together, strict=True)]
    print(json.dumps({"dtype": args.dtype, "output_len": args.output_len,
                      "first_difference_batch_1_vs_3": diffs}))  # fmt: skip


if __name__ == "__main__":
    main()
