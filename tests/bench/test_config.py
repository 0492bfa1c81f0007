"""BenchConfig.from_options: the one place bench defaults live, per kind of target."""

from __future__ import annotations

import pytest

from latlab.bench.config import IN_PROCESS_DEFAULTS, BenchConfig, RunSettings
from latlab.errors import ConfigError


def test_http_targets_get_the_field_defaults():
    config = BenchConfig.from_options(remote=True, warmup=None, seed=None)
    assert (config.num_requests, config.input_len, config.concurrency) == (100, "128", [1])
    assert config.warmup == 2 and config.seed == 0


def test_in_process_targets_get_the_short_demo_shape():
    config = BenchConfig.from_options(remote=False)
    assert config.num_requests == IN_PROCESS_DEFAULTS["num_requests"] == 16
    assert (config.input_len, config.output_len, config.concurrency) == ("32", "32", [1, 4])


def test_given_options_win_and_a_duration_alone_sets_no_request_count():
    config = BenchConfig.from_options(remote=False, duration_s=5.0, concurrency=[2])
    assert config.num_requests is None and config.duration_s == 5.0
    assert config.concurrency == [2]
    both = BenchConfig.from_options(remote=True, duration_s=5.0, num_requests=7)
    assert both.num_requests == 7


def test_a_rate_replaces_the_in_process_concurrency_default():
    config = BenchConfig.from_options(remote=False, rate=[2.0])
    assert config.rate == [2.0] and config.concurrency is None
    assert config.levels() == [{"rate": 2.0}]


def test_run_settings_carry_what_the_runner_needs():
    config = BenchConfig(num_requests=9, burstiness=0.5, seed=3, drain_s=1.0)
    assert config.run_settings() == RunSettings(num_requests=9, burstiness=0.5, seed=3,
                                                drain_s=1.0)  # fmt: skip


def test_config_is_keyword_only_and_validated():
    with pytest.raises(TypeError):
        BenchConfig([1])  # type: ignore[misc]
    with pytest.raises(ConfigError, match="not both"):
        BenchConfig.from_options(remote=True, concurrency=[1], rate=[1.0])
