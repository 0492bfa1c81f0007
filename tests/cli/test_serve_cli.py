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

from latlab.cli.serve import parse_bytes
from latlab.errors import ConfigError
from latlab.serve.server import READY_PREFIX

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
        start = time.monotonic()
        out = _cli("serve", str(tmp_path), "--port", str(port))
    assert out.returncode == 2
    assert "cannot listen on" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - start < 30


def test_both_kv_budgets_is_an_error():
    out = _cli("serve", "--kv-cache-bytes", "1GiB", "--kv-cache-memory-fraction", "0.1")
    assert out.returncode == 2
    assert "not both" in out.stderr


@pytest.mark.slow
def test_launch_ready_request_and_graceful_stop(tmp_path):
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
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), line + proc.stderr.read()
        base = line[len(READY_PREFIX) :].split()[0]
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 3, "ignore_eos": True}
        reply = httpx.post(f"{base}/completions", json=body, timeout=60)
        assert reply.status_code == 200
        assert json.loads(reply.text)["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0
    assert "stopped" in proc.stderr.read()
