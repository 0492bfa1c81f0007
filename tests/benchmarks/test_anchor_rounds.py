"""The interleaved anchor: vLLM's offline script's rounds protocol (its real ``serve_rounds``,
with a stand-in for vLLM's ``LLM``) driven over real pipes by ``AnchorRounds``; paused between
rounds, stopped whole on success and on failure."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from latlab.procs import group_members

from .scripts import BENCH, load_script

rounds = load_script("anchor_rounds")

# The real vllm_offline.serve_rounds over the real pipes; generate() stands in for vLLM's LLM
# (``params`` is the number of tokens each request produces). argv[1] = the generate call that
# kills the process (0: never); it also leaves a child in its group, as vLLM's engine core.
_ANCHOR = textwrap.dedent(
    f"""
    import os, subprocess, sys, time, types
    sys.path.insert(0, {str(BENCH / "anchors")!r})
    import vllm_offline
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    die_at, calls = int(sys.argv[1]), [0]
    class LLM:
        def generate(self, inputs, params, use_tqdm=False):
            calls[0] += 1
            if calls[0] == die_at:
                print("engine core died", flush=True)
                os._exit(3)
            time.sleep(0.02)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[0] * params)])
                    for _ in inputs]
    fds = sys.argv[sys.argv.index("--rounds-fds") + 1]
    inputs = {{1: [[11, 12]], 4: [[11, 12]] * 4}}
    vllm_offline.serve_rounds(LLM(), 8, inputs, fds, {{"load_s": 1.5}})
    print("quit cleanly", flush=True)
    """
)


def _anchor(tmp_path: Path, die_at: int = 0) -> rounds.AnchorRounds:
    argv = [sys.executable, "-c", _ANCHOR, str(die_at)]
    return rounds.AnchorRounds(argv, name="fake-vllm", log_path=tmp_path / "anchor.log",
                               round_timeout_s=30)  # fmt: skip


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def test_rounds_answer_each_batch_and_the_group_sleeps_in_between(tmp_path):
    with _anchor(tmp_path) as anchor:
        ready = anchor.start(load_timeout_s=60)
        assert ready == {"ready": True, "load_s": 1.5}
        pgid = anchor.proc.pid
        assert len(group_members(pgid)) == 2
        assert all(_stopped(pid) for pid in group_members(pgid))  # paused: no CPU taken
        got = [anchor.round(b) for b in (4, 1, 4)]
        assert [g["batch"] for g in got] == [4, 1, 4]
        assert [g["output_tokens"] for g in got] == [32, 8, 32]
        assert all(0 < g["tok_per_s"] < 32 / 0.02 for g in got)  # timed around the 20 ms call
        assert all(_stopped(pid) for pid in group_members(pgid))
    assert group_members(pgid) == []
    assert "quit cleanly" in (tmp_path / "anchor.log").read_text()


def test_an_anchor_dying_in_a_round_is_an_error_quoting_its_log_and_leaves_nothing(tmp_path):
    anchor = _anchor(tmp_path, die_at=3)  # two warm-ups, then the first round
    want = "ended before it sent a round at batch 1"
    with pytest.raises(rounds.AnchorError, match=want) as e, anchor:
        anchor.start(load_timeout_s=60)
        anchor.round(1)
    assert "engine core died" in str(e.value)
    assert group_members(anchor.proc.pid) == []


@pytest.mark.parametrize(
    ("code", "load_timeout_s", "want"),
    [
        # still loading at the deadline: timed out, stopped, its log quoted
        ("import time; print('loading', flush=True); time.sleep(600)", 1,
         r"sent no ready within 1 s(.|\n)*loading"),
        # failed to load: ended, its reason quoted
        ("import sys; sys.exit('no such model: /nope')", 60,
         r"ended before it sent ready(.|\n)*/nope"),
    ],
)  # fmt: skip
def test_an_anchor_that_never_gets_ready_says_why_and_is_stopped(
    tmp_path, code, load_timeout_s, want
):
    argv = [sys.executable, "-c", code]
    anchor = rounds.AnchorRounds(argv, name="vllm", log_path=tmp_path / "vllm.log")
    with pytest.raises(rounds.AnchorError, match=want), anchor:
        anchor.start(load_timeout_s=load_timeout_s)
    assert group_members(anchor.proc.pid) == []
