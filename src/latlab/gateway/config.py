"""Everything ``latlab gateway`` can be told, in one keyword-only dataclass with safe defaults.

Safe defaults: the cache is on, but only for deterministic requests (temperature 0 or a seed)
and per tenant; identical deterministic requests in flight share one upstream call; routing is
least-load. Every field is a ``latlab gateway`` flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from latlab.errors import ConfigError
from latlab.gateway.routing import POLICIES
from latlab.gateway.upstreams import UpstreamAccess

REPLAY_MODES = ("immediate", "paced")
MAX_WORKERS = 64


def default_cache_spec() -> str:
    """``sqlite:`` in the user's cache folder, so restarts keep the entries."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return f"sqlite:{Path(base) / 'latlab' / 'gateway-cache.sqlite'}"


@dataclass(kw_only=True, slots=True)
class GatewayConfig:
    upstreams: list[str] = field(default_factory=list)
    cache: str = "off"  # off | sqlite:FILE | redis://HOST:PORT/DB (the CLI defaults to sqlite)
    cache_ttl_s: float = 3600.0
    cache_max_bytes: int = 1 << 30
    replay: str = "immediate"  # how cached streams are sent: at once, or paced as recorded
    coalesce: bool = True
    # Requests that need no wait before their upstream call skip the ASGI path
    # (latlab.gateway.lane); False sends every request through it (for comparison).
    direct_lane: bool = True
    route: str = "least-load"
    load_factor: float = 1.25  # prefix routing: no upstream above this x the mean load
    prefix_chars: int = 256  # prefix routing: the leading block hashed
    api_keys: str | None = None  # TOML/YAML keys file; None = no keys, one anonymous tenant
    limits_redis: str | None = None  # shared rate limits; None = the cache's Redis, if any
    trim_to: int | None = None  # token budget for prompts; None = no trimming by default
    tokenizer: str | None = None  # for trimming; None = the upstream model's own when local
    health_interval_s: float = 2.0
    eject_after: int = 2  # failures in a row that eject an upstream
    upstream_timeout_s: float = 600.0  # no byte from an upstream for this long: give up
    upstream_ca_bundle: str | None = None  # PEM CAs for https:// upstreams; None = system's
    upstream_verify: bool = True  # False: https:// upstreams' certificates are not checked
    upstream_client_cert: str | None = None  # mutual TLS: the gateway's certificate (PEM)
    upstream_client_key: str | None = None  # its private key; None: inside the cert file
    # The gateway's own API key per upstream URL ("*": every upstream without one of its own).
    upstream_keys: dict[str, str] = field(default_factory=dict, repr=False)
    max_body_bytes: int = 32 * 2**20
    workers: int = 1  # gateway processes on the port (latlab.gateway.workers)

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("give at least one --upstream URL")
        if self.route not in POLICIES:
            raise ConfigError(f"--route {self.route!r}: choose one of {', '.join(POLICIES)}")
        if self.replay not in REPLAY_MODES:
            raise ConfigError(f"--replay must be one of {', '.join(REPLAY_MODES)}")
        for name in ("cache_ttl_s", "health_interval_s", "upstream_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.cache_max_bytes < 1:
            raise ConfigError("--cache-max-bytes must be positive")
        if self.trim_to is not None and self.trim_to < 1:
            raise ConfigError("--trim-to must be at least 1 token")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {self.workers}")
        if self.prefix_chars < 1 or self.eject_after < 1:
            raise ConfigError("--prefix-chars and --eject-after must be at least 1")

    def upstream_access(self) -> UpstreamAccess:
        keys = dict(self.upstream_keys)
        default = keys.pop("*", None)
        return UpstreamAccess(ca_bundle=self.upstream_ca_bundle, verify=self.upstream_verify,
                              client_cert=self.upstream_client_cert,
                              client_key=self.upstream_client_key,
                              api_keys=keys, default_api_key=default)  # fmt: skip

    @property
    def limits_store(self) -> str | None:
        if self.limits_redis:
            return self.limits_redis
        return self.cache if self.cache.startswith(("redis://", "rediss://")) else None
