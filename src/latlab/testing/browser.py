"""Headless Chromium driven over the DevTools protocol on a pipe (no websocket, no extra package).

Chromium's ``--remote-debugging-pipe`` reads NUL-terminated JSON commands on fd 3 and writes
replies and events on fd 4. This is enough to load a page the way a user does, collect every
console message, exception and network request, evaluate JavaScript in it, time it, and take a
screenshot: what the report tests and ``benchmarks/report_load.py`` need.

    with HeadlessChromium() as browser:
        page = browser.load(Path("report.html"))
        print(page.load_ms, page.console_errors, page.requests)
        browser.screenshot(Path("shot.png"))

The browser runs as a :class:`latlab.procs.ManagedProcess` (own process group, stopped whole)
with a throwaway profile, no first-run UI, no background networking.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab.errors import LatlabError
from latlab.procs import ManagedProcess, ProcessSpec

BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(LatlabError):
    """Chromium is missing, died, or did not answer in time."""


def find_chromium() -> str:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError(
        "no Chromium found (looked for " + ", ".join(BINARIES) + "): "
        "bash scripts/setup_services.sh installs Debian's chromium"
    )


@dataclass(kw_only=True, slots=True)
class PageLoad:
    """What loading one page did."""

    url: str
    wall_ms: float  # from the navigate command to the load event, as seen from here
    load_ms: float  # the page's own navigation timing: start to the end of the load event
    dom_content_loaded_ms: float
    console: list[dict[str, Any]] = field(default_factory=list)  # every console message
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    @property
    def console_errors(self) -> list[str]:
        errors = [str(m.get("text")) for m in self.console if m.get("level") == "error"]
        return errors + self.exceptions


class HeadlessChromium:
    """One headless browser with one page (tab), controlled over the DevTools pipe."""

    def __init__(self, *, width: int = 1300, height: int = 900, timeout_s: float = 60.0) -> None:
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._proc: ManagedProcess | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._to_chrome = self._from_chrome = -1
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._session: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> HeadlessChromium:
        binary = find_chromium()
        self._profile = tempfile.TemporaryDirectory(prefix="latlab-chromium-")
        # bash maps the pipe ends onto fds 3 and 4 (dash cannot redirect fds above 9)
        cmd_r, cmd_w = os.pipe()  # we write commands; Chromium reads them on fd 3
        out_r, out_w = os.pipe()  # Chromium writes on fd 4; we read
        argv = [
            shutil.which("bash") or "/bin/bash",
            "-c",
            f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}',
            binary,
            *FLAGS,
            f"--user-data-dir={self._profile.name}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        spec = ProcessSpec(argv=argv, name="chromium", pass_fds=(cmd_r, out_w))
        try:
            self._proc = ManagedProcess(spec).start()
        finally:
            os.close(cmd_r)
            os.close(out_w)
        self._to_chrome, self._from_chrome = cmd_w, out_r
        threading.Thread(target=self._read, name="chromium-pipe", daemon=True).start()
        target = self._call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self._call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._call(f"{domain}.enable")
        self._call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to_chrome = self._from_chrome = -1
        if self._proc is not None:
            self._proc.stop(grace_s=5)
        if self._profile is not None:
            self._profile.cleanup()

    # ------------------------------------------------------------------ protocol
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self._from_chrome, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += data
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._events.append(msg)
                self._cond.notify_all()

    def _call(
        self, method: str, params: dict[str, Any] | None = None, session: bool = True
    ) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while msg["id"] not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or (self._proc is not None and not self._proc.alive()):
                    raise BrowserError(
                        f"Chromium did not answer {method} "
                        f"(log: {self._proc.log_path if self._proc else '?'})"
                    )
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(msg["id"])
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result") or {}

    def _wait_event(self, method: str, since: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if event.get("method") == method:
                        return event
                if time.monotonic() > deadline:
                    raise BrowserError(f"no {method} within {self.timeout_s:g} s")
                self._cond.wait(0.5)

    # ------------------------------------------------------------------ use
    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise BrowserError(f"evaluate failed: {reply['exceptionDetails'].get('text')}")
        return reply["result"].get("value")

    def load(self, path: Path) -> PageLoad:
        """Open a local file as a user would and wait for its load event."""
        url = path.resolve().as_uri()
        since = len(self._events)
        start = time.perf_counter()
        self._call("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired", since)
        wall_ms = (time.perf_counter() - start) * 1e3
        timing = self.evaluate(
            "(() => { const n = performance.getEntriesByType('navigation')[0];"
            " return {load: n.loadEventEnd, dcl: n.domContentLoadedEventEnd}; })()"
        )
        time.sleep(0.2)  # late console messages
        with self._cond:
            events = list(self._events[since:])
        return _page_load(url, wall_ms, timing, events)

    def screenshot(self, path: Path, *, top: int = 0, height: int | None = None) -> Path:
        """A PNG of the page from ``top`` down ``height`` CSS pixels (None: to its end)."""
        width, full = self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        clip = {"x": 0, "y": top, "width": width, "height": height or full - top, "scale": 1}
        params = {"format": "png", "captureBeyondViewport": True, "clip": clip}
        path.write_bytes(base64.b64decode(self._call("Page.captureScreenshot", params)["data"]))
        return path


def _page_load(
    url: str, wall_ms: float, timing: dict[str, Any], events: list[dict[str, Any]]
) -> PageLoad:
    page = PageLoad(
        url=url,
        wall_ms=wall_ms,
        load_ms=float(timing["load"]),
        dom_content_loaded_ms=float(timing["dcl"]),
    )
    for event in events:
        method, params = event.get("method"), event.get("params") or {}
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
            )
            level = "error" if params.get("type") in ("error", "assert") else params.get("type")
            page.console.append({"level": level, "text": text})
        elif method == "Log.entryAdded":
            entry = params.get("entry") or {}
            page.console.append({"level": entry.get("level"), "text": entry.get("text")})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            page.exceptions.append(str(details.get("text")))
        elif method == "Network.requestWillBeSent":
            page.requests.append(str((params.get("request") or {}).get("url")))
    return page
