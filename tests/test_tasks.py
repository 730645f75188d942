"""aal_core.tasks.cancel_task: the one way units stop their background task."""
import asyncio

import pytest

from aal_core.tasks import cancel_task


def test_cancel_waits_for_the_task_to_unwind():
    events = []

    async def worker():
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)          # an await in the cleanup still completes
            events.append("cleaned")

    async def main():
        t = asyncio.ensure_future(worker())
        await asyncio.sleep(0)
        await cancel_task(t)
        events.append("returned")
        return t

    t = asyncio.run(main())
    assert events == ["cleaned", "returned"]
    assert t.cancelled()


def test_none_is_a_no_op():
    asyncio.run(cancel_task(None))


def test_an_error_raised_while_unwinding_propagates():
    async def worker():
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("cleanup failed")

    async def main():
        t = asyncio.ensure_future(worker())
        await asyncio.sleep(0)
        await cancel_task(t)

    with pytest.raises(RuntimeError, match="cleanup failed"):
        asyncio.run(main())


def test_ticker_ticks_survives_a_failing_round_and_stops():
    from aal_core.clock import SYSTEM
    from aal_core.tasks import Ticker

    calls, errors = [], []

    def fn():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("one bad round")

    async def main():
        t = Ticker(fn, lambda: 0.001, SYSTEM, errors.append)
        t.start()
        assert t.running
        while len(calls) < 5:
            await asyncio.sleep(0.001)
        t.stop()
        n = len(calls)
        await asyncio.sleep(0.02)
        return n, t.running

    n, running = asyncio.run(main())
    assert n >= 5 and len(calls) == n and not running     # no tick after stop()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
