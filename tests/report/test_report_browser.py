"""The report in a real headless Chromium: loads offline, no console errors, no request besides
the file itself, every chart drawn; a screenshot is kept in test-artifacts/ (or
$LATLAB_TEST_ARTIFACTS) for a human to look at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from latlab.report import write_report
from latlab.testing.browser import HeadlessChromium

pytestmark = pytest.mark.slow

# Per chart: its title when it is empty (no size, or no drawn mark with a size).
EMPTY_CHARTS_JS = """
Array.from(document.querySelectorAll('svg.chart')).filter(svg => {
  const box = svg.getBoundingClientRect();
  const drawn = Array.from(svg.querySelectorAll('g.s > polyline, g.s > rect, g.s > circle'))
    .filter(el => { const b = el.getBBox(); return b.width > 0 || b.height > 0; });
  return box.width < 50 || box.height < 50 || drawn.length === 0;
}).map(svg => svg.getAttribute('aria-label'))
"""


def artifacts() -> Path:
    folder = Path(os.environ.get("LATLAB_TEST_ARTIFACTS", "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_report_loads_offline_in_chromium_with_every_chart_drawn(sweeps, optimize_run, tmp_path):
    out = tmp_path / "report.html"
    write_report([*sweeps, optimize_run], out)
    with HeadlessChromium(width=1300, height=1000) as browser:
        page = browser.load(out)
        charts = browser.evaluate("document.querySelectorAll('svg.chart').length")
        empty = browser.evaluate(EMPTY_CHARTS_JS)
        strategy_bars = browser.evaluate("document.querySelectorAll('table.strategy svg').length")
        shot = browser.screenshot(artifacts() / "report-sweep-and-optimize.png")
    assert page.requests == [out.resolve().as_uri()]  # nothing fetched but the file itself
    assert page.console_errors == [] and page.exceptions == []
    assert charts >= 20 and empty == []
    assert strategy_bars == 8  # two measured trials x four figures
    assert shot.stat().st_size > 50_000
