"""Server-sent events from timestamped network reads, parsed after the stream has ended.

The receive loop only stores ``(perf_counter_ns, bytes)`` per read: parsing there would delay
the timestamp of every read behind it. Each event is stamped with the read that completed it.
"""

from __future__ import annotations


def split_events(reads: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    """Return ``(arrival_ns, data)`` for each SSE event carrying ``data:`` lines."""
    events: list[tuple[int, str]] = []
    buf = b""
    last_ns = 0
    for ns, data in reads:
        last_ns = ns
        buf = (buf + data).replace(b"\r\n", b"\n")
        while True:
            cut = buf.find(b"\n\n")
            if cut < 0:
                break
            block, buf = buf[:cut], buf[cut + 2 :]
            payload = _data_of(block)
            if payload is not None:
                events.append((ns, payload))
    if buf.strip():  # a last event without its blank line still counts
        payload = _data_of(buf)
        if payload is not None:
            events.append((last_ns, payload))
    return events


def _data_of(block: bytes) -> str | None:
    parts: list[str] = []
    for line in block.decode("utf-8", errors="replace").split("\n"):
        if line.startswith("data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(" ") else value)
    return "\n".join(parts) if parts else None
