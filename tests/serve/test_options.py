"""ServeOptions: the server's settings, flags generated from them, the guard built from them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from latlab.errors import ConfigError
from latlab.serve.guard import LOOPBACK_HOSTS
from latlab.serve.options import ServeOptions


def test_defaults_guard_a_loopback_server_and_derive_limits_from_the_context():
    guard = ServeOptions().guard_for_context(4096)
    assert guard.allowed_hosts == LOOPBACK_HOSTS and guard.api_keys == ()
    assert guard.limits.max_prompt_tokens == 4096 and guard.limits.max_json_depth == 32
    assert ServeOptions(host="0.0.0.0").guard_for_context(16).allowed_hosts is None


def test_text_options_are_read_like_their_flags(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# ops\nk1\nk2\n")
    options = ServeOptions.from_options(
        allowed_hosts="a.example, b.example", max_body_bytes="4MiB", api_key_file=str(keys),
        api_key="k0", max_stop="8",
    )  # fmt: skip
    guard = options.guard_for_context(100)
    assert guard.allowed_hosts == ("a.example", "b.example")
    assert guard.limits.max_body_bytes == 4 * 2**20 and guard.limits.max_stop == 8
    assert guard.api_keys == ("k0", "k1", "k2")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 70000}, "--port must be in 0..65535"),
        ({"shutdown_timeout_s": -1.0}, "--shutdown-timeout must be >= 0"),
        ({"max_stop": 0}, "max_stop must be a positive integer"),
        ({"body_timeout_s": 0.0}, "body_timeout_s must be positive"),
        ({"api_key_file": "/no/such/keys"}, "cannot read the API key file"),
        ({"max_body_bytes": "lots"}, "max_body_bytes"),
        ({"allowed_host": "x"}, "did you mean allowed_hosts?"),
    ],
)
def test_bad_options_are_refused_before_any_model_loads(options, message):
    with pytest.raises(ConfigError, match=message):
        ServeOptions.from_options(**options)


def test_repeated_and_comma_separated_flags_and_the_key_from_the_environment():
    import latlab.serve.server as server
    from latlab.cli import _register_commands, main

    _register_commands()
    got = {}
    original = server.serve
    server.serve = lambda config, options: got.update(options=options)
    try:
        args = ["serve", "--allowed-origins", "https://a.example,https://b.example",
                "--allowed-origins", "https://c.example", "--max-body-bytes", "1MiB"]  # fmt: skip
        result = CliRunner().invoke(main, args, env={"LATLAB_API_KEY": "s3cret"})
    finally:
        server.serve = original
    assert result.exit_code == 0, result.output
    options = got["options"]
    assert options.allowed_origins == ("https://a.example", "https://b.example",
                                       "https://c.example")  # fmt: skip
    assert options.api_key == "s3cret" and options.max_body_bytes == 2**20
    assert options.allowed_hosts is None  # not given: the bind address decides
