"""``latlab bench`` end to end against the stub server, in a subprocess like a user runs it."""

import json
import subprocess
import sys

import pytest

from latlab.testing import StubServer


def latlab(*args, timeout=120):
    code = "import sys; from latlab.cli import run; run(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_bench_against_a_server_prints_the_table_and_writes_json_and_csv(tmp_path):
    with StubServer(ttft_s=0.01, itl_s=0.001, chunks=4) as url:
        out = latlab("bench", "--url", url, "--concurrency", "1,2", "--num-requests", "4",
                     "--input-len", "8", "--output-len", "4", "--json", str(tmp_path / "r.json"),
                     "--csv", str(tmp_path / "r.csv"), "--slo-ttft-ms", "500",
                     "--price-per-hour", "3.6")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "TTFT p50" in out.stdout and "concurrency 2" in out.stdout
    assert "cost at $3.6/h (--price-per-hour), per million output tokens:" in out.stdout
    d = json.loads((tmp_path / "r.json").read_text())
    assert [lv["load"] for lv in d["levels"]] == [{"concurrency": 1}, {"concurrency": 2}]
    assert d["levels"][0]["summary"]["completed"] == 4
    assert d["levels"][0]["summary"]["goodput_rps"] > 0
    assert d["target"]["remote"] is True
    tokens_per_s = d["levels"][0]["summary"]["output_tokens_per_s"]
    cost = d["cost"]["levels"][0]["usd_per_million_output_tokens"]
    assert cost == pytest.approx(3.6 / (tokens_per_s * 3600) * 1e6)
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 9


def test_open_loop_rate_and_chat_api():
    with StubServer(ttft_s=0.005, itl_s=0.001, chunks=2) as url:
        out = latlab("bench", "--url", url, "--rate", "50,inf", "--num-requests", "5",
                     "--api", "chat", "--no-progress")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "rate 50" in out.stdout and "rate inf" in out.stdout


def test_wrong_url_fails_fast_with_one_line():
    with StubServer() as url:
        dead = url
    out = latlab("bench", "--url", dead, timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latlab: error: cannot reach")


def test_exit_code_non_zero_only_when_every_request_failed():
    with StubServer(fault="500") as url:
        out = latlab("bench", "--url", url, "--num-requests", "3", "--warmup", "0")
    assert out.returncode == 1
    assert "http_500 x3" in out.stdout
    with StubServer(fault="500", fault_every=2, ttft_s=0, itl_s=0, chunks=2) as url:
        ok = latlab("bench", "--url", url, "--num-requests", "4", "--warmup", "0")
        strict = latlab("bench", "--url", url, "--num-requests", "4", "--warmup", "0",
                        "--fail-on-error")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert strict.returncode == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--concurrency", "1", "--rate", "2"], "not both"),
     (["--concurrency", "a,b"], "comma-separated"),
     (["--input-len", "uniform:9"], "--input-len"),
     (["--dataset", "jsonl:/no/such/file.jsonl"], "cannot read dataset file"),
     (["--callable", "nocolon"], "module:function"),
     (["--price-per-hour", "0"], "--price-per-hour must be a positive number")],
)  # fmt: skip
def test_bad_flags_give_one_line_errors(args, message):
    with StubServer() as url:
        extra = [] if args[0] == "--callable" else ["--url", url]
        out = latlab("bench", *extra, *args, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bench_client_imports_without_torch_or_fastapi():
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'fastapi'): sys.modules[m] = None\n"
        "import latlab.bench, latlab.metrics, latlab.workload, latlab.testing, latlab.cli.bench\n"
        "from latlab.testing import StubServer\n"
        "from latlab.bench import BenchConfig, OpenAITarget, run_bench\n"
        "with StubServer(ttft_s=0, itl_s=0, chunks=2) as url:\n"
        "    r = run_bench(BenchConfig(num_requests=2, warmup=0), OpenAITarget(url), False)\n"
        "assert r.completed == 2\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_no_argument_run_benchmarks_the_bundled_model_in_process(tmp_path):
    from latlab.assets import bundled_model_path

    args = ["bench", "--no-progress"]
    if not (bundled_model_path() / "model.safetensors").exists():
        from latlab.testing.random_model import save_random_llama

        args += ["--model", str(save_random_llama(tmp_path / "m"))]
    out = latlab(*args, timeout=170)
    assert out.returncode == 0, out.stderr
    assert "concurrency 1" in out.stdout and "concurrency 4" in out.stdout


