"""Bad input to every verb through the real entry point: one line on stderr, non-zero exit.

Each case was a traceback (or a silent exit 0) before: non-UTF-8 files, wrong JSON types, NaN
and Infinity, deep nesting, endless files, user code that fails or exits, absurd numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"

STUB = """
import time

def gen(prompt, max_tokens):
    yield "a"
    yield "b"

def slow(prompt, max_tokens):
    for _ in range(max_tokens):
        time.sleep(0.05)
        yield "x"
    with open("slow.done", "a") as done:  # the test signals once requests have finished
        done.write("x")

def exits(prompt, max_tokens):
    raise SystemExit(3)

def interrupts(prompt, max_tokens):
    raise KeyboardInterrupt
"""

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 256,
}


def latlab(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("latlab: error:")]
    assert len(errors) == 1, out.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli-errors")
    (d / "stub.py").write_text(STUB)
    (d / "syntax_error.py").write_text("def f(:\n")
    (d / "raises_at_import.py").write_text("raise RuntimeError('boom at import')\n")
    (d / "exits_at_import.py").write_text("import sys\nsys.exit(4)\n")
    jsonl = {
        "not_utf8.jsonl": b'{"prompt": "caf\xe9"}\n',
        "message_not_object.jsonl": b'{"messages": [5]}\n',
        "max_tokens_string.jsonl": b'{"prompt": "hi", "max_tokens": "5"}\n',
        "max_tokens_list.jsonl": b'{"prompt": "hi", "max_tokens": [5]}\n',
        "max_tokens_nan.jsonl": b'{"prompt": "hi", "max_tokens": NaN}\n',
        "max_tokens_inf.jsonl": b'{"prompt": "hi", "max_tokens": Infinity}\n',
        "deep.jsonl": b'{"prompt": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    }
    for name, raw in jsonl.items():
        (d / name).write_bytes(raw)
    (d / "turns_not_objects.json").write_text(json.dumps([{"conversations": ["hi", "there"]}]))
    (d / "sharegpt_not_utf8.json").write_bytes(b'[{"conversations": "\xff"}]')
    for name, config in {
        "layers_four": {**LLAMA, "num_hidden_layers": "four"},
        "layers_negative": {**LLAMA, "num_hidden_layers": -2},
        "hidden_negative": {**LLAMA, "hidden_size": -64},
    }.items():
        (d / f"{name}.json").write_text(json.dumps(config))
    (d / "config_not_utf8.json").write_bytes(b'{"model_type": "ll\xffama"}')
    (d / "plan_not_utf8.toml").write_bytes(b'name = "caf\xe9"\n')
    (d / "plan_threads.toml").write_text('threads = "lots"\n')
    for name, raw in {"list_config": b"[1, 2]", "config_bad_utf8": b'{"a": "\xff"}'}.items():
        (d / name).mkdir()
        (d / name / "config.json").write_bytes(raw)
    return d


DATASET_CASES = [
    ("jsonl:not_utf8.jsonl", "UTF-8"),
    ("jsonl:message_not_object.jsonl", "message"),
    ("jsonl:max_tokens_string.jsonl", "max_tokens"),
    ("jsonl:max_tokens_list.jsonl", "max_tokens"),
    ("jsonl:max_tokens_nan.jsonl", "max_tokens"),
    ("jsonl:max_tokens_inf.jsonl", "max_tokens"),
    ("jsonl:deep.jsonl", "nested"),
    ("sharegpt:turns_not_objects.json", "conversations"),
    ("sharegpt:sharegpt_not_utf8.json", "UTF-8"),
    ("jsonl:/dev/zero", "regular file"),
]


@pytest.mark.parametrize(("dataset", "needle"), DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_bad_bench_datasets(files, dataset, needle):
    out = latlab(
        "bench", "--callable", "stub:gen", "--dataset", dataset, "--no-progress", cwd=files
    )
    _one_line_error(out, needle)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("syntax_error:f", "SyntaxError"),
        ("raises_at_import:f", "boom at import"),
        ("exits_at_import:f", "SystemExit"),
    ],
)
def test_callable_modules_that_fail_to_import(files, spec, needle):
    out = latlab("bench", "--callable", spec, "--num-requests", "2", "--no-progress", cwd=files)
    _one_line_error(out, "--callable", needle)


@pytest.mark.parametrize(("fn", "raised"), [("exits", "SystemExit"), ("interrupts", "Keyboard")])
def test_callables_that_exit_or_interrupt_still_write_the_json(files, fn, raised):
    result = files / f"{fn}.json"
    out = latlab(
        "bench", "--callable", f"stub:{fn}", "--num-requests", "2", "--no-progress",
        "--json", str(result), cwd=files,
    )  # fmt: skip
    _one_line_error(out, "every request failed")
    written = json.loads(result.read_text())
    records = written["levels"][0]["records"]
    assert records and all(raised in r["error"] for r in records)


def test_sigterm_to_bench_is_treated_like_ctrl_c(files):
    result = files / "sigterm.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "bench", "--callable", "stub:slow", "--num-requests", "400",
         "--output-len", "20", "--no-progress", "--json", str(result)],
        cwd=files, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # SIGTERM once level requests completed (2 warm-ups come first; start-up alone can take
    # seconds on a loaded machine)
    done = files / "slow.done"
    deadline = time.monotonic() + 120
    while not (done.exists() and done.stat().st_size >= 4) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr  # as after Ctrl-C
    assert "Traceback" not in stderr
    written = json.loads(result.read_text())
    assert written["interrupted"] is True
    assert written["levels"][0]["summary"]["completed"] > 0


SERVE_CASES = [
    (["list_config"], "config.json"),
    (["config_bad_utf8"], "config.json"),
    (["--kv-cache-bytes", "1e400"], "--kv-cache-bytes"),
    (["--port", "99999"], "--port"),
]


@pytest.mark.parametrize(("args", "needle"), SERVE_CASES, ids=["list", "utf8", "kv", "port"])
def test_bad_serve_input(files, args, needle):
    _one_line_error(latlab("serve", *args, "--max-num-seqs", "1", cwd=files), needle)


PLAN_CASES = [
    (["config_not_utf8.json", "--memory", "24GiB"], "UTF-8"),
    (["layers_four.json", "--memory", "24GiB"], "num_hidden_layers"),
    (["layers_negative.json", "--memory", "24GiB"], "num_hidden_layers"),
    (["hidden_negative.json", "--memory", "24GiB"], "hidden_size"),
    (["Llama-3.1-8B", "--memory", "1e400"], "1e400"),
    (["Llama-3.1-8B", "--memory", "24GiB", "--block-size", "1000000000"], "block"),
]


@pytest.mark.parametrize(
    ("args", "needle"),
    PLAN_CASES,
    ids=["utf8", "four", "negative-layers", "negative-size", "memory-inf", "huge-block"],
)
def test_bad_plan_input(files, args, needle):
    _one_line_error(latlab("plan", *args, cwd=files), needle)


def test_optimize_checks_its_inputs_before_running(files, tmp_path):
    _one_line_error(latlab("optimize", "--plan", "plan_not_utf8.toml", cwd=files), "UTF-8")
    _one_line_error(latlab("optimize", "--plan", "plan_threads.toml", cwd=files), "threads")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    started = time.monotonic()
    out = latlab("optimize", "--out", str(a_file / "run"), cwd=files)
    _one_line_error(out, "--out", "not a directory")
    assert time.monotonic() - started < 60  # refused before the run, not after it


def test_optimize_out_without_permission_is_refused_first(files, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        out = latlab("optimize", "--out", str(read_only / "run"), cwd=files)
        _one_line_error(out, "--out", "permission denied")
    finally:
        read_only.chmod(0o700)


@pytest.fixture(scope="module")
def custom_code_model(tmp_path_factory) -> Path:
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    model = save_random_llama(tmp_path_factory.mktemp("custom-code"), TINY_TEST)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "my_private_arch"
    config["architectures"] = ["MyPrivateForCausalLM"]
    config["auto_map"] = {"AutoConfig": "configuration_mine.MyConfig"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_mine.py").write_text("raise SystemExit('custom code ran')\n")
    return model


CUSTOM_CODE_RUNS = {
    "serve": ["serve", "{model}", "--port", "0"],
    "bench-latlab": ["bench", "--backend", "latlab", "--model", "{model}", "--no-progress"],
    "bench-transformers": ["bench", "--model", "{model}", "--no-progress"],
}


@pytest.mark.parametrize("run", CUSTOM_CODE_RUNS)
def test_model_needing_custom_code_is_refused_without_a_question(custom_code_model, run, tmp_path):
    args = [a.format(model=custom_code_model) for a in CUSTOM_CODE_RUNS[run]]
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    line = _one_line_error(proc, "trust_remote_code=False")
    assert "custom code ran" not in proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert "own Python code" in line


def test_broken_model_directory_is_reported_as_such(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(LLAMA))  # no weights, no tokenizer
    out = latlab("optimize", str(broken), cwd=tmp_path)
    line = _one_line_error(out, "weights")
    assert "heldout" not in line


def test_unwritable_bench_json_is_refused_before_the_run(files, tmp_path):
    out = latlab(
        "bench", "--callable", "stub:gen", "--no-progress",
        "--json", str(tmp_path / "missing-dir" / "r.json"), cwd=files,
    )  # fmt: skip
    _one_line_error(out, "--json")
