"""systemd notifications (sd_notify(3)) through the `sdnotify` package.

The watchdog ping is sent by a task of the main event loop itself, at half
of WATCHDOG_USEC: if the loop stalls, the pings stop and systemd restarts us.
Without NOTIFY_SOCKET every call is a no-op.
"""
from __future__ import annotations

import asyncio
import os
import time

import sdnotify

from .log import get_logger

log = get_logger("notify")


class Notifier:
    def __init__(self):
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None
        self.last_status = ""

    def _send(self, text: str) -> None:
        if self._n is not None:
            self._n.notify(text)

    def ready(self, status: str) -> None:
        self.last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.last_status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None if not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


async def watchdog_loop(notifier: Notifier, interval: float) -> None:
    log.info("watchdog", interval_s=interval)
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
