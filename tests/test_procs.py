"""Launched process groups are stopped whole, on success, on error and on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from latlab.procs import (
    ManagedProcess,
    ProcessSpec,
    ProcessStartError,
    free_port,
    group_members,
    http_ok,
    run_to_completion,
)

# A parent that starts two grandchildren (one ignores SIGTERM) and then serves HTTP on a port.
_TREE = textwrap.dedent(
    """
    import http.server, signal, subprocess, sys
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", stubborn])
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("children started", flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _tree(port: int, tmp_path) -> ManagedProcess:
    spec = ProcessSpec(argv=[sys.executable, "-c", _TREE, str(port)], name="tree",
                       log_path=tmp_path / "tree.log")  # fmt: skip
    return ManagedProcess(spec)


def test_stop_kills_the_whole_group_including_children_that_ignore_sigterm(tmp_path):
    port = free_port()
    proc = _tree(port, tmp_path).start()
    took = proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
    assert took > 0
    deadline = time.time() + 10
    while len(group_members(proc.pid)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert len(group_members(proc.pid)) == 3
    proc.stop(grace_s=1.0)
    assert group_members(proc.pid) == []
    assert not http_ok(f"http://127.0.0.1:{port}/health")
    assert "children started" in (tmp_path / "tree.log").read_text()


def _states(pgid: int) -> set[str]:
    """The scheduler states ("S", "T", ...) of the group's processes."""
    states = set()
    for pid in group_members(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        states.add(stat.rsplit(")", 1)[1].split()[0])
    return states


def test_pause_stops_every_process_of_the_group_and_resume_continues_them(tmp_path):
    port = free_port()
    proc = _tree(port, tmp_path).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
        proc.pause()
        time.sleep(0.2)
        assert _states(proc.pid) == {"T"}
        assert not http_ok(f"http://127.0.0.1:{port}/health", timeout_s=0.5)  # it cannot answer
        proc.resume()
        assert http_ok(f"http://127.0.0.1:{port}/health", timeout_s=5)
        assert "T" not in _states(proc.pid)
    finally:
        proc.stop(grace_s=1.0)
    assert group_members(proc.pid) == []


def test_a_paused_group_acts_on_sigterm_at_once(tmp_path):
    """Without the SIGCONT after the SIGTERM, stop() would wait its whole grace for a SIGKILL."""
    code = "import time; print('up', flush=True); time.sleep(600)"
    proc = ManagedProcess(ProcessSpec(argv=[sys.executable, "-c", code], name="paused",
                                      log_path=tmp_path / "p.log")).start()  # fmt: skip
    proc.wait_ready(lambda: "up" in proc.log_tail(), timeout_s=30)
    proc.pause()
    start = time.perf_counter()
    assert proc.stop(grace_s=30.0) == -signal.SIGTERM
    assert time.perf_counter() - start < 20.0  # by SIGTERM, not by the SIGKILL after 30 s
    assert group_members(proc.pid) == []


def test_context_manager_stops_on_error(tmp_path):
    port = free_port()
    with pytest.raises(RuntimeError), _tree(port, tmp_path) as proc:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
        pgid = proc.pid
        raise RuntimeError("boom")
    assert group_members(pgid) == []


def test_exit_before_ready_quotes_the_log(tmp_path):
    code = "import sys; print('line one'); print('bad flag --foo', file=sys.stderr); sys.exit(3)"
    proc = ManagedProcess(ProcessSpec(argv=[sys.executable, "-c", code], name="fails",
                                      log_path=tmp_path / "f.log")).start()  # fmt: skip
    with pytest.raises(ProcessStartError) as err:
        proc.wait_http(f"http://127.0.0.1:{free_port()}/health", timeout_s=30)
    msg = str(err.value)
    assert "fails exited with code 3" in msg
    assert "bad flag --foo" in msg and "line one" in msg
    proc.stop()


def test_timeout_kills_nothing_by_itself_but_says_so(tmp_path):
    code = "import time; print('loading...', flush=True); time.sleep(600)"
    proc = ManagedProcess(ProcessSpec(argv=[sys.executable, "-c", code], name="slow",
                                      log_path=tmp_path / "s.log")).start()  # fmt: skip
    try:
        with pytest.raises(ProcessStartError, match=r"slow was not healthy .* after 0.5 s"):
            proc.wait_http(f"http://127.0.0.1:{free_port()}/health", timeout_s=0.5)
        assert proc.alive()
    finally:
        proc.stop()
    assert group_members(proc.pid) == []


def test_missing_program_is_a_one_line_error():
    with pytest.raises(ProcessStartError, match="cannot start"):
        ManagedProcess(ProcessSpec(argv=["/no/such/program-xyz"])).start()


def test_sigterm_to_the_launcher_stops_what_it_launched(tmp_path):
    # The launcher runs inside sigterm_as_exit; SIGTERM must still stop its server group.
    port = free_port()
    launcher = textwrap.dedent(
        f"""
        import sys, time
        from latlab.procs import ManagedProcess, ProcessSpec, sigterm_as_exit
        with sigterm_as_exit():
            p = ManagedProcess(ProcessSpec(argv=[sys.executable, "-c", {_TREE!r}, "{port}"]))
            with p:
                p.wait_http("http://127.0.0.1:{port}/health", timeout_s=30)
                print("PGID", p.pid, flush=True)
                time.sleep(600)
        """
    )
    outer = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    line = outer.stdout.readline()
    assert line.startswith("PGID"), line
    pgid = int(line.split()[1])
    assert group_members(pgid)
    os.kill(outer.pid, signal.SIGTERM)
    assert outer.wait(timeout=30) == 143
    assert group_members(pgid) == []


def test_wait_returns_the_exit_code_and_stop_ends_the_children_it_left(tmp_path):
    """A script that exits at once but leaves a child behind (as vLLM's offline runs do)."""
    leaves_child = (
        "import os, subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); os._exit(3)"
    )
    spec = ProcessSpec(argv=[sys.executable, "-c", leaves_child], log_path=tmp_path / "x.log")
    proc = ManagedProcess(spec).start()
    assert proc.wait(timeout_s=60) == 3
    assert len(group_members(proc.pid)) == 1  # the orphan, still in the group
    proc.stop(grace_s=1.0)
    assert group_members(proc.pid) == []
    slow = ManagedProcess(ProcessSpec(argv=[sys.executable, "-c", "import time; time.sleep(600)"]))
    assert slow.start().wait(timeout_s=0.2) is None
    slow.stop(grace_s=1.0)


def test_run_to_completion_stops_what_the_command_left_in_its_group(tmp_path):
    # The command exits at once but leaves a child behind (as vLLM's offline LLM can).
    leaver = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(p.pid, flush=True)"
    )
    spec = ProcessSpec(argv=[sys.executable, "-c", leaver], log_path=tmp_path / "run.log")
    assert run_to_completion(spec, timeout_s=30) == 0
    child = int((tmp_path / "run.log").read_text().split()[0])
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_run_to_completion_times_out_and_kills_the_group(tmp_path):
    spec = ProcessSpec(argv=[sys.executable, "-c", "import time; time.sleep(600)"],
                       log_path=tmp_path / "slow.log")  # fmt: skip
    started = time.time()
    assert run_to_completion(spec, timeout_s=0.5) == -9
    assert time.time() - started < 20


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"
