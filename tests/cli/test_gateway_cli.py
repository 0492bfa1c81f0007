"""`latlab gateway`: one-line errors, --hash-key, and launch -> ready -> request -> SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from latlab.gateway.keys import hash_key
from latlab.gateway.server import READY_PREFIX
from latlab.testing.stub_server import StubServer

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CLI, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_hash_key_reads_stdin_and_prints_the_keys_file_line():
    out = _cli("gateway", "--hash-key", stdin="sk-secret\n")
    assert out.returncode == 0
    assert out.stdout.strip() == f'sha256 = "{hash_key("sk-secret")}"'
    assert "sk-secret" not in out.stdout


@pytest.mark.parametrize("args,message", [
    ((), "at least one --upstream"),
    (("--upstream", "ftp://x:1"), "give an http://HOST:PORT or https://HOST:PORT URL"),
    (("--upstream", "http://127.0.0.1:1", "--upstream-ca-bundle", "/no/such/ca.pem"), "ca.pem"),
    (("--upstream", "http://127.0.0.1:1", "--cache", "memcached://x"), "sqlite:FILE"),
    (("--upstream", "http://127.0.0.1:1", "--api-keys", "/no/such/keys.toml"), "cannot read"),
    (("--upstream", "http://127.0.0.1:1", "--cache-max-bytes", "lots"), "lots"),
])  # fmt: skip
def test_bad_flags_are_one_line_errors(args, message):
    out = _cli("gateway", *args)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latlab: error:") and message in lines[0]


@pytest.mark.slow
def test_launch_ready_request_and_sigterm(tmp_path):
    with StubServer(ttft_s=0.01, itl_s=0.001) as upstream:
        cmd = [sys.executable, "-c", _CLI, "gateway", "--upstream", upstream, "--port", "0",
               "--cache", f"sqlite:{tmp_path / 'c.sqlite'}"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith(READY_PREFIX), line + proc.stderr.read()
            url = line[len(READY_PREFIX) :].split()[0]
            payload = {"prompt": "hi", "max_tokens": 3, "temperature": 0}
            replies = [httpx.post(url + "/completions", json=payload, trust_env=False)
                       for _ in range(2)]  # fmt: skip
            assert [r.headers["x-latlab-cache"] for r in replies] == ["miss", "hit"]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
    assert code == 0
