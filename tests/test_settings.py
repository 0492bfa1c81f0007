"""Settings classes describe themselves; from_options is their front door."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from latlab.errors import ConfigError
from latlab.settings import from_options, setting, settings_of


@dataclass(kw_only=True, slots=True)
class _Example:
    size: int = setting(4, help="A size.")
    ratio: float | None = setting(None, help="A ratio.", default_text="unset")
    name: str = setting("x", help="A name.", choices=("x", "y"))
    on: bool = setting(True, help="A switch.", flag="switch")
    hidden: int = setting(1, help="Python only.", cli=False)
    tags: list = setting(default_factory=list, help="Tags.", cli=False)


def test_settings_of_resolves_types_defaults_and_flags():
    infos = {i.name: i for i in settings_of(_Example)}
    assert infos["size"].kind is int and not infos["size"].optional
    assert infos["ratio"].kind is float and infos["ratio"].optional
    assert infos["on"].flag == "switch" and infos["size"].flag == "size"
    assert infos["tags"].default == []


def test_from_options_parses_text_and_refuses_unknown_keys():
    made = from_options(_Example, {"size": "7", "ratio": "0.5", "on": "false"}, kind="k", owner="o")
    assert (made.size, made.ratio, made.on) == (7, 0.5, False)
    with pytest.raises(ConfigError, match="unknown k option: o has no setting sise; its settings"):
        from_options(_Example, {"sise": 1}, kind="k", owner="o")
    with pytest.raises(ConfigError, match="size takes a number"):
        from_options(_Example, {"size": "big"}, kind="k", owner="o")
