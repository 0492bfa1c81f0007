"""A pytest plugin: SIGTERM ends a test run the way Ctrl-C does, fixtures' teardown included.

A CI timeout or ``timeout 3600 pytest`` sends SIGTERM. Left at its default, SIGTERM kills pytest
at once and every server a fixture started (Redis, Prometheus, vLLM, latlab serve) outlives the
run: a Redis started by a killed run was found an hour later still holding its port. As a
KeyboardInterrupt, pytest stops the current test and runs every finalizer, which stops those
process groups.
"""

from __future__ import annotations

import signal
import threading


def pytest_configure(config: object) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
