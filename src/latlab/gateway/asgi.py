"""The few ASGI pieces the gateway needs, written out (no framework on the per-chunk path).

A framework's per-response machinery costs microseconds per chunk; the gateway forwards tens of
thousands of chunks a second, so it speaks ASGI directly and leaves routing to a dict lookup.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from latlab.serve.guard import HEADERS_KEY
from latlab.serve.protocol import RequestError

Scope = dict[str, Any]


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-cased request headers (the last value wins for repeats): the guard's, when it
    decoded them already."""
    decoded = scope.get("state", {}).get(HEADERS_KEY)
    if decoded is not None:
        return decoded
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


async def read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes:
    """The whole request body; 413 when it is larger than ``limit`` (checked before reading)."""
    too_big = RequestError(
        f"request body is larger than {limit} bytes", status=413, code="body_too_large"
    )
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_big
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_json(
    send: Any, status: int, obj: Any, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    head = {"content-type": "application/json", "content-length": str(len(body))}
    head.update(headers or {})
    await send({"type": "http.response.start", "status": status, "headers": encode_headers(head)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_bytes(send: Any, status: int, body: bytes, content_type: str) -> None:
    head = {"content-type": content_type, "content-length": str(len(body))}
    await send({"type": "http.response.start", "status": status, "headers": encode_headers(head)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ClientWatch:
    """Notices the client leaving while its response is being written.

    After the body is read the only message ``receive`` can still deliver is the disconnect; a
    small task waits for it, sets ``gone`` and resolves whatever the handler awaits (``wake``),
    so a waiting handler reacts at once instead of on its next write.
    """

    __slots__ = ("_task", "gone", "wake")

    def __init__(self, receive: Any) -> None:
        self.gone = False
        self.wake: asyncio.Future[None] | None = None
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                wake = self.wake
                if wake is not None and not wake.done():
                    wake.set_result(None)
                return

    async def wait(self, fut: asyncio.Future[None]) -> None:
        """Await ``fut`` unless the client leaves first."""
        if self.gone:
            return
        self.wake = fut
        try:
            await fut
        finally:
            self.wake = None

    def close(self) -> None:
        self._task.cancel()
