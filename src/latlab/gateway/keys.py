"""API keys: a TOML or YAML file of key hashes, each with its tenant and limits.

Keys are never stored or logged in clear: the file holds ``sha256`` hex digests (``latlab
gateway --hash-key`` prints one), a request's key is hashed and looked up. API keys are long
random strings, so a plain SHA-256 is enough (a slow password hash protects guessable secrets).

    [[keys]]
    sha256 = "9f86d0..."          # of the key the client sends as "Authorization: Bearer KEY"
    tenant = "team-a"             # cache entries and limits are per tenant
    requests_per_minute = 600     # optional; none = unlimited
    tokens_per_minute = 200000    # optional; prompt + completion tokens of every answer
    count_cache_hits = true       # optional; false: cached and coalesced answers spend no tokens
    cache_sampled = false         # optional; true lets this tenant's sampled requests be cached

What ``tokens_per_minute`` counts: the tokens of every answer the key receives, whether a model
computed it, the cache replayed it, or it was shared with an identical request in flight. A
quota is what a tenant may consume, and a client cannot choose whether its answer is cached:
counting only misses would let the same workload pass or fail depending on other traffic and
on which gateway (with which cache) it reached. ``count_cache_hits = false`` is for operators
whose token limit only protects the upstreams' capacity, which cached answers do not use.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError

_FLAGS = {"cache_sampled": False, "count_cache_hits": True}  # boolean fields, their defaults
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {
    "sha256",
    "tenant",
    "requests_per_minute",
    "tokens_per_minute",
    "cache_sampled",
    "count_cache_hits",
}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(kw_only=True, slots=True, frozen=True)
class Tenant:
    """Who a request belongs to, and what it may do."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    cache_sampled: bool = False
    count_cache_hits: bool = True  # cached and coalesced answers spend tokens_per_minute too


# Without a keys file every request is this tenant (one team, no limits).
ANONYMOUS = Tenant(name="")


class KeyRing:
    """Key hash -> tenant."""

    def __init__(self, tenants: dict[str, Tenant]) -> None:
        self._by_hash = dict(tenants)

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def limited(self) -> bool:
        """Does any key have a requests/min or tokens/min limit?"""
        return any(t.requests_per_minute or t.tokens_per_minute for t in self._by_hash.values())

    def lookup(self, authorization: str | None) -> Tenant | None:
        """The tenant of an ``Authorization: Bearer KEY`` header; None when it is not valid."""
        if not authorization:
            return None
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self._by_hash.get(hash_key(key.strip()))


def load_keys(path: str | Path) -> KeyRing:
    """Read a keys file (``.toml``, ``.yaml`` or ``.yml``); ConfigError says what is wrong."""
    path = Path(path)
    data = _read(path)
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a non-empty list 'keys' ([[keys]] in TOML)")
    tenants: dict[str, Tenant] = {}
    for i, entry in enumerate(entries):
        digest, tenant = _entry(path, i, entry)
        if digest in tenants:
            raise ConfigError(f"{path}: keys[{i}] repeats a key hash already listed")
        tenants[digest] = tenant
    return KeyRing(tenants)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the keys file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            return tomllib.loads(text)
    except Exception as exc:  # the parsers' own errors name the line
        raise ConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    raise ConfigError(f"{path}: the keys file must end in .toml, .yaml or .yml")


def _entry(path: Path, i: int, entry: Any) -> tuple[str, Tenant]:
    where = f"{path}: keys[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table of fields")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    digest = str(entry.get("sha256", "")).lower()
    if not _HEX64.match(digest):
        raise ConfigError(
            f"{where}: 'sha256' must be the 64-hex-digit SHA-256 of the key "
            "(print one with: latlab gateway --hash-key < key.txt); never put the key itself here"
        )
    tenant = entry.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise ConfigError(f"{where}: 'tenant' must be a non-empty string")
    limits = {}
    for name in ("requests_per_minute", "tokens_per_minute"):
        value = entry.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ConfigError(f"{where}: '{name}' must be a positive integer")
        limits[name] = value
    flags = {name: entry.get(name, default) for name, default in _FLAGS.items()}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{name}' must be true or false")
    return digest, Tenant(name=tenant, **flags, **limits)
