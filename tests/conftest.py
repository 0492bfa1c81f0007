"""Fixtures for every test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_run_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test records runs into its own store, never into ./latlab-runs of the checkout
    (subprocesses inherit the variable)."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    monkeypatch.setenv("LATLAB_STORE", str(path))
    return path
