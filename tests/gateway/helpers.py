"""Small HTTP helpers shared by the gateway tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from latlab.gateway.recording import SSESplitter


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def events(self) -> list[bytes]:
        return SSESplitter().feed(self.body)

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-latlab-cache")

    def json(self) -> Any:
        return json.loads(self.body)


def body(prompt: str = "hello gateway", **fields: Any) -> dict[str, Any]:
    out = {"model": "stub-model", "prompt": prompt, "max_tokens": 6, "temperature": 0,
           "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    out.update(fields)
    return {k: v for k, v in out.items() if v is not None}


def post(
    base: str, payload: dict[str, Any], path: str = "/v1/completions", **headers: str
) -> Reply:
    """POST and read the whole reply; header names use _ for - (x_latlab_trim_to)."""
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    with (
        httpx.Client(timeout=30, trust_env=False) as client,
        client.stream("POST", base + path, json=payload, headers=hdrs) as resp,
    ):
        data = b"".join(resp.iter_bytes())
    return Reply(resp.status_code, resp.headers, data)


async def apost(
    client: httpx.AsyncClient, base: str, payload: dict[str, Any], **headers: str
) -> Reply:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    async with client.stream("POST", base + "/v1/completions", json=payload, headers=hdrs) as r:
        data = b"".join([chunk async for chunk in r.aiter_bytes()])
    return Reply(r.status_code, r.headers, data)


def root(stub_url: str) -> str:
    """http://host:port of a stub's .../v1 URL."""
    return stub_url.rsplit("/v1", 1)[0]
