"""``latlab gateway --workers N``: one port, N real processes sharing the cache, the limits and
the metrics; a dead worker replaced; one signal stops them all and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.helpers import apost, body, post
from latlab.gateway.keys import hash_key
from latlab.monitor.scrape import Scrape
from latlab.procs import ManagedProcess, ProcessSpec, free_port, group_members

pytestmark = pytest.mark.slow
LATLAB = str(Path(sys.executable).parent / "latlab")


def _start(
    tmp: Path, upstream: str, *flags: str, workers: int = 2, tmpdir: Path | None = None
) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [LATLAB, "gateway", "--upstream", upstream, "--port", str(port),
            "--workers", str(workers), "--health-interval", "0.5", *flags]  # fmt: skip
    # TMPDIR: the shared metrics' directory goes here, where the test can see it (not /tmp,
    # where gateways of tests running beside this one make theirs)
    spec = ProcessSpec(argv=argv, name="gateway-workers", log_path=tmp / "gateway.log",
                       env={"TMPDIR": str(tmpdir or tmp)})  # fmt: skip
    proc = ManagedProcess(spec).start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health", timeout_s=60)
    proc.wait_ready(lambda: "ready at" in (tmp / "gateway.log").read_text(), timeout_s=60,
                    what="the ready line")  # fmt: skip
    return proc, url


def _workers(proc: ManagedProcess) -> list[int]:
    return sorted(pid for pid in group_members(proc.pid) if pid != proc.pid)


def _established(pid: int, port: int) -> int:
    """Connections a process holds that were accepted on ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local_port, state, inode = int(cols[1].split(":")[1], 16), cols[3], cols[9]
        count += local_port == port and state == "01" and inode in inodes
    return count


def _requests_total(url: str) -> float:
    scrape = Scrape.parse(httpx.get(url + "/metrics", trust_env=False).text)
    return scrape.total("latlab:gateway_requests_total") or 0.0


def _metrics_dirs(tmp: Path) -> list[Path]:
    return list(tmp.glob("latlab-gateway-metrics-*"))


def test_workers_share_the_port_cache_and_metrics_and_stop_together(stub, tmp_path):
    proc, url = _start(tmp_path, stub.url, "--cache", f"sqlite:{tmp_path / 'c.sqlite'}")
    port = int(url.rsplit(":", 1)[1])
    try:
        workers = _workers(proc)
        assert len(workers) == 2
        clients = [httpx.Client(trust_env=False, timeout=30) for _ in range(24)]
        for i, client in enumerate(clients):  # 24 connections, spread by the kernel
            assert client.post(url + "/v1/completions", json=body(f"c{i}")).status_code == 200
        held = [_established(pid, port) for pid in workers]
        for client in clients:
            client.close()
        assert sum(held) == 24 and min(held) > 0, held
        # every scrape, whichever worker answers, counts every worker's requests
        assert {_requests_total(url) for _ in range(6)} == {24.0}
        # the SQLite cache is one for all: once the first answer is stored (right after it
        # ends, so poll), a repeat is a hit on whichever worker takes it
        assert post(url, body("shared by workers")).cache == "miss"
        proc.wait_ready(lambda: post(url, body("shared by workers")).cache == "hit",
                        timeout_s=10, what="the answer stored")  # fmt: skip
        assert [post(url, body("shared by workers")).cache for _ in range(6)] == ["hit"] * 6
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()
    assert not group_members(proc.pid), "a worker outlived its supervisor"
    log = (tmp_path / "gateway.log").read_text()
    assert "no keys, 2 workers)" in log and "latlab gateway worker 1: stopped" in log
    assert not _metrics_dirs(tmp_path), "the shared metrics' directory was left behind"


