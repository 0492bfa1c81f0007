"""The monitoring stack end to end, for docs/monitoring.md: timings and a dashboard screenshot.

Starts `latlab serve` (bundled model), `latlab watch` against it, and a real Prometheus with
the rules `latlab alerts` generates (windows scaled down: page at 14.4x over 30 s / 6 s).
Then: a healthy phase, a slow phase and a recovered phase; it prints when Prometheus saw the
TTFT page alert fire and clear, renders the dashboard from that Prometheus (`latlab dashboard
--preview`) and screenshots it with headless Chromium. The slow phase pauses the running server
(SIGSTOP 400 ms of every 500 ms, a starved CPU) so both edges are timed from the switch
itself; `--slow-by restart` restarts it with `--debug-step-delay-ms` instead, as the test does.

    nice .venv/bin/python benchmarks/monitoring_demo.py --out docs/monitoring
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from latlab.monitor.dashboard import build_dashboard
from latlab.monitor.names import LATLAB
from latlab.monitor.preview import render_preview
from latlab.procs import ManagedProcess, ProcessSpec, free_port
from latlab.testing.prometheus import PrometheusServer

CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"
ALERT = "LatlabTTFTBurnRatePage"


def latlab(name: str, args: list[str], log: Path) -> ManagedProcess:
    spec = ProcessSpec(argv=[sys.executable, "-c", CLI, *args], name=name,
                       log_path=log / f"{name}.log")  # fmt: skip
    return ManagedProcess(spec).start()


def serve(log: Path, port: int, *extra: str) -> ManagedProcess:
    proc = latlab(f"serve{len(extra)}", ["serve", "--port", str(port), "--threads", "1",
                                         "--served-model-name", "tiny", *extra], log)  # fmt: skip
    proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=300)
    return proc


def until(prom: PrometheusServer, state: str, start: float, timeout_s: float = 300) -> float:
    """Seconds after ``start`` until the alert rule is in ``state``."""
    prom.wait_until(lambda api: prom.rule_state(ALERT) == state, timeout_s=timeout_s,
                    what=f"{ALERT} {state}", poll_s=0.25)  # fmt: skip
    return time.perf_counter() - start


def screenshot(html: Path, png: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("no chromium: screenshot skipped")
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={png}",
                        "--window-size=1480,1560", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
    print(f"wrote {png}")


SERVERS: list[ManagedProcess] = []


def slow_by_restart(
    prom: PrometheusServer, log: Path, port: int, args: argparse.Namespace, server: ManagedProcess
) -> tuple[float, float]:
    """Restart the server with --debug-step-delay-ms (what the test does), then without it.

    The restarts leave the server down for as long as the model takes to load; while nobody
    answers the latency SLI is 0/0 and the burn-rate alert cannot hold, so the clearing time
    measures the outage, not the recovery."""
    server.stop()
    slow_at = time.perf_counter()
    SERVERS.append(serve(log, port, "--debug-step-delay-ms", args.delay_ms))
    up = time.perf_counter() - slow_at
    fired = until(prom, "firing", slow_at)
    print(f"slow server answering {up:.1f} s after the restart began; {ALERT} firing "
          f"{fired - up:.1f} s after it answered")  # fmt: skip
    time.sleep(max(0.0, args.phase_s / 2 - fired))
    SERVERS[-1].stop()
    fast_at = time.perf_counter()
    SERVERS.append(serve(log, port))
    up = time.perf_counter() - fast_at
    cleared = until(prom, "inactive", fast_at)
    print(f"healthy server answering {up:.1f} s after the restart began; {ALERT} inactive "
          f"{cleared - up:+.1f} s after it answered")  # fmt: skip
    return fired, cleared


def slow_by_pausing(
    prom: PrometheusServer, server: ManagedProcess, args: argparse.Namespace
) -> tuple[float, float]:
    """Slow the running server without a restart: SIGSTOP it for --pause-ms out of every
    --pause-ms + --run-ms (a starved CPU), so both edges are measured from the exact switch."""
    stop_flag = threading.Event()

    def duty_cycle() -> None:
        while not stop_flag.is_set():
            os.kill(server.pid, signal.SIGSTOP)
            time.sleep(args.pause_ms / 1000)
            os.kill(server.pid, signal.SIGCONT)
            time.sleep(args.run_ms / 1000)

    cycler = threading.Thread(target=duty_cycle, daemon=True)
    slow_at = time.perf_counter()
    cycler.start()
    try:
        fired = until(prom, "firing", slow_at)
        print(f"server paused {args.pause_ms} ms of every {args.pause_ms + args.run_ms} ms: "
              f"{ALERT} firing {fired:.1f} s after the slowdown began")  # fmt: skip
        time.sleep(max(0.0, args.phase_s / 2 - fired))
    finally:
        stop_flag.set()
        cycler.join()
        os.kill(server.pid, signal.SIGCONT)
    fast_at = time.perf_counter()
    cleared = until(prom, "inactive", fast_at)
    print(f"server running freely again: {ALERT} inactive {cleared:.1f} s later")
    return fired, cleared


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/monitoring"))
    p.add_argument("--phase-s", type=float, default=60.0, help="healthy / recovered phase length")
    p.add_argument("--slow-by", choices=["pausing", "restart"], default="pausing")
    p.add_argument("--delay-ms", default="400", help="restart: per-step delay of the slow phase")
    p.add_argument("--pause-ms", type=int, default=400, help="pausing: SIGSTOP this long ...")
    p.add_argument("--run-ms", type=int, default=100, help="pausing: ... then run this long")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp(prefix="latlab-monitoring-demo-"))
    rules = log / "rules.yml"
    made = latlab("alerts", ["alerts", "--slo-ttft-ms", "250", "--slo-tpot-ms", "100",
                             "--objective", "99.5%", "--job", "latlab", "--windows",
                             "page=30s/6s@14.4,ticket=2m/12s@3", "--period", "1h",
                             "--saturation-window", "10s", "-o", str(rules)], log)  # fmt: skip
    made.proc.wait(timeout=60)
    port, watch_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    server = serve(log, port)
    probe = ["watch", f"{url}/v1", "--interval", "0.5s", "--max-rate", "4", "--max-tokens", "8",
             "--prompt-tokens", "32", "--slo-ttft-ms", "250", "--window", "20s",
             "--metrics-port", str(watch_port)]  # fmt: skip
    watch = latlab("watch", probe, log)
    jobs = {"latlab": [f"127.0.0.1:{port}"], "latlab-watch": [f"127.0.0.1:{watch_port}"]}
    prom = PrometheusServer(log, jobs=jobs, rule_files=(rules,)).start()
    try:
        time.sleep(args.phase_s)
        if args.slow_by == "restart":
            fired, cleared = slow_by_restart(prom, log, port, args, server)
        else:
            fired, cleared = slow_by_pausing(prom, server, args)
        time.sleep(args.phase_s / 2)
        html = args.out / "dashboard-preview.html"
        html.write_text(render_preview(build_dashboard(LATLAB), prom.url,
                                       range_s=3 * args.phase_s + fired + cleared))  # fmt: skip
        print(f"wrote {html}")
        screenshot(html, args.out / "dashboard-preview.png")
    finally:
        prom.stop()
        watch.stop()
        for proc in (server, *SERVERS):
            proc.stop()
    print(f"logs in {log}")


if __name__ == "__main__":
    main()
