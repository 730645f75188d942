"""The clients keep a bounded number of unread notifications (README,
"Client library and aalctl"): the oldest are dropped and counted."""
from __future__ import annotations

import asyncio
import time

import uvloop

from aal_core.client import AsyncClient, Client

from helpers import wait_for


def test_sync_client_keeps_at_most_max_notifications_and_counts_the_dropped(daemon_factory):
    d = daemon_factory(config="[rpc]\nheartbeat_interval_s = 0.005\n")
    with Client(d.socket, max_notifications=10) as c:
        c.call("system.heartbeat.subscribe")
        # Calls read (and keep) the pushes that arrive meanwhile; never read them.
        wait_for(lambda: c.call("system.health") and c.notifications_dropped >= 20, 20,
                 "dropped notifications")
        assert len(c.notifications) == 10
        seqs = [n["params"]["data"]["seq"] for n in c.notifications]
        assert seqs == sorted(seqs) and seqs[0] > 1          # the newest kept, in order
        dropped = c.notifications_dropped
        got = next(c.notifications_iter())
        assert got["data"]["seq"] == seqs[0] and c.notifications_dropped >= dropped


def test_async_client_queue_is_bounded_too(daemon_factory):
    d = daemon_factory(config="[rpc]\nheartbeat_interval_s = 0.005\n")

    async def main():
        async with AsyncClient(d.socket, max_notifications=5) as c:
            _, q = await c.subscribe("system.heartbeat")
            t_end = time.monotonic() + 20
            while c.notifications_dropped < 20 and time.monotonic() < t_end:
                await asyncio.sleep(0.05)
            assert c.notifications_dropped >= 20 and q.qsize() <= 5
    uvloop.run(main())
