"""The report's content: every section and chart, a table under each, self-contained HTML."""

from __future__ import annotations

import re

import pytest

from latlab.errors import ConfigError
from latlab.report import build_sections, write_report
from latlab.report.svg import Chart, Series, nice_ticks

EXPECTED_TITLES = (
    "Latency against load (concurrency)",
    "Throughput against latency",
    "Goodput per load level",
    "TTFT distribution per load level",
    "ITL distribution per load level",
    "TPOT distribution per load level",
    "E2E distribution per load level",
    "Tokens per chunk",
    "Timeline of one level: concurrency 16",
)


def test_a_sweep_has_every_section_and_a_table_under_every_chart(sweeps, optimize_run):
    sections = build_sections([*sweeps, optimize_run])
    titles = [s.title for s in sections]
    assert titles == [*EXPECTED_TITLES, "optimize: strategy table (lab)"]
    for section in sections:
        for plot in section.plots:
            assert plot.chart.series, plot.chart.title
            assert all(s.points for s in plot.chart.series), plot.chart.title
            assert plot.table is not None and plot.table.rows, plot.chart.title
    cdfs = next(s for s in sections if s.title.startswith("TTFT distribution"))
    assert [p.chart.title for p in cdfs.plots] == [f"TTFT CDF, concurrency {c}" for c in (1, 4, 16)]
    assert [s.name for s in cdfs.plots[0].chart.series] == ["fast", "slow"]  # runs overlaid


def test_slo_lines_and_goodput_come_from_the_runs_config(sweeps):
    sections = {s.title: s for s in build_sections(sweeps)}
    ttft_vs_load = sections["Latency against load (concurrency)"].plots[0].chart
    assert [r.value for r in ttft_vs_load.refs] == [40.0, 40.0]
    goodput = sections["Goodput per load level"].plots[0]
    assert goodput.table.headers[:3] == ["run", "load", "goodput req/s"]
    slow_chunks = sections["Tokens per chunk"].plots[0].table.rows
    assert slow_chunks[-1][:2] == ["slow", "2"]  # the slow stub sent two tokens a chunk


def test_html_is_one_offline_file_without_script(sweeps, optimize_run, tmp_path):
    out = tmp_path / "r.html"
    write_report([*sweeps, optimize_run], out)
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "Content-Security-Policy" in html
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)=\"(?!#|data:)", html)  # no external reference at all
    assert html.count("<svg") >= 20 and 'class="strategy"' in html
    assert "top-1 0.986" in html and "needs CUDA" in html


def test_markdown_writes_one_svg_per_chart(sweeps, tmp_path):
    written = write_report(sweeps, tmp_path / "r.md", fmt="md")
    md = (tmp_path / "r.md").read_text()
    svgs = [p for p in written if p.suffix == ".svg"]
    assert len(svgs) == md.count("](r-svg/") and len(svgs) >= 15
    assert all(p.read_text().startswith("<svg") for p in svgs)
    assert "| run | load | p50 | p90 | p99 |" in md


def test_a_timeline_level_can_be_chosen_and_a_wrong_one_is_skipped(sweeps):
    chosen = build_sections(sweeps, timeline_level="concurrency 4")
    assert chosen[-1].title == "Timeline of one level: concurrency 4"
    missing = build_sections(sweeps, timeline_level="concurrency 99")
    assert not any(s.title.startswith("Timeline") for s in missing)


def test_big_runs_are_thinned_for_drawing_only(sweeps):
    cdf = next(s for s in build_sections(sweeps) if s.title.startswith("ITL distribution"))
    assert all(len(s.points) <= 140 for p in cdf.plots for s in p.chart.series)  # of 576 ITLs


def test_bad_inputs(tmp_path, sweeps):
    with pytest.raises(ConfigError, match="at least one run"):
        write_report([], tmp_path / "r.html")
    with pytest.raises(ConfigError, match="--format is html or md"):
        write_report(sweeps, tmp_path / "r.pdf", fmt="pdf")


def test_chart_axes_cover_the_data():
    assert nice_ticks(0, 78) == [0, 20, 40, 60, 80]
    assert nice_ticks(0.0, 0.3)[-1] >= 0.3
    svg = Chart(title="t", x_label="x", y_label="y",
                series=[Series(name="a", points=[(1, -5), (2, 7)], kind="bars")],
                y_min=None, x_range=(0.5, 2.5)).render()  # fmt: skip
    heights = [float(h) for h in re.findall(r'height="([0-9.]+)"/>', svg)]
    assert len(heights) == 2 and all(h > 1 for h in heights)  # negative bars grow down


