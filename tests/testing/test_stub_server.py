"""The stub server itself: endpoints, chunking, usage, each fault mode, its own timings."""

import json
import subprocess
import sys
import time

import httpx
import pytest

from latlab.testing import StubConfig, StubServer


def _stream(url, body, timeout=5.0):
    with httpx.stream("POST", url, json=body, timeout=timeout) as r:
        return r.status_code, b"".join(r.iter_raw())


def _events(raw):
    return [e[6:] for e in raw.decode().split("\n\n") if e.startswith("data: ")]


def test_models_health_and_streamed_completion():
    with StubServer(ttft_s=0.01, itl_s=0.001, tokens_per_chunk=3, chunks=4) as url:
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "stub-model"
        body = {"model": "m", "prompt": "a b c", "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        status, raw = _stream(url + "/completions", body)
        ev = _events(raw)
        assert status == 200 and ev[-1] == "[DONE]"
        chunks = [json.loads(e) for e in ev[:-1]]
        texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
        assert texts == [" tok tok tok"] * 4
        assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 12,
                                       "total_tokens": 15}  # fmt: skip


def test_chat_stream_starts_with_a_role_only_chunk_and_chunks_follow_max_tokens():
    with StubServer(ttft_s=0.0, itl_s=0.0) as url:
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}
        _, raw = _stream(url + "/chat/completions", body)
        chunks = [json.loads(e) for e in _events(raw)[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["choices"][0]["delta"]["content"] for c in chunks[1:]] == [" tok"] * 5
        assert not any("usage" in c for c in chunks)  # include_usage was not asked for


def test_non_streaming_reply_has_text_and_usage():
    with StubServer(ttft_s=0.0, itl_s=0.0, chunks=3) as url:
        r = httpx.post(url + "/completions", json={"prompt": "x"}).json()
        assert r["choices"][0]["text"] == " tok" * 3
        assert r["usage"]["completion_tokens"] == 3


def test_server_records_its_own_first_chunk_time():
    with StubServer(ttft_s=0.03, itl_s=0.0, chunks=2) as url:
        srv_stats = None
        for _ in range(3):
            _stream(url + "/completions", {"prompt": "x", "stream": True})
        srv_stats = httpx.get(url.removesuffix("/v1") + "/stub/stats").json()
        assert srv_stats["requests"] == 3
        assert len(srv_stats["first_chunk_ms"]) == 3
        # Lower bounds only: the stub waits its TTFT; a loaded machine only adds delay.
        own = srv_stats["first_chunk_ms"]
        assert all(v >= 29.0 for v in own)
        pairs = srv_stats["first_chunk_ns"]
        assert len(pairs) == 3 and all(w - r >= 29e6 for _, r, w in pairs)
        assert sorted((w - r) / 1e6 for _, r, w in pairs) == pytest.approx(own)
        assert pairs[0][1] < time.perf_counter_ns()  # the client's clock
        httpx.post(url.removesuffix("/v1") + "/stub/reset")
        assert httpx.get(url.removesuffix("/v1") + "/stub/stats").json()["first_chunk_ms"] == []


@pytest.mark.parametrize("code", ["500", "429"])
def test_http_error_faults(code):
    with StubServer(fault=code) as url:
        status, _ = _stream(url + "/completions", {"prompt": "x", "stream": True})
        assert status == int(code)


def test_fault_every_nth_request_only():
    with StubServer(fault="500", fault_every=2, ttft_s=0, itl_s=0, chunks=1) as url:
        codes = [_stream(url + "/completions", {"prompt": "x", "stream": True})[0]
                 for _ in range(4)]  # fmt: skip
        assert codes == [200, 500, 200, 500]


def test_reset_fault_breaks_the_connection_mid_stream():
    with (
        StubServer(fault="reset", ttft_s=0, itl_s=0.001, chunks=5) as url,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        _stream(url + "/completions", {"prompt": "x", "stream": True})


def test_malformed_and_no_done_faults():
    with StubServer(fault="malformed", ttft_s=0, itl_s=0, chunks=4) as url:
        _, raw = _stream(url + "/completions", {"prompt": "x", "stream": True})
        assert b"data: {this is not json" in raw
    with StubServer(fault="no_done", ttft_s=0, itl_s=0, chunks=2) as url:
        _, raw = _stream(url + "/completions", {"prompt": "x", "stream": True})
        assert b"[DONE]" not in raw and b"tok" in raw


def test_hang_fault_times_out():
    with StubServer(fault="hang") as url, pytest.raises(httpx.ReadTimeout):
        _stream(url + "/completions", {"prompt": "x", "stream": True}, timeout=0.3)


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown fault"):
        StubConfig(fault="explode")


def test_command_line_entry_serves_until_stopped():
    proc = subprocess.Popen(
        [sys.executable, "-m", "latlab.testing.stub_server", "--port", "0", "--ttft-ms", "1",
         "--itl-ms", "1", "--chunks", "2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("stub server ready at http://127.0.0.1:")
        url = line.split(" at ")[1].strip()
        _, raw = _stream(url + "/completions", {"prompt": "x", "stream": True})
        assert len(_events(raw)) == 3
    finally:
        proc.terminate()
        proc.wait(10)


def test_max_concurrent_queues_the_rest_and_their_ttft_counts_the_wait():
    from latlab.bench import BenchConfig, OpenAITarget, run_bench

    cfg = BenchConfig(concurrency=[6], num_requests=12, warmup=0, input_len="4", output_len="5")
    server = StubServer(ttft_s=0.05, itl_s=0.01, max_concurrent=2)
    with server as url:
        level = run_bench(cfg, OpenAITarget(url), progress=False).levels[0]
        assert server.stats()["peak_concurrent"] == 2
    ttfts = sorted(r.ttft_ns / 1e6 for r in level.records)
    # Two are served at once, so six users queue: the last of a round waits two whole services
    # (50 + 4 x 10 ms each) for a slot. Lower bounds only: a loaded machine only adds delay.
    assert ttfts[0] >= 49
    assert ttfts[-1] - ttfts[0] > 2 * 90 - 40
    with pytest.raises(ValueError, match="max_concurrent"):
        StubConfig(max_concurrent=0)


def test_stub_process_runs_in_its_own_process_and_stops():
    from latlab.testing import stub_process

    with stub_process(ttft_s=0.0, itl_s=0.0, max_concurrent=1) as url:
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "stub-model"
        stats = httpx.get(url.removesuffix("/v1") + "/stub/stats").json()
        assert stats["peak_concurrent"] == 0
        port = int(url.split(":")[2].split("/")[0])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
