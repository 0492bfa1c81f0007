"""Settings classes that describe themselves: one field, one help text, one default.

A config dataclass (``EngineConfig``, ``ServeOptions``) declares each field with ``setting()``;
the CLI builds its flags and help from those declarations (``latlab.cli.settings``), and
``from_options`` turns keyword options from any caller (CLI, plan files, ``LLM(**kw)``,
``--engine-arg``) into an instance with one friendly error for unknown keys. A new field is
then a flag, a plan key and a keyword option with no other edit.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from latlab.errors import ConfigError

T = TypeVar("T")
_KEY = "latlab.setting"


@dataclass(frozen=True, slots=True)
class Setting:
    """How a field shows up on the command line."""

    help: str
    flag: str | None = None  # flag name without dashes; default: the field name, dashed
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # text -> value, for flags and string options
    default_text: str | None = None  # what the default means where its value does not say
    cli: bool = True  # False: settable from Python and plan files, not a flag
    metavar: str | None = None  # the flag's value placeholder in --help
    envvar: str | None = None  # the flag may come from this environment variable instead
    hidden: bool = False  # a flag left out of --help (test-only knobs)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    **how: Any,
) -> Any:
    """A dataclass field with its CLI description (see ``Setting`` for ``how``)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={_KEY: Setting(help, **how)}
    )


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One field of a settings class, with its type resolved."""

    name: str
    kind: type  # int, float, str, bool or tuple (of str; the non-None part of the annotation)
    optional: bool  # None is a valid value
    default: Any
    spec: Setting

    @property
    def flag(self) -> str:
        return self.spec.flag or self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """A value from text, as the field's parser or type reads it."""
        if self.spec.parse is not None:
            return self.spec.parse(text)
        if self.kind is tuple:
            return split_names([text])
        if self.kind is bool:
            return text.strip().lower() in ("1", "true", "yes", "on")
        return self.kind(text)


def settings_of(cls: type) -> list[SettingInfo]:
    """The declared settings of ``cls``, in field order (fields without ``setting()`` skipped)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is None:
            continue
        hint = hints[f.name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and (
            type(None) in typing.get_args(hint)
        )
        if optional:
            hint = next(t for t in typing.get_args(hint) if t is not type(None))
        kind = typing.get_origin(hint) or hint  # tuple[str, ...] -> tuple
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(SettingInfo(f.name, kind, optional, default, spec))
    return out


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """Repeated and comma-separated values as one tuple: ("a,b", "c") -> ("a", "b", "c")."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def parse_size(text: str) -> int:
    """A positive byte size from '2GiB', '512MB', '1e9' or an integer (the planner's parser)."""
    from latlab.plan.units import parse_bytes

    value = parse_bytes(text)
    if value <= 0:
        raise ConfigError(f"a size must be positive, got {text!r}")
    return value


def parse_millis(text: str) -> float:
    """Seconds from a number of milliseconds ('250' -> 0.25), for flags given in ms."""
    try:
        return float(text) / 1000
    except ValueError:
        raise ConfigError(f"give a number of milliseconds, got {text!r}") from None


def unknown_keys_error(unknown: list[str], known: list[str], kind: str, owner: str) -> ConfigError:
    """One line naming the unknown keys, every known one, and the closest match."""
    close = difflib.get_close_matches(unknown[0], known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(
        f"unknown {kind} option: {owner} has no setting {', '.join(unknown)}; "
        f"its settings: {', '.join(sorted(known))}{hint}"
    )


def from_options(cls: type[T], options: Mapping[str, Any], *, kind: str, owner: str) -> T:
    """``cls(**options)`` with unknown keys refused in one line and text values parsed.

    Text given for a non-text field (``kv_cache_bytes="2GiB"`` from a flag or a plan file) is
    read by the field's parser; the class itself validates every value.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [key for key in options if key not in fields]
    if unknown:
        raise unknown_keys_error(unknown, list(fields), kind, owner)
    infos = {info.name: info for info in settings_of(cls)}
    values = dict(options)
    for key, value in values.items():
        info = infos.get(key)
        if isinstance(value, str) and info is not None and info.kind is not str:
            values[key] = _parse(info, value)
    return cls(**values)


def _parse(info: SettingInfo, text: str) -> Any:
    try:
        return info.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{info.name}: {exc}") from None
    except ValueError:
        raise ConfigError(
            f"{info.name} takes {'a number' if info.kind in (int, float) else info.kind.__name__}"
            f", got {text!r}"
        ) from None
