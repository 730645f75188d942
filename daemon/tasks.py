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
