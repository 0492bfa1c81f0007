"""``latlab alerts``: SLO flags -> Prometheus recording and alert rules (YAML), promtool-checked."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from latlab.cli import main
from latlab.errors import ConfigError


@main.command("alerts")
@click.option("--slo-ttft-ms", type=float, default=None, help="TTFT objective (ms).")
@click.option("--slo-tpot-ms", type=float, default=None, help="Per-request TPOT objective (ms).")
@click.option("--slo-e2e-ms", type=float, default=None, help="End-to-end objective (ms).")
@click.option(
    "--slo-from",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Take the objectives from a latlab bench result JSON (its --slo-*).",
)
@click.option(
    "--percentile",
    default="99",
    show_default=True,
    help="Latency SLOs: this share of requests within the threshold (99 = p99).",
)
@click.option(
    "--objective",
    default=None,
    help="Availability SLO: share of generation requests without a 5xx, e.g. 99.5%.",
)
@click.option(
    "--backend", type=click.Choice(["latlab", "vllm"]), default="latlab", show_default=True
)
@click.option("--vllm-version", default=None, help="vLLM version [default: newest known].")
@click.option("--job", default=None, help="Prometheus job label of the server.")
@click.option("--matchers", default=None, help="Extra label matchers, e.g. 'model_name=\"x\"'.")
@click.option("--service", default="latlab", show_default=True, help="`service` label value.")
@click.option("--period", default="30d", show_default=True, help="SLO period.")
@click.option(
    "--windows",
    default=None,
    help="Burn-rate windows SEVERITY=LONG/SHORT@BURN,... [default: 1h/5m@14.4 and "
    "6h/30m@6 page, 1d/2h@3 and 3d/6h@1 ticket, scaled to --period].",
)
@click.option(
    "--metrics-url",
    default=None,
    help="Read the bucket edges from this live /metrics instead of the defaults.",
)
@click.option(
    "--bucket-rounding",
    type=click.Choice(["down", "up", "nearest"]),
    default="down",
    show_default=True,
    help="Threshold between two edges: use the lower (stricter) or upper edge.",
)
@click.option(
    "--saturation-window",
    default="5m",
    show_default=True,
    help="Window and `for` of the saturation alerts.",
)
@click.option(
    "--kv-usage", type=float, default=0.9, show_default=True, help="KV cache alert threshold (0-1)."
)
@click.option("--error-rate", default="5%", show_default=True, help="5xx alert threshold.")
@click.option(
    "--watch-job",
    default="latlab-watch",
    show_default=True,
    help="Prometheus job of latlab watch (probe alerts); '' for none.",
)
@click.option(
    "--gateway-job",
    default=None,
    help="Prometheus job of latlab gateway: adds its alerts (down, no healthy upstream, "
    "upstream ejected, 5xx, CPU-bound, cache or limit store failing).",
)
@click.option(
    "--gateway-lag-ms",
    type=float,
    default=50.0,
    show_default=True,
    help="Gateway event-loop lag p99 that counts as CPU-bound.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the rules here [default: stdout].",
)
def alerts_command(**opts: Any) -> None:
    """Prometheus rules for latency and availability SLOs: multi-window multi-burn-rate alerts
    from the server's histograms (bucket edges checked), plus saturation and probe alerts."""
    from latlab.monitor.generate import RuleOptions, generate_rules

    slo = _slo_from(opts["slo_from"]) if opts["slo_from"] else {}
    options = RuleOptions(
        ttft_ms=opts["slo_ttft_ms"] or slo.get("ttft_ms"),
        tpot_ms=opts["slo_tpot_ms"] or slo.get("tpot_ms"),
        e2e_ms=opts["slo_e2e_ms"] or slo.get("e2e_ms"),
        percentile=opts["percentile"], objective=opts["objective"], backend=opts["backend"],
        vllm_version=opts["vllm_version"], job=opts["job"], matchers=opts["matchers"],
        service=opts["service"], period=opts["period"], windows=opts["windows"],
        metrics_url=opts["metrics_url"], rounding=opts["bucket_rounding"],
        saturation_window=opts["saturation_window"], kv_usage=opts["kv_usage"],
        error_rate=opts["error_rate"], watch_job=opts["watch_job"] or None,
        gateway_job=opts["gateway_job"] or None, gateway_lag_ms=opts["gateway_lag_ms"],
        command="latlab alerts " + shlex.join(sys.argv[2:]),
    )  # fmt: skip
    out = generate_rules(options, opts["output"])
    for note in out.notes:
        click.echo(f"latlab alerts: note: {note}", err=True)
    if opts["output"] is None:
        click.echo(out.text, nl=False)
    else:
        click.echo(f"wrote {opts['output']}: {out.summary}", err=True)


def _slo_from(path: str) -> dict[str, float]:
    try:
        slo = json.loads(Path(path).read_text()).get("config", {}).get("slo")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"--slo-from {path}: not a latlab bench result JSON") from None
    if not slo:
        raise ConfigError(f"--slo-from {path}: the run had no SLO (bench --slo-ttft-ms ...)")
    return {k: v for k, v in slo.items() if v is not None}
