"""The shape every capability plugs into the daemon with.

A unit owns one concept (sensing, governance, the ledger, the control
loop).  app.py builds the units in dependency order, passing each the
others it needs explicitly, and drives them through this interface:

    register(registry)   add RPC methods and topics
    start() / stop()     own tasks and resources (stop flushes state)
    ready()              True once its first readings are in (gates READY=1)
    reload(config)       apply a new Config on SIGHUP; ctx.config is still
                         the old one, for comparison (app.py replaces it
                         after every unit has reloaded); may be a coroutine
                         (awaited before the reload is answered)
    status()             fields merged into system.status (SystemStatus)
    summary()            a few words for the one-line STATUS=
    metrics()            metric families from its state now, for system.metrics
                         (format in daemon/metrics.py; never on a hot path)
"""
from __future__ import annotations

from dataclasses import dataclass

from .clock import Clock
from .config import Config


@dataclass
class Context:
    """What every unit may use: the config in force, the clock, the push hub,
    the state directory."""

    config: Config
    clock: Clock
    hub: object           # rpc.server.Hub
    state_dir: str
    budgets: object = None  # rpc.budget.Budgets (per-peer budgets), None in bare tests


class Unit:
    name = "unit"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def register(self, registry) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def reload(self, config: Config) -> None:
        pass

    def status(self) -> dict:
        return {}

    def summary(self) -> str:
        return ""

    def metrics(self) -> list[dict]:
        return []
