"""One exception hierarchy, so callers catch what they understand.

Every message says what went wrong and what to do about it; the CLI prints it as one line.
"""

from __future__ import annotations


class LatlabError(Exception):
    """Base of every error latlab raises on purpose."""


class ConfigError(LatlabError):
    """A flag, config field or plan file is wrong."""


class ModelLoadError(LatlabError):
    """A model or tokenizer could not be loaded (missing path, corrupt file, unsupported arch)."""


class TargetError(LatlabError):
    """A bench target cannot be reached or used at all (checked before the load starts)."""


class CapacityError(LatlabError):
    """A request or plan cannot fit in the memory it was given."""


class OverloadedError(LatlabError):
    """The engine's waiting queue is full; the caller should retry later (HTTP 503)."""


class RunStoreError(LatlabError):
    """The run store cannot be opened, read or written (corrupt file, newer schema, no access)."""


class RunNotFoundError(RunStoreError):
    """A run reference (id, name or JSON file) matches nothing."""
