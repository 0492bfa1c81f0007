"""Metric names by backend and version: renames tracked, unknown versions warned about."""

import pytest

from latlab.errors import ConfigError
from latlab.monitor.names import (
    GATEWAY,
    LATLAB,
    NEWEST_CHECKED_VLLM,
    match_scrape,
    parse_version,
    resolve,
)
from latlab.monitor.scrape import Scrape
from monitor.helpers import FIXTURES

VLLM_SCRAPE = Scrape.parse((FIXTURES / "vllm-0.32.0.metrics.txt").read_text())


@pytest.mark.parametrize(
    ("version", "kv", "itl", "prefix_hits"),
    [("0.6.3", "vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds", None),
     ("0.8.5", "vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds",
      "vllm:gpu_prefix_cache_hits_total"),
     ("0.10.1.1", "vllm:kv_cache_usage_perc", "vllm:time_per_output_token_seconds",
      "vllm:prefix_cache_hits_total"),
     ("v0.11.0", "vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds",
      "vllm:prefix_cache_hits_total"),
     ("0.32.0+cpu", "vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds",
      "vllm:prefix_cache_hits_total")],
)  # fmt: skip
def test_vllm_renames_by_version(version, kv, itl, prefix_hits):
    resolved = resolve("vllm", version)
    assert resolved.warning is None
    names = resolved.names
    assert (names.kv_usage, names.itl, names.prefix_hits) == (kv, itl, prefix_hits)
    assert (names.tpot is not None) == (parse_version(version) >= (0, 11, 0))


def test_newer_vllm_gets_the_closest_known_names_with_a_warning():
    resolved = resolve("vllm", "0.40.1")
    assert resolved.names.since == NEWEST_CHECKED_VLLM
    assert "newer than the newest version latlab has checked" in resolved.warning
    assert "--check-metrics" in resolved.warning


def test_older_vllm_gets_the_oldest_names_with_a_warning():
    resolved = resolve("vllm", "0.4.0")
    assert resolved.names.since == "0.6.0" and "older than the oldest" in resolved.warning


@pytest.mark.parametrize("bad", ["latest-ish", "abc", "", "v"])
def test_bad_version_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--vllm-version"):
        resolve("vllm", bad)


def test_unknown_backend():
    with pytest.raises(ConfigError, match="--backend"):
        resolve("sglang")


def test_the_newest_names_match_a_live_vllm_scrape_exactly():
    assert resolve("vllm").names.missing_from(VLLM_SCRAPE.names()) == []
    found = match_scrape(VLLM_SCRAPE.names())
    assert found.names.since == NEWEST_CHECKED_VLLM and found.warning is None


def test_renamed_names_are_missing_from_a_new_server():
    old = resolve("vllm", "0.8.0").names
    missing = old.missing_from(VLLM_SCRAPE.names())
    assert "vllm:gpu_cache_usage_perc" in missing
    assert "vllm:time_per_output_token_seconds_count" in missing


def test_match_scrape_on_something_else():
    found = match_scrape({"process_cpu_seconds_total", "up"})
    assert "no latlab: or vllm: metrics" in found.warning


def test_latlab_names_match_its_own_server(latlab_scrape):
    assert LATLAB.missing_from(latlab_scrape.names()) == []
    assert match_scrape(latlab_scrape.names()).names is LATLAB


def test_the_gateway_names_are_what_a_real_gateway_exports(gateway_scrape):
    assert GATEWAY.missing_from(gateway_scrape.names()) == []
    # ... and nothing it exports is left out (a new gateway metric must be added here too).
    exported = {f for f in gateway_scrape.types
                if f.startswith("latlab:gateway_") and not f.endswith("_created")}  # fmt: skip
    known = {n.removesuffix("_total").removesuffix("_count") for n in GATEWAY.series()}
    assert exported == known
