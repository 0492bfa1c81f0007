"""compare against the deterministic stub server: a 10% TTFT difference is found in both
directions, two runs of the same configuration show none; bad inputs are refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rich.console import Console

from latlab.bench import BenchConfig, OpenAITarget, run_bench
from latlab.compare import compare_runs, parse_figures
from latlab.compare.views import comparison_table
from latlab.errors import ConfigError
from latlab.runs import Run, RunInfo, RunStore
from latlab.testing import stub_process

# timing: every test reads runs measured 10% apart (the runs fixture measures them once).
pytestmark = pytest.mark.timing

FIGURES = parse_figures("ttft_p50,tpot_p50,e2e_p50")


def measure(ttft_s: float, **config) -> dict:
    """Three interleaved repeats against a stub in its own process (no GIL shared with us)."""
    settings = {"concurrency": [4], "num_requests": 40, "repeats": 3, "input_len": "8",
                "output_len": "8", "warmup": 8, **config}  # fmt: skip
    with stub_process(ttft_s=ttft_s, itl_s=0.02) as url:
        return run_bench(BenchConfig(**settings), OpenAITarget(url), progress=False).to_dict()


def as_run(result: dict, name: str) -> Run:
    return Run(info=RunInfo(id=None, kind="bench", name=name), result=result, where=name)


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    """Base (200 ms TTFT), a 10% slower TTFT (220 ms), and the base again."""
    return {"base": as_run(measure(0.200), "base"), "slow": as_run(measure(0.220), "slow"),
            "again": as_run(measure(0.200), "again")}  # fmt: skip


def verdicts(cmp) -> dict[str, str]:
    return {row.figure.name: row.verdict for row in cmp.rows}


def test_a_ten_percent_slower_ttft_is_found_in_both_directions(runs):
    up = compare_runs(runs["base"], runs["slow"], FIGURES)
    assert verdicts(up)["ttft_p50"] == "slower"
    ttft = next(r for r in up.rows if r.figure.name == "ttft_p50")
    assert 5 < ttft.change_pct < 15 and ttft.diff.low > 0
    down = compare_runs(runs["slow"], runs["base"], FIGURES)
    assert verdicts(down)["ttft_p50"] == "faster"


def test_the_same_configuration_shows_no_difference(runs):
    # Two runs of one stub on a loaded 2-core CI machine (vLLM installing beside the suite) have
    # differed by 3-6% in TTFT with intervals excluding zero: between-run noise the per-request
    # interval cannot see. So this A/A check asks for effects over 8%, the 10% test above at 3%.
    cmp = compare_runs(runs["base"], runs["again"], FIGURES, min_effect_pct=8,
                       fail_on_regression_pct=8)  # fmt: skip
    assert set(verdicts(cmp).values()) == {"no difference"}, [r.to_dict() for r in cmp.rows]
    assert cmp.regressions == []
    assert [k for k, _, _ in cmp.changed] == ["target.name"]  # each stub had its own port


def test_fail_on_regression_flags_only_changes_beyond_the_limit(runs):
    loose = compare_runs(runs["base"], runs["slow"], FIGURES, fail_on_regression_pct=25)
    tight = compare_runs(runs["base"], runs["slow"], FIGURES, fail_on_regression_pct=2)
    assert loose.regressions == []
    # TTFT +10%, and E2E with it (+20 ms of ~340 ms); TPOT did not change
    assert [r.figure.name for r in tight.regressions] == ["ttft_p50", "e2e_p50"]


def test_a_p99_of_few_requests_gets_no_verdict(runs):
    cmp = compare_runs(runs["base"], runs["slow"], parse_figures("ttft_p99"))
    assert verdicts(cmp) == {"ttft_p99": "too few requests"}
    assert "measure >= 500 requests" in cmp.rows[0].diff.note
    console = Console(width=160, record=True)
    console.print(comparison_table(cmp))  # the verdict has no colour: no empty markup tag
    assert "too few requests" in console.export_text()


def test_provenance_diff_names_what_changed(runs):
    changed = dict((k, (a, b)) for k, a, b in compare_runs(runs["base"], runs["slow"],
                                                             FIGURES).changed)  # fmt: skip
    assert "target.name" in changed  # another stub port
    assert not any(k.startswith("config.") for k in changed)


def test_different_workloads_are_refused_unless_allowed(runs):
    other = json.loads(json.dumps(runs["slow"].result))
    other["config"]["output_len"] = "64"
    with pytest.raises(ConfigError, match=r"different workloads .*output_len '8' vs '64'"):
        compare_runs(runs["base"], as_run(other, "other"), FIGURES)
    cmp = compare_runs(runs["base"], as_run(other, "other"), FIGURES,
                       allow_different_workloads=True)  # fmt: skip
    assert [k for k, _, _ in cmp.workload_changes] == ["output_len"]


def test_levels_that_do_not_match_are_named_and_skipped(runs):
    other = json.loads(json.dumps(runs["slow"].result))
    other["levels"][0]["load"] = {"concurrency": 64}
    cmp = compare_runs(runs["base"], as_run(other, "other"), FIGURES)
    assert cmp.only_in_b == ["concurrency 64"] and cmp.rows
    for lv in other["levels"]:
        lv["load"] = {"concurrency": 64}
    with pytest.raises(ConfigError, match="share no load level"):
        compare_runs(runs["base"], as_run(other, "other"), FIGURES)


def test_bad_figures_and_kinds_say_what_to_do(runs):
    with pytest.raises(ConfigError, match="itl is per token"):
        parse_figures("itl_p50")
    with pytest.raises(ConfigError, match="unknown figure 'ttft_p42'"):
        parse_figures("ttft_p42")
    with pytest.raises(ConfigError, match="goodput needs an SLO"):
        compare_runs(runs["base"], runs["again"], parse_figures("goodput"))
    opt = Run(info=RunInfo(id=3, kind="optimize"), result={"kind": "latlab.optimize"}, where="x")
    with pytest.raises(ConfigError, match="is a optimize run: compare takes bench runs"):
        compare_runs(runs["base"], opt, FIGURES)


def test_throughput_is_compared_from_time_bins(runs):
    cmp = compare_runs(runs["base"], runs["slow"], parse_figures("throughput,request_rate"))
    by = {r.figure.name: r for r in cmp.rows}
    summary = runs["base"].result["levels"][0]["summary"]
    assert by["throughput"].a == pytest.approx(
        sum(lv["summary"]["output_tokens_per_s"] for lv in runs["base"].result["levels"]) / 3,
        rel=0.15,
    )
    assert summary["output_tokens_per_s"] > 0
    assert by["throughput"].diff.estimate < 0  # slower TTFT, fewer tokens per second


def latlab(*args):
    code = "import sys; from latlab.cli import run; run(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_cli_compares_stored_runs_by_name_and_exits_1_on_regression(runs, _private_run_store):
    with RunStore.open(_private_run_store) as store:
        for name in ("base", "slow", "again"):
            store.add_run(kind="bench", result=runs[name].result, name=name)
    out = latlab("compare", "base", "slow", "--metric", "ttft_p50,tpot_p50")
    assert out.returncode == 0, out.stderr
    assert "slower" in out.stdout and "what changed between A and B" in out.stdout
    gate = latlab("compare", "base", "slow", "--fail-on-regression", "5%", "--json")
    assert gate.returncode == 1
    assert json.loads(gate.stdout)["regressions"] >= 1
    same = latlab("compare", "base", "again", "--metric", "ttft_p50", "--fail-on-regression", "5%")
    assert same.returncode == 0, same.stdout
    missing = latlab("compare", "base", "nope")
    assert missing.returncode == 2 and "no run named 'nope'" in missing.stderr
    bad = latlab("compare", "base", "slow", "--fail-on-regression", "lots")
    assert bad.returncode == 2 and "takes a percentage" in bad.stderr
