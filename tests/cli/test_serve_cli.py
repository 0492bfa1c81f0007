"""`latlab serve`: flags, byte sizes, a taken port, and launch -> ready -> request -> stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from latlab.errors import ConfigError
from latlab.serve.server import READY_PREFIX
from latlab.settings import parse_size as parse_bytes

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000", 1000),
        ("2GiB", 2 * 2**30),
        ("512MB", 512 * 10**6),
        ("1e9", 10**9),
        ("4k", 4000),
        ("2TB", 2 * 10**12),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5", "0", "2XB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ConfigError):
        parse_bytes(text)


def test_help_lists_engine_flags():
    out = _cli("serve", "--help")
    assert out.returncode == 0
    for flag in (
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--block-size",
        "--kv-cache-bytes",
        "--kv-cache-memory-fraction",
        "--dtype",
        "--quantization",
        "--no-prefix-caching",
        "--num-speculative-tokens",
        "--prompt-lookup-max",
        "--prompt-lookup-min",
        "--max-waiting",
        "--threads",
        "--served-model-name",
        "--host",
        "--port",
    ):
        assert flag in out.stdout


def test_taken_port_fails_in_one_line_before_loading(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _cli("serve", str(tmp_path), "--port", str(port))
    assert out.returncode == 2
    # The port error, not a model error for the empty folder, proves the port came first (a
    # wall-clock bound here failed on a loaded machine: 32 s to start Python and import).
    assert "cannot listen on" in out.stderr and "Traceback" not in out.stderr


def test_bad_bucket_edges_fail_in_one_line_before_loading():
    out = _cli("serve", "/no/such/model", "--ttft-buckets", "0.5,0.25")
    assert out.returncode == 2
    assert "--ttft-buckets '0.5,0.25': bucket edges must be strictly increasing" in out.stderr
    assert "Traceback" not in out.stderr


def test_bucket_flags_build_histogram_buckets():
    from latlab.serve.options import ServeOptions
    from latlab.serve.prometheus import ITL_BUCKETS, TTFT_BUCKETS

    def histogram_buckets(ttft, itl, e2e):  # the flags' text, as `latlab serve` reads them
        given = {"ttft_buckets": ttft, "itl_buckets": itl, "e2e_buckets": e2e}
        options = {key: text for key, text in given.items() if text is not None}
        return ServeOptions.from_options(**options).histogram_buckets()

    buckets = histogram_buckets(None, None, "1,2,4")
    assert (buckets.ttft, buckets.itl, buckets.request) == (TTFT_BUCKETS, ITL_BUCKETS, (1, 2, 4))
    assert histogram_buckets("0.3", None, None).ttft == (0.3,)


def test_both_kv_budgets_is_an_error():
    out = _cli("serve", "--kv-cache-bytes", "1GiB", "--kv-cache-memory-fraction", "0.1")
    assert out.returncode == 2
    assert "not both" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "linear"), [((), "linear plain"), (("--quantization", "int8"), "linear int8")]
)
def test_launch_ready_request_and_graceful_stop(tmp_path, flags, linear):
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    model = save_random_llama(tmp_path / "m", TINY_TEST)
    cmd = [
        sys.executable,
        "-c",
        _CLI,
        "serve",
        str(model),
        "--port",
        "0",
        "--served-model-name",
        "tiny",
        "--max-num-seqs",
        "4",
        "--kv-cache-bytes",
        "1MiB",
        *flags,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), line + proc.stderr.read()
        base = line[len(READY_PREFIX) :].split()[0]
        engine_line = proc.stdout.readline()  # what the engine runs, and why
        assert engine_line.startswith("latlab serve: engine: ") and f"{linear} (" in engine_line
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 3, "ignore_eos": True}
        reply = httpx.post(f"{base}/completions", json=body, timeout=60)
        assert reply.status_code == 200
        assert json.loads(reply.text)["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0
    assert "stopped" in proc.stderr.read()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    return str(save_random_llama(tmp_path_factory.mktemp("serve-cli"), TINY_TEST))


class _Served:
    """A `latlab serve` process started through the real entry point."""

    def __init__(self, model: str | None, *flags: str, env: dict[str, str] | None = None) -> None:
        named = [model] if model else []  # None: the bundled model, the default
        cmd = [sys.executable, "-c", _CLI, "serve", *named, "--port", "0", *flags]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:  # an interrupt while it starts (Ctrl-C) must not leave it running either
            line = self.proc.stdout.readline()
        except BaseException:
            self.__exit__()
            raise
        if not line.startswith(READY_PREFIX):
            self.proc.kill()
            raise AssertionError(line + self.proc.stderr.read())
        self.base = line[len(READY_PREFIX) :].split()[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, self.proc.stderr.read()

    def __enter__(self) -> _Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
def test_api_key_from_the_environment_and_loopback_host_check(tiny_model):
    import os

    env = {**os.environ, "LATLAB_API_KEY": "s3cret"}
    with _Served(tiny_model, "--served-model-name", "tiny", env=env) as served:
        body = {"prompt": "hi", "max_tokens": 2}
        assert httpx.post(f"{served.base}/completions", json=body).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        ok = httpx.post(f"{served.base}/completions", json=body, headers=auth)
        assert ok.status_code == 200
        rebound = httpx.post(
            f"{served.base}/completions", json=body, headers={**auth, "Host": "evil.example"}
        )
        assert rebound.status_code == 403
        card = httpx.get(f"{served.base}/models", headers=auth).json()["data"][0]
        assert card["root"] == "tiny"  # not the model's absolute path
        assert tiny_model not in json.dumps(card)
        code, _ = served.stop()
    assert code == 0


def _stream_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(tiny_model):
    import concurrent.futures

    with _Served(tiny_model, "--shutdown-timeout", "60") as served:
        # Long enough to be in flight when SIGTERM lands: 200 tokens once finished first.
        body = {"prompt": "hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with (
            concurrent.futures.ThreadPoolExecutor(1) as pool,
            httpx.stream("POST", f"{served.base}/completions", json=body, timeout=60) as r,
        ):
            assert r.status_code == 200
            stopping = pool.submit(served.stop)
            events = _stream_events(r)
            code, log = stopping.result()
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert code == 0
    assert "1 of 1 requests in flight finished" in log
    assert "Traceback" not in log and len(log.strip().splitlines()) == 1, log


def _wait_for_metric(base: str, name: str, value: float, timeout_s: float = 60) -> None:
    metrics = base.removesuffix("/v1") + "/metrics"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in httpx.get(metrics, timeout=10).text.splitlines():
            if line.startswith(name) and float(line.rsplit(" ", 1)[1]) >= value:
                return
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {value}")


@pytest.mark.slow
def test_sigterm_ends_what_outlasts_the_shutdown_timeout_cleanly(tiny_model):
    import concurrent.futures

    stream = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    plain = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True}
    with (
        _Served(tiny_model, "--shutdown-timeout", "0.5", "--max-num-seqs", "1") as served,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
        httpx.stream("POST", f"{served.base}/completions", json=stream, timeout=60) as r,
    ):
        waiting = pool.submit(httpx.post, f"{served.base}/completions", json=plain, timeout=60)
        _wait_for_metric(served.base, "latlab:num_requests_waiting", 1)  # queued behind
        stopping = pool.submit(served.stop)
        events = _stream_events(r)
        refused = waiting.result()
        code, log = stopping.result()
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "shutting_down"
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert code == 0
    assert "0 of 2 requests in flight finished, 2 ended" in log
    assert "Traceback" not in log and len(log.strip().splitlines()) == 1, log


def test_the_default_served_name_is_the_model_path(tmp_path, monkeypatch):
    """Named by its path (as vLLM names a model), the served model leads tools that load a
    tokenizer by name to it; a custom name gets the exact flags printed instead."""
    from latlab.assets import bundled_model_path
    from latlab.serve.server import default_served_name, tokenizer_hint

    bundled = str(bundled_model_path())
    assert default_served_name(None) == bundled
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert default_served_name("m") == str((tmp_path / "m").resolve())
    assert default_served_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert tokenizer_hint(bundled, None) is None
    hint = tokenizer_hint("tiny", None)
    assert f"vllm bench serve --tokenizer {bundled}" in hint
    assert f"aiperf --tokenizer {bundled}" in hint and f"guidellm --processor {bundled}" in hint


VLLM_PY = "/tmp/vllm-venv/bin/python"


@pytest.mark.slow
def test_vllm_bench_serve_finds_the_tokenizer_of_a_default_latlab_serve(tmp_path):
    """No --model, no --tokenizer: vllm bench serve takes the model from /v1/models and loads
    its tokenizer from there (it once retried the Hub for 'tiny-llama' for minutes)."""
    import os
    from pathlib import Path

    if not os.access(VLLM_PY, os.X_OK):
        pytest.skip("vLLM's venv is not installed (benchmarks/anchors/install.sh vllm)")
    shim = Path(__file__).resolve().parents[2] / "benchmarks" / "anchors" / "vllm_shim.py"
    with _Served(None, "--max-num-seqs", "4") as served:
        root = served.base.removesuffix("/v1")
        out = subprocess.run(
            [VLLM_PY, str(shim), "bench", "serve", "--base-url", root, "--dataset-name",
             "random", "--random-input-len", "16", "--random-output-len", "4",
             "--num-prompts", "2", "--disable-tqdm"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        served.stop()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Successful requests:                     2" in out.stdout


def test_every_engine_and_serve_setting_is_a_flag_with_its_default():
    from latlab.cli.settings import flag_names
    from latlab.engine.config import EngineConfig
    from latlab.serve.options import ServeOptions
    from latlab.settings import settings_of

    text = " ".join(_cli("serve", "--help").stdout.split())
    squeezed = "".join(text.split())  # click may wrap a line at a hyphen
    names = flag_names([EngineConfig, ServeOptions])
    assert len(names) == len(set(names)), "two settings would share a flag"
    for cls in (EngineConfig, ServeOptions):
        for info in settings_of(cls):
            if info.spec.cli and not info.spec.hidden:
                assert f"--{info.flag}" in text
                assert "".join(info.spec.help.split()) in squeezed
    assert "[default: 64]" in text and "[default: 127.0.0.1]" in text


def test_a_new_settings_field_becomes_a_flag_without_cli_code():
    from dataclasses import dataclass

    import click
    from click.testing import CliRunner

    from latlab.cli.settings import pick, settings_options
    from latlab.settings import setting

    @dataclass(kw_only=True)
    class Limits:
        max_body: int = setting(1024, help="Largest body.")
        strict: bool = setting(False, help="Refuse unknown fields.")

    @click.command()
    @settings_options(Limits, "l_")
    def cmd(**flags):
        click.echo(repr(Limits(**pick(flags, "l_"))))

    out = CliRunner().invoke(cmd, ["--max-body", "9", "--strict"]).output
    assert (
        out.strip() == "test_a_new_settings_field_becomes_a_flag_without_cli_code.<locals>"
        ".Limits(max_body=9, strict=True)"
    )
    assert "Largest body. [default: 1024]" in CliRunner().invoke(cmd, ["--help"]).output


def test_engine_flag_values_reach_the_config():
    from click.testing import CliRunner

    import latlab.serve.server as server
    from latlab.cli import _register_commands, main

    _register_commands()
    got = {}
    original = server.serve
    server.serve = lambda config, options: got.update(config=config, options=options)
    try:
        args = ["serve", "m", "--no-prefix-caching", "--threads", "2", "--kv-cache-bytes", "1GiB",
                "--compile", "--port", "0", "--served-model-name", "x"]  # fmt: skip
        result = CliRunner().invoke(main, args)
    finally:
        server.serve = original
    assert result.exit_code == 0, result.output
    config, options = got["config"], got["options"]
    assert (config.model, config.enable_prefix_caching, config.num_threads) == ("m", False, 2)
    assert (config.kv_cache_bytes, config.compile, config.max_num_seqs) == (2**30, True, 64)
    assert (options.port, options.served_model_name, options.host) == (0, "x", "127.0.0.1")


def _group_gone(pgid: int, timeout_s: float = 10.0) -> list[int]:
    from latlab.procs import group_members

    deadline = time.monotonic() + timeout_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("when", ["loading", "ready"])
def test_sigterm_leaves_no_preparation_process(tiny_model, when):
    """The preparation process (latlab.serve.prep) is stopped on the way out, whether it was
    still loading its tokenizer or serving, and nothing else of the server's is left."""
    cmd = [sys.executable, "-c", _CLI, "serve", tiny_model, "--port", "0"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(READY_PREFIX), "".join(lines) + proc.stderr.read()
        assert "until the preparation process is up" in lines[2], lines
        if when == "ready":
            line = proc.stdout.readline()
            assert "preparation process ready" in line, line
            base = lines[0][len(READY_PREFIX) :].split()[0]
            body = {"prompt": "the " * 1100}  # large: tokenized in the child
            tokenize = base.removesuffix("/v1") + "/tokenize"
            assert httpx.post(tokenize, json=body, timeout=60).json()["count"] > 1000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _group_gone(proc.pid) == []
    assert "Traceback" not in log and len(log.strip().splitlines()) == 1, log
