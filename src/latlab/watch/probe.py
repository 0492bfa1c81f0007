"""The probe: a small fixed request mix, sent with the bench client's own OpenAI target.

Every request is measured exactly as ``latlab bench`` measures it (same ``OpenAITarget``, same
``RequestRecord``, same synthetic prompts), starts with its own salt tag as bench's requests do
(a per-watch salt and a never-repeated request id), so no prefix or response cache can answer
it, and is paced: never more than ``max_rate`` requests per second, never more than
``concurrency`` in flight, so the probe cannot load the server it watches.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time

from latlab.bench.contract import GenOptions
from latlab.bench.targets import OpenAITarget
from latlab.errors import TargetError
from latlab.metrics import RequestRecord
from latlab.prompt_words import UNCALIBRATED, Salt
from latlab.watch.config import WatchConfig
from latlab.workload import BenchRequest, WorkloadSpec, build_requests

MIX_SIZE = 8  # distinct prompt bodies the probe cycles through

# Failures that mean "nobody answers" (back off), as opposed to an answer that was bad.
UNREACHABLE = frozenset({"unreachable", "connect_error", "connection_error"})


class Pacer:
    """Releases request starts at least 1/max_rate seconds apart, counted from each release.

    Counting from the release (not from a fixed schedule) means a late wake-up never lets the
    next request follow sooner: the rate is a hard ceiling, never an average.
    """

    def __init__(self, max_rate: float) -> None:
        self._gap_s = 1.0 / max_rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = time.monotonic() + self._gap_s


class Prober:
    """Sends one cycle of the mix and returns its records (failures included, never raises)."""

    def __init__(self, config: WatchConfig, target: OpenAITarget | None = None) -> None:
        self.config = config
        self.target = target or OpenAITarget(
            config.url,
            model=config.model,
            api=config.api,
            api_key=config.api_key,
            timeout_s=config.timeout_s,
            connect_timeout_s=min(10.0, config.timeout_s),
        )
        spec = WorkloadSpec(input_len=config.prompt_tokens, output_len=config.max_tokens,
                            num_prompts=MIX_SIZE, seed=config.seed)  # fmt: skip
        self.salt = Salt(value=secrets.token_hex(4), words=UNCALIBRATED.words)
        self._mix = build_requests(spec, UNCALIBRATED, salt=self.salt)
        self._run_id = secrets.token_hex(4)
        self._opts = GenOptions(ignore_eos=True, temperature=0.0, stream=True)
        self._pacer = Pacer(config.max_rate)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._ids = itertools.count()

    async def cycle(self) -> list[RequestRecord]:
        n = self.config.requests_per_cycle
        if self.target.model is None:
            try:
                await self.target.check()  # learns the served model name
            except TargetError as exc:
                return [self._unreachable(str(exc)) for _ in range(n)]
        return list(await asyncio.gather(*(self._one() for _ in range(n))))

    def request(self) -> BenchRequest:
        """The mix's next prompt behind a tag never used before: no cache holds its start."""
        n = next(self._ids)
        rid = f"latlab-watch-{self._run_id}-{n}"
        base = self._mix[n % len(self._mix)]
        req = base.salted(self.salt.tag(rid, base.salt_words))
        req.request_id = rid
        return req

    async def _one(self) -> RequestRecord:
        async with self._slots:
            await self._pacer.wait()
            req = self.request()
            rec = RequestRecord(request_id=req.request_id)
            rec.prompt_tokens_requested = req.prompt_tokens
            finish = await self.target.run(req, rec, self._opts)
            if finish is not None:
                finish()
            return rec

    def _unreachable(self, detail: str) -> RequestRecord:
        now = time.perf_counter_ns()
        rid = f"latlab-watch-{self._run_id}-{next(self._ids)}"
        rec = RequestRecord(request_id=rid, send_ns=now, end_ns=now)
        rec.error, rec.error_detail = "unreachable", detail[:200]
        return rec

    async def aclose(self) -> None:
        await self.target.aclose()


def unreachable(records: list[RequestRecord]) -> bool:
    """True when no request of a cycle got any answer from the server."""
    return bool(records) and all(r.error in UNREACHABLE for r in records)
