"""A local HTTP receiver for webhook posts, and the stub server the probe talks to."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latlab.testing import StubServer


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.posts.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    """(url, posts): every JSON body posted to url lands in posts."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.posts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", server.posts  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub():
    server = StubServer(ttft_s=0.02, itl_s=0.002)
    server.start()
    try:
        yield server
    finally:
        server.stop()
