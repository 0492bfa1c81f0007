"""Per-request timing records and the summary every latlab figure comes from.

The definitions live in docs/metrics.md and must not drift: TTFT counts to the first token
arrival (a chunk the target sent for generated tokens, even with empty text); the chunk gap is
the time between token arrivals; the per-token ITL divides each gap among the tokens its chunk
carries; TPOT is (E2E - TTFT) / (tokens - 1); unstreamed replies have none of these. All
intervals use ``time.perf_counter_ns()``; in open loop every latency starts at the *intended*
send time so a slow client cannot hide latency (coordinated omission).

This module imports nothing heavy: the bench client must run without torch.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000

# Where a record's output token count came from, most trusted first.
TOKEN_SOURCES = ("usage", "engine", "tokenizer", "chunks")


@dataclass(slots=True)
class RequestRecord:
    """Everything measured about one request; figures are derived, never stored twice."""

    request_id: str = ""
    intended_send_ns: int | None = None  # open loop: when the schedule wanted it sent
    send_ns: int = 0  # when the request actually left the client
    chunk_ns: list[int] = field(default_factory=list)  # each token arrival (docs/metrics.md)
    chunk_tokens: list[int] = field(default_factory=list)  # tokens carried by each such chunk
    end_ns: int | None = None  # last byte of the response
    prompt_tokens: int | None = None  # as the target counted them (usage, engine)
    prompt_tokens_requested: int | None = None  # what the workload built (exact if calibrated)
    cached_tokens: int | None = None  # prompt tokens the server served from its prefix cache
    output_tokens: int | None = None
    output_tokens_source: str = "chunks"
    max_tokens: int | None = None  # asked for
    finish_reason: str | None = None  # "length", "stop", ... as the target said
    first_text_chunk: int | None = None  # first token chunk with visible text (HTTP targets)
    usage_rejected: dict[str, str] = field(default_factory=dict)  # usage figures not believed
    reply_problems: dict[str, str] = field(default_factory=dict)  # protocol a server broke
    empty_chunks: int = 0  # token chunks whose text was empty
    error: str | None = None  # short reason ("http_500", "timeout", ...); None = success
    error_detail: str | None = None  # one line for humans
    token_count_mismatch: bool = False  # server usage and client tokenizer disagreed
    warmup: bool = False
    gateway_cache: str | None = None  # latlab gateway's x-latlab-cache: hit, miss, coalesced...

    # ---- derived figures (nanoseconds; None when not defined for this request) ----
    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def origin_ns(self) -> int:
        """Start of every latency: the intended send time in open loop, else the send time."""
        return self.intended_send_ns if self.intended_send_ns is not None else self.send_ns

    @property
    def queue_ns(self) -> int | None:
        """Client queue time: how late the client actually sent versus the schedule."""
        if self.intended_send_ns is None:
            return None
        return max(0, self.send_ns - self.intended_send_ns)

    @property
    def ttft_ns(self) -> int | None:
        """To the first token arrival (a chunk with empty text counts); None unstreamed."""
        return self.chunk_ns[0] - self.origin_ns if self.chunk_ns else None

    @property
    def first_text_ns(self) -> int | None:
        """To the first chunk with visible text, where that is known (HTTP targets)."""
        i = self.first_text_chunk
        return None if i is None or i >= len(self.chunk_ns) else self.chunk_ns[i] - self.origin_ns

    @property
    def e2e_ns(self) -> int | None:
        return None if self.end_ns is None else self.end_ns - self.origin_ns

    @property
    def num_output_tokens(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return sum(self.chunk_tokens)

    @property
    def stopped_early(self) -> bool:
        """Fewer tokens than asked for (EOS or a stop string, unless the count is unknown)."""
        known = self.output_tokens is not None or bool(self.chunk_tokens)
        return known and self.max_tokens is not None and self.num_output_tokens < self.max_tokens

    @property
    def tpot_ns(self) -> float | None:
        """(E2E - TTFT) / (output_tokens - 1); undefined for a single token and unstreamed."""
        n = self.num_output_tokens
        ttft, e2e = self.ttft_ns, self.e2e_ns
        if n < 2 or ttft is None or e2e is None:
            return None
        return (e2e - ttft) / (n - 1)

    def chunk_gaps_ns(self) -> list[int]:
        c = self.chunk_ns
        return [c[i] - c[i - 1] for i in range(1, len(c))]

    def itl_ns(self) -> list[float]:
        """Per-token ITL: each chunk's gap shared equally among the k tokens it carries.

        Extra tokens in the first chunk have no gap of their own (they arrived with the first
        token) and add no sample, so a request's mean ITL is (last - first chunk) / (tokens
        after the first chunk).
        """
        out: list[float] = []
        c, k = self.chunk_ns, self.chunk_tokens
        for i in range(1, len(c)):
            tokens = k[i] if i < len(k) else 1
            if tokens <= 0:
                continue
            share = (c[i] - c[i - 1]) / tokens
            out.extend([share] * tokens)
        return out

    def to_dict(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v / _NS_PER_MS, 4)

        return {
            "request_id": self.request_id,
            "ok": self.ok,
            "error": self.error,
            "error_detail": self.error_detail,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_requested": self.prompt_tokens_requested,
            "cached_tokens": self.cached_tokens,
            "output_tokens": None
            if self.output_tokens_source == "unknown"
            else self.num_output_tokens,
            "output_tokens_source": self.output_tokens_source,
            "token_count_mismatch": self.token_count_mismatch,
            "usage_rejected": dict(self.usage_rejected),
            "reply_problems": dict(self.reply_problems),
            "max_tokens": self.max_tokens,
            "finish_reason": self.finish_reason,
            "ttft_ms": ms(self.ttft_ns),
            "first_text_ms": ms(self.first_text_ns),
            "empty_chunks": self.empty_chunks,
            "tpot_ms": ms(self.tpot_ns),
            "e2e_ms": ms(self.e2e_ns),
            "queue_ms": ms(self.queue_ns),
            "num_chunks": len(self.chunk_ns),
            "gateway_cache": self.gateway_cache,
            "intended_send_ns": self.intended_send_ns,
            "send_ns": self.send_ns,
            "end_ns": self.end_ns,
            "chunk_ns": list(self.chunk_ns),
            "chunk_tokens": list(self.chunk_tokens),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        """The record ``to_dict()`` wrote (derived figures are recomputed, unknown keys ignored),
        so stored runs are analysed with the same definitions as live ones."""
        return cls(
            request_id=str(d.get("request_id", "")),
            intended_send_ns=d.get("intended_send_ns"),
            send_ns=int(d.get("send_ns") or 0),
            chunk_ns=list(d.get("chunk_ns") or ()),
            chunk_tokens=list(d.get("chunk_tokens") or ()),
            end_ns=d.get("end_ns"),
            prompt_tokens=d.get("prompt_tokens"),
            prompt_tokens_requested=d.get("prompt_tokens_requested"),
            cached_tokens=d.get("cached_tokens"),
            output_tokens=d.get("output_tokens"),
            output_tokens_source=str(d.get("output_tokens_source") or "chunks"),
            error=d.get("error"),
            error_detail=d.get("error_detail"),
            token_count_mismatch=bool(d.get("token_count_mismatch")),
            max_tokens=d.get("max_tokens"),
            finish_reason=d.get("finish_reason"),
            usage_rejected=dict(d.get("usage_rejected") or {}),
            reply_problems=dict(d.get("reply_problems") or {}),
            empty_chunks=int(d.get("empty_chunks") or 0),
        )


# ---------------------------------------------------------------------------- measure()


def default_token_count(item: Any) -> int:
    """Tokens carried by one streamed item: lists/tuples count their length, empty text 0."""
    if isinstance(item, (list, tuple)):
        return len(item)
    if isinstance(item, (str, bytes)):
        return 1 if item else 0
    if item is None:
        return 0
    return 1


class Measured:
    """Wraps a sync or async iterator, yields its items unchanged and fills ``.record``.

    The record is reachable on this object (``m.record``) while and after iterating, because a
    generator's ``return`` value never reaches the caller of a ``for`` loop.
    """

    __slots__ = ("_async", "_count", "_it", "_src", "record")

    def __init__(
        self,
        stream: Any,
        *,
        request_id: str = "",
        count_tokens: Callable[[Any], int] = default_token_count,
    ) -> None:
        self._src = stream
        self._count = count_tokens
        self._it: Any = None
        self._async = hasattr(stream, "__aiter__") or hasattr(stream, "__anext__")
        self.record = RequestRecord(request_id=request_id)

    # sync protocol
    def __iter__(self) -> Iterator[Any]:
        if self._async:
            raise TypeError("this stream is asynchronous: use 'async for'")
        self.record.send_ns = time.perf_counter_ns()
        self._it = iter(self._src)
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._it)
        except StopIteration:
            self._finish()
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        self._arrive(item)
        return item

    # async protocol
    def __aiter__(self) -> AsyncIterator[Any]:
        if not self._async:
            raise TypeError("this stream is synchronous: use 'for'")
        self.record.send_ns = time.perf_counter_ns()
        src = self._src
        self._it = src.__aiter__() if hasattr(src, "__aiter__") else src
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._it.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        self._arrive(item)
        return item

    def _arrive(self, item: Any) -> None:
        now = time.perf_counter_ns()
        tokens = self._count(item)
        if tokens > 0:
            self.record.chunk_ns.append(now)
            self.record.chunk_tokens.append(tokens)

    def _finish(self) -> None:
        rec = self.record
        rec.end_ns = time.perf_counter_ns()
        rec.output_tokens = sum(rec.chunk_tokens)
        rec.output_tokens_source = "chunks"

    def _fail(self, exc: BaseException) -> None:
        rec = self.record
        rec.end_ns = time.perf_counter_ns()
        rec.error = "cancelled" if isinstance(exc, GeneratorExit) else type(exc).__name__
        rec.error_detail = str(exc)[:200] or None


def measure(
    stream: Iterable[Any] | Any,
    *,
    request_id: str = "",
    count_tokens: Callable[[Any], int] = default_token_count,
) -> Measured:
    """Time a token stream: ``m = measure(gen); for tok in m: ...; m.record``.

    The send time is taken when iteration starts, each content-carrying item's arrival when it
    is handed over, the end when the stream is exhausted. Works with ``for`` and ``async for``.
    """
    return Measured(stream, request_id=request_id, count_tokens=count_tokens)


# ---------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass(slots=True, frozen=True)
class Stats:
    """Distribution of one figure, in milliseconds; all None when there were no samples."""

    count: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> Stats:
        vals = sorted(values_ms)
        if not vals:
            return cls()
        n = len(vals)
        mean = math.fsum(vals) / n
        var = math.fsum((v - mean) ** 2 for v in vals) / n  # population std, like numpy
        p = percentile
        return cls(n, mean, math.sqrt(var), vals[0], vals[-1],
                   p(vals, 50), p(vals, 90), p(vals, 95), p(vals, 99))  # fmt: skip

    def to_dict(self) -> dict[str, float | int | None] | None:
        """The figures, or None when there were no samples (never a dict of nulls)."""
        if not self.count:
            return None
        keys = ("mean", "std", "min", "max", "p50", "p90", "p95", "p99")
        out: dict[str, float | int | None] = {
            k: (None if getattr(self, k) is None else round(getattr(self, k), 4)) for k in keys
        }
        out["count"] = self.count
        return out


def _within(limit_ms: float | None, value_ns: float | None, *, missing_ok: bool) -> bool:
    if limit_ms is None:
        return True
    if value_ns is None:
        return missing_ok
    return value_ns / _NS_PER_MS <= limit_ms


@dataclass(slots=True, frozen=True)
class SLO:
    """Service-level objectives; a request is *good* when it met every one given."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, rec: RequestRecord) -> bool:
        if not rec.ok:
            return False
        if not _within(self.ttft_ms, rec.ttft_ns, missing_ok=False):
            return False
        # A streamed one-token reply has no TPOT, so it cannot violate a TPOT objective; an
        # unstreamed reply's TPOT was never measured, so it cannot be shown to meet one.
        one_token = rec.ttft_ns is not None and rec.num_output_tokens < 2
        if not _within(self.tpot_ms, rec.tpot_ns, missing_ok=one_token):
            return False
        return _within(self.e2e_ms, rec.e2e_ns, missing_ok=False)

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}