@pytest.mark.slow
def test_backend_latlab_runs_the_engine_in_process(tmp_path):
    pytest.importorskip("latlab.engine")
    from latlab.testing.random_model import save_random_llama

    model = save_random_llama(tmp_path / "m")
    out = latlab("bench", "--backend", "latlab", "--model", str(model), "--concurrency", "2",
                 "--num-requests", "3", "--output-len", "5", "--json", str(tmp_path / "r.json"),
                 "--engine-arg", "num_speculative_tokens=2", "--engine-arg", "max-num-seqs=4",
                 timeout=170)  # fmt: skip
    assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["target"]["name"].startswith("latlab-engine")
    settings = d["target"]["settings"]
    assert settings["num_speculative_tokens"] == 2 and settings["max_num_seqs"] == 4
    assert d["levels"][0]["summary"]["output_tokens"] == 15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "latlab", "--engine-arg", "nope=1"], "has no setting nope; its settings:"),
        (["--backend", "latlab", "--engine-arg", "num_speculative_tokens"], "KEY=VALUE"),
        (["--engine-arg", "num_speculative_tokens=4"], "--backend latlab (in-process) only"),
        (
            ["--url", "http://127.0.0.1:9", "--backend", "latlab", "--engine-arg", "seed=1"],
            "--backend latlab (in-process) only",
        ),
        (["--backend", "latlab", "--engine-arg", "num_speculative_tokens=-1"], ">= 0"),
    ],
)
def test_bad_engine_args_fail_in_one_line(args, message):
    pytest.importorskip("latlab.engine")
    out = latlab("bench", *args, "--num-requests", "1")
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.count("\n") == 1


def test_engine_arg_values_are_read_as_numbers_bools_and_text():
    from latlab.cli.bench import _engine_args

    parsed = _engine_args(("a=4", "b=0.5", "c=true", "d=None", "e=bfloat16", "f-g = 2"))
    assert parsed == {"a": 4, "b": 0.5, "c": True, "d": None, "e": "bfloat16", "f_g": 2}