def test_cli_reports_stored_runs_by_name_and_files(sweeps, tmp_path, _private_run_store):
    import json
    import subprocess
    import sys

    from latlab.runs import RunStore

    with RunStore.open(_private_run_store) as store:
        store.add_run(kind="bench", result=sweeps[0].result, name="fast")
    (tmp_path / "slow.json").write_text(json.dumps(sweeps[1].result))
    code = "import sys; from latlab.cli import run; run(sys.argv[1:])"

    def latlab(*args):
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    out = latlab("report", "fast", str(tmp_path / "slow.json"), "-o", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and (tmp_path / "r.html").stat().st_size > 20_000
    md = latlab("report", "fast", "--format", "md", "-o", str(tmp_path / "m" / "r.md"))
    assert md.returncode == 0 and "SVG files" in md.stdout
    missing = latlab("report", "fast", "nope", "-o", str(tmp_path / "x.html"))
    assert missing.returncode == 2 and "no run named 'nope'" in missing.stderr
    assert not (tmp_path / "x.html").exists()


def test_a_capacity_search_draws_its_frontier(sweeps):
    import json
    from types import SimpleNamespace

    from latlab.capacity import CapacitySearch, SearchSpec
    from latlab.metrics import RequestRecord, summarize

    search = CapacitySearch(spec=SearchSpec(variable="concurrency", objectives={"ttft": 100.0}))
    step = search.next_probe(None)
    while step is not None:
        users = step[0]["concurrency"]
        ttft = 50 if users <= 6 else 170
        recs = [RequestRecord(send_ns=i * 10**7, chunk_ns=[i * 10**7 + ttft * 10**6 + i % 7],
                              chunk_tokens=[1], end_ns=i * 10**7 + (ttft + 1) * 10**6,
                              output_tokens=1) for i in range(step[1])]  # fmt: skip
        step = search.next_probe(SimpleNamespace(records=recs, summary=summarize(recs)))
    result = json.loads(json.dumps(sweeps[0].result))
    result["capacity"] = search.to_dict()
    from tests.report.conftest import as_run

    section = next(s for s in build_sections([as_run(result, "found")])
                   if s.title.startswith("Capacity search"))  # fmt: skip
    chart = section.plots[0].chart
    assert [r.label for r in chart.refs] == ["SLO TTFT 100 ms", "answer 6"]
    assert [row[0] for row in section.plots[0].table.rows] == ["1", "2", "4", "6", "7", "8"]
    assert "Status found; answer 6 concurrent users" in section.intro


def test_the_strategy_table_shows_the_seeds_claim_beside_the_measured_figure(tmp_path):
    from latlab.optimize.seed_claims import seed_column
    from tests.report.conftest import as_run

    ttft = {"baseline": 100.0, "candidate": 70.0, "change_pct": -30.0, "noise_pct": 2.0,
            "significant": True, "improved": True, "worsened": False}  # fmt: skip
    trials = [{"name": "prune-layers-1", "level": "model", "verdict": "reject", "reason": "",
               "deltas": {"ttft": ttft}, "quality": None},
              {"name": "int4-weight-only", "level": "model", "verdict": "skip",
               "reason": "needs CUDA", "deltas": {}, "quality": None},
              {"name": "tf32", "level": "system", "verdict": "skip", "reason": "CUDA only",
               "deltas": {}, "quality": None}]  # fmt: skip
    for trial in trials:
        trial["seed_claim"] = seed_column(trial["name"], trial["verdict"], trial["deltas"])
    result = {"kind": "latlab.optimize", "model": "bundled", "figures": {"ttft": {}},
              "trials": trials, "adopted": []}  # fmt: skip
    write_report([as_run(result, "lab", kind="optimize")], tmp_path / "r.html")
    html = tmp_path / "r.html"
    table = re.search(r'<table class="strategy">.*?</table>', html.read_text(), re.S).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    assert "<th>seed's claim</th>" in rows[0]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows[1:]]
    claims = {row[0]: row[-2] for row in cells}
    assert claims == {"prune-layers-1": "TTFT -20-40%, quality low -&gt; -30%: within",
                      "int4-weight-only": "TTFT -30-50%, quality low -&gt; not measured",
                      "tf32": "-"}  # fmt: skip
