"""SLO thresholds against histogram bucket edges: exact, rounded (and said so), impossible."""

import pytest

from latlab.errors import ConfigError
from latlab.monitor.buckets import check_threshold, default_edges, edges_for, le_matcher
from latlab.monitor.names import LATLAB, resolve
from latlab.serve.prometheus import ITL_BUCKETS, TTFT_BUCKETS

EDGES = (0.1, 0.25, 0.5, 1.0)


def _check(threshold, rounding="down", backend="latlab", edges=EDGES):
    return check_threshold(threshold, edges, metric="m", role="ttft", backend=backend,
                           rounding=rounding)  # fmt: skip


def test_exact_edge_needs_no_note():
    choice = _check(0.5)
    assert (choice.edge_s, choice.exact, choice.note) == (0.5, True, None)


@pytest.mark.parametrize(
    ("rounding", "edge", "effect"),
    [("down", 0.25, "stricter"), ("up", 0.5, "looser"), ("nearest", 0.25, "stricter")],
)
def test_between_edges_says_which_edge_and_how_to_fix(rounding, edge, effect):
    choice = _check(0.3, rounding)
    assert choice.edge_s == edge and not choice.exact
    assert "300 ms is not a bucket edge of m (nearest edges: 250 ms, 500 ms)" in choice.note
    assert f"over {edge * 1000:g} ms ({effect}" in choice.note
    assert "latlab serve --ttft-buckets 0.1,0.25,0.3,0.5,1" in choice.note


def test_nearest_rounds_up_when_closer():
    assert _check(0.45, "nearest").edge_s == 0.5


def test_vllm_gets_its_own_flag_in_the_hint():
    note = _check(0.3, backend="vllm").note
    assert "--custom-histogram-buckets" in note and '"time_to_first_token"' in note


def test_threshold_beyond_the_last_edge_is_refused():
    with pytest.raises(ConfigError, match="above the last bucket edge"):
        _check(2.0)


def test_threshold_below_the_first_edge_cannot_round_down():
    with pytest.raises(ConfigError, match="below the first bucket edge"):
        _check(0.05, "down")
    assert _check(0.05, "up").edge_s == 0.1


def test_bad_rounding_and_no_edges():
    with pytest.raises(ConfigError, match="--bucket-rounding"):
        _check(0.3, "sideways")
    with pytest.raises(ConfigError, match="no finite bucket edges"):
        _check(0.3, edges=(float("inf"),))


@pytest.mark.parametrize(
    ("edge", "matcher"),
    [
        (0.25, 'le="0.25"'),
        (0.001, 'le="0.001"'),
        (1.0, 'le=~"1|1\\\\.0"'),
        (10, 'le=~"10|10\\\\.0"'),
    ],
)
def test_le_matchers_match_prometheus_2_and_3_spellings(edge, matcher):
    assert le_matcher(edge) == matcher


def test_default_edges_by_version():
    assert default_edges(LATLAB, "ttft") == TTFT_BUCKETS
    assert default_edges(LATLAB, "tpot") == ITL_BUCKETS
    old = resolve("vllm", "0.8.0").names
    assert default_edges(old, "ttft")[-1] == 10.0 and default_edges(old, "e2e")[0] == 1.0


def test_edges_read_from_a_live_server(latlab_server_url):
    edges, notes = edges_for(LATLAB, ("ttft", "tpot"), f"{latlab_server_url}/metrics")
    assert edges["ttft"] == (0.05, 0.3, 2.0) and edges["tpot"] == (0.02, 0.04) and notes == []
