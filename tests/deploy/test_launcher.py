"""The launch procedure, on small real servers: health, cold start, log facts, failures, stop.

The fake backend below launches latlab's deterministic stub server (a real HTTP server in its
own process, with a grandchild that ignores SIGTERM, as vLLM's EngineCore is a child), so every
branch of the launcher runs against real processes in seconds.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from latlab.deploy.contract import DeployError, LaunchCommand, LaunchSettings, LogFacts
from latlab.deploy.launcher import choose_port, launch, port_is_free
from latlab.procs import group_listens_on, group_members, http_ok

_SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    mode, port = sys.argv[1], int(sys.argv[2])
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", stubborn])
    print("fake engine 9.9.9: KV cache size: 4,096 tokens", flush=True)
    if mode == "reject":
        print("fake: error: unrecognized arguments: --bogus", flush=True)
        sys.exit(2)
    if mode == "crash":
        print("something went wrong without saying what", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)
    if mode == "port":  # another process bound the port between the check and this bind
        print("OSError: [Errno 98] Address already in use", flush=True)
        sys.exit(1)
    from latlab.testing.stub_server import main
    main(["--port", str(port), "--ttft-ms", "5", "--itl-ms", "1", "--model", sys.argv[3]])
    """
)


class FakeBackend:
    """A backend whose "engine" is the stub server; ``mode`` picks how it misbehaves."""

    name = "fake"

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode

    def command(self, settings: LaunchSettings, port: int) -> LaunchCommand:
        argv = [sys.executable, "-c", _SERVER, self.mode, str(port), settings.name]
        return LaunchCommand(argv=argv, env={"FAKE_ENGINE": "1"})

    def env_settings(self, settings: LaunchSettings) -> dict[str, str]:
        return dict(settings.env)

    def parse_log(self, text: str) -> LogFacts:
        facts = LogFacts()
        if m := re.search(r"fake engine (\S+): KV cache size: ([\d,]+) tokens", text):
            facts.version, facts.kv_cache_tokens = m.group(1), int(m.group(2).replace(",", ""))
        if m := re.search(r"^fake: error: (.+)$", text, re.M):
            facts.error = m.group(1)
        return facts

    def port_taken(self, text: str) -> bool:
        return "address already in use" in text.lower()

    def preflight(self, settings: LaunchSettings) -> list[str]:
        return ["head unreachable"] if self.mode == "preflight" else []


def _settings(tmp_path: Path, **kw: object) -> LaunchSettings:
    return LaunchSettings(model="m", log_dir=tmp_path, health_timeout_s=30.0, **kw)  # type: ignore[arg-type]


def _no_members(pgid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.time() + timeout_s
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.05)
    return group_members(pgid) == []


def test_launch_times_cold_start_reads_facts_and_stops_the_whole_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INHERITED_KNOB", "x")
    env = {"ENGINE_KNOB": "3", "INHERITED_KNOB": None}
    settings = _settings(tmp_path, env=env, engine_args={"max_num_seqs": 2})
    with launch(FakeBackend(), settings) as server:
        assert http_ok(server.base_url + "/health")
        assert 0 < server.cold_start.healthy_s <= server.cold_start.first_token_s  # type: ignore[operator]
        assert (server.facts.version, server.facts.kv_cache_tokens) == ("9.9.9", 4096)
        assert server.env == {"ENGINE_KNOB": "3", "INHERITED_KNOB": None, "FAKE_ENGINE": "1"}
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
        assert b"ENGINE_KNOB=3" in environ
        assert not any(item.startswith(b"INHERITED_KNOB=") for item in environ)
        assert server.log_path == tmp_path / f"fake-{server.port}.log"
        pgid = server.process.pid
        assert pgid is not None and len(group_members(pgid)) >= 2  # server + grandchild
        record = server.to_dict()
        assert record["command"].startswith("env -u INHERITED_KNOB ENGINE_KNOB=3 FAKE_ENGINE=1 ")
        assert record["engine_args"] == {"max_num_seqs": 2}
        assert record["cold_start"]["first_token_s"] >= record["cold_start"]["healthy_s"]
    assert _no_members(pgid)
    assert not http_ok(server.base_url + "/health")


def test_rejected_setting_quotes_the_engines_own_message_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(DeployError) as err:
        launch(FakeBackend("reject"), _settings(tmp_path))
    message = str(err.value)
    assert message.startswith("fake failed to start: unrecognized arguments: --bogus")
    assert "exit code 2" in message and str(tmp_path) in message
    assert "\n" not in message  # the reason, not a traceback or a log dump
    _assert_no_fake_left()