@dataclass(slots=True)
class Summary:
    """Figures of one load level. ``to_dict()`` is part of the versioned JSON schema."""

    ttft_ms: Stats
    itl_ms: Stats
    chunk_gap_ms: Stats
    tpot_ms: Stats
    e2e_ms: Stats
    queue_ms: Stats
    completed: int
    failed: int
    errors: dict[str, int]
    duration_s: float
    output_tokens: int
    prompt_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    goodput_rps: float | None
    good_requests: int | None
    tokens_per_chunk: dict[int, int]
    multi_token_chunks: int
    output_tokens_source: dict[str, int]
    token_count_mismatches: int
    cache: PrefixCacheUse | None = None
    prompt_length: PromptLength | None = None
    finish_reasons: dict[str, int] = field(default_factory=dict)
    stopped_early: int = 0  # replies shorter than their max_tokens
    usage_rejected: dict[str, int] = field(default_factory=dict)  # problem -> requests
    reply_problems: dict[str, int] = field(default_factory=dict)  # problem -> requests
    empty_token_chunks: int = 0
    first_token_empty: int = 0  # requests whose first token chunk had no visible text
    slo: SLO | None = None

    @property
    def failure_rate(self) -> float:
        total = self.completed + self.failed
        return self.failed / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttft_ms": self.ttft_ms.to_dict(),
            "itl_ms": self.itl_ms.to_dict(),
            "chunk_gap_ms": self.chunk_gap_ms.to_dict(),
            "tpot_ms": self.tpot_ms.to_dict(),
            "e2e_ms": self.e2e_ms.to_dict(),
            "queue_ms": self.queue_ms.to_dict(),
            "completed": self.completed,
            "failed": self.failed,
            "failure_rate": round(self.failure_rate, 6),
            "errors": dict(self.errors),
            "duration_s": round(self.duration_s, 6),
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens_per_s": round(self.output_tokens_per_s, 4),
            "requests_per_s": round(self.requests_per_s, 4),
            "goodput_rps": None if self.goodput_rps is None else round(self.goodput_rps, 4),
            "good_requests": self.good_requests,
            "slo": None if self.slo is None else self.slo.to_dict(),
            "tokens_per_chunk": {str(k): v for k, v in sorted(self.tokens_per_chunk.items())},
            "multi_token_chunks": self.multi_token_chunks,
            "output_tokens_source": dict(self.output_tokens_source),
            "token_count_mismatches": self.token_count_mismatches,
            "cache": None if self.cache is None else self.cache.to_dict(),
            "prompt_length": None if self.prompt_length is None else self.prompt_length.to_dict(),
            "finish_reasons": dict(self.finish_reasons),
            "stopped_early": self.stopped_early,
            "usage_rejected": dict(self.usage_rejected),
            "reply_problems": dict(self.reply_problems),
            "empty_token_chunks": self.empty_token_chunks,
            "first_token_empty": self.first_token_empty,
        }


