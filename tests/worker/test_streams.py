"""A stream's flow control in the worker: credit, and what the worker refuses."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pypit import ProtocolError, _wire
from pypit.worker._calls import Running, Window


def full_window(size: int = 2) -> tuple[Window, Running]:
    running = Running()
    window = Window(size, running)
    for _ in range(size):
        assert window.wait()
        window.sent_one()
    return window, running


def test_credit_past_the_chunks_sent_or_going_back_is_a_protocol_error() -> None:
    """Credit counts chunks the consumer took: never more than were sent, never fewer than
    before; the same count again (sent after a reconnection) changes nothing."""
    window, _ = full_window(2)
    with pytest.raises(ProtocolError, match="sent 2"):
        window.grant(3)
    window.grant(2)
    window.grant(2)
    with pytest.raises(ProtocolError, match="had credit for 2"):
        window.grant(1)
    assert (window.sent, window.consumed) == (2, 2)


def test_a_full_window_waits_for_credit_or_cancellation() -> None:
    """A sync generator's thread waits while the window is full; credit lets it go on, and
    a cancellation ends the wait at once with False."""
    window, running = full_window(2)
    outcomes: list[bool] = []
    waiter = threading.Thread(target=lambda: outcomes.append(window.wait()), daemon=True)
    waiter.start()
    waiter.join(0.1)
    assert waiter.is_alive()
    window.grant(1)
    waiter.join(5)
    assert outcomes == [True]

    window.sent_one()
    waiter = threading.Thread(target=lambda: outcomes.append(window.wait()), daemon=True)
    waiter.start()
    waiter.join(0.1)
    assert waiter.is_alive()
    running.cancel()
    waiter.join(5)
    assert outcomes == [True, False]


def test_an_async_generator_awaits_credit() -> None:
    """On the worker's loop, a full window is awaited, and credit granted from another
    thread (the reader) resumes it."""

    async def scenario() -> bool:
        running = Running()
        window = Window(1, running, asyncio.get_running_loop())
        await window.wait_async()
        window.sent_one()
        waiting = asyncio.ensure_future(window.wait_async())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        threading.Thread(target=window.grant, args=(1,)).start()
        await asyncio.wait_for(waiting, 5)
        return waiting.done()

    assert asyncio.run(scenario())


def test_a_window_under_one_is_refused() -> None:
    """A stream must be allowed at least one chunk in flight."""
    with pytest.raises(ProtocolError, match="at least one chunk"):
        Window(0, Running())


@pytest.mark.parametrize(
    "message",
    [_wire.Credit(1, 0), _wire.Credit(1, -5), _wire.Call(1, "c", None, "x", window=-1)],
    ids=["credit-0", "credit-negative", "window-negative"],
)
def test_nonsense_flow_control_does_not_decode(message: _wire.Credit | _wire.Call) -> None:
    """Credit for no chunk, or a negative window, is refused as malformed."""
    with pytest.raises(ProtocolError, match="malformed"):
        _wire.decode_to_worker(_wire.encode(message)[4:])
