"""Test helpers that ship with latlab: a deterministic OpenAI-compatible stub server."""

from latlab.testing.stub_server import FAULTS, StubConfig, StubServer

__all__ = ["FAULTS", "StubConfig", "StubServer"]
