"""benchmarks/gateway.py's workload builders and Prometheus parsing (the figures' inputs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway.py"
gw = load_script("gateway_bench", SCRIPT)


def test_repeats_dataset_repeats_exactly_the_share_asked_and_only_earlier_prompts(tmp_path):
    path = tmp_path / "r.jsonl"
    repeats = gw.repeats_dataset(path, 80, 0.25, seed=1)
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines()]
    assert repeats == 20 and len(prompts) == 80 and len(set(prompts)) == 60
    first = {p: prompts.index(p) for p in set(prompts)}
    assert all(first[p] <= i for i, p in enumerate(prompts))


def test_prefix_dataset_groups_and_hot_share(tmp_path):
    even, hot = tmp_path / "even.jsonl", tmp_path / "hot.jsonl"
    gw.prefix_dataset(even, 96, 8, None, seed=3)
    gw.prefix_dataset(hot, 400, 8, 0.8, seed=3)
    heads = [json.loads(x)["prompt"].split("]")[0] for x in even.read_text().splitlines()]
    assert set(Counter(heads).values()) == {12}
    hot_heads = Counter(json.loads(x)["prompt"].split("]")[0] for x in hot.read_text().splitlines())
    assert 0.72 < hot_heads.most_common(1)[0][1] / 400 < 0.88


def test_metric_sums_the_matching_samples():
    text = (
        "# HELP x\nlatlab:prefix_cache_hits_total 3.0\n"
        'latlab:gateway_upstream_requests_total{upstream="a",outcome="http_200"} 4.0\n'
        'latlab:gateway_upstream_requests_total{upstream="a",outcome="connect_error"} 1.0\n'
        'latlab:gateway_upstream_requests_total{upstream="b",outcome="http_200"} 2.0\n'
    )
    assert gw.metric(text, "latlab:prefix_cache_hits") == 0.0  # a different name
    assert gw.metric(text, "latlab:prefix_cache_hits_total") == 3.0
    assert gw.metric(text, "latlab:gateway_upstream_requests_total", 'upstream="a"') == 5.0


def test_waves_time_each_stream_of_a_burst_and_tables_show_cpu():
    import asyncio

    from latlab.testing.stub_server import StubServer

    with StubServer(ttft_s=0.02, itl_s=0.001, chunks=4) as url:
        ttfts = asyncio.run(gw._waves(url.rsplit("/v1", 1)[0], 4, 2))
    assert len(ttfts) == 8 and all(15 < t < 5000 for t in ttfts)
    runs = (("direct", 20, None), ("gw", 23, 30.0))
    rows = [{"target": t, "concurrency": 4, "repeat": 0, "ttft_p50": v, "ttft_p99": v,
             "cpu_us_per_chunk": cpu} for t, v, cpu in runs]  # fmt: skip
    summary = gw._waves_summary(rows, ["direct", "gw"])
    assert summary[1]["ttft_p50_added"] == 3 and summary[1]["cpu_us_per_chunk"] == 30.0
    table = gw._parser_table(summary)
    assert "| gw | 4 | 30.0 us | 23.0 ms | +3.0 ms |" in table and "| direct | 4 | - |" in table


def test_the_gateways_own_view_is_the_mean_over_the_run_and_shows_in_the_table():
    def scrape(wait_n: int, wait_s: float, ttft: tuple[float, float]) -> dict[str, float]:
        h = "latlab:gateway_time_to_first_token_seconds"
        w = "latlab:gateway_request_wait_seconds"
        return {f"{w}_count": wait_n, f"{w}_sum": wait_s,
                f"{h}_count": ttft[0], f"{h}_sum": ttft[1]}  # fmt: skip

    means = gw._view_means(scrape(10, 0.5, (10, 1.0)), scrape(14, 0.508, (13, 1.156)))
    assert means == {"gw_wait_ms": 2.0, "gw_ttft_ms": 52.0}
    assert gw._view_means(scrape(3, 0.1, (3, 1)), scrape(3, 0.1, (3, 1)))["gw_wait_ms"] is None
    row = {"target": "latlab-gateway", "concurrency": 64, "ttft_p50": 55.0, "ttft_p50_added": 3.0,
           "ttft_p99": 80.0, "gap_p50": 10.0, "gap_p50_added": 0.0, "cpu_us_per_chunk": 57.0,
           **means}  # fmt: skip
    direct = {**row, "target": "direct", "gw_wait_ms": None, "cpu_us_per_chunk": None}
    table = gw._overhead_table([direct, row])
    assert "| 57.0 us | 2.00 / 52.0 ms |" in table and table.splitlines()[2].endswith("| - | - |")


def _stream_events(base: str, max_tokens: int) -> list[bytes]:
    """A streaming completion's SSE events, read to the end over a fresh connection."""
    import urllib.request

    body = json.dumps({"model": "stub-model", "prompt": "hi", "max_tokens": max_tokens,
                       "stream": True}).encode()  # fmt: skip
    req = urllib.request.Request(base + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return [e for e in resp.read().split(b"\n\n") if e.strip()]


def test_the_python_relay_passes_streams_through_whole_and_stops_with_its_stack():
    from contextlib import ExitStack

    from latlab.testing.stub_server import StubServer

    with StubServer(ttft_s=0.001, itl_s=0.001, chunks=40) as url:
        base = url.rsplit("/v1", 1)[0]
        with ExitStack() as stack:
            relay_url, pid = gw.pyrelay(stack, base)
            direct, relayed = _stream_events(base, 40), _stream_events(relay_url, 40)
            assert relayed[-1] == b"data: [DONE]" and len(relayed) == len(direct) > 40
            assert _texts(relayed) == _texts(direct)
        assert not Path(f"/proc/{pid}").exists()  # stopped (and reaped) with its stack


@contextlib.contextmanager
def _anchor_before_a_dead_upstream(script: Path, name: str):
    """The anchor at ``script`` relaying to a port where nothing listens: its base URL."""
    from latlab.procs import ManagedProcess, ProcessSpec, free_port, group_listens_on

    port = free_port()
    argv = [str(gw.BIN / "python"), str(script), "--upstream", f"127.0.0.1:{free_port()}",
            "--port", str(port)]  # fmt: skip
    proc = ManagedProcess(ProcessSpec(argv=argv, name=name)).start()
    try:
        proc.wait_ready(lambda: group_listens_on(proc.pid, port), timeout_s=30)
        yield f"http://127.0.0.1:{port}"
        assert proc.proc is not None and proc.proc.poll() is None  # the anchor itself lives on
    finally:
        assert proc.stop() == 0  # SIGTERM: a clean exit


def test_the_python_relay_closes_the_client_when_the_upstream_is_down():
    import urllib.error

    with (
        _anchor_before_a_dead_upstream(gw.PYRELAY, "pyrelay") as base,
        pytest.raises((urllib.error.URLError, ConnectionError)),
    ):
        _stream_events(base, 4)  # nothing listens upstream


def test_the_python_proxy_splices_streams_checks_bodies_and_stops_with_its_stack():
    import urllib.error
    from contextlib import ExitStack

    from latlab.testing.stub_server import StubServer

    with StubServer(ttft_s=0.001, itl_s=0.001, chunks=40) as url:
        base = url.rsplit("/v1", 1)[0]
        with ExitStack() as stack:
            plain_url, plain_pid = gw.pyproxy(stack, base)
            checked_url, checked_pid = gw.pyproxy(stack, base, checked=True)
            slowed_url, slowed_pid = gw.pyproxy(stack, base, burn=(200, 20))  # budget study
            direct = _stream_events(base, 40)
            for proxy_url in (plain_url, checked_url, slowed_url):
                for _ in range(3):  # the pooled upstream connection is reused whole
                    proxied = _stream_events(proxy_url, 40)
                    assert proxied[-1] == b"data: [DONE]" and _texts(proxied) == _texts(direct)
            with pytest.raises(urllib.error.HTTPError) as refused:
                _post(checked_url, {"model": "stub-model", "prompt": "hi", "max_tokens": -3})
            assert refused.value.code == 400 and b"max_tokens" in refused.value.read()
            with pytest.raises(urllib.error.HTTPError) as not_json:
                _post(plain_url, b"{nope")
            assert not_json.value.code == 400
        for pid in (plain_pid, checked_pid, slowed_pid):
            assert not Path(f"/proc/{pid}").exists()  # stopped (and reaped) with its stack


def test_the_python_proxy_answers_502_when_the_upstream_is_down_and_400_without_it():
    import urllib.error

    with _anchor_before_a_dead_upstream(gw.PYPROXY, "pyproxy") as base:
        with pytest.raises(urllib.error.HTTPError) as down:
            _post(base, {"model": "stub-model", "prompt": "hi"})
        assert down.value.code == 502 and b"upstream unreachable" in down.value.read()
        with pytest.raises(urllib.error.HTTPError) as bad:
            _post(base, {"prompt": "hi"})  # refused here: never sent on (that would be a 502)
        assert bad.value.code == 400 and b"naming a model" in bad.value.read()


def test_budget_specs_are_read_or_refused_with_the_form_to_use():
    assert gw.burn_specs("300:0,0:15") == [("300:0", 300.0, 0.0), ("0:15", 0.0, 15.0)]
    assert gw.burn_specs("") == []
    for bad in ("300", "a:b", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError, match="REQ_US:CHUNK_US"):
            gw.burn_specs(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="negative"):
        gw.burn_specs("-5:0")


_TWO_THREADS = (
    "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
    "time.sleep(30)"
)


def test_proxy_cpus_are_some_of_the_allowed_ones_and_pin_moves_every_thread():
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to split between the proxies and the rest")
    last = allowed[-1]
    assert gw.cpu_list(str(last)) == {last}
    assert gw.cpu_list(f"{allowed[0]}-{allowed[0]}") == {allowed[0]}
    for bad, message in (("x", "CPU numbers"), (",".join(map(str, allowed)), "not all"),
                         (str(max(allowed) + 1), "not all")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            gw.cpu_list(bad)
    child = subprocess.Popen([sys.executable, "-c", _TWO_THREADS], start_new_session=True)
    tasks = Path(f"/proc/{child.pid}/task")
    try:
        deadline = time.monotonic() + 10
        while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        gw.pin(child.pid, {last})
        tids = [int(t.name) for t in tasks.iterdir()]
        assert len(tids) == 2 and all(os.sched_getaffinity(t) == {last} for t in tids)
    finally:
        child.kill()
        child.wait()


def _post(base: str, body: dict | bytes) -> bytes:
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + "/v1/completions", data=data,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return resp.read()


def _texts(events: list[bytes]) -> list[str]:
    objs = [json.loads(e[len(b"data: ") :]) for e in events if e != b"data: [DONE]"]
    return [c.get("text", "") for o in objs for c in o["choices"]]


def test_one_chunk_answers_have_no_gap_and_cpu_counts_per_request(monkeypatch):
    def level(ttft: float) -> dict:
        summary = {"completed": 9, "failed": 0, "ttft_ms": {"p50": ttft, "p99": ttft},
                   "chunk_gap_ms": None}  # fmt: skip
        return {"summary": summary, "client": {"client_bound": False}, "warmup_requests": 1}

    rows = [gw._overhead_row(name, 64, 0, level(t), []) for name, t in (("direct", 50), ("gw", 54))]
    summary = gw._overhead_summary(rows, [64], ["direct", "gw"])
    assert summary[1]["ttft_p50_added"] == 4 and summary[1]["gap_p50_added"] is None
    assert "gap p50 - ms" in gw._fmt_overhead(rows[1])
    monkeypatch.setattr(gw, "cpu_seconds", lambda pid: 1.01)
    assert gw._cpu_per_chunk(7, 1.0, level(54), 1) == 1000.0  # 10 ms over 10 requests


def test_waves_requests_are_each_their_own_so_the_gateway_forwards_every_one():
    """Identical deterministic requests would be coalesced into one upstream call: a burst of
    them measured the gateway's fan-out, not its forwarding."""
    import asyncio

    from latlab.gateway.config import GatewayConfig
    from latlab.gateway.server import running_gateway
    from latlab.testing.stub_server import StubServer

    with StubServer(ttft_s=0.02, itl_s=0.001, chunks=2) as url:
        base = url.rsplit("/v1", 1)[0]
        with running_gateway(GatewayConfig(upstreams=[url])) as (gw_url, _):
            assert len(asyncio.run(gw._waves(gw_url, 4, 2))) == 8
            text = gw.get(gw_url + "/metrics")
    assert gw.metric(text, "latlab:gateway_cache_requests_total", 'result="coalesced"') == 0
    assert gw.metric(text, "latlab:gateway_upstream_requests_total", base) == 8
