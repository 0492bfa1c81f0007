"""A few calls of Prometheus' HTTP API: instant and range queries, rules and alerts."""

from __future__ import annotations

from typing import Any

import httpx

from latlab.errors import TargetError


class PrometheusAPI:
    """``PrometheusAPI("http://127.0.0.1:9090").query("up")`` -> the result list."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self.base = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, trust_env=False)

    def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}/api/v1/{path}"
        try:
            resp = self._client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise TargetError(f"cannot reach Prometheus at {self.base} ({exc})") from None
        try:
            body = resp.json()
        except ValueError:
            raise TargetError(f"{url} answered HTTP {resp.status_code}, not JSON") from None
        if body.get("status") != "success":
            raise TargetError(f"Prometheus refused {params or path}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self._get("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return list(self._get("query_range", query=expr, start=start, end=end, step=step)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return list(self._get("rules")["groups"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("targets")["activeTargets"])

    def close(self) -> None:
        self._client.close()