def test_failed_preflight_starts_nothing(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="fake pre-flight check failed: head unreachable"):
        launch(FakeBackend("preflight"), _settings(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no log: nothing was launched


def test_crash_without_a_reason_quotes_the_last_log_lines(tmp_path: Path) -> None:
    with pytest.raises(DeployError) as err:
        launch(FakeBackend("crash"), _settings(tmp_path))
    message = str(err.value)
    assert "exited with code 3 before it was healthy" in message
    assert "  | something went wrong without saying what" in message
    _assert_no_fake_left()


def test_never_healthy_times_out_with_the_log_and_kills_the_group(tmp_path: Path) -> None:
    settings = LaunchSettings(model="m", log_dir=tmp_path, health_timeout_s=1.5)
    started = time.perf_counter()
    with pytest.raises(DeployError) as err:
        launch(FakeBackend("hang"), settings)
    assert time.perf_counter() - started < 20
    message = str(err.value)
    assert "was not healthy at" in message and "after 1.5 s" in message
    assert "  | fake engine 9.9.9: KV cache size: 4,096 tokens" in message
    _assert_no_fake_left()


def test_occupied_port_is_replaced_by_a_free_one(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert not port_is_free("127.0.0.1", taken)
        notes: list[str] = []
        assert choose_port(LaunchSettings(model="m", port=taken), notes) != taken
        moved_to = notes[0].split()[-2]
        assert notes == [f"port {taken} was in use; launched on port {moved_to} instead"]
        with launch(FakeBackend(), _settings(tmp_path, port=taken)) as server:
            assert server.port != taken
            assert f"port {taken} was in use" in server.notes[0]


def test_port_lost_at_bind_time_is_relaunched_elsewhere(tmp_path: Path) -> None:
    class Racy(FakeBackend):
        """Loses the race once: the first launch's port is taken when it binds."""

        def __init__(self) -> None:
            super().__init__("port")
            self.launches = 0

        def command(self, settings: LaunchSettings, port: int) -> LaunchCommand:
            self.launches += 1
            if self.launches > 1:
                self.mode = "ok"
            return super().command(settings, port)

    backend = Racy()
    with launch(backend, _settings(tmp_path)) as server:
        assert backend.launches == 2
        assert "taken at bind time" in server.notes[0]


def test_a_foreign_server_on_our_port_is_not_taken_for_ours(tmp_path: Path) -> None:
    """Another program binds the chosen port before our (late-binding) server does."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    foreign: list[http.server.HTTPServer] = []

    class Raced(FakeBackend):
        def command(self, settings: LaunchSettings, port: int) -> LaunchCommand:
            if not foreign:  # the first launch loses its port to a healthy stranger
                foreign.append(http.server.HTTPServer(("127.0.0.1", port), Handler))
                threading.Thread(target=foreign[0].serve_forever, daemon=True).start()
            return super().command(settings, port)

    try:
        with launch(Raced(), _settings(tmp_path)) as server:
            stranger = foreign[0].server_address[1]
            assert server.port != stranger
            assert group_listens_on(server.process.pid, server.port)
            assert not group_listens_on(server.process.pid, stranger)
    finally:
        foreign[0].shutdown()


def test_sigterm_to_the_launching_process_stops_the_server(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_launcher import FakeBackend
        from latlab.deploy.contract import LaunchSettings
        from latlab.deploy.launcher import launch
        from latlab.procs import sigterm_as_exit
        with sigterm_as_exit():
            with launch(FakeBackend(), LaunchSettings(model="m", health_timeout_s=30)) as s:
                print(s.process.pid, s.port, flush=True)
                time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pgid, port = map(int, proc.stdout.readline().split())  # type: ignore[union-attr]
        assert http_ok(f"http://127.0.0.1:{port}/health")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert _no_members(pgid)
    finally:
        proc.kill()


def _assert_no_fake_left() -> None:
    """No process from a fake launch survives (the stubborn grandchild included)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert "SIG_IGN); time.sleep(600)" not in out or _fake_children_gone()


def _fake_children_gone() -> bool:
    deadline = time.time() + 10
    while time.time() < deadline:
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if "SIG_IGN); time.sleep(600)" not in out:
            return True
        time.sleep(0.1)
    return False
