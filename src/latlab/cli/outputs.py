"""Output paths checked before the work starts, so a long run never ends in a crash on write."""

from __future__ import annotations

import os
from pathlib import Path

from latlab.errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path.cwd()


def check_writable_dir(path: str | os.PathLike[str], flag: str) -> None:
    """``path`` is a directory we can write into, or one we can create."""
    target = Path(path).expanduser().absolute()
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {existing} (permission denied)")


def check_writable_file(path: str | os.PathLike[str], flag: str) -> None:
    """``path`` is a file we can create or overwrite, in a directory that exists."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    if not target.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the directory {target.parent} does not exist")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{flag} {path}: the file is not writable")
    if not target.exists() and not os.access(target.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {target.parent} (permission denied)")
