"""The relay: pieces written from the flight's callback, and what happens when a send stalls."""

from __future__ import annotations

import asyncio

import pytest

from latlab.gateway.relay import Relay, start_eagerly


class _Client:
    """An ASGI send that completes at once unless ``gate`` is set (a full socket buffer)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.gate: asyncio.Future[None] | None = None
        self.fail: Exception | None = None

    async def send(self, message: dict) -> None:
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await self.gate
        self.bodies.append(message["body"])


def test_pieces_go_out_in_the_callers_step_and_in_order():
    async def go():
        client, seen = _Client(), []
        relay = Relay(client.send, 1, seen.append)
        pieces = [b"a", b"b"]
        assert relay.push(pieces)  # written at once: no task, no loop turn
        pieces += [b"c", b"d"]
        assert relay.push(pieces)  # two new pieces since the last push: one write
        return client.bodies, relay.sent, seen, relay.wake.done()

    assert asyncio.run(go()) == ([b"b", b"cd"], 4, [2, 4], False)


def test_a_stalled_send_leaves_the_flight_and_is_finished_by_the_follower():
    async def go():
        client = _Client()
        relay = Relay(client.send, 0, lambda n: None)
        client.gate = asyncio.get_running_loop().create_future()
        assert not relay.push([b"x"])  # suspended on the gate: hand it to the follower
        assert relay.wake.done() and client.bodies == []
        asyncio.get_running_loop().call_later(0.01, client.gate.set_result, None)
        await relay.settle()
        return client.bodies, relay.sent

    assert asyncio.run(go()) == ([b"x"], 1)


def test_a_stalled_send_is_dropped_when_the_client_is_gone():
    async def go():
        client = _Client()
        relay = Relay(client.send, 0, lambda n: None)
        client.gate = asyncio.get_running_loop().create_future()
        relay.push([b"x"])
        await relay.settle(abandon=True)
        return client.bodies

    assert asyncio.run(go()) == []


def test_a_send_that_raises_is_raised_in_the_followers_task_not_the_callers():
    async def go():
        client = _Client()
        client.fail = RuntimeError("socket gone")
        relay = Relay(client.send, 0, lambda n: None)
        assert not relay.push([b"x"])  # no exception here: this is the upstream's callback
        assert relay.wake.done()
        await relay.settle()

    with pytest.raises(RuntimeError, match="socket gone"):
        asyncio.run(go())


def test_start_eagerly_runs_the_first_step_now_and_the_rest_in_a_task():
    async def go():
        steps = []
        gate = asyncio.get_running_loop().create_future()

        async def work():
            steps.append("sent upstream")  # before any wait: must happen in the caller's step
            await gate
            steps.append("done")

        task = start_eagerly(work())
        first = list(steps)
        gate.set_result(None)
        await task
        return first, steps, start_eagerly(_instant())

    async def _instant():
        return None

    first, steps, instant = asyncio.run(go())
    assert first == ["sent upstream"] and steps == ["sent upstream", "done"]
    assert instant is None  # finished without waiting: no task at all


def test_start_eagerly_raises_a_first_step_error_to_the_caller():
    async def broken():
        raise ValueError("no upstream")

    async def go():
        start_eagerly(broken())

    with pytest.raises(ValueError, match="no upstream"):
        asyncio.run(go())
