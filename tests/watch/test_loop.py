"""Whole watches: --once exit codes, client-only servers, backoff, notifications, server view."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from latlab.runs import RunStore
from latlab.runs.views import watch_windows_table
from latlab.watch.config import WatchConfig
from latlab.watch.loop import Watcher, run_watch
from latlab.watch.sink import StoreSink, watch_document


class Capture:
    """A view that keeps what it is shown and may act on each cycle."""

    def __init__(self, on_update=None) -> None:
        self.snapshots, self.messages = [], []
        self.on_update = on_update

    def update(self, s) -> None:
        self.snapshots.append(s)
        if self.on_update:
            self.on_update(s)

    def message(self, text: str) -> None:
        self.messages.append(text)

    def close(self) -> None:
        pass


def _config(url: str, **kw) -> WatchConfig:
    base = {"interval_s": 0.1, "window_s": 0.5, "max_rate": 20.0, "max_tokens": "4",
            "metrics_port": None}  # fmt: skip
    return WatchConfig(url=url, **{**base, **kw})


def test_once_exits_0_when_the_slo_holds_and_says_the_server_has_no_metrics(stub):
    view = Capture()
    result = run_watch(_config(stub.url, slo_ttft_ms=500, once=True), view=view)
    assert (result.exit_code, result.verdict.state) == (0, "ok")
    assert 1 <= result.cycles <= 5  # one window: 0.5 s of 0.1 s cycles (fewer if cycles are slow)
    assert any("client-side only" in m and "HTTP 404" in m for m in view.messages)
    assert not view.snapshots[-1].server.available


def test_once_exits_1_at_the_first_certain_breach(stub):
    # A 60 s window of 0.1 s cycles holds 600 probes; p99 allows 6 bad ones: the 7th decides.
    result = run_watch(_config(stub.url, slo_ttft_ms=5, once=True, window_s=60), view=Capture())
    assert (result.exit_code, result.cycles) == (1, 7)
    assert "TTFT p99" in result.verdict.reasons[0]


def test_unreachable_server_is_a_breach_with_backoff():
    def stop_after_six(s):
        if s.cycle == 6:
            watcher.stop()

    view = Capture(stop_after_six)
    watcher = Watcher(_config("http://127.0.0.1:1/v1", max_backoff_s=0.8), view=view)
    result = asyncio.run(watcher.run())
    waits = [s.next_in_s for s in view.snapshots]
    assert waits == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    assert all(s.backing_off and s.verdict.state == "breach" for s in view.snapshots)
    assert "unreachable" in result.verdict.reasons[0] and result.exit_code == 0  # not --once


def test_breach_and_recovery_are_notified_once_each(stub, webhook, tmp_path):
    url, posts = webhook
    marker = tmp_path / "breaches"

    def drive(s):  # slow from cycle 3 to 6, then healthy again; stop after cycle 12
        stub.config.ttft_s = 0.15 if 3 <= s.cycle < 6 else 0.02
        if s.cycle == 12:
            watcher.stop()

    view = Capture(drive)
    config = _config(stub.url, slo_ttft_ms=100, window_s=0.3, webhook=url,
                     on_breach=f"echo x >> {marker}")  # fmt: skip
    watcher = Watcher(config, view=view)
    asyncio.run(watcher.run())
    states = [s.verdict.state for s in view.snapshots]
    assert "breach" in states and states[-1] == "ok"
    assert [p["status"] for p in posts] == ["firing", "resolved"]
    assert marker.read_text() == "x\n"


def test_reads_latlab_serve_metrics_and_reports_the_gap(latlab_app_url, tmp_path):
    records = tmp_path / "probes.jsonl"
    seen = {}

    def scrape_own_metrics(s):
        if s.cycle == 4:
            seen["text"] = httpx.get(watcher.metrics_url).text
            watcher.stop()

    view = Capture(scrape_own_metrics)
    # The fake engine's context is 256 characters: short prompts.
    config = _config(latlab_app_url, window_s=5.0, metrics_port=0, records_path=str(records),
                     prompt_tokens="8")  # fmt: skip
    watcher = Watcher(config, view=view)
    result = asyncio.run(watcher.run())
    last = view.snapshots[-1]
    assert last.verdict.state == "ok", last.verdict.reasons
    assert last.server.available and last.server.names.startswith("latlab ")
    assert last.server.requests >= 1 and last.server.ms["ttft"]["mean"] is not None
    assert 'latlab_watch_server_gap_seconds{metric="ttft"' in seen["text"]
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == result.cycles and lines[0]["ok"] and lines[0]["model"] == "fake-model"


@pytest.fixture
def latlab_app_url():
    pytest.importorskip("fastapi")
    from serve.fake_engine import MODEL, FakeEngine, FakeParams

    from latlab.serve.app import create_app
    from latlab.serve.server import running_server

    with running_server(create_app(FakeEngine(), MODEL, make_params=FakeParams)) as base:
        yield base + "/v1"


def test_every_probe_lands_in_the_run_store_one_level_per_window(stub, tmp_path):
    from rich.console import Console

    def stop_after_three(s):
        if s.cycle == 3:
            watcher.stop()

    config = _config(stub.url, slo_ttft_ms=5000)
    store = RunStore.open(tmp_path / "runs.db")
    recorder = StoreSink(store, document=watch_document(config), flush_s=0.0,  # a level a cycle
                         name="probe", tags=["prod"])  # fmt: skip
    view = Capture(stop_after_three)
    watcher = Watcher(config, view=view, recorder=recorder)
    result = asyncio.run(watcher.run())
    with RunStore.open(tmp_path / "runs.db") as again:
        run = again.find("probe")
    levels = run.result["levels"]
    assert run.kind == "watch" and run.info.tags == ["prod"] and len(levels) == result.cycles == 3
    assert [len(lv["records"]) for lv in levels] == [lv["probes"] for lv in levels] == [1, 1, 1]
    assert all(lv["verdict"]["state"] == "ok" and lv["records"][0]["ok"] for lv in levels)
    assert run.info.headline.startswith("3 windows, 3 probes")
    assert run.info.target == f"{stub.url} (completions)"
    assert any(f"recorded run {run.id}" in m for m in view.messages)
    console = Console(width=200, record=True)
    console.print(watch_windows_table(run.result))
    assert "window 3" in console.export_text()