def test_a_dead_worker_is_replaced_and_its_counts_are_kept(stub, tmp_path):
    proc, url = _start(tmp_path, stub.url, "--cache", "off")
    try:
        for i in range(6):
            assert post(url, body(f"d{i}")).status == 200
        dead = _workers(proc)[0]
        os.kill(dead, signal.SIGKILL)
        proc.wait_ready(lambda: len(_workers(proc)) == 2 and dead not in _workers(proc),
                        timeout_s=30, what="a new worker")  # fmt: skip
        proc.wait_ready(lambda: _all_answer(url), timeout_s=30, what="answers after the restart")
        assert _requests_total(url) >= 6  # the dead worker's counts are kept
        text = httpx.get(url + "/metrics", trust_env=False).text
        assert text.count("latlab:gateway_upstream_healthy{") == 1  # one series, not per pid
    finally:
        proc.stop()
    assert (
        f"(pid {dead}) exited with -9; starting another" in (tmp_path / "gateway.log").read_text()
    )
    assert not group_members(proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_drains_each_worker(tmp_path, sig):
    # SIGINT: a terminal's Ctrl-C; SIGTERM: systemd's default KillMode, or `pkill -f`. Either
    # way every worker hears it from the supervisor too, and it must count once (a drain).
    from latlab.testing.stub_server import StubServer

    slow = StubServer(ttft_s=0.05, itl_s=0.05)  # a 2.5 s answer in flight at the Ctrl-C
    slow.start()
    proc, url = _start(tmp_path, slow.url, "--cache", "off")
    try:
        payload = body("in flight", max_tokens=50)
        with (
            httpx.Client(trust_env=False, timeout=30) as client,
            client.stream("POST", url + "/v1/completions", json=payload) as resp,
        ):
            chunks = resp.iter_bytes()
            first = next(chunks)
            os.killpg(proc.pid, sig)
            rest = b"".join(chunks)
        assert first and rest.endswith(b"data: [DONE]\n\n")  # drained, not cut
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()
        slow.stop()
    assert not group_members(proc.pid)
    assert "ended by the" not in (tmp_path / "gateway.log").read_text()


def _all_answer(url: str) -> bool:
    return all(post(url, body(f"after {time.monotonic()}")).status == 200 for _ in range(4))


def test_a_limit_holds_across_workers_sharing_redis(stub, flush_redis, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nsha256 = "{hash_key("k")}"\ntenant = "t"\nrequests_per_minute = 12\n'
    )
    proc, url = _start(tmp_path, stub.url, "--cache", "off", "--api-keys", str(keys),
                       "--limits-redis", flush_redis)  # fmt: skip
    try:

        async def go():
            clients = [httpx.AsyncClient(timeout=30, trust_env=False) for _ in range(8)]
            try:
                calls = [apost(clients[i % 8], url, body(f"l{i}", temperature=0.5),
                               authorization="Bearer k") for i in range(30)]  # fmt: skip
                return await asyncio.gather(*calls)
            finally:
                await asyncio.gather(*(c.aclose() for c in clients))

        statuses = [r.status for r in asyncio.run(go())]
    finally:
        proc.stop()
    assert statuses.count(200) == 12 and statuses.count(429) == 18


@pytest.mark.parametrize(
    ("flags", "why"),
    [(["--workers", "0"], "--workers must be between 1 and 64"),
     (["--workers", "2", "--api-keys", "KEYS"], "needs a shared limit store")],
)  # fmt: skip
def test_what_workers_cannot_do_is_refused(tmp_path, flags, why):
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nsha256 = "{hash_key("k")}"\ntenant = "t"\nrequests_per_minute = 5\n'
    )
    argv = [LATLAB, "gateway", "--upstream", "http://127.0.0.1:9", "--port", "0", "--cache",
            "off", *[str(keys) if f == "KEYS" else f for f in flags]]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and why in out.stderr


def test_workers_die_with_a_killed_supervisor(stub, tmp_path):
    proc, _ = _start(tmp_path, stub.url, "--cache", "off")
    workers = _workers(proc)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to stop them itself
    deadline = time.monotonic() + 30
    try:
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their killed supervisor"
            time.sleep(0.1)
    finally:
        proc.stop()
    log = (tmp_path / "gateway.log").read_text()
    assert "worker 0: stopped" in log and "worker 1: stopped" in log  # drained, not killed
    # what the killed supervisor left, the next one removes
    assert [d.name.split("-")[3] for d in _metrics_dirs(tmp_path)] == [str(proc.pid)]
    (tmp_path / "next").mkdir()
    again, _ = _start(tmp_path / "next", stub.url, "--cache", "off", tmpdir=tmp_path)
    again.stop()
    assert not _metrics_dirs(tmp_path)


def test_a_supervisor_whose_workers_keep_dying_stops(stub, tmp_path):
    proc, _ = _start(tmp_path, stub.url, "--cache", "off")
    try:
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        while proc.alive() and time.monotonic() < deadline:
            for pid in set(_workers(proc)) - killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        assert proc.proc.wait(timeout=30) == 1
    finally:
        proc.stop()
    assert "workers died within 60 s; stopping" in (tmp_path / "gateway.log").read_text()
    assert not group_members(proc.pid)
