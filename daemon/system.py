"""system.* and rpc.discover: the service describing itself.

`system.heartbeat` is a push topic: a tick every rpc.heartbeat_interval_s
while anyone subscribes, so a client can tell a live daemon from a stalled
one and exercise its notification handling without any sensor.
"""
from __future__ import annotations

import asyncio
import os
import platform
import resource
import time

from . import __version__
from .log import get_logger
from .metrics import check_family, family, sample
from .rpc.registry import Access, Registry
from .rpc_fast import round3 as _round3

log = get_logger("system")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_monotonic = time.monotonic


def register(registry: Registry, runtime) -> None:
    """`runtime` is app.Runtime: it holds the server, the units and the config."""

    def health(p, call):
        """Liveness: the loop answers.  (runtime.uptime() inline, and round3:
        round(x, 3) without its decimal round trip, a fifth of this call;
        bench/README.md.)"""
        return {"ok": True, "uptime_s": _round3(_monotonic() - runtime.started)}

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

    def metrics(p, call):
        """Every counter, gauge and histogram the daemon keeps, as metric families (README "Metrics")."""
        return snapshot(runtime)

    def heartbeat_subscribe(p, call):
        runtime.heartbeat_wanted.set()   # wakes heartbeat_loop
        return None  # every tick goes to every subscriber

    registry.add_topic("system.heartbeat", data="Heartbeat", subscribe=heartbeat_subscribe,
                       summary="Push a system.heartbeat.update every rpc.heartbeat_interval_s.")
    registry.add("system.health", health, result="HealthResult")
    registry.add("system.status", status, result="SystemStatus")
    registry.add("system.metrics", metrics, result="MetricsSnapshot")
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


def process_families(started_wall: float) -> list[dict]:
    """The daemon's own RSS, CPU and file descriptors (from /proc/self, cheap)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = [family("aal_core_process_cpu_seconds_total", "counter", "User and system CPU time of the daemon.",
                  ru.ru_utime + ru.ru_stime),
           family("aal_core_process_start_time_seconds", "gauge", "Wall-clock start time of the daemon.",
                  started_wall)]
    try:
        with open("/proc/self/statm", "rb") as fh:
            rss = int(fh.read().split()[1]) * _PAGE
        out.append(family("aal_core_process_resident_memory_bytes", "gauge", "Resident memory of the daemon.",
                          float(rss)))
    except (OSError, ValueError, IndexError):
        pass
    try:
        out.append(family("aal_core_process_open_fds", "gauge", "Open file descriptors of the daemon.",
                          float(len(os.listdir("/proc/self/fd")))))
    except OSError:
        pass
    return out


def server_families(server) -> list[dict]:
    return [
        family("aal_core_rpc_connections", "gauge", "Open client connections.", float(len(server.conns))),
        family("aal_core_rpc_connections_max", "gauge", "rpc.max_connections.", float(server.max_connections)),
        family("aal_core_rpc_connections_accepted_total", "counter", "Connections accepted.",
               float(server.accepted_total)),
        family("aal_core_rpc_connections_refused_total", "counter", "Connections refused (over the limit).",
               float(server.refused_total)),
        family("aal_core_rpc_notifications_dropped_total", "counter",
               "Push notifications dropped because a client did not read (oldest first).",
               float(server.dropped_total)),
        family("aal_core_rpc_inflight_requests", "gauge", "Requests being handled now.", float(len(server.inflight))),
        family("aal_core_rpc_unsent_bytes", "gauge", "Reply and push bytes clients have not taken yet.",
               float(server.unsent_total)),
        family("aal_core_rpc_backlog_closed_total", "counter",
               "Connections closed for holding too many unsent bytes.", float(server.backlog_closed_total)),
    ]


def snapshot(runtime) -> dict:
    """system.metrics: the runtime's families, then each unit's; a unit whose
    metrics() raises or returns a malformed family loses only that family
    (counted in aal_core_metrics_errors_total and named in `errors`)."""
    t0 = time.perf_counter()
    fams = [family("aal_core_build_info", "gauge", "Version and runtime of the daemon (value 1).",
                   [sample(1.0, {"version": __version__, "python": platform.python_version(),
                                 "event_loop": runtime.event_loop_name or "-", "json": runtime.json_name,
                                 "hardware": runtime.hardware.kind})]),
            family("aal_core_uptime_seconds", "gauge", "Seconds since the daemon started.", runtime.uptime())]
    fams += process_families(runtime.ctx.clock.wall() - runtime.uptime())
    fams += server_families(runtime.server)
    fams += runtime.dispatcher.metrics()
    errors = []
    sources = [("system", None)] + [(u.name, u) for u in runtime.units]
    for name, unit in sources:
        if unit is None:
            continue
        try:
            got = unit.metrics()
        except Exception as exc:  # noqa: BLE001 - one unit must not cost the others their metrics
            errors.append({"unit": name, "reason": f"metrics() raised {exc!r}"})
            continue
        for f in got:
            why = check_family(f)
            if why is None:
                fams.append(f)
            else:
                errors.append({"unit": name, "reason": why})
    seen = set()
    unique = []
    for f in fams:
        # OpenMetrics names a counter's family without _total, and a
        # histogram's series add _bucket/_sum/_count: those names clash too.
        base = f["name"][:-len("_total")] if f["type"] == "counter" else f["name"]
        names = {base, f["name"]} | ({base + x for x in ("_bucket", "_sum", "_count")}
                                     if f["type"] == "histogram" else set())
        if names & seen:
            errors.append({"unit": "-", "reason": f"{f['name']}: its name clashes with an earlier family's "
                                                  f"(the later one is dropped)"})
            continue
        seen |= names
        unique.append(f)
    runtime.metrics_errors = getattr(runtime, "metrics_errors", 0) + len(errors)
    said = runtime.__dict__.setdefault("_metrics_said", set())
    for e in errors:
        if (e["unit"], e["reason"]) not in said and len(said) < 1000:   # once each, not per scrape
            said.add((e["unit"], e["reason"]))
            log.warning("metrics_family_dropped", unit=e["unit"], reason=e["reason"])
    unique.append(family("aal_core_metrics_errors_total", "counter",
                         "Metric families dropped because a unit's metrics() failed or was malformed.",
                         float(runtime.metrics_errors)))
    dt = time.perf_counter() - t0
    unique.append(family("aal_core_metrics_collect_seconds", "gauge", "Time the last system.metrics took.", dt))
    out = {"timestamp": runtime.ctx.clock.wall(), "families": unique, "collect_seconds": round(dt, 6)}
    if errors:
        out["errors"] = errors
    return out