def test_callable_target_from_the_command_line(tmp_path):
    (tmp_path / "mystack.py").write_text(
        "def generate(prompt, max_tokens):\n    for i in range(max_tokens):\n        yield [i]\n"
    )
    # as the console script runs it: the user's module is found in the working directory
    code = "import sys; sys.path.pop(0); from latlab.cli import run; run(sys.argv[1:])"
    out = subprocess.run(
        [sys.executable, "-c", code, "bench", "--callable", "mystack:generate",
         "--num-requests", "3", "--output-len", "5", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["target"]["name"] == "callable:mystack:generate"
    assert d["levels"][0]["summary"]["output_tokens"] == 15


def test_ctrl_c_keeps_what_was_measured_and_exits_130(tmp_path):
    import signal
    import time

    server = StubServer(ttft_s=0.005, itl_s=0.001, chunks=4)
    with server as url:
        code = "import sys; from latlab.cli import run; run(sys.argv[1:])"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "bench", "--url", url, "--concurrency", "4",
             "--duration", "60", "--json", str(tmp_path / "r.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Ctrl-C once the level is under way (on a loaded machine start-up alone takes seconds)
        deadline = time.monotonic() + 60
        while server.stats()["requests"] < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "concurrency 4" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["interrupted"] is True
    assert d["levels"][0]["summary"]["completed"] > 0


def test_repeats_interleave_levels_and_print_spread_and_intervals(tmp_path):
    with StubServer(ttft_s=0.005, itl_s=0.001, chunks=4) as url:
        out = latlab("bench", "--url", url, "--concurrency", "1,2", "--num-requests", "6",
                     "--input-len", "8", "--output-len", "4", "--repeats", "2", "--json",
                     str(tmp_path / "r.json"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "repeats: spread and pooled intervals" in out.stdout
    assert "requests for +-5% / +-2%" in out.stdout
    loads = [lv["load"] for lv in json.loads((tmp_path / "r.json").read_text())["levels"]]
    assert loads == [{"concurrency": 1, "repeat": 0}, {"concurrency": 2, "repeat": 0},
                     {"concurrency": 1, "repeat": 1}, {"concurrency": 2, "repeat": 1}]  # fmt: skip
    bad = latlab("bench", "--url", url, "--repeats", "0")
    assert bad.returncode == 2


@pytest.mark.timing
def test_find_max_concurrency_prints_the_frontier_and_records_it(tmp_path):
    with StubServer(ttft_s=0.01, itl_s=0.02, max_concurrent=2) as url:
        out = latlab("bench", "--url", url, "--find", "max-concurrency", "--slo-ttft-ms", "40",
                     "--slo-percentile", "90", "--input-len", "8", "--output-len", "3",
                     "--json", str(tmp_path / "f.json"))  # fmt: skip
        none = latlab("bench", "--url", url, "--find", "max-concurrency", "--slo-ttft-ms",
                      "2", "--slo-percentile", "90", "--input-len", "8",
                      "--output-len", "3")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "capacity search: concurrency, p90 within the SLO" in out.stdout
    assert "max concurrency meeting TTFT p90 <= 40 ms: 2" in out.stdout
    cap = json.loads((tmp_path / "f.json").read_text())["capacity"]
    assert cap["status"] == "found" and cap["answer"] == 2 and cap["bracket"] == [2, 3]
    assert none.returncode == 1 and "no concurrency tried meets TTFT p90 <= 2 ms" in none.stdout


def test_find_refuses_what_it_cannot_use():
    missing = latlab("bench", "--url", "http://127.0.0.1:9/v1", "--find", "max-rate")
    assert missing.returncode == 2 and "needs an objective" in missing.stderr
    fixed = latlab("bench", "--url", "http://127.0.0.1:9/v1", "--find", "max-concurrency",
                   "--slo-ttft-ms", "50", "--concurrency", "4")  # fmt: skip
    assert fixed.returncode == 2 and "drop --concurrency" in fixed.stderr


@pytest.mark.slow
def test_two_backends_side_by_side_in_one_table_quietly(tmp_path):
    """What make demo runs: transformers generate and latlab's engine, one table, no
    loading bars or torchao warnings in the output."""
    pytest.importorskip("latlab.engine")
    out = latlab("bench", "--backend", "transformers,latlab", "--concurrency", "1,2",
                 "--num-requests", "2", "--input-len", "8", "--output-len", "4",
                 "--engine-arg", "max_num_seqs=4", "--json", str(tmp_path / "r.json"),
                 "--csv", str(tmp_path / "r.csv"), timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 4
    assert [r.split()[1] for r in rows] == ["transformers"] * 2 + ["latlab-engine"] * 2
    assert "Loading weights" not in out.stdout + out.stderr
    assert "Failed to load" not in out.stderr and "Enum subclass" not in out.stderr
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["schema_version"] == "latlab.bench-set/1" and len(d["runs"]) == 2
    assert d["runs"][1]["target"]["settings"]["max_num_seqs"] == 4
    assert d["runs"][0]["workload"]["salt"] == d["runs"][1]["workload"]["salt"]
    levels = {row.split(",")[0] for row in (tmp_path / "r.csv").read_text().splitlines()[1:]}
    assert levels == {"transformers;concurrency=1", "transformers;concurrency=2",
                      "latlab-engine;concurrency=1", "latlab-engine;concurrency=2"}  # fmt: skip
    bad = latlab("bench", "--backend", "transformers,vllm", timeout=60)
    assert bad.returncode == 2 and "--backend takes transformers, latlab" in bad.stderr
