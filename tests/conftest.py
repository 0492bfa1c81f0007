"""Fixtures for every test: a private run store, and one real vLLM CPU server for every live test.

A vLLM launch costs 30-60 s on two idle cores (minutes on busy ones), so the live tests share
one: the bundled model, launched with the flags ``latlab plan --backend vllm --device cpu``
gives, plus ``--enforce-eager`` (torch.compile's warm-up would add minutes and changes nothing
a test asserts). Without vLLM they skip, or fail under ``make test`` (tests/live_vllm.py).

The live vLLM tests run together: last in one process (``make test`` installs vLLM in the
background meanwhile, scripts/test.sh), on one worker from the start under pytest-xdist. Those
that launch their own vLLM (marked ``vllm``) come before those sharing the session server, so
that server is up only at the end of the group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# SIGTERM (a CI or `timeout` limit) tears fixtures down like Ctrl-C: no server outlives the run.
pytest_plugins = ["latlab.testing.pytest_plugin"]


def _vllm_rank(item: pytest.Item) -> int:
    if "vllm_server" in getattr(item, "fixturenames", ()):
        return 2
    return 1 if item.get_closest_marker("vllm") else 0


@pytest.hookimpl(tryfirst=True)  # before -m selects on the live_vllm marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Live vLLM tests marked ``live_vllm`` and kept together. In one process they run last
    (``make test``'s background install has the rest of the suite to finish). Under
    ``pytest -n N --dist loadgroup`` (make test) they are one unit of work handed out first, so
    one worker runs them while the others run the rest (a test file per unit of work, its
    module fixtures started once); the install, started before lint, is done by then."""
    parallel = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    if parallel:  # the live vLLM tests first, own launches before the shared server's users
        items.sort(key=lambda item: (_vllm_rank(item) == 0, _vllm_rank(item)))
    else:
        items.sort(key=_vllm_rank)  # stable: the rest keep their order
    for item in items:
        if _vllm_rank(item):
            item.add_marker(pytest.mark.live_vllm)
            item.add_marker(pytest.mark.xdist_group("live-vllm"))
        else:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How long make test's background vLLM install took (CI's log keeps it)."""
    from live_vllm import install_summary

    line = install_summary()
    if line:
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _private_run_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test records runs into its own store, never into ./latlab-runs of the checkout
    (subprocesses inherit the variable)."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    monkeypatch.setenv("LATLAB_STORE", str(path))
    return path


@pytest.fixture(params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each of uvicorn's HTTP parsers in turn, for the servers a test starts (latlab serve's
    connection rules, the gateway's request stamps): both must behave the same."""
    if request.param == "httptools":
        pytest.importorskip("httptools", reason="httptools is not installed")
    from latlab.serve import connections

    monkeypatch.setattr(connections, "PREFERRED_PARSER", request.param)
    return request.param


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running ``vllm serve`` of the bundled model (a latlab.deploy.Deployment)."""
    from live_vllm import vllm_command_or_skip, vllm_test_plan

    from latlab.assets import bundled_model_path
    from latlab.deploy import LaunchSettings, launch
    from latlab.deploy.vllm import VllmBackend
    from latlab.procs import group_members

    command = vllm_command_or_skip()
    flags = {**vllm_test_plan().flags, "enforce_eager": True}
    settings = LaunchSettings(
        model=str(bundled_model_path()), served_model_name="tiny-llama", engine_args=flags,
        env=vllm_test_plan().env,  # unsets VLLM_CPU_KVCACHE_SPACE: the flag decides
        log_dir=Path(tmp_path_factory.mktemp("vllm-logs")),
    )  # fmt: skip
    server = launch(VllmBackend(command), settings)
    pgid = server.process.pid
    try:
        yield server
    finally:
        server.stop()
    assert pgid is not None and group_members(pgid) == [], "vLLM processes were left running"
