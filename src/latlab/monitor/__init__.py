"""Monitoring after optimizing: SLO alert rules and Grafana dashboards for latlab and vLLM.

- ``names``: the metric names each backend and version exports (vLLM renames tracked);
- ``buckets``: whether an SLO threshold is a histogram bucket edge, and which edge stands in;
- ``slo``: latency and availability objectives, multi-window multi-burn-rate windows;
- ``rules`` / ``saturation``: Prometheus rule files; ``dashboard``: Grafana JSON;
- ``scrape``: reading a server's /metrics (shared with ``latlab watch``).

Imports neither torch nor FastAPI.
"""