def _window_ns(records: list[RequestRecord]) -> int:
    starts = [r.origin_ns for r in records]
    ends = [r.end_ns for r in records if r.end_ns is not None]
    if not starts or not ends:
        return 0
    return max(0, max(ends) - min(starts))


def summarize(
    records: Iterable[RequestRecord],
    slo: SLO | None = None,
    *,
    duration_s: float | None = None,
) -> Summary:
    """Turn request records into a Summary.

    Warmup records are ignored. Latency figures use successful requests only; failures are
    counted by reason and count as not good for goodput. Throughput divides by the measured
    window: ``duration_s`` when the runner knows it, else first send to last response byte.
    """
    recs = [r for r in records if not r.warmup]
    ok = [r for r in recs if r.ok]
    failed = [r for r in recs if not r.ok]
    window_s = duration_s if duration_s is not None else _window_ns(recs) / _NS_PER_S

    def ms_values(fn: Callable[[RequestRecord], float | None]) -> list[float]:
        return [v / _NS_PER_MS for r in ok if (v := fn(r)) is not None]

    gaps = [g / _NS_PER_MS for r in ok for g in r.chunk_gaps_ns()]
    itl = [g / _NS_PER_MS for r in ok for g in r.itl_ns()]
    per_chunk: Counter[int] = Counter(k for r in ok for k in r.chunk_tokens)
    out_tokens = sum(r.num_output_tokens for r in ok)
    good = sum(1 for r in ok if slo.met_by(r)) if slo is not None else None

    def rate(n: float) -> float:
        return n / window_s if window_s > 0 else 0.0

    return Summary(
        ttft_ms=Stats.of(ms_values(lambda r: r.ttft_ns)),
        itl_ms=Stats.of(itl),
        chunk_gap_ms=Stats.of(gaps),
        tpot_ms=Stats.of(ms_values(lambda r: r.tpot_ns)),
        e2e_ms=Stats.of(ms_values(lambda r: r.e2e_ns)),
        queue_ms=Stats.of(v / _NS_PER_MS for r in recs if (v := r.queue_ns) is not None),
        completed=len(ok),
        failed=len(failed),
        errors=dict(Counter(r.error or "unknown" for r in failed)),
        duration_s=window_s,
        output_tokens=out_tokens,
        prompt_tokens=sum(_prompt_tokens(r) or 0 for r in ok),
        output_tokens_per_s=rate(out_tokens),
        requests_per_s=rate(len(ok)),
        goodput_rps=None if good is None else rate(good),
        good_requests=good,
        tokens_per_chunk=dict(per_chunk),
        multi_token_chunks=sum(v for k, v in per_chunk.items() if k > 1),
        output_tokens_source=dict(Counter(r.output_tokens_source for r in ok)),
        token_count_mismatches=sum(1 for r in ok if r.token_count_mismatch),
        cache=PrefixCacheUse.of(ok),
        prompt_length=PromptLength.of(ok),
        finish_reasons=dict(Counter(r.finish_reason for r in ok if r.finish_reason)),
        stopped_early=sum(1 for r in ok if r.stopped_early),
        usage_rejected=dict(Counter(k for r in recs for k in r.usage_rejected)),
        reply_problems=dict(Counter(k for r in recs for k in r.reply_problems)),
        empty_token_chunks=sum(r.empty_chunks for r in ok),
        first_token_empty=sum(1 for r in ok if r.empty_chunks and r.first_text_chunk != 0),
        slo=slo,
    )


