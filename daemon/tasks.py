"""Asyncio task helpers shared by the units.

Every unit that owns a background task stops it the same way: cancel, then
wait for it to unwind so its `finally` blocks run before the unit releases
what the task was using.  One place, so no unit forgets the await.
"""
from __future__ import annotations

import asyncio


async def cancel_task(task: asyncio.Task | None) -> None:
    """Cancel `task` and wait until it has finished; None is a no-op.

    The task's own CancelledError is swallowed; any other exception it
    raised while unwinding propagates to the caller.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


class Ticker:
    """Call `fn()` (synchronous) every `interval()` seconds from an event-loop
    timer, measured from the start of each call (no drift from its work).

    Why not a task looping on asyncio.sleep: each round of that costs a
    timer, a future and a task step, and an extra pass of the loop to run
    the step; a timer callback is one wake-up per tick and nothing else.
    `interval` is read after every call, so a rate change applies to the
    next tick.  An exception from fn is logged by `on_error` (if given) and
    the ticks go on.
    """

    __slots__ = ("_fn", "_interval", "_clock", "_on_error", "_handle", "_loop")

    def __init__(self, fn, interval, clock, on_error=None):
        self._fn, self._interval, self._clock, self._on_error = fn, interval, clock, on_error
        self._handle = None
        self._loop = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """First call on the next pass of the running loop."""
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def reschedule(self, delay: float) -> None:
        """Next call in `delay` seconds instead (a rate that just rose)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = self._loop.call_later(delay if delay > 0 else 0.0, self._tick)

    def _tick(self) -> None:
        t0 = self._clock.monotonic()
        try:
            self._fn()
        except Exception as exc:  # noqa: BLE001 - one bad round must not stop the ticks
            if self._on_error is not None:
                self._on_error(exc)
        if self._handle is None:          # stopped meanwhile
            return
        delay = self._interval() - (self._clock.monotonic() - t0)
        self._handle = self._loop.call_later(delay if delay > 0 else 0.0, self._tick)
