"""system.* and rpc.discover: the service describing itself.

`system.heartbeat` is a push topic: a tick every rpc.heartbeat_interval_s
while anyone subscribes, so a client can tell a live daemon from a stalled
one and exercise its notification handling without any sensor.
"""
from __future__ import annotations

import asyncio
import os

from . import __version__
from .rpc.registry import Access, Registry


def register(registry: Registry, runtime) -> None:
    """`runtime` is app.Runtime: it holds the server, the units and the config."""

    def health(p, call):
        """Liveness: the loop answers."""
        return {"ok": True, "uptime_s": round(runtime.uptime(), 3)}

    def status(p, call):
        """Version, uptime, the config in force, connections, detected sources and hardware."""
        out = {
            "version": __version__,
            "uptime_s": round(runtime.uptime(), 3),
            "pid": os.getpid(),
            "socket": runtime.socket_path,
            "state_dir": runtime.config.daemon.state_dir,
            "config": runtime.config.as_dict(),
            "connections": runtime.server.stats(),
            "hardware": runtime.hardware.to_dict(),
            "sources": [],
            "summary": runtime.summary(),
            "event_loop": runtime.event_loop_name,
            "json_library": runtime.json_name,
            "socket_activated": runtime.socket_activated,
            "budgets": runtime.budgets.status(),
        }
        if runtime.config_file:
            out["config_file"] = runtime.config_file
        for unit in runtime.units:
            extra = unit.status()
            if "sources" in extra:
                out["sources"].extend(extra.pop("sources"))
            out.update(extra)
        return out

    async def reload(p, call):
        """Re-read the config file and apply it (as SIGHUP does)."""
        return await runtime.reload()

    def discover(p, call):
        """The OpenRPC document of every method, from the registry that dispatches."""
        return registry.openrpc(__version__)

    def heartbeat_subscribe(p, call):
        runtime.heartbeat_wanted.set()   # wakes heartbeat_loop
        return None  # every tick goes to every subscriber

    registry.add_topic("system.heartbeat", data="Heartbeat", subscribe=heartbeat_subscribe,
                       summary="Push a system.heartbeat.update every rpc.heartbeat_interval_s.")
    registry.add("system.health", health, result="HealthResult")
    registry.add("system.status", status, result="SystemStatus")
    registry.add("system.reload", reload, result="ReloadResult", access=Access.ADMIN)
    registry.add("rpc.discover", discover, result="DiscoverResult")


async def heartbeat_loop(runtime) -> None:
    """Publish a tick while system.heartbeat has subscribers (encoded once per
    tick); without any, sleep until one subscribes (runtime.heartbeat_wanted),
    so an idle daemon does not wake for it."""
    seq = 0
    hub = runtime.hub
    while True:
        if not hub.subscribers("system.heartbeat"):
            runtime.heartbeat_wanted.clear()
            await runtime.heartbeat_wanted.wait()
        await asyncio.sleep(runtime.config.rpc.heartbeat_interval_s)
        if hub.subscribers("system.heartbeat"):
            seq += 1
            hub.publish("system.heartbeat", {"seq": seq, "uptime_s": round(runtime.uptime(), 3),
                                             "connections": len(runtime.server.conns)})
