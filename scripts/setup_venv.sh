#!/usr/bin/env bash
# Create (or reuse) .venv and install latlab into it.
# torch is installed only when it is missing, so a user's own CUDA build is kept.
# TORCH_SPEC overrides what is installed then (default: torch==2.13.0, the CPU build here).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-all,dev}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $TORCH_SPEC"
  $PIP install "$TORCH_SPEC"
fi
stamp="$VENV/.latlab-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing latlab[$EXTRAS]"
  $PIP install -e ".[$EXTRAS]"
  touch "$stamp"
fi
# The engine's native CPU kernel (paged decode attention) compiles once per machine (about a
# minute of CPU on two cores) into torch's extension cache. It builds in the background so that
# setup and the tests overlap it; engines use the torch path until it is there (an engine start
# never compiles). Not fatal: without a compiler the engine keeps its pure-torch path and says so.
# The build ends by itself; its output is in $VENV/kernel-build.log.
if ! "$VENV/bin/python" -c "from latlab.engine.kernels import is_built; exit(not is_built())" \
    2>/dev/null; then
  echo "setup: building the engine kernel in the background (log: $VENV/kernel-build.log)"
  nohup setsid "$VENV/bin/python" -m latlab.engine.kernels </dev/null >"$VENV/kernel-build.log" 2>&1 &
fi
