#!/usr/bin/env bash
# Install the real servers the tests start, when they are missing: Redis (gateway cache and
# shared rate limits), Prometheus + promtool (alert rules, end-to-end alerting), headless
# Chromium (the HTML report) and openssl (a throw-away CA for the gateway's TLS tests), all from
# Debian's packages. The tests start their own copies on
# free loopback ports and stop them; nothing here starts a service.
# Usage: bash scripts/setup_services.sh   (make test runs it; idempotent, quick when all present)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup-services: $*"; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the gateway's TLS tests make a CA

if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    log "cannot install ${missing[*]} (not root, no sudo): the tests that need them will fail"
    exit 1
  fi
  log "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/latlab-apt.log 2>&1; then
    "${SUDO[@]}" apt-get update -q >>/tmp/latlab-apt.log 2>&1
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/latlab-apt.log 2>&1 \
      || { tail -20 /tmp/latlab-apt.log; exit 1; }
  fi
fi
log "redis-server, prometheus, promtool, chromium, openssl present"
