"""Telling someone: ``--on-breach CMD`` when the SLO breaks, ``--webhook URL`` on both edges.

The command runs through the shell in its own process group with the event as JSON on stdin
and in ``LATLAB_WATCH_*`` variables; it gets ``timeout_s`` and is then stopped, group and all.
The webhook body carries a ``text`` field, so Slack- and Mattermost-style incoming webhooks
show it as is. Both run beside the probe: a slow hook never delays a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

import httpx


class Notifier:
    """Runs the breach command and posts webhooks; ``log`` receives one line per outcome."""

    def __init__(
        self, on_breach: str | None, webhook: str | None, *, log: Any, timeout_s: float = 30.0
    ) -> None:
        self.on_breach = on_breach
        self.webhook = webhook
        self.timeout_s = timeout_s
        self._log = log
        self._tasks: set[asyncio.Task] = set()

    def transition(self, status: str, event: dict[str, Any]) -> None:
        """``status`` is 'firing' (ok -> breach) or 'resolved' (breach -> ok)."""
        body = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event}
        body["text"] = _text(status, event)
        if status == "firing" and self.on_breach:
            self._spawn(self._run_command(body))
        if self.webhook:
            self._spawn(self._post(body))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for hooks still running (at exit), each bounded by its timeout."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run_command(self, body: dict[str, Any]) -> None:
        env = {
            **os.environ,
            "LATLAB_WATCH_STATUS": body["status"],
            "LATLAB_WATCH_TARGET": str(body.get("target", "")),
            "LATLAB_WATCH_REASON": "; ".join(body.get("reasons", [])),
        }
        proc = await asyncio.create_subprocess_shell(
            self.on_breach or "",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(
                proc.communicate(json.dumps(body).encode()), self.timeout_s
            )
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            self._log(f"--on-breach command stopped after {self.timeout_s:g} s")
            return
        last = (out or b"").decode("utf-8", "replace").strip().splitlines()[-1:]
        detail = f": {last[0][:160]}" if last else ""
        self._log(f"--on-breach command exited {proc.returncode}{detail}")

    async def _post(self, body: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
                resp = await client.post(self.webhook or "", json=body)
            self._log(f"webhook {body['status']}: HTTP {resp.status_code}")
        except httpx.HTTPError as exc:
            self._log(f"webhook {body['status']} failed: {type(exc).__name__}: {exc}")


def _text(status: str, event: dict[str, Any]) -> str:
    target = event.get("target", "?")
    if status == "resolved":
        return f"latlab watch: SLO holds again for {target}"
    reasons = "; ".join(event.get("reasons", [])) or "SLO breached"
    return f"latlab watch: SLO breached for {target}: {reasons}"
