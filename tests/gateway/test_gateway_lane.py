"""The direct lane (latlab.gateway.lane): which requests it answers, and that they are answered
exactly as the ASGI path answers them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from gateway.conftest import gateway
from gateway.helpers import apost, body, post, root
from latlab.gateway import lane
from latlab.gateway.server import READY_PREFIX
from latlab.testing.stub_server import StubServer

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"


def lane_count(url: str) -> float:
    text = httpx.get(url + "/metrics", trust_env=False).text
    line = next(x for x in text.splitlines()
                if x.startswith("latlab:gateway_direct_lane_requests_total "))  # fmt: skip
    return float(line.split()[1])


def stub_requests(stub_url: str) -> int:
    return httpx.get(root(stub_url) + "/stub/stats", trust_env=False).json()["requests"]


def _answer(reply) -> tuple:
    """What a client sees, without what differs between two gateways: the date, the upstream's
    URL, and how a whole body is framed (the ASGI path chunks it, the lane gives its length)."""
    skip = ("date", "x-latlab-upstream", "content-length", "transfer-encoding")
    headers = {k: v for k, v in reply.headers.items() if k not in skip}
    return reply.status, headers, reply.body


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_the_lane_answers_plain_requests_as_the_asgi_path_does(stream):
    with (
        StubServer(ttft_s=0.005, itl_s=0.001) as upstream,
        gateway(upstreams=[upstream], cache="off") as (lane_url, _),
        gateway(upstreams=[upstream], cache="off", direct_lane=False) as (asgi_url, _),
    ):
        payload = body("same answer", stream=stream)
        by_lane, by_asgi = post(lane_url, payload), post(asgi_url, payload)
        chat = post(lane_url, {"model": "stub-model", "stream": stream, "max_tokens": 4,
                               "messages": [{"role": "user", "content": "hi"}]},
                    path="/v1/chat/completions")  # fmt: skip
        counts = lane_count(lane_url), lane_count(asgi_url)
    assert _answer(by_lane) == _answer(by_asgi)
    assert by_lane.status == chat.status == 200 and by_lane.cache == "bypass"
    assert by_lane.headers["x-latlab-upstream"] == root(upstream)
    if stream:
        assert by_lane.events[-1] == b"data: [DONE]\n\n" and len(by_lane.events) == 6 + 2
    else:
        assert by_lane.json()["choices"][0]["text"] and "content-length" in by_lane.headers
    assert counts == (2, 0)


@pytest.mark.parametrize("first", ["lane", "asgi"])
def test_requests_on_the_two_paths_share_one_upstream_call(first):
    """An identical request joins a flight whichever path started it (an Origin header sends a
    request the ASGI path)."""
    with (
        StubServer(ttft_s=0.5, itl_s=0.01) as upstream,
        gateway(upstreams=[upstream], cache="off") as (url, g),
    ):
        on_asgi = {"origin": url}
        leader_headers, joiner_headers = ({}, on_asgi) if first == "lane" else (on_asgi, {})

        async def go():
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                leader = asyncio.create_task(
                    apost(client, url, body("both paths"), **leader_headers)
                )
                deadline = time.monotonic() + 10
                while not len(g.flights) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)  # the leader's flight is in the air
                joiner = apost(client, url, body("both paths"), **joiner_headers)
                return await asyncio.gather(leader, joiner)

        leader, joiner = asyncio.run(go())
        count, forwarded = lane_count(url), stub_requests(upstream)
    assert (leader.cache, joiner.cache) == ("bypass", "coalesced")
    assert leader.events == joiner.events and leader.events[-1] == b"data: [DONE]\n\n"
    assert forwarded == 1 and count == 1


def test_requests_that_must_wait_go_the_asgi_path(tmp_path):
    """A trimming budget, a cache read and an Origin header (CORS) all take the ASGI path."""
    with (
        StubServer(ttft_s=0.005, itl_s=0.001) as upstream,
        gateway(upstreams=[upstream], cache=f"sqlite:{tmp_path / 'c.sqlite'}") as (url, _),
    ):
        cached = [post(url, body("cached twice")) for _ in range(2)]
        trimmed = post(url, body("trim me", temperature=0.7), x_latlab_trim_to="64")
        origin = post(url, body("from a page", temperature=0.7), origin=url)
        sampled = post(url, body("sampled", temperature=0.7))  # no cache read: the lane's
        count = lane_count(url)
    assert [r.cache for r in cached] == ["miss", "hit"]
    assert trimmed.status == 200 and "x-latlab-token-count" in trimmed.headers
    assert origin.status == 200
    assert sampled.status == 200 and sampled.cache == "bypass"
    assert count == 1


@pytest.mark.parametrize(("pause_s", "hold_s", "taken"), [(0.02, 5.0, 1), (0.6, 0.1, 0)],
                         ids=["soon", "late"])  # fmt: skip
def test_a_body_after_its_head_is_waited_for_briefly(monkeypatch, pause_s, hold_s, taken):
    """httpx writes the head and the body separately: the lane waits for the body up to HOLD_S,
    then hands the request to the ASGI path (and its body deadline). The margins are wide so a
    busy machine cannot turn one case into the other."""
    monkeypatch.setattr(lane, "HOLD_S", hold_s)
    with (
        StubServer(ttft_s=0.005, itl_s=0.001) as upstream,
        gateway(upstreams=[upstream], cache="off") as (url, _),
    ):
        payload = json.dumps(body("slow upload", stream=False)).encode()
        head = _head(len(payload), close=True)
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(head + payload[:10])
            time.sleep(pause_s)
            sock.sendall(payload[10:])
            reply = _read_all(sock)
        count = lane_count(url)
    assert reply.startswith(b"HTTP/1.1 200") and b'"text"' in reply
    assert count == taken


def test_a_client_waiting_for_100_continue_is_answered_at_once(monkeypatch):
    """The ASGI path sends ``100 Continue``; the lane must not hold such a request (held, the
    client would wait HOLD_S, made 30 s here, for its ``100 Continue``)."""
    monkeypatch.setattr(lane, "HOLD_S", 30.0)
    with (
        StubServer(ttft_s=0.005, itl_s=0.001) as upstream,
        gateway(upstreams=[upstream], cache="off") as (url, _),
    ):
        payload = json.dumps(body("expecting", stream=False)).encode()
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(_head(len(payload), close=True).replace(
                b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))  # fmt: skip
            started = time.monotonic()
            interim = sock.recv(65536)
            waited = time.monotonic() - started
            sock.sendall(payload)
            reply = interim + _read_all(sock)
        count = lane_count(url)
    assert interim.startswith(b"HTTP/1.1 100 Continue") and waited < 10
    assert b"HTTP/1.1 200 OK" in reply and b'"text"' in reply and count == 0


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (json.dumps({"model": "nope", "prompt": "x"}).encode(), "application/json", 400),
        (json.dumps({"model": "stub-model", "prompt": "x", "n": "2"}).encode(),
         "application/json", 400),
        (json.dumps({"model": "stub-model", "prompt": "x"}).encode(), "text/plain", 415),
        (b"[" * 200 + b"]" * 200, "application/json", 400),
        (b"", "application/json", 400),
    ],
    ids=["bad-json", "unknown-model", "bad-field", "content-type", "too-deep", "empty"],
)  # fmt: skip
def test_refusals_are_the_asgi_paths_own_and_never_reach_the_upstream(raw, content_type, status):
    with (
        StubServer() as upstream,
        gateway(upstreams=[upstream], cache="off") as (lane_url, _),
        gateway(upstreams=[upstream], cache="off", direct_lane=False) as (asgi_url, _),
    ):
        headers = {"content-type": content_type}
        replies = [httpx.post(u + "/v1/completions", content=raw, headers=headers,
                              trust_env=False) for u in (lane_url, asgi_url)]  # fmt: skip
        count, forwarded = lane_count(lane_url), stub_requests(upstream)
    assert replies[0].status_code == replies[1].status_code == status
    assert replies[0].json() == replies[1].json() and "error" in replies[0].json()
    assert count == 0 and forwarded == 0


def test_pipelined_requests_on_one_connection_are_answered_in_order():
    with (
        StubServer(ttft_s=0.01, itl_s=0.002) as upstream,
        gateway(upstreams=[upstream], cache="off") as (url, _),
    ):
        requests = b""
        for i, last in ((1, False), (2, True)):
            payload = json.dumps(body(f"pipelined {i}", max_tokens=3 + i)).encode()
            requests += _head(len(payload), close=last) + payload
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(requests)
            reply = _read_all(sock)
        count = lane_count(url)
    first, second = reply.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first.count(b'"text"') == 4 and second.count(b'"text"') == 5
    assert first.endswith(b"0\r\n\r\n") and second.endswith(b"0\r\n\r\n")
    assert count == 2


def test_a_reset_mid_stream_on_the_lane_ends_with_an_error_event():
    with (
        StubServer(ttft_s=0.01, itl_s=0.002, fault="reset", fault_after_chunks=2) as bad,
        gateway(upstreams=[bad], cache="off") as (url, _),
    ):
        reply = post(url, body("cut short"))
        count = lane_count(url)
    assert reply.status == 200 and count == 1
    assert len(reply.events) == 2 + 2  # two whole chunks, the error event, [DONE]
    error = json.loads(reply.events[-2][len(b"data: ") :])["error"]
    assert error["code"] == "upstream_disconnected"


def test_a_client_leaving_mid_stream_cancels_the_upstream_call():
    with (
        StubServer(ttft_s=0.01, itl_s=0.02, chunks=200) as upstream,
        gateway(upstreams=[upstream], cache="off") as (url, g),
    ):
        payload = json.dumps(body("leaving", max_tokens=200)).encode()
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(_head(len(payload), close=False) + payload)
            assert b"data: {" in sock.recv(65536) + sock.recv(65536)
        deadline = time.monotonic() + 5
        while (g.upstreams.all[0].outstanding or len(g.flights)) and time.monotonic() < deadline:
            time.sleep(0.01)
        count = lane_count(url)
    assert g.upstreams.all[0].outstanding == 0 and len(g.flights) == 0
    assert count == 1


def _gateway_process(upstream: str, *flags: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-c", _CLI, "gateway", "--upstream", upstream, "--port", "0",
           "--cache", "off", *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith(READY_PREFIX):
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, line[len(READY_PREFIX) :].split()[0].removesuffix("/v1")


def _stream_across_sigterm(proc: subprocess.Popen, url: str, tokens: int) -> tuple[bytes, float]:
    """Read a stream's first chunk, SIGTERM the gateway, read the rest: (bytes, lane count)."""
    with (
        httpx.Client(timeout=30, trust_env=False) as client,
        client.stream("POST", url + "/v1/completions",
                      json=body("drained", max_tokens=tokens)) as resp,
    ):  # fmt: skip
        chunks = resp.iter_bytes()
        data = next(chunks)
        count = lane_count(url)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(httpx.HTTPError):  # cut at the drain's deadline
            data += b"".join(chunks)
    return data, count


def test_sigterm_lets_a_stream_on_the_lane_finish_then_exits():
    with StubServer(ttft_s=0.01, itl_s=0.03, chunks=30) as upstream:
        proc, url = _gateway_process(upstream)
        try:
            data, count = _stream_across_sigterm(proc, url, 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
    assert code == 0 and count == 1
    assert data.count(b'"text"') == 30 and data.endswith(b"data: [DONE]\n\n")


def test_a_stream_on_the_lane_is_cut_at_the_drains_deadline():
    with StubServer(ttft_s=0.01, itl_s=0.03, chunks=1000) as upstream:
        proc, url = _gateway_process(upstream, "--shutdown-timeout", "0.5")
        started = time.monotonic()
        try:
            data, count = _stream_across_sigterm(proc, url, 1000)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        waited = time.monotonic() - started
    assert code == 0 and count == 1 and waited < 10  # the stream alone would take 30 s
    assert 0 < data.count(b'"text"') < 1000 and b"[DONE]" not in data


def _head(length: int, *, close: bool) -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n%bContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n"
            % (b"Connection: close\r\n" if close else b"", length))  # fmt: skip


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].split(":")
    return host, int(port)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
