"""Click options generated from settings classes (``latlab.settings``).

Every flag's name, type, choices and help come from the field's declaration, and its help
ends with the field's own default, so no default is restated by hand. Flags default to None:
only what the user typed is passed on, and the class's defaults apply to the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from latlab.errors import ConfigError
from latlab.settings import SettingInfo, settings_of, split_names


def _default_text(info: SettingInfo) -> str:
    if info.spec.default_text is not None:
        return info.spec.default_text
    if info.kind is bool:
        return "on" if info.default else "off"
    return str(info.default)


class _Parsed(click.ParamType):
    """A flag read by the field's own parser; its ConfigError names the flag."""

    def __init__(self, info: SettingInfo) -> None:
        self.info = info
        self.name = info.kind.__name__

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.info.parse(value)
        except ConfigError as exc:
            flag = f"--{self.info.flag}"
            raise ConfigError(str(exc) if str(exc).startswith(flag) else f"{flag}: {exc}") from None


def _names_or_none(ctx: Any, param: Any, values: tuple[str, ...]) -> tuple[str, ...] | None:
    return split_names(values) or None


def _option(info: SettingInfo, dest: str) -> Callable[[Any], Any]:
    spec = info.spec
    flag = f"--{info.flag}"
    common: dict[str, Any] = {
        "default": None,
        "help": f"{spec.help} [default: {_default_text(info)}]",
    }
    if spec.envvar:
        common.update(envvar=spec.envvar, show_envvar=True)
    if spec.hidden:
        common["hidden"] = True
    if info.kind is bool and info.default is False:
        return click.option(flag, dest, is_flag=True, **common)
    if info.kind is bool:
        return click.option(f"{flag}/--no-{info.flag}", dest, **common)
    if (
        info.kind is tuple and spec.parse is None
    ):  # repeatable, and each value may list several: a,b
        return click.option(flag, dest, multiple=True, callback=_names_or_none, **common)
    kind: Any = {int: int, float: float}.get(info.kind, str)
    if spec.choices:
        kind = click.Choice(spec.choices)
    elif spec.parse is not None:
        kind = _Parsed(info)
    return click.option(flag, dest, type=kind, metavar=spec.metavar, **common)


def settings_options(cls: type, prefix: str, exclude: Iterable[str] = ()) -> Callable[[Any], Any]:
    """Decorator adding one flag per CLI setting of ``cls``; values arrive as ``prefix + name``.

    The prefix keeps each class's values apart in the command's keyword arguments
    (``pick(kwargs, prefix)`` collects them again). ``exclude`` names fields a command sets
    its own way (the gateway's own --port default, say).
    """
    skip = set(exclude)
    infos = [info for info in settings_of(cls) if info.spec.cli and info.name not in skip]

    def decorate(command: Any) -> Any:
        for info in reversed(infos):
            command = _option(info, prefix + info.name)(command)
        return command

    return decorate


def pick(flags: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The values the user gave for one class's flags (unset flags left out), unprefixed."""
    return {
        key[len(prefix) :]: value
        for key, value in flags.items()
        if key.startswith(prefix) and value is not None
    }


def flag_names(classes: Iterable[type]) -> list[str]:
    """Every generated flag of ``classes``, for checking that no two of them collide."""
    return [info.flag for cls in classes for info in settings_of(cls) if info.spec.cli]
