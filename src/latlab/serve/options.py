"""ServeOptions: every setting of ``latlab serve`` that is not the engine's.

The engine's settings live on ``EngineConfig``; what belongs to the HTTP server (where it
listens, who may call it, how large and how slow a request may be, how it stops) lives here.
Both classes declare their fields with ``latlab.settings.setting``, so ``latlab serve`` builds
its flags and help from them: a new field here is a new flag with no CLI edit. Imports
neither FastAPI nor torch (the CLI reads it to build ``latlab serve --help``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from latlab.errors import ConfigError
from latlab.serve.guard import GuardConfig, RequestLimits, read_api_keys
from latlab.settings import from_options, parse_size, setting

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_LIMITS = {f.name: f.default for f in dataclasses.fields(RequestLimits)}
_GUARD = {f.name: f.default for f in dataclasses.fields(GuardConfig)}


def _limit(name: str, help: str) -> Any:
    return setting(None, help=help, default_text=str(_LIMITS[name]))


def _buckets(flag: str, help: str) -> Any:
    def parse(text: str) -> tuple[float, ...]:
        from latlab.serve.prometheus import parse_buckets  # prometheus_client: only when given

        return parse_buckets(text, f"--{flag}")

    return setting(None, help=help, parse=parse, metavar="EDGES", default_text="vLLM's")


@dataclass(kw_only=True, slots=True)
class ServeOptions:
    """The HTTP server's settings (the engine's are ``EngineConfig``)."""

    host: str = setting("127.0.0.1", help="Address to listen on.")
    port: int = setting(8000, help="Port to listen on; 0 picks a free port.")
    served_model_name: str | None = setting(
        None, help="Model name clients use.", default_text="the model's path (a Hub id as given)"
    )
    log_level: str = setting("warning", help="uvicorn log level.", choices=LOG_LEVELS)
    # Who may call (latlab.serve.guard; docs/security.md).
    api_key: str | None = setting(
        None,
        help="Require 'Authorization: Bearer KEY' (all but /health and /metrics); the "
        "environment variable keeps the key out of the process list.",
        envvar="LATLAB_API_KEY",
        default_text="none",
    )
    api_key_file: str | None = setting(
        None, help="Require one of the keys in this file (one a line).", default_text="none"
    )
    allowed_hosts: tuple[str, ...] | None = setting(
        None,
        help="Host header names accepted (repeat or comma-separate; '*' any).",
        default_text="loopback names when bound to loopback, else any",
    )
    allowed_origins: tuple[str, ...] | None = setting(
        None,
        help="Browser origins allowed to call the server (repeat or comma-separate; '*' any).",
        default_text="none",
    )
    # How slow and how many.
    header_timeout_s: float = setting(
        _GUARD["header_timeout_s"], help="Seconds for a request's head to arrive.",
        flag="header-timeout",
    )  # fmt: skip
    body_timeout_s: float = setting(
        _GUARD["body_timeout_s"], help="Seconds for a request's body to arrive.",
        flag="body-timeout",
    )  # fmt: skip
    max_connections: int = setting(
        _GUARD["max_connections"], help="Open connections beyond this are answered 503."
    )
    shutdown_timeout_s: float = setting(
        5.0, help="Seconds requests in flight get to finish on SIGTERM/Ctrl-C.",
        flag="shutdown-timeout",
    )  # fmt: skip
    # How large a request may be (latlab.serve.guard.RequestLimits); unset: the default, or
    # derived from the model's context where the help says so.
    max_body_bytes: int | None = setting(
        None,
        help="Largest request body, e.g. 4MiB.",
        parse=parse_size,
        metavar="BYTES",
        default_text="64 bytes per context token, at least 256KiB",
    )
    max_json_depth: int | None = _limit("max_json_depth", "Deepest JSON nesting accepted.")
    max_messages: int | None = _limit(
        "max_messages", "Most chat messages (plus content parts) in a request."
    )
    max_stop: int | None = _limit("max_stop", "Most stop strings in a request.")
    max_stop_token_ids: int | None = _limit(
        "max_stop_token_ids", "Most stop_token_ids in a request."
    )
    max_logit_bias: int | None = _limit("max_logit_bias", "Most logit_bias entries in a request.")
    max_prompt_tokens: int | None = setting(
        None, help="Longest token-id prompt.", default_text="the context length"
    )
    # Latency histogram edges in seconds (latlab.serve.prometheus.HistogramBuckets): an SLO
    # threshold must be an edge for an alert to measure it exactly.
    ttft_buckets: tuple[float, ...] | None = _buckets(
        "ttft-buckets",
        "TTFT histogram edges in seconds, e.g. 0.1,0.2,0.3,0.5,1 (put each SLO threshold on "
        "an edge; see latlab alerts).",
    )
    itl_buckets: tuple[float, ...] | None = _buckets(
        "itl-buckets", "Edges (s) of the inter-token latency and per-request TPOT histograms."
    )
    e2e_buckets: tuple[float, ...] | None = _buckets(
        "e2e-buckets", "Edges (s) of the end-to-end and queue time histograms."
    )

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535 (0 picks a free port), got {self.port}")
        if not self.shutdown_timeout_s >= 0:
            raise ConfigError(f"--shutdown-timeout must be >= 0, got {self.shutdown_timeout_s}")
        self.guard(RequestLimits(**self.limit_overrides()))  # refuse bad ones before loading
        for name in ("ttft_buckets", "itl_buckets", "e2e_buckets"):
            edges = getattr(self, name)
            if edges is not None:  # from Python as numbers: the flag's checks apply too
                from latlab.serve.prometheus import parse_buckets

                flag = "--" + name.replace("_", "-")
                setattr(self, name, parse_buckets(",".join(str(e) for e in edges), flag))

    @classmethod
    def from_options(cls, **options: Any) -> ServeOptions:
        return from_options(cls, options, kind="serve", owner="latlab serve")

    def limit_overrides(self) -> dict[str, int]:
        """The request limits given explicitly; the rest derive from the model's context."""
        names = [f.name for f in dataclasses.fields(RequestLimits)]
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def guard(self, limits: RequestLimits) -> GuardConfig:
        """Who may call and what a request may be, with ``limits`` (reads the key file)."""
        keys: tuple[str, ...] = (self.api_key.strip(),) if self.api_key is not None else ()
        if self.api_key_file is not None:
            keys += read_api_keys(self.api_key_file)
        return GuardConfig(
            api_keys=keys,
            allowed_hosts=self.allowed_hosts or GuardConfig.hosts_for_bind(self.host),
            allowed_origins=self.allowed_origins or (),
            limits=limits,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            max_connections=self.max_connections,
        )

    def histogram_buckets(self) -> Any:
        """The latency histograms' edges (``HistogramBuckets``; vLLM's where none given)."""
        from latlab.serve.prometheus import HistogramBuckets

        given = {"ttft": self.ttft_buckets, "itl": self.itl_buckets, "request": self.e2e_buckets}
        return HistogramBuckets(**{key: tuple(v) for key, v in given.items() if v is not None})

    def guard_for_context(self, max_model_len: int) -> GuardConfig:
        """The guard for a model whose context is ``max_model_len`` tokens."""
        return self.guard(RequestLimits.for_context(max_model_len, **self.limit_overrides()))
