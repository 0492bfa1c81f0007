"""``latlab watch URL``: flags -> WatchConfig -> latlab.watch.run_watch; exit code from --once."""

from __future__ import annotations

import sys

import click

from latlab.cli import main
from latlab.cli.store_options import open_store, record_options


@main.command("watch")
@click.argument("url")
@click.option("--model", default=None, help="Served model name [default: the first listed].")
@click.option(
    "--api", type=click.Choice(["completions", "chat"]), default="completions", show_default=True
)
@click.option("--api-key", default=None, help="Bearer key [default: $OPENAI_API_KEY].")
@click.option(
    "--interval",
    default="10s",
    show_default=True,
    help="One cycle of probes every interval (30s, 1m, ...).",
)
@click.option("--requests-per-cycle", type=int, default=1, show_default=True)
@click.option(
    "--concurrency",
    type=int,
    default=1,
    show_default=True,
    help="Probes in flight at once (at most 8).",
)
@click.option(
    "--max-rate",
    type=float,
    default=1.0,
    show_default=True,
    help="Hard limit on probe requests per second.",
)
@click.option(
    "--prompt-tokens",
    default="64",
    show_default=True,
    help="Prompt length: N, uniform:LO:HI or normal:MEAN:STD (words ~ tokens).",
)
@click.option("--max-tokens", default="32", show_default=True, help="Output tokens per probe.")
@click.option("--timeout", default="60s", show_default=True, help="Per-request timeout.")
@click.option("--slo-ttft-ms", type=float, default=None, help="TTFT objective (ms).")
@click.option("--slo-tpot-ms", type=float, default=None, help="TPOT objective (ms).")
@click.option("--slo-e2e-ms", type=float, default=None, help="End-to-end objective (ms).")
@click.option(
    "--slo-percentile",
    type=float,
    default=99.0,
    show_default=True,
    help="This share of the window's probes must meet every objective.",
)
@click.option("--window", default="5m", show_default=True, help="SLO evaluation window.")
@click.option(
    "--once",
    is_flag=True,
    help="Probe for one window, then exit 0 if the SLO held, 1 if it was breached.",
)
@click.option("--duration", default=None, help="Stop after this long [default: until Ctrl-C].")
@click.option(
    "--max-backoff",
    default="5m",
    show_default=True,
    help="Longest wait between tries while the server does not answer.",
)
@click.option(
    "--on-breach",
    default=None,
    metavar="CMD",
    help="Shell command run when the SLO becomes breached (event JSON on stdin).",
)
@click.option(
    "--webhook",
    default=None,
    metavar="URL",
    help="POST a JSON event here on breach and on recovery.",
)
@click.option(
    "--server-metrics",
    default="auto",
    show_default=True,
    help="The server's /metrics: auto (<server>/metrics), a URL, or off.",
)
@click.option(
    "--backend",
    type=click.Choice(["latlab", "vllm"]),
    default=None,
    help="Metric names of this backend [default: detected from the scrape].",
)
@click.option("--vllm-version", default=None, help="vLLM version whose metric names to read.")
@click.option(
    "--metrics-port",
    type=int,
    default=9464,
    show_default=True,
    help="Serve the probe's own Prometheus metrics here (0 = any free port).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--no-metrics", is_flag=True, help="Do not serve the probe's metrics.")
@click.option(
    "--records",
    "records_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Append every probe as a JSON line to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cycle on stdout.")
@record_options
def watch_command(url: str, **opts: object) -> int:
    """Probe URL's SLO with a small, paced request mix, as users see it; alert on breaches."""
    from latlab.monitor.durations import parse_duration
    from latlab.watch import WatchConfig, run_watch

    duration = opts.pop("duration")
    config = WatchConfig(
        url=url, model=opts["model"], api=opts["api"], api_key=opts["api_key"],
        interval_s=parse_duration(opts["interval"], "--interval"),
        requests_per_cycle=opts["requests_per_cycle"], concurrency=opts["concurrency"],
        max_rate=opts["max_rate"], prompt_tokens=opts["prompt_tokens"],
        max_tokens=opts["max_tokens"], timeout_s=parse_duration(opts["timeout"], "--timeout"),
        slo_ttft_ms=opts["slo_ttft_ms"], slo_tpot_ms=opts["slo_tpot_ms"],
        slo_e2e_ms=opts["slo_e2e_ms"], percentile=opts["slo_percentile"],
        window_s=parse_duration(opts["window"], "--window"), once=opts["once"],
        duration_s=None if duration is None else parse_duration(duration, "--duration"),
        on_breach=opts["on_breach"], webhook=opts["webhook"],
        server_metrics=opts["server_metrics"], metrics_host=opts["metrics_host"],
        metrics_port=None if opts["no_metrics"] else opts["metrics_port"],
        records_path=opts["records_path"],
        max_backoff_s=parse_duration(opts["max_backoff"], "--max-backoff"),
    )  # type: ignore[arg-type]  # fmt: skip
    recorder = _recorder(config, opts)
    result = run_watch(config, view=_view(bool(opts["as_json"])), backend=opts["backend"],
                       vllm_version=opts["vllm_version"], recorder=recorder)  # fmt: skip
    return result.exit_code


def _recorder(config: object, opts: dict) -> object:
    """The run-store sink (None with --no-store), opened before the first probe."""
    from latlab.watch.sink import StoreSink, watch_document

    store = open_store(opts["store_path"], opts["no_store"], opts["run_name"], opts["tags"])
    if store is None:
        return None
    return StoreSink(store, document=watch_document(config), flush_s=config.window_s,
                     name=opts["run_name"], tags=opts["tags"],
                     command=["latlab", *sys.argv[1:]])  # type: ignore[attr-defined]  # fmt: skip


def _view(as_json: bool) -> object:
    from latlab.watch.view import JsonView, LineView, RichView

    if as_json:
        return JsonView()
    return RichView() if sys.stderr.isatty() else LineView()
