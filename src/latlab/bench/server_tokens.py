"""Counting tokens on the server itself, for a client that has no tokenizer of its own.

Two ways, best first: the server's ``POST /tokenize`` (vLLM and latlab serve: exact, cheap),
else probe requests for one token whose ``usage.prompt_tokens`` the server reports. Both count
a prompt as the server will run it, BOS and chat template included, so prompts built from the
counts are exactly as long as asked in the server's own tokens (latlab.prompt_words).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import httpx

from latlab.bench.targets import OpenAITarget
from latlab.errors import TargetError

TOKENIZE = "server /tokenize"
USAGE = "server usage"
_IN_FLIGHT = 8  # probes at once: quick, and gentle with a server that is also serving


class ServerTokenCounter:
    """Counts prompt tokens through an ``OpenAITarget``'s server (see the module docstring).

    ``method`` is None until :meth:`start` found a way, and stays None (with ``reason``) when
    the server offers neither.
    """

    def __init__(self, target: OpenAITarget, *, use_tokenize: bool = True) -> None:
        self.target = target
        self.chat = target.api == "chat"
        self.root = target.base[: -len("/v1")] if target.base.endswith("/v1") else target.base
        self.use_tokenize = use_tokenize
        self.method: str | None = None
        self.reason = ""
        self.calls = 0
        self._gate = asyncio.Semaphore(_IN_FLIGHT)

    async def start(self) -> str | None:
        """Pick the best way the server offers; None (and ``reason``) when there is none."""
        try:
            if self.use_tokenize and await self._tokenize(" hello", probe=True) is not None:
                self.method = TOKENIZE
            elif await self._usage(" hello") is not None:
                self.method = USAGE
            else:
                self.reason = "the server has no /tokenize and reports no usage.prompt_tokens"
        except (httpx.HTTPError, TargetError) as exc:
            self.reason = f"counting on the server failed: {exc}"
        return self.method

    async def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text sent as a prompt (as the user message with --api chat)."""
        return await _all_or_none([self._one(t) for t in texts])

    async def count_plain(self, texts: list[str]) -> list[int] | None:
        """Tokens of each text alone, no special tokens (a recorded reply's length); None
        when only probes can count (then: prompt count minus the per-prompt offset)."""
        if self.method != TOKENIZE:
            return None
        return await _all_or_none([self._one(t, plain=True) for t in texts])

    async def _one(self, text: str, plain: bool = False) -> int:
        async with self._gate:
            n = await (self._tokenize(text, plain=plain) if self.method == TOKENIZE
                       else self._usage(text))  # fmt: skip
        if n is None:
            raise TargetError(f"the server stopped counting tokens ({self.method})")
        return n

    async def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        self.calls += 1
        return await self.target.client.post(url, json=body, timeout=60.0)

    async def _tokenize(self, text: str, *, probe: bool = False, plain: bool = False) -> int | None:
        body: dict[str, Any] = {"model": self.target.model}
        if self.chat and not plain:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
            body["add_special_tokens"] = not plain
        resp = await self._post(self.root + "/tokenize", body)
        if resp.status_code != 200:
            if probe:
                return None
            raise TargetError(f"/tokenize answered HTTP {resp.status_code}")
        return _positive(_json(resp).get("count"))

    async def _usage(self, text: str) -> int | None:
        body: dict[str, Any] = {"model": self.target.model, "max_tokens": 1, "temperature": 0.0}
        if self.chat:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        resp = await self._post(self.target.endpoint, body)
        if resp.status_code != 200:
            raise TargetError(f"a probe request answered HTTP {resp.status_code}")
        usage = _json(resp).get("usage")
        return _positive(usage.get("prompt_tokens")) if isinstance(usage, dict) else None


async def _all_or_none(probes: list[Coroutine[Any, Any, int]]) -> list[int]:
    """Every probe's count, or the first failure with the other probes cancelled and awaited.

    A bare ``asyncio.gather`` leaves the siblings of a failed probe running: they went on
    sending calibration requests into the measured run (found as probe requests between the
    benchmark's own, which also shifted a fault stub's every-Nth pattern).
    """
    tasks = [asyncio.ensure_future(p) for p in probes]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        obj = resp.json()
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
