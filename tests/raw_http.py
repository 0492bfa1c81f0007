"""HTTP/1.1 by hand, for what no client library sends: a body that arrives after a pause, a
head that never ends. Tests import it as ``raw_http``."""

from __future__ import annotations

import socket
import time


def connect(url: str, timeout_s: float = 10) -> socket.socket:
    """A TCP connection to ``http://HOST:PORT``."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def post_with_pause(url: str, path: str, body: bytes, pause_s: float) -> bytes:
    """POST ``body`` as JSON, its head first and the body ``pause_s`` later; the whole reply
    (the request asks the server to close the connection after it)."""
    host = url.removeprefix("http://").split("/")[0]
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    with connect(url, timeout_s=30) as sock:
        sock.sendall(head)
        time.sleep(pause_s)
        sock.sendall(body)
        return read_to_close(sock)
