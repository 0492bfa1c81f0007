"""Turns a scheduled step into tensors, runs the model over the paged KV cache, samples.

The KV cache is one K and one V tensor per layer, [num_blocks, kv_heads, block_size,
head_dim] (a block's heads side by side: kernels.h); its block count comes from the byte
budget and latlab.plan.kv (the planner's formula), so ``latlab plan`` and the engine agree on
capacity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latlab.dtypes import dtype_name, kv_torch_dtype, torch_dtype
from latlab.engine import kv_int8
from latlab.engine.block_tables import BlockTables
from latlab.engine.config import EngineConfig
from latlab.engine.hardware import (
    ThreadChoice,
    ThreadFollower,
    choose_threads,
    cpu_capabilities,
    other_load,
    usable_cores,
)
from latlab.engine.huge_pages import HugePages, move_to_huge_pages, zeros_in_huge_pages
from latlab.engine.kernels import (
    BATCH_INT8,
    BATCH_MAX_ROWS,
    DECODE_MAX_ROWS,
    StepOps,
    batch_decode_model,
    decode_model,
    f32_batch_decode_model,
    paged_decode_attention,
    step_ops,
)
from latlab.engine.models.config import ModelArgs
from latlab.engine.models.gemv_blocks import GemvBlocks, block_gemv_weights
from latlab.engine.models.llama import AttentionMetadata, load_llama
from latlab.engine.models.packed_linear import drop_plain_weights
from latlab.engine.outputs import Logprob, PositionLogprobs
from latlab.engine.sampler import Sampler, argmax_only
from latlab.engine.scheduler import SchedulerOutput
from latlab.engine.sequence import Sequence
from latlab.engine.steady_batch import SteadyBatch, SteadyInputs
from latlab.engine.weights import (
    PACKED_KERNELS,
    WeightPlan,
    apply_weight_plan,
    held_bytes,
    plan_weights,
)
from latlab.errors import CapacityError, ConfigError

logger = logging.getLogger(__name__)


def num_kv_blocks(budget_bytes: int, block_size: int, bytes_per_token: int) -> int:
    return budget_bytes // (block_size * bytes_per_token)


def _set_threads(config: EngineConfig) -> ThreadChoice:
    """Set torch's thread count for the process (CPU only), as ``choose_threads`` decides."""
    if config.device != "cpu":
        return ThreadChoice(
            threads=torch.get_num_threads(), reason="not a CPU", omp_proc_bind=None,
            omp_wait_policy=None,
        )  # fmt: skip
    choice = choose_threads(config.num_threads, usable_cores(), other_load())
    torch.set_num_threads(choice.threads)
    return choice


def _thread_follower(config: EngineConfig, choice: ThreadChoice) -> ThreadFollower | None:
    """Threads follow the machine's load only where the engine chose them (CPU, unset)."""
    if config.device != "cpu" or config.num_threads is not None or usable_cores() < 2:
        return None
    return ThreadFollower(threads=choice.threads)


