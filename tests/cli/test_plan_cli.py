"""``latlab plan``: the table, --json, --explain, --list, and one-line errors."""

import json
import subprocess
import sys

import pytest

from latlab.cli import run


def _plan(capsys, *args: str) -> str:
    run(["plan", *args])
    return capsys.readouterr().out


def test_table_shows_the_figures(capsys):
    out = _plan(capsys, "Llama-3.1-8B", "--device", "H100-80GB", "--context", "8192")
    assert "latlab plan: Llama-3.1-8B" in out
    assert "131,072 B" in out
    assert "28,019" in out  # KV blocks
    assert "448,304" in out  # KV tokens


def test_json_output(capsys):
    out = _plan(capsys, "Llama-3.1-8B", "--memory", "24GiB", "--context", "4096", "--json")
    data = json.loads(out)
    assert data["kv_bytes_per_token"] == 131_072
    assert data["memory_bytes"] == 24 * 2**30
    # (int(24 GiB x 0.9) - 16,060,522,496 - 2 GiB) // 2 MiB
    assert data["num_blocks"] == (int(24 * 2**30 * 0.9) - 16_060_522_496 - 2**31) // 2**21
    assert data["max_concurrency"] == data["num_blocks"] // 256
    assert "explain" not in data


def test_json_with_explain(capsys):
    out = _plan(capsys, "DeepSeek-V2-Lite", "--kv-cache-bytes", "1GiB", "--json", "--explain")
    data = json.loads(out)
    assert data["kv_bytes_per_token"] == 31_104
    assert any("kv_lora_rank 512" in line for line in data["explain"])


def test_explain_prints_formulas(capsys):
    out = _plan(
        capsys,
        "Mixtral-8x7B",
        "--tp",
        "2",
        "--weight-dtype",
        "int4",
        "--kv-dtype",
        "fp8",
        "--explain",
    )
    assert "2 (K,V) x 4 KV heads (max(1, 8 // tp 2)) x 128 head_dim x 1 B = 1,024 B" in out
    assert "8 experts" in out and "2 active per token" in out


def test_flags_for_blocks_reserve_and_utilization(capsys):
    out = _plan(
        capsys,
        "Llama-3.1-8B",
        "--memory",
        "24e9",
        "--gpu-memory-utilization",
        "1",
        "--reserve",
        "0",
        "--block-size",
        "32",
        "--json",
    )
    data = json.loads(out)
    assert data["num_blocks"] == (24 * 10**9 - 16_060_522_496) // (32 * 131_072)


def test_list_catalog(capsys):
    out = _plan(capsys, "--list")
    assert "Gemma-2-9B" in out and "RTX4090-24GB" in out


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from latlab.cli import run; run(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, "plan", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Lama-3.1-8B",), "did you mean Llama-3.1-8B"),
        (("Llama-3.1-8B", "--device", "H100"), "did you mean H100-80GB"),
        (("Llama-3.1-8B", "--memory", "24GiB", "--context", "1000000"), "does not fit even once"),
        (("Llama-3.1-70B", "--device", "L4-24GB"), "do not leave room"),
        (("./missing/config.json",), "does not exist"),
        ((), "give a MODEL"),
    ],
)
def test_bad_input_is_one_plain_line(args, message):
    result = _run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_config_field_is_named(tmp_path, capsys):
    config = {"num_hidden_layers": 2, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exc:
        run(["plan", str(tmp_path)])
    assert exc.value.code == 2
    assert "hidden_size" in capsys.readouterr().err
