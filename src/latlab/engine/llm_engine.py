"""LLMEngine: the synchronous step loop (add_request / step / abort / stats)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import torch

from latlab.dtypes import kv_scales
from latlab.engine.block_manager import BlockManager
from latlab.engine.config import EngineConfig
from latlab.engine.detokenizer import IncrementalDetokenizer
from latlab.engine.model_runner import ModelRunner, num_kv_blocks
from latlab.engine.models.config import parse_model_args, read_config_json
from latlab.engine.outputs import EngineStats, RequestOutput, Snapshot
from latlab.engine.sampling_params import SamplingParams
from latlab.engine.scheduler import Scheduler
from latlab.engine.sequence import Sequence
from latlab.engine.spec_decode import PromptLookupConfig, accepted_length, find_draft
from latlab.errors import CapacityError, ConfigError, ModelLoadError, OverloadedError
from latlab.plan.kv import kv_bytes_per_token

_MAX_DRAFT_COOLDOWN = 32  # decode steps a sequence whose drafts keep missing waits at most


class LLMEngine:
    """Owns the model runner, block manager and scheduler; one ``step()`` = one forward pass."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_dir = _local_model_dir(config.model)
        raw = read_config_json(self.model_dir)
        self.model_args = parse_model_args(raw)
        self.model_name = str(config.model) if config.model else self.model_dir.name
        self.max_model_len = self._max_model_len()
        self.tokenizer = _load_tokenizer(self.model_dir)
        kv_dtype = config.kv_dtype(self.model_args.torch_dtype)
        self.kv_bytes_per_token = kv_bytes_per_token(raw, kv_dtype, kv_scales=kv_scales(kv_dtype))
        self.kv_cache_bytes = config.kv_budget_bytes(self.kv_bytes_per_token, self.max_model_len)
        blocks = num_kv_blocks(self.kv_cache_bytes, config.block_size, self.kv_bytes_per_token)
        self.runner = ModelRunner(config, self.model_dir, self.model_args, blocks)
        self.block_manager = BlockManager(blocks, config.block_size, config.enable_prefix_caching)
        self.prompt_lookup = None
        if config.num_speculative_tokens:
            self.prompt_lookup = PromptLookupConfig(
                config.num_speculative_tokens, config.prompt_lookup_max, config.prompt_lookup_min
            )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            self._propose_draft if self.prompt_lookup else None,
        )
        self.eos_token_ids = set(self.model_args.eos_token_ids)
        self._requests: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.spec_draft_tokens_total = 0
        self.spec_accepted_tokens_total = 0
        self.steps_total = 0
        self.step_seconds_total = 0.0

    def _max_model_len(self) -> int:
        args = self.model_args
        limit = args.max_position_embeddings
        if args.sliding_window:  # beyond the window our full attention would differ
            limit = min(limit, args.sliding_window)
        wanted = self.config.max_model_len
        if wanted is not None and wanted > limit:
            raise ConfigError(f"max_model_len={wanted} exceeds the model's limit of {limit}")
        return wanted or limit

    # ---- requests ------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, list) or not all(
            isinstance(t, int) and 0 <= t < self.model_args.vocab_size for t in prompt
        ):
            raise ConfigError(
                "prompt must be a string or a list of token ids within the vocabulary"
            )
        return list(prompt)

    def _check_logit_bias(self, params: SamplingParams) -> None:
        vocab = self.model_args.vocab_size
        outside = [t for t in params.logit_bias or () if t >= vocab]
        if outside:
            raise ConfigError(
                f"logit_bias names token id {outside[0]}, outside the vocabulary (0..{vocab - 1})"
            )

    def check_fits(self, num_prompt_tokens: int, params: SamplingParams) -> None:
        """CapacityError if a request could never run, even alone on an empty engine."""
        if num_prompt_tokens == 0:
            raise ConfigError("prompt is empty: give at least one token")
        total = num_prompt_tokens + params.max_tokens
        if total > self.max_model_len:
            raise CapacityError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({params.max_tokens}) = "
                f"{total} exceeds max_model_len={self.max_model_len}; "
                "shorten the prompt or lower max_tokens"
            )
        blocks = self.block_manager.blocks_needed(total - 1)
        if blocks > self.block_manager.num_blocks:
            raise CapacityError(
                f"request needs {blocks} KV blocks but the whole cache has "
                f"{self.block_manager.num_blocks}; raise kv_cache_bytes or lower max_tokens"
            )

    def make_sequence(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> Sequence:
        """Validate and build a request (no engine state touched: safe from any thread)."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ConfigError("sampling params must be a latlab SamplingParams")
        token_ids = self.tokenize(prompt)
        self.check_fits(len(token_ids), params)
        self._check_logit_bias(params)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        seq = Sequence(rid, prompt if isinstance(prompt, str) else None, token_ids, params)
        if params.seed is not None:
            seq.generator = torch.Generator().manual_seed(params.seed)
        seq.detok = IncrementalDetokenizer(self.tokenizer, token_ids, params.stop_strings)
        if not params.ignore_eos:
            seq.stop_ids = seq.stop_ids.union(self.eos_token_ids)
        seq.length_limit = min(seq.length_limit, self.max_model_len)
        return seq

    def add_sequence(self, seq: Sequence, check_queue: bool = True) -> None:
        if seq.request_id in self._requests:
            raise ConfigError(f"request id {seq.request_id!r} is already in use")
        if check_queue and len(self.scheduler.waiting) >= self.config.max_waiting:
            raise OverloadedError(
                f"the waiting queue is full ({self.config.max_waiting} requests); retry later"
            )
        self._requests[seq.request_id] = seq
        self.scheduler.add(seq)
        self.prompt_tokens_total += seq.num_prompt_tokens

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        check_queue: bool = True,
    ) -> str:
        seq = self.make_sequence(prompt, params, request_id)
        self.add_sequence(seq, check_queue)
        return seq.request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks now; False if it is unknown or done."""
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq, "abort")
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the step ------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward pass, sample; outputs of requests that made progress."""
        start = time.perf_counter()
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        self.runner.follow_load()
        seqs, candidates = self.runner.execute(sched)
        for seq, n in zip(sched.seqs, sched.num_new_tokens, strict=True):
            seq.num_computed_tokens += n - len(seq.draft_token_ids)  # drafts count once accepted
        self.block_manager.register_full_blocks_of(sched.seqs)
        now = time.perf_counter_ns()
        accepted = (
            self._accept(seq, tokens, now) for seq, tokens in zip(seqs, candidates, strict=True)
        )
        outputs = [out for out in accepted if out is not None]
        self.steps_total += 1
        self.step_seconds_total += time.perf_counter() - start
        return outputs

    def _accept(self, seq: Sequence, candidates: list[int], now: int) -> RequestOutput | None:
        """Append the sampled token, or a draft's accepted prefix plus the token after it; the
        step's output (none for an unfinished sequence that wants its final output only)."""
        draft, accepted = seq.draft_token_ids, 0
        if draft:
            seq.draft_token_ids = []
            accepted = accepted_length(draft, candidates)
            self._record_draft(seq, len(draft), accepted)
            new_tokens = []
            for token in candidates[: accepted + 1]:
                new_tokens.append(token)
                if self._append_token(seq, token, now):
                    break
        else:  # one candidate: the sampled token
            new_tokens = candidates
            self._append_token(seq, candidates[0], now)
        if seq.params.logprobs is not None:  # no drafts then: one token, one entry
            seq.logprobs.extend(seq.step_logprobs[: len(new_tokens)])
            seq.step_logprobs = []
        if accepted and not seq.is_finished:
            seq.num_computed_tokens += accepted  # their K/V, written this step, are now valid
            self.block_manager.register_full_blocks(seq)
        if seq.final_output_only:  # 64 outputs a step were ~140 us of an ~18 ms batch-64 step
            if not seq.is_finished:
                return None
            new_tokens = seq.output_token_ids  # its first output: every token is new
        return self.output_of(seq, new_tokens)

    def _propose_draft(self, seq: Sequence, limit: int) -> list[int]:
        """Prompt-lookup draft for requests past min_tokens, in small batches."""
        if seq.num_output_tokens < seq.params.min_tokens or seq.params.adjusts_logits:
            return []  # masks, biases, penalties are per position; drafts would need them per row
        if seq.params.logprobs is not None:
            return []  # logprobs are recorded for one sampled token per step
        if len(self.scheduler.running) > self.config.speculative_max_batch:
            return []  # compute-bound batch: verifying would cost more than it saves
        if seq.draft_cooldown:
            seq.draft_cooldown -= 1
            return []
        return find_draft(seq.token_ids, self.prompt_lookup, limit)

    def _record_draft(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """Count a verified draft; back off exponentially from a sequence whose drafts miss.

        A rejected draft costs a wider forward pass for nothing (and widens every other
        sequence's query in the batch), so text that does not repeat its context stops paying
        for speculation after a few misses: 1, 2, 4, ... up to 32 steps between tries.
        """
        self.spec_draft_tokens_total += drafted
        self.spec_accepted_tokens_total += accepted
        if accepted:
            seq.draft_misses = 0
        else:
            seq.draft_cooldown = min(1 << seq.draft_misses, _MAX_DRAFT_COOLDOWN)
            seq.draft_misses += 1

    def _append_token(self, seq: Sequence, token: int, now: int) -> bool:
        """Add one generated token; True when it finished the request."""
        token_ids = seq.token_ids
        token_ids.append(token)
        self.generation_tokens_total += 1
        if len(token_ids) == seq.num_prompt_tokens + 1:
            seq.metrics.first_token_ns = now
        # A final-output-only request without stop strings reads no text until it finishes:
        # its tokens are decoded then, in one loop (detokenizing per step took ~230 us of a
        # batch-64 step, the same loop at the end ~80 us: the objects are still in cache).
        later = seq.final_output_only and not seq.detok.has_stop_strings
        reason = None
        if (token in seq.stop_ids and seq.num_output_tokens >= seq.params.min_tokens) or (
            not later and seq.detok.append(token)
        ):
            reason = "stop"
        elif len(token_ids) >= seq.length_limit:
            reason = "length"
        if later and reason is not None:  # a stop token is not text, as below
            seq.detok.extend(seq.output_token_ids[: -1 if reason == "stop" else None])
        if reason == "length":
            seq.detok.flush()
        if reason is not None:
            self.scheduler.finish(seq, reason)
            self._requests.pop(seq.request_id, None)
        return reason is not None

    def output_of(self, seq: Sequence, new_token_ids: list[int]) -> RequestOutput:
        """The step's output: the delta, and the cumulative lists as ``Snapshot``s (sliced
        when read), since copying them every step grew with the output's length."""
        finished = seq.is_finished
        new_text = seq.detok.take_new_text(finished)
        params, logprobs, prompt_logprobs = seq.params, seq.logprobs, seq.prompt_logprobs
        return RequestOutput(
            request_id=seq.request_id,
            prompt=seq.prompt,
            prompt_token_ids=seq.prompt_token_ids,
            text=seq.detok.emitted_text,
            token_ids=Snapshot((seq.token_ids, seq.num_prompt_tokens, len(seq.token_ids))),
            new_text=new_text,
            new_token_ids=new_token_ids,
            finished=finished,
            finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens,
            metrics=seq.metrics,
            logprobs=(
                Snapshot((logprobs, 0, len(logprobs))) if params.logprobs is not None else None
            ),
            prompt_logprobs=(
                Snapshot((prompt_logprobs, 0, len(prompt_logprobs)))
                if params.prompt_logprobs is not None
                else None
            ),
        )

    def describe(self) -> dict[str, Any]:
        """The runtime choices (threads, compute dtype, linear kernels) and their reasons."""
        return {"model": self.model_name, **self.runner.describe()}

    def summary(self) -> str:
        """One line for logs: threads, dtypes and kernels with the reasons."""
        d = self.runner.describe()
        follows = "; re-checked every second as other jobs come and go" * d["threads_follow_load"]
        return (
            f"{d['threads']} thread(s) ({d['threads_reason']}{follows}); weights {d['dtype']}, "
            f"compute {d['compute_dtype']}, linear {d['linear']} ({d['reason']}); "
            f"{d['weight_memory_bytes'] / 1e6:,.0f} MB of weights in memory; "
            f"KV {d['kv_cache_dtype']} in {d['kv_cache_pages']}; "
            f"decode layers: {d['decode_layers']}, their weights {d['gemv_weights']}; "
            f"decode batches: {d['decode_batches']}; "
            f"elementwise: {d['step_ops']}; "
            f"weights in huge pages: {d['huge_pages']}"
        )

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks,
            num_free_blocks=bm.num_free_blocks,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions=self.scheduler.num_preemptions_total,
            spec_draft_tokens_total=self.spec_draft_tokens_total,
            spec_accepted_tokens_total=self.spec_accepted_tokens_total,
            steps_total=self.steps_total,
            step_seconds_total=self.step_seconds_total,
            forward_seconds_total=self.runner.forward_seconds_total,
            kv_cache_bytes=bm.num_blocks * self.config.block_size * self.kv_bytes_per_token,
            kv_cache_tokens=bm.num_blocks * self.config.block_size,
        )


def _local_model_dir(model: str | None) -> Path:
    from latlab.model_files import resolve_model_path

    path = Path(resolve_model_path(model))
    if not path.is_dir():
        raise ModelLoadError(
            f"model {model!r} is not a local directory; the engine reads local safetensors "
            "(download it first, e.g. with `hf download`, and pass the path)"
        )
    return path


def _load_tokenizer(model_dir: Path) -> Any:
    from latlab.model_files import load_tokenizer

    return load_tokenizer(str(model_dir))
