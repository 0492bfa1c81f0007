"""Offline batch generation: ``LLM(model).generate(prompts, params)`` as in vLLM."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

from latlab.engine.config import EngineConfig
from latlab.engine.llm_engine import LLMEngine
from latlab.engine.outputs import RequestOutput
from latlab.engine.sampling_params import SamplingParams
from latlab.errors import ConfigError


class LLM:
    """Load a model once, then generate for many prompts with continuous batching."""

    def __init__(self, model: str | None = None, **engine_config: Any) -> None:
        self.engine = LLMEngine(EngineConfig.from_options(model=model, **engine_config))

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One finished output per prompt, in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt (text or token ids)
        prompts = list(prompts)
        params = _params_per_prompt(sampling_params, len(prompts))
        seqs = [self.engine.make_sequence(p, sp) for p, sp in zip(prompts, params, strict=True)]
        for seq in seqs:
            seq.final_output_only = True  # the steps in between are not looked at
            self.engine.add_sequence(seq, check_queue=False)
        done: dict[str, RequestOutput] = {}
        bar = _progress(len(seqs)) if use_tqdm else None
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [done[s.request_id] for s in seqs]


def _params_per_prompt(
    params: SamplingParams | Seq[SamplingParams] | None, count: int
) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ConfigError(f"got {len(params)} sampling params for {count} prompts")
    return params


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req")
