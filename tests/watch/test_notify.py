"""--on-breach runs a command with the event; --webhook posts firing and resolved events."""

import asyncio
import json
import sys

from latlab.procs import group_members
from latlab.watch.notify import Notifier


def _notify(tmp_path, command=None, webhook=None, timeout_s=30.0, statuses=("firing",)):
    log: list[str] = []

    async def go():
        n = Notifier(command, webhook, log=log.append, timeout_s=timeout_s)
        for status in statuses:
            n.transition(status, {"target": "http://h/v1", "reasons": ["TTFT p99 900 ms"]})
        await n.drain()

    asyncio.run(go())
    return log


def test_command_gets_the_event_on_stdin_and_in_the_environment(tmp_path):
    out = tmp_path / "event.json"
    script = ("import json, os, sys; e = json.load(sys.stdin); "
              f"e['env'] = os.environ['LATLAB_WATCH_REASON']; open({str(out)!r}, 'w')"
              ".write(json.dumps(e)); print('paged')")  # fmt: skip
    log = _notify(tmp_path, command=f'{sys.executable} -c "{script}"')
    event = json.loads(out.read_text())
    assert event["status"] == "firing" and event["env"] == "TTFT p99 900 ms"
    assert "SLO breached for http://h/v1" in event["text"]
    assert log == ["--on-breach command exited 0: paged"]


def test_command_runs_on_breach_only(tmp_path):
    marker = tmp_path / "ran"
    _notify(tmp_path, command=f"touch {marker}", statuses=("resolved",))
    assert not marker.exists()


def test_a_hanging_command_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path / "pid"
    log = _notify(tmp_path, command=f"echo $$ > {pid_file}; sleep 30 & sleep 30", timeout_s=0.5)
    assert log == ["--on-breach command stopped after 0.5 s"]
    assert group_members(int(pid_file.read_text())) == []  # the background sleep too


def test_webhook_gets_firing_then_resolved(tmp_path, webhook):
    url, posts = webhook
    log = _notify(tmp_path, webhook=url, statuses=("firing", "resolved"))
    assert sorted(p["status"] for p in posts) == ["firing", "resolved"]
    assert all("latlab watch" in p["text"] for p in posts)
    assert sorted(log) == ["webhook firing: HTTP 204", "webhook resolved: HTTP 204"]


def test_unreachable_webhook_is_logged_not_raised(tmp_path):
    log = _notify(tmp_path, webhook="http://127.0.0.1:1/hook")
    assert log[0].startswith("webhook firing failed: ConnectError")