def _prompt_tokens(rec: RequestRecord) -> int | None:
    """The best known prompt length: the target's count, else the requested one."""
    return rec.prompt_tokens if rec.prompt_tokens is not None else rec.prompt_tokens_requested


@dataclass(kw_only=True, slots=True, frozen=True)
class PrefixCacheUse:
    """Prompt tokens the server says it served from its prefix cache (``cached_tokens``)."""

    requests: int  # requests whose reply reported cached tokens
    cached_tokens: int
    prompt_tokens: int  # of those requests

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @classmethod
    def of(cls, records: list[RequestRecord]) -> PrefixCacheUse | None:
        told = [r for r in records if r.cached_tokens is not None and r.prompt_tokens]
        if not told:
            return None
        return cls(requests=len(told), cached_tokens=sum(r.cached_tokens or 0 for r in told),
                   prompt_tokens=sum(r.prompt_tokens or 0 for r in told))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "cached_tokens": self.cached_tokens,
                "prompt_tokens": self.prompt_tokens,
                "hit_rate": round(self.hit_rate, 6)}  # fmt: skip


@dataclass(kw_only=True, slots=True, frozen=True)
class PromptLength:
    """Requested prompt lengths beside the target's count of the same prompts."""

    requests: int  # requests with both figures
    requested_mean: float
    measured_mean: float
    mean_abs_error: float  # mean of |measured - requested| / requested

    @classmethod
    def of(cls, records: list[RequestRecord]) -> PromptLength | None:
        pairs = [(r.prompt_tokens_requested, r.prompt_tokens) for r in records
                 if r.prompt_tokens_requested and r.prompt_tokens is not None]  # fmt: skip
        if not pairs:
            return None
        n = len(pairs)
        return cls(requests=n, requested_mean=math.fsum(a for a, _ in pairs) / n,
                   measured_mean=math.fsum(b for _, b in pairs) / n,
                   mean_abs_error=math.fsum(abs(b - a) / a for a, b in pairs) / n)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "requested_mean": round(self.requested_mean, 3),
                "measured_mean": round(self.measured_mean, 3),
                "mean_abs_error": round(self.mean_abs_error, 6)}  # fmt: skip


def distribute_tokens(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` tokens over chunks proportionally to ``weights`` (largest remainder).

    Used when the server's ``usage`` gives the true total but not the per-chunk split: every
    chunk gets at least one token when there are enough tokens to go round.
    """
    n = len(weights)
    if n == 0:
        return []
    if total <= n:
        return [1] * total + [0] * (n - total)
    w = [max(1, x) for x in weights]
    scale = sum(w)
    raw = [total * x / scale for x in w]
    out = [int(r) for r in raw]
    order = sorted(range(n), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    for i in range(n):  # every chunk that arrived carried at least one token
        while out[i] == 0:
            out[out.index(max(out))] -= 1
            out[i] += 1
    return out