class ModelRunner:
    def __init__(
        self, config: EngineConfig, model_dir: Path, args: ModelArgs, num_blocks: int
    ) -> None:
        if config.device != "cpu" and not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} is not available here; use device='cpu'")
        self.threads = _set_threads(config)
        self.follower = _thread_follower(config, self.threads)
        self.config = config
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        self.dtype = torch_dtype(config.weight_dtype(args.torch_dtype))
        self.kv_dtype = kv_torch_dtype(config.kv_dtype(args.torch_dtype))
        if num_blocks < 1:
            raise CapacityError("the KV cache budget holds no block at all; raise kv_cache_bytes")
        self.weight_plan = self._prepare_model(model_dir, args)
        self.decode_kernel, self.attention_reason = self._decode_kernel()
        self.step_ops, self.step_ops_reason = self._step_ops()
        decoder_class, self.decode_reason = self._native_decode()
        self.gemv_blocks = self._gemv_layout(decoder_class is not None)
        self.weight_memory_bytes = held_bytes(self.model)  # fixed from here on
        self.packed_linear = self.weight_plan.linear in PACKED_KERNELS
        shape = (num_blocks, args.num_key_value_heads, config.block_size, args.head_dim)
        self.kv_caches, self.kv_cache_pages = self._kv_caches(shape, args.num_hidden_layers)
        self.native_step: Callable[..., torch.Tensor] | None = None  # decode steps of 1-4 rows
        if decoder_class is not None:
            self.native_step = self.model.native_decoder(decoder_class, self.kv_caches).step
        self.batch_decoder, self.batch_reason = self._native_batch()  # 5-64 rows
        self.native_batch_step = None if self.batch_decoder is None else self.batch_decoder.step
        argmax = self.step_ops.greedy_argmax if self.step_ops is not None else None
        self.sampler = Sampler(seed=config.seed, argmax=argmax)
        self.block_tables = BlockTables(config.max_num_seqs)
        self.steady = SteadyBatch(
            block_size=self.block_size, tables=self.block_tables,
            decode_inputs=self.step_ops.decode_inputs if self.step_ops is not None else None,
        )  # fmt: skip
        self._all_rows: dict[int, torch.Tensor] = {}  # logits rows 0..b-1, by batch size
        self.forward_seconds_total = 0.0  # the model's forward passes (EngineStats)
        self._forward = self.model.forward
        if config.compile:
            self._forward = torch.compile(self.model.forward, dynamic=True)

    def _prepare_model(self, model_dir: Path, args: ModelArgs) -> WeightPlan:
        """Load the weights, then pack or quantize them as planned for this CPU."""
        config = self.config
        plan = plan_weights(
            dtype=self.dtype,
            device=self.device,
            quantization=config.quantization,
            packed_linear=config.packed_linear,
            compile=config.compile,
            caps=cpu_capabilities(),
            max_rows=config.max_num_seqs,
        )
        self.model = load_llama(model_dir, args, self.dtype, config.device)
        plan = apply_weight_plan(self.model, plan, batch_hint=config.max_num_seqs)
        self.huge_pages = self._huge_pages()
        return plan

    def _kv_caches(
        self, shape: tuple[int, ...], layers: int
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
        """Each layer's K and V cache, zeroed, and the pages they are in: on CPU one huge-page
        arena wherever the weights may use huge pages (decode attention reads scattered
        blocks; huge_pages.py)."""
        huge = (
            self.config.huge_pages is not False
            and self.device.type == "cpu"
            and self.huge_pages.available
        )
        flat = self._zero_caches(2 * layers, shape, zeros_in_huge_pages if huge else None)
        if huge:
            pages = "huge pages (memory madvise'd for 2 MiB pages)"
        else:
            pages = "4 KiB pages" if self.device.type == "cpu" else f"{self.device.type} memory"
        return [(flat[2 * i], flat[2 * i + 1]) for i in range(layers)], pages

    def _zero_caches(
        self, count: int, shape: tuple[int, ...], allocate: Callable | None = None
    ) -> list[torch.Tensor]:
        """``count`` zeroed caches of ``shape`` in the KV dtype (an int8 cache with its row
        scales, kv_int8.py); ``allocate(count, shape, dtype)`` where not plain memory."""
        if self.kv_dtype == torch.int8:
            return kv_int8.zeros(count, shape, self.device, allocate)
        if allocate is not None:
            return allocate(count, shape, self.kv_dtype)
        return [torch.zeros(shape, dtype=self.kv_dtype, device=self.device) for _ in range(count)]

    def _huge_pages(self) -> HugePages:
        """Move the weights into huge-page memory where wanted and possible (CPU), say why."""
        wanted = self.config.huge_pages
        if wanted is False or self.device.type != "cpu":
            why = "huge_pages=False" if wanted is False else "not a CPU"
            return HugePages(moved_bytes=0, reason=f"off: {why}")
        moved = move_to_huge_pages(self.model)
        if wanted and not moved.available:
            raise ConfigError(f"huge_pages=True but {moved.reason}")
        return moved

    def _gemv_layout(self, native_decode: bool) -> GemvBlocks:
        """The plain weights kept beside packed copies are read only by the native decode
        steps: released without them, laid out in GEMV blocks for them."""
        if not self.weight_plan.keep_plain:
            why = "the plan's own (no plain copies beside packed ones)"
            return GemvBlocks(layers=0, bytes=0, reason=why)
        if not native_decode:
            drop_plain_weights(self.model)
            return GemvBlocks(layers=0, bytes=0, reason="released (no native decode steps)")
        return block_gemv_weights(self.model)

    def _decode_kernel(self) -> tuple[Callable[..., torch.Tensor] | None, str]:
        """The native paged decode attention where wanted and available (CPU), and why."""
        wanted = self.config.native_attention
        if wanted is False:
            return None, "native_attention=False: gathered K/V and batched matmuls"
        if self.device.type != "cpu":
            return None, "not a CPU: gathered K/V and batched matmuls"
        if self.config.compile:
            return None, "compile=True: gathered K/V and batched matmuls (traceable)"
        kernel = paged_decode_attention(wait=bool(wanted))  # auto: only a finished build
        if kernel.fn is None and wanted:
            raise ConfigError(f"native_attention=True but {kernel.reason}")
        return kernel.fn, kernel.reason

    def _step_ops(self) -> tuple[StepOps | None, str]:
        """The fused elementwise ops (same build and switch as the native attention), and why."""
        if self.decode_kernel is None:
            return None, f"torch ops ({self.attention_reason})"
        ops, reason = step_ops(wait=False)
        return ops, reason if ops is not None else f"torch ops ({reason})"

    def _native_decode(self) -> tuple[type | None, str]:
        """The native decode step's class for decode steps of 1-4 rows, where wanted and
        possible (CPU, native attention, plain float32 / bf16 or weight-only int8 linears), and
        why."""
        wanted = self.config.native_decode
        why_not = "native_decode=False" if wanted is False else self._why_not_native()
        if why_not is not None:
            if wanted:
                raise ConfigError(f"native_decode=True but {why_not}")
            return None, f"torch ops per layer: {why_not}"
        decoder = decode_model(wait=bool(wanted))
        if decoder.fn is None and wanted:
            raise ConfigError(f"native_decode=True but {decoder.reason}")
        return decoder.fn, decoder.reason

    def _native_batch(self) -> tuple[Any | None, str]:
        """The one-call decode step for 5-64 rows (the native ``BatchDecodeModel`` on AMX tiles,
        or ``F32BatchDecodeModel`` on the float32 panels: ``step``, and ``time_phases`` /
        ``phase_seconds`` for where its time goes), where the plan packed every linear for the
        AMX kernels (bf16 or W8A8 int8) or the AVX2 panels (float32) (the step-ops path's
        numbers, bit for bit), and why."""
        if self.config.native_decode is False:
            return None, "native_decode=False"
        if self.config.max_num_seqs <= DECODE_MAX_ROWS:
            return None, f"max_num_seqs <= {DECODE_MAX_ROWS}"
        if self.step_ops is None:
            return None, self.step_ops_reason  # the kernels are not built, or are turned off
        if self.weight_plan.linear not in ("amx-packed", "int8", "f32-panels"):
            return None, f"the step ops per op ({self.weight_plan.linear} linears)"
        tensors, why_not = self.model.batch_decoder_tensors(self.kv_caches)
        panels = self.weight_plan.linear == "f32-panels"
        kernel = (f32_batch_decode_model if panels else batch_decode_model)(wait=False)
        if tensors is None or kernel.fn is None:
            return None, why_not or kernel.reason
        model, layers = tensors
        attn = self.model.layers[0].self_attn
        decoder = kernel.fn(model, layers, attn.num_heads, self.model.norm.eps, attn.scale)
        return decoder, BATCH_INT8 if self.weight_plan.linear == "int8" else kernel.reason

    def _why_not_native(self) -> str | None:
        plan, dtype = self.weight_plan, self.model.embed_tokens.weight.dtype
        if self.decode_kernel is None:
            return f"no native attention ({self.attention_reason})"
        if not (plan.linear in ("plain", "int8-weight-only") or plan.keep_plain):
            return f"{plan.linear} linears (the native GEMV reads plain or weight-only int8 ones)"
        if dtype not in (torch.float32, torch.bfloat16):
            return f"{dtype_name(dtype)} weights (the native GEMV reads float32, bf16 or int8)"
        return None

    def describe(self) -> dict:
        """What the runner chose (threads, dtypes, linear kernels) and why: the start-up report."""
        caps = cpu_capabilities()
        return {
            "device": str(self.device),
            "cpu": caps.as_dict() if self.device.type == "cpu" else None,
            "threads": torch.get_num_threads(),
            "threads_reason": self.threads.reason,
            "omp_proc_bind": self.threads.omp_proc_bind,
            "omp_wait_policy": self.threads.omp_wait_policy,
            "threads_follow_load": self.follower is not None,
            "thread_changes": self.follower.changes if self.follower is not None else 0,
            "kv_cache_dtype": dtype_name(self.kv_dtype),
            "kv_cache_pages": self.kv_cache_pages,
            "decode_attention": self.attention_reason,
            "decode_layers": self.decode_reason,
            "decode_batches": self.batch_reason,
            "step_ops": self.step_ops_reason,
            "weight_memory_bytes": self.weight_memory_bytes,
            **self.huge_pages.as_dict(),
            **self.gemv_blocks.as_dict(),
            **self.weight_plan.as_dict(),
        }

    def follow_load(self) -> None:
        """Between steps: fewer threads when another job takes a core, more when it leaves."""
        if self.follower is None:
            return
        threads = self.follower.check()
        if threads is not None:
            torch.set_num_threads(threads)
            logger.info("engine threads -> %d: other processes' load changed", threads)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[list[Sequence], list[list[int]]]:
        """Run one step; returns the sequences that got new tokens and their candidates.

        A sequence's candidates are one sampled token, or, when it carried a draft, the token
        after each of its inputs (len(draft) + 1: greedy, or speculative sampling for random
        requests, which stops at the first rejection); the engine keeps the matching prefix
        plus one.
        """
        inputs = self._prepare(sched)
        if inputs is None:
            return [], []
        tensors, sampling_seqs, last_rows, prompt_rows, greedy_only = inputs
        start = time.perf_counter()
        logits = self._forward(*tensors)
        self.forward_seconds_total += time.perf_counter() - start
        if greedy_only:  # a repeated step that wants each row's argmax and nothing else
            sampled = self.sampler.greedy(logits)
            self.steady.record(sampled)
            return sampling_seqs, [[t] for t in sampled.tolist()]
        if prompt_rows:  # rows past the sampling ones: prompt positions whose logprobs we keep
            split = logits.shape[0] - sum(len(targets) for _, targets in prompt_rows)
            record_prompt_logprobs(logits[split:], prompt_rows)
            logits = logits[:split]
        wanted = [i for i, s in enumerate(sampling_seqs) if s.params.logprobs is not None]
        # Raw distributions, before the sampler masks anything (as vLLM reports them).
        raw = (
            torch.log_softmax(logits[[last_rows[i] for i in wanted]].float(), -1)
            if wanted
            else None
        )
        candidates, sampled = self._candidates(logits, sampling_seqs, last_rows)
        if sampled is not None:  # one token a sequence: the next step may repeat this one
            self.steady.record(sampled)
        if raw is not None:
            record_sampled_logprobs(raw, [sampling_seqs[i] for i in wanted],
                                    [candidates[i] for i in wanted])  # fmt: skip
        return sampling_seqs, candidates

    def _candidates(
        self, logits: torch.Tensor, sampling_seqs: list[Sequence], last_rows: list[int]
    ) -> tuple[list[list[int]], torch.Tensor | None]:
        """Each sequence's candidates; with no drafts, also the sampled tokens as a tensor."""
        if len(last_rows) == logits.shape[0]:  # no drafts: one row per sequence
            sampled = self.sampler(logits, sampling_seqs)
            return [[t] for t in sampled.tolist()], sampled
        sampled = self.sampler(logits[last_rows], sampling_seqs).tolist()
        greedy = self.sampler.greedy(logits).tolist()
        candidates = []
        for seq, row, token in zip(sampling_seqs, last_rows, sampled, strict=True):
            draft = seq.draft_token_ids
            if draft and seq.params.temperature > 0.0:
                rows = logits[row - len(draft) : row + 1]
                candidates.append(self.sampler.verify_draft(rows, draft, seq))
            else:
                candidates.append([*greedy[row - len(draft) : row], token])
        return candidates, None

    @torch.inference_mode()
    def score(self, token_ids: list[int]) -> torch.Tensor:
        """float32 logits [len, vocab] after every position of ``token_ids``.

        One prefill into scratch KV blocks of its own, so the engine's cache, its prefix
        cache and running requests are untouched (quality checks compare these logits).
        """
        n, bs = len(token_ids), self.block_size
        blocks = -(-n // bs)
        shape = (blocks, *self.kv_caches[0][0].shape[1:])
        flat = self._zero_caches(2 * len(self.kv_caches), shape)
        caches = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(self.kv_caches))]
        table = torch.arange(blocks, dtype=torch.long).unsqueeze(0)
        pos = torch.arange(n, device=self.device)  # the positions, and the slots in its blocks
        meta = self._metadata([n], pos, [0], pos, table)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        rows = torch.arange(n, device=self.device)
        return self._forward(ids, pos, caches, meta, rows).float()

    def _prepare(self, sched: SchedulerOutput):
        """The step's model inputs, the sampling sequences and their last logits rows, the
        prompt-logprob rows, and whether a repeated step (``_steady_inputs``) wants argmaxes."""
        steady = self.steady.take(sched.seqs, sched.num_new_tokens)
        if steady is not None:
            return self._steady_inputs(sched, steady)
        bs = self.block_size
        ends: list[int] = []  # per sequence, its tokens with K/V after this step
        drafted = False
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        tables: list[list[int]] = []  # each sequence's block table (the list itself)
        needed: list[int] = []  # of it, the blocks this step's tokens reach
        logits_rows: list[int] = []
        last_rows: list[int] = []  # per sampled sequence, its last row among logits_rows
        sampling: list[Sequence] = []
        q_starts: list[int] = []
        prompt_rows: list[tuple[Sequence, list[int]]] = []  # (seq, the tokens its rows predict)
        prompt_inputs: list[int] = []  # their rows among the inputs
        for seq, n in zip(sched.seqs, sched.num_new_tokens, strict=True):
            draft = seq.draft_token_ids
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            if seq.params.prompt_logprobs is not None:
                rows, targets = _prompt_logprob_rows(seq, start, end, len(input_ids))
                if rows:
                    prompt_inputs.extend(rows)
                    prompt_rows.append((seq, targets))
            q_starts.append(len(input_ids))
            table = seq.block_table
            if n == 1 and not draft:  # a decode step: one token, no ranges to build
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                input_ids.extend(seq.token_ids[start : end - len(draft)])
                input_ids.extend(draft)
                positions.extend(range(start, end))
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            tables.append(table)
            needed.append(-(-end // bs))
            ends.append(end)
            drafted = drafted or bool(draft)
            if end - len(draft) == seq.num_tokens:
                logits_rows.extend(range(len(input_ids) - 1 - len(draft), len(input_ids)))
                last_rows.append(len(logits_rows) - 1)
                sampling.append(seq)
        if not sampling and not input_ids:
            return None
        logits_rows.extend(prompt_inputs)
        block_tables = self.block_tables.build(tables, needed)
        dev = self.device
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        slot_mapping = torch.tensor(slots, dtype=torch.long, device=dev)
        meta = self._metadata(sched.num_new_tokens, pos, q_starts, slot_mapping, block_tables)
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        rows = torch.tensor(logits_rows, dtype=torch.long, device=dev)
        if not drafted and len(sampling) == len(sched.seqs):  # the next step may repeat it
            self._expect_repeat(sched.seqs, ends)
        return (ids, pos, self.kv_caches, meta, rows), sampling, last_rows, prompt_rows, False

    def _expect_repeat(self, seqs: list[Sequence], ends: list[int]) -> None:
        """Every sequence of this step samples one token: record what a repeat of it needs."""
        greedy_only = argmax_only(seqs) and not any_logprobs(seqs)
        self.steady.expect(seqs=seqs, ends=ends, greedy_only=greedy_only)

    def _steady_inputs(self, sched: SchedulerOutput, steady: SteadyInputs):
        """``_prepare``'s answer for a step that repeats the last one (steady_batch.py): every
        sequence decodes one token and samples, without reading a sequence."""
        dev, b = self.device, len(sched.seqs)
        pos, slots = steady.positions.to(dev), steady.slots.to(dev)
        meta = self._metadata(sched.num_new_tokens, pos, None, slots, steady.block_tables,
                              seq_lens=steady.seq_lens.to(dev))  # fmt: skip
        rows = self._all_rows.get(b)
        if rows is None:
            rows = self._all_rows[b] = torch.arange(b, device=dev)
        tensors = (steady.input_ids, pos, self.kv_caches, meta, rows)
        return tensors, sched.seqs, list(range(b)), [], steady.greedy_only

    def _metadata(
        self, counts, positions, q_starts, slots, block_tables, seq_lens=None
    ) -> AttentionMetadata:
        """``positions`` and ``slots``: [tokens] int64 on the device; ``block_tables``: [batch,
        max_blocks] int64 on the CPU, rows zero-padded; ``q_starts`` (a list) where a sequence
        has more than one new token; ``seq_lens`` (decode steps) if known."""
        dev = self.device
        if dev.type != "cpu":
            block_tables = block_tables.to(dev)
        max_q, b = max(counts), len(counts)
        if max_q == 1 and self.decode_kernel is not None:
            step = self.native_step if b <= DECODE_MAX_ROWS else None
            if DECODE_MAX_ROWS < b <= BATCH_MAX_ROWS:
                step = self.native_batch_step
            return AttentionMetadata(
                slots, block_tables, None, None, None, None, 1,
                seq_lens=seq_lens if seq_lens is not None else positions + 1,
                decode_kernel=self.decode_kernel, native_step=step, step_ops=self.step_ops,
            )  # fmt: skip
        if max_q == 1:
            q_index = out_index = None
            q_pos = positions.view(b, 1)
        else:
            # Padded query slot j of sequence i reads token min(j, n_i - 1): a real token,
            # so no softmax row is fully masked; its output is dropped by out_index.
            starts = torch.tensor(q_starts, dtype=torch.long, device=dev).unsqueeze(1)
            n = torch.tensor(counts, dtype=torch.long, device=dev).unsqueeze(1)
            j = torch.arange(max_q, device=dev).unsqueeze(0)
            clamped = torch.minimum(j, n - 1)
            q_index = starts + clamped
            q_pos = positions[q_index]
            out_index = (torch.arange(b, device=dev).unsqueeze(1) * max_q + j)[j < n]
        keys = torch.arange(block_tables.shape[1] * self.block_size, device=dev)
        mask = keys.view(1, 1, 1, -1) <= q_pos.view(b, 1, max_q, 1)
        bias = None
        if max_q == 1:
            bias = torch.zeros(mask.shape, dtype=torch.float32, device=dev)
            bias.masked_fill_(~mask, float("-inf"))
            bias = bias.view(1, b, 1, -1)
            mask = None
        return AttentionMetadata(
            slots, block_tables, mask, bias, q_index, out_index, max_q, step_ops=self.step_ops
        )


def any_logprobs(seqs: list[Sequence]) -> bool:
    """Whether a sequence asks for its sampled tokens' logprobs."""
    return any(seq.params.logprobs is not None for seq in seqs)


def _prompt_logprob_rows(
    seq: Sequence, start: int, end: int, offset: int
) -> tuple[list[int], list[int]]:
    """Input rows of this chunk whose logits score the next prompt token, and those tokens.

    Position p predicts token p + 1; only prompt tokens are scored, each once (a preempted
    sequence that recomputes its prompt does not record it again).
    """
    if not seq.prompt_logprobs:
        seq.prompt_logprobs.append(None)  # the first token has no context to be scored in
    first = max(start, len(seq.prompt_logprobs) - 1)
    last = min(end, seq.num_prompt_tokens - 1)
    positions = range(first, last)
    return [offset + p - start for p in positions], [seq.token_ids[p + 1] for p in positions]


def position_logprobs(
    logprobs: torch.Tensor, tokens: list[int], top: int
) -> list[PositionLogprobs]:
    """Per row: the given token's log-probability and rank, then the ``top`` most likely."""
    index = torch.tensor(tokens, dtype=torch.long, device=logprobs.device).unsqueeze(1)
    chosen = logprobs.gather(1, index)
    ranks = (logprobs > chosen).sum(-1) + 1
    top_values, top_ids = logprobs.topk(top, dim=-1) if top else (None, None)
    out: list[PositionLogprobs] = []
    for i, token in enumerate(tokens):
        entry = {token: Logprob(float(chosen[i, 0]), int(ranks[i]))}
        for j in range(top):
            entry.setdefault(int(top_ids[i, j]), Logprob(float(top_values[i, j]), j + 1))
        out.append(entry)
    return out


def record_prompt_logprobs(
    logits: torch.Tensor, prompt_rows: list[tuple[Sequence, list[int]]]
) -> None:
    logprobs = torch.log_softmax(logits.float(), -1)
    at = 0
    for seq, targets in prompt_rows:
        rows = logprobs[at : at + len(targets)]
        seq.prompt_logprobs.extend(position_logprobs(rows, targets, seq.params.prompt_logprobs))
        at += len(targets)


def record_sampled_logprobs(
    raw: torch.Tensor, seqs: list[Sequence], candidates: list[list[int]]
) -> None:
    """Each sequence's sampled token scored in its raw distribution (no drafts: one token)."""
    tokens = [c[-1] for c in candidates]
    for seq, entry in zip(
        seqs, position_logprobs(raw, tokens, max(s.params.logprobs for s in seqs)), strict=True
    ):
        top = seq.params.logprobs
        first = next(iter(entry))
        kept = {t: lp for t, lp in entry.items() if t == first or lp.rank <= top}
        seq.step_logprobs = [kept]
