"""What differs between two runs besides their figures: versions, flags, model, machine, load.

Both results are flattened to dotted keys (``environment.packages.torch``) and compared;
workload keys decide whether the runs are comparable at all.
"""

from __future__ import annotations

from typing import Any

# What was sent: runs that differ here measured different things.
WORKLOAD_KEYS = (
    "dataset",
    "input_len",
    "output_len",
    "prefix_groups",
    "prefix_len",
    "api",
    "stream",
    "ignore_eos",
    "min_tokens",
    "temperature",
    "burstiness",
)
# Keys that differ between any two runs and say nothing about why figures differ (the salt is
# random per run on purpose, so no run hits another's prefix cache; ``trust`` counts over the
# levels, a figure like them).
_NOISE = ("created_utc", "interrupted", "levels", "schema_version", "trust")
_NOISE_KEYS = ("workload.salt", "workload.prompt_words.seconds")  # (how long calibrating took)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {prefix[:-1]: f"{len(value)} items"}
    return {prefix[:-1]: value}


def provenance_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in A, value in B) for every differing key outside the figures."""
    fa = flatten({k: v for k, v in a.items() if k not in _NOISE})
    fb = flatten({k: v for k, v in b.items() if k not in _NOISE})
    missing = object()
    rows = []
    for key in sorted((set(fa) | set(fb)) - set(_NOISE_KEYS)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            rows.append((key, None if va is missing else va, None if vb is missing else vb))
    return rows


def workload_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    ca, cb = a.get("config") or {}, b.get("config") or {}
    return [(k, ca.get(k), cb.get(k)) for k in WORKLOAD_KEYS if ca.get(k) != cb.get(k)]
