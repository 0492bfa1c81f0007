"""Engine settings as command-line flags, and ``KEY=VALUE`` text as settings.

Both ``vllm serve`` and ``latlab serve`` spell a setting ``max_num_seqs`` as
``--max-num-seqs 8``; booleans are ``--flag`` / ``--no-flag`` (argparse's BooleanOptionalAction,
which vLLM uses for its boolean fields); dicts and lists go as JSON (vLLM parses JSON for
``--speculative-config``, ``--compilation-config``...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from latlab.errors import ConfigError


def flag_name(key: str) -> str:
    """``max_num_seqs`` or ``max-num-seqs`` -> ``--max-num-seqs``."""
    return "--" + key.strip().lstrip("-").replace("_", "-")


def setting_name(key: str) -> str:
    """The canonical (snake_case) name of a setting given either way."""
    return key.strip().lstrip("-").replace("-", "_")


def to_flags(settings: Mapping[str, Any]) -> list[str]:
    """Settings in order as flags; ``None`` values are left out (the engine's default)."""
    argv: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        flag = flag_name(key)
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        elif isinstance(value, dict | list):
            argv += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            argv += [flag, str(value)]
    return argv


def scalar(text: str) -> Any:
    """A flag value as typed: true/false, none, int, float, JSON object/list, else text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            raise ConfigError(f"{text!r} looks like JSON but does not parse") from None
    return text


def parse_settings(items: Iterable[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (repeatable CLI options) as {snake_case key: typed value}."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} must look like KEY=VALUE")
        settings[setting_name(key)] = scalar(text.strip())
    return settings


def parse_env(items: Iterable[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` environment settings, names kept exactly as written.

    A ``BACKEND:`` prefix (``vllm:VLLM_CPU_KVCACHE_SPACE=1``) is kept on the key for the
    caller to route the setting to one server.
    """
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        bare = name.rpartition(":")[2]
        if not sep or not bare or not bare.replace("_", "").isalnum():
            raise ConfigError(
                f"{flag} {item!r} must look like NAME=VALUE (e.g. CUDA_VISIBLE_DEVICES=0)"
            )
        env[name] = value
    return env
