"""benchmarks/gpu_check.py runs on the CPU in CI (--device cpu --smoke), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_smoke_run_on_cpu_passes_and_prints_one_json_summary(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary == json.loads(out.read_text())
    assert summary["ok"] and summary["failures"] == []
    parity = {(c["model"], c["dtype"]): c for c in summary["parity"]}
    assert set(parity) == {("tiny-gqa", "float32"), ("tiny-gqa", "bfloat16")}
    fp32 = parity[("tiny-gqa", "float32")]["configs"]
    assert all(c["exact"] == 4 for c in fp32.values())  # float32: every prompt identical
    assert fp32["preemption"]["preemptions"] > 0 and fp32["prefix-cache-hits"]["prefix_cache_hits"]
    assert [r["batch"] for r in summary["speed"]] == [1, 4]
    assert all(r["engine_tok_s"] > 0 and r["bytes_per_token"] > 0 for r in summary["speed"])
    assert summary["limits"]["read_bandwidth_bytes_s"] > 0
    assert summary["recipes"]["tf32"]["status"] == "skipped"


def test_a_failing_section_makes_the_exit_code_one(monkeypatch, capsys):
    gpu_check = load_script("gpu_check")

    def broken(run):  # type: ignore[no-untyped-def]
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpu_check, "parity", broken)
    monkeypatch.setattr(gpu_check, "speed", lambda run, lim: [])
    monkeypatch.setattr(gpu_check, "recipes", lambda run: {})
    monkeypatch.setattr(gpu_check, "limits", lambda run: {"read_bandwidth_bytes_s": 1.0})
    assert gpu_check.main(["--device", "cpu", "--smoke"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert not summary["ok"]
    assert "parity crashed: RuntimeError: kernel exploded" in summary["failures"]


def test_a_difference_passes_only_at_a_rounding_tie():
    gpu_check = load_script("gpu_check")
    import torch

    class Model:  # logits: token 5 and 6 within 1e-4, token 7 far behind
        device = torch.device("cpu")

        def __call__(self, input_ids):  # type: ignore[no-untyped-def]
            logits = torch.zeros(1, input_ids.shape[1], 10)
            logits[0, -1, 5], logits[0, -1, 6], logits[0, -1, 7] = 1.0, 1.0 - 1e-4, 0.0
            return type("Out", (), {"logits": logits})

    gpu_check.hf_greedy = lambda model, prompt, new: [5, 5]
    exact, ties, bad = gpu_check.compare_greedy(
        Model(), torch.float32, [[1], [2], [3]], [[5, 5], [6, 5], [7, 5]], 2
    )
    assert (exact, ties) == (1, 1)
    assert len(bad) == 1 and "7 vs 5" in bad[0]


def test_a_bf16_tie_scales_with_the_logits_a_float32_tie_does_not():
    gpu_check = load_script("gpu_check")
    import torch

    assert gpu_check.is_rounding_tie(torch.bfloat16, 0.125, 16.0)  # two bf16 steps near 16
    assert not gpu_check.is_rounding_tie(torch.bfloat16, 0.5, 16.0)
    assert gpu_check.is_rounding_tie(torch.bfloat16, 0.09, 0.5)  # small logits: the 0.1 floor
    assert not gpu_check.is_rounding_tie(torch.bfloat16, 0.12, 0.5)
    assert gpu_check.is_rounding_tie(torch.float32, 1e-3, 16.0)
    assert not gpu_check.is_rounding_tie(torch.float32, 2e-3, 16.0)


def test_the_json_is_written_after_every_section(monkeypatch, tmp_path, capsys):
    gpu_check = load_script("gpu_check")
    out, seen = tmp_path / "summary.json", []

    def limits(run):  # type: ignore[no-untyped-def]
        seen.append(json.loads(out.read_text()))  # what a kill here would have left
        return {"read_bandwidth_bytes_s": 1.0}

    monkeypatch.setattr(gpu_check, "parity", lambda run: [{"model": "m"}])
    monkeypatch.setattr(gpu_check, "limits", limits)
    monkeypatch.setattr(gpu_check, "speed", lambda run, lim: [])
    monkeypatch.setattr(gpu_check, "recipes", lambda run: {})
    assert gpu_check.main(["--device", "cpu", "--smoke", "--json", str(out)]) == 0
    assert seen[0]["partial"] and seen[0]["parity"] == [{"model": "m"}] and "limits" not in seen[0]
    final = json.loads(out.read_text())
    assert not final["partial"] and final["ok"] and final == json.loads(capsys.readouterr().out)
