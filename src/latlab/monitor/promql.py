"""Small PromQL builders shared by the rules and the dashboard (strings in, strings out)."""

from __future__ import annotations


def selector(*matchers: str | None) -> str:
    """'{a="1",b="2"}' from the matchers given (empty ones dropped); '' when there are none."""
    parts = [m.strip().strip("{}").strip() for m in matchers if m and m.strip().strip("{}")]
    return "{" + ",".join(parts) + "}" if parts else ""


def job_matcher(job: str | None) -> str | None:
    return None if not job else f'job="{_escape(job)}"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def rate(series: str, sel: str, window: str) -> str:
    return f"rate({series}{sel}[{window}])"


def ratio_over(bad: str, total: str) -> str:
    """bad / total, each already an expression."""
    return f"(\n  {bad}\n)\n/\n(\n  {total}\n)"
