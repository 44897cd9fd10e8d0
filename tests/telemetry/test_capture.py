"""``capture``: the test helper collects events and detaches on exit."""

from __future__ import annotations

import math
import threading

import anyio
import pytest

from pypit import telemetry


def test_capture_records_in_order_and_detaches() -> None:
    """Events on the captured names are recorded in order; nothing is attached afterwards."""
    with telemetry.capture(("a",), ["b"]) as seen:
        telemetry.execute(("a",), {"n": 1}, {"k": "x"})
        telemetry.execute(("c",), {"n": 2})
        telemetry.execute(("b",), {"n": 3})

    assert [(e.event, e.measurements["n"]) for e in seen] == [(("a",), 1), (("b",), 3)]
    assert seen.events[0].metadata == {"k": "x"}
    assert len(seen) == 2
    assert telemetry.list_handlers() == []


def test_capture_copies_what_it_sees() -> None:
    """A later change to the emitted dicts does not change the capture."""
    measurements = {"n": 1}
    with telemetry.capture(("a",)) as seen:
        telemetry.execute(("a",), measurements)
    measurements["n"] = 2

    assert seen.events[0].measurements["n"] == 1


def test_capture_needs_names() -> None:
    """An empty capture is misuse."""
    with pytest.raises(ValueError, match="at least one"):
        telemetry.capture()


def test_wait_sync_sees_events_from_another_thread() -> None:
    """wait_sync returns once another thread emitted enough events, and times out otherwise."""
    with telemetry.capture(("t",)) as seen:

        def emit() -> None:
            for i in range(3):
                telemetry.execute(("t",), {"i": i})

        thread = threading.Thread(target=emit)
        thread.start()
        assert len(seen.wait_sync(("t",), count=3)) == 3
        thread.join()
        seen.clear()
        with pytest.raises(TimeoutError):
            seen.wait_sync(("t",), count=1, timeout=0.05)
        with pytest.raises(ValueError, match="timeout must be a number of seconds from 0 to 1e9"):
            seen.wait_sync(("t",), count=1, timeout=1e300)


@pytest.mark.anyio
async def test_wait_does_not_block_the_loop() -> None:
    """wait() lets the emitting task run, and times out when nothing comes."""
    with telemetry.capture(("t",)) as seen:
        async with anyio.create_task_group() as tg:

            async def emit_later() -> None:
                await anyio.sleep(0.01)
                telemetry.execute(("t",), {})

            tg.start_soon(emit_later)
            assert len(await seen.wait(("t",))) == 1
        with pytest.raises(TimeoutError):
            await seen.wait(("t",), count=2, timeout=0.05)
        with pytest.raises(ValueError, match="timeout must be a number of seconds from 0 to 1e9"):
            await seen.wait(("t",), count=2, timeout=math.nan)
