"""Wiring: build the parts, connect them, run until told to stop.

This module holds no policy.  `build_units` is the one place that says which
capabilities the daemon has and what each depends on; `serve` is the main
loop: listen, start units, READY=1, watchdog and STATUS=, SIGHUP reload,
SIGTERM graceful stop.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import resource
import signal
import time

from . import config as config_mod
from . import hardware, log as log_mod, system
from .clock import SYSTEM as SYSTEM_CLOCK
from .config import Config
from .errors import AalError
from .listener import bind_socket, inherited_socket
from .notify import Notifier, watchdog_interval, watchdog_loop
from .rpc import codec
from .rpc.budget import Budgets
from .rpc.protocol import Dispatcher, Limits
from .rpc.registry import Registry
from .rpc.server import Hub, RpcServer
from .units import Context, Unit

log = log_mod.get_logger("daemon")


class StateError(AalError):
    """The state directory cannot be used (exit code 4)."""


def build_units(ctx: Context) -> list[Unit]:
    """Every capability, in dependency order; each gets what it needs by name."""
    from .govern import GovernorUnit
    from .keys.unit import KeyUnit
    from .ledger.unit import LedgerUnit
    from .overlays.unit import OverlayUnit
    from .stress.unit import SensingUnit
    from .train.unit import TrainUnit
    from .venom.unit import VenomUnit

    sensing = SensingUnit(ctx)
    ledger = LedgerUnit(ctx)
    keys = KeyUnit(ctx, ledger=ledger)
    ledger.keys = keys          # signs ledger.head
    governor = GovernorUnit(ctx, sensing=sensing, ledger=ledger)
    venom = VenomUnit(ctx, sensing=sensing, governor=governor, ledger=ledger)
    overlays = OverlayUnit(ctx, governor=governor, ledger=ledger, keys=keys)
    train = TrainUnit(ctx, sensing=sensing, governor=governor, ledger=ledger, keys=keys)
    return [sensing, ledger, keys, governor, venom, overlays, train]


class Runtime:
    """The running daemon's parts, for system.* and the main loop."""

    def __init__(self, config: Config, config_file: str | None, overrides: dict,
                 base: Config | None = None):
        self.config = config
        self.config_file = config_file
        self.overrides = overrides
        # Defaults the file is read over (the --local ones, say): a reload
        # must start from the same base, or every default would look changed.
        self.base = base
        self.started = time.monotonic()
        self.notifier = Notifier()
        self.hardware = hardware.detect()
        self.hub = Hub()
        self.registry = Registry()
        self.budgets = Budgets(config.budget, SYSTEM_CLOCK)
        self.ctx = Context(config=config, clock=SYSTEM_CLOCK, hub=self.hub,
                           state_dir=config.daemon.state_dir, budgets=self.budgets)
        self.units = build_units(self.ctx)
        system.register(self.registry, self)
        for u in self.units:
            u.register(self.registry)
        rpc = config.rpc
        self.dispatcher = Dispatcher(self.registry, _limits(rpc), self.budgets)
        self.server = RpcServer(self.dispatcher, self.hub, max_connections=rpc.max_connections,
                                idle_timeout_s=rpc.idle_timeout_s, outbox_max_frames=rpc.outbox_max_frames,
                                group=rpc.group, unsent_soft_bytes=rpc.unsent_soft_bytes,
                                unsent_hard_bytes=rpc.unsent_hard_bytes, unsent_total_bytes=rpc.unsent_total_bytes)
        self.socket_path = config.daemon.socket
        self.socket_activated = False
        self.bound_path: str | None = None
        self.event_loop_name = ""
        self.json_name = codec.NAME
        self.stop_event = asyncio.Event()
        self.heartbeat_wanted = asyncio.Event()   # set on a system.heartbeat subscription
        self._wire_idle()

    def _wire_idle(self) -> None:
        """Sensing slows to sense.sample_hz_idle only while nobody is there
        (no client connected, no job, no training run) and is back at the
        base rate the moment a client connects."""
        units = {u.name: u for u in self.units}
        sensing = units.get("sensing")
        if sensing is None or not hasattr(sensing, "set_idle_check"):
            return
        gov, train = units.get("govern"), units.get("train")
        server = self.server

        def idle() -> bool:
            return (not server.conns and (gov is None or not gov.core.jobs)
                    and (train is None or not train.runs))

        sensing.set_idle_check(idle)
        server.on_first_connection = sensing.busy

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        parts = [u.summary() for u in self.units]
        parts.append(f"{len(self.server.conns)} clients")
        return "; ".join(p for p in parts if p)

    async def reload(self) -> dict:
        """Re-read the config file; apply what can change while running.
        A bad file raises ConfigError and leaves the running config as it was."""
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config_file, self.base).with_overrides(self.overrides)
            changed = config_mod.diff(self.config, new)
            restart = [f"{s}.{k}" for s, k in changed if (s, k) in config_mod.RESTART_KEYS]
            live = config_mod.keep_restart_keys(self.config, new)
            self.config = live
            log_mod.set_level(live.daemon.log_level)
            self._apply_rpc(live)
            # The units compare against ctx.config (still the old one) to see
            # what changed; it is replaced once, after all of them.
            for u in self.units:
                try:
                    pending = u.reload(live)
                    if inspect.isawaitable(pending):    # sensing restarts its sources
                        await pending
                except Exception as exc:  # noqa: BLE001 - one unit must not stop the others
                    log.error("unit_reload_failed", unit=u.name, error=repr(exc))
            self.ctx.config = live
            names = [f"{s}.{k}" for s, k in changed]
            log.info("reloaded", file=self.config_file or "-", changed=",".join(names) or "-",
                     restart_required=",".join(restart) or "-")
            return {"reloaded": True, "changed": names, "restart_required": restart}
        finally:
            self.notifier.ready(self.summary())

    def _apply_rpc(self, cfg: Config) -> None:
        rpc = cfg.rpc
        self.dispatcher.limits = _limits(rpc)
        _raise_fd_limit(rpc.max_connections + FD_RESERVE)
        self.server.max_connections = rpc.max_connections
        self.server.idle_timeout_s = rpc.idle_timeout_s
        self.server.outbox_max = rpc.outbox_max_frames
        self.budgets.configure(cfg.budget)
        self.server.set_unsent_limits(rpc.unsent_soft_bytes, rpc.unsent_hard_bytes, rpc.unsent_total_bytes)

    def listen(self):
        sock = inherited_socket()
        if sock is not None:
            self.socket_activated = True
            try:
                self.socket_path = sock.getsockname() or self.socket_path
            except OSError:
                pass
            return sock
        sock = bind_socket(self.config.daemon.socket, self.config.rpc.group)
        self.bound_path = self.config.daemon.socket
        return sock


def _limits(rpc: config_mod.RpcConfig) -> Limits:
    return Limits(rpc.max_frame_bytes, rpc.max_depth, rpc.max_batch, rpc.max_reply_bytes)


# File descriptors beyond one per connection: the ledger, /proc and cgroup
# files kept open, tegrastats' pipe, the loop's own.
FD_RESERVE = 64


def _raise_fd_limit(want: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to `want` (up to the hard limit), so
    rpc.max_connections can be reached; never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The kernel keeps this hard limit finite (at most fs.nr_open).
    target = min(hard, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(rt: Runtime) -> int:
    loop = asyncio.get_running_loop()
    rt.event_loop_name = f"{type(loop).__module__}.{type(loop).__name__}"
    cfg = rt.config
    try:
        # 0750: the ledger and the signing key are no business of other users
        # (overlays run as one; README "Confinement"); the unit says the same
        # with StateDirectoryMode=0750.
        os.makedirs(cfg.daemon.state_dir, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the state directory {cfg.daemon.state_dir}: {exc.strerror}") from None
    _raise_fd_limit(cfg.rpc.max_connections + FD_RESERVE)

    # Signals first: a SIGTERM during start-up is a graceful stop too.
    def _on_hup():
        asyncio.ensure_future(_safe_reload(rt))

    loop.add_signal_handler(signal.SIGTERM, rt.stop_event.set)
    loop.add_signal_handler(signal.SIGINT, rt.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, _on_hup)

    # Bind first (a socket in use fails fast), start the units, then serve:
    # a client that connects meanwhile waits in the kernel's backlog and is
    # answered by started units, never by half-started ones.
    sock = rt.listen()
    for u in rt.units:
        await u.start()
    await rt.server.start(sock)
    log.info("listening", socket=rt.socket_path, activated=rt.socket_activated,
             state_dir=cfg.daemon.state_dir, config=rt.config_file or "-",
             hardware=rt.hardware.kind, loop=rt.event_loop_name, json=rt.json_name)
    deadline = time.monotonic() + cfg.daemon.ready_timeout_s
    while not all(u.ready() for u in rt.units) and time.monotonic() < deadline \
            and not rt.stop_event.is_set():
        await asyncio.sleep(0.02)
    not_ready = [u.name for u in rt.units if not u.ready()]
    if not_ready:
        log.warning("ready_without_first_readings", units=",".join(not_ready))
    rt.notifier.ready(rt.summary())
    log.info("ready", summary=rt.summary(), pid=os.getpid())

    tasks = []
    interval = watchdog_interval()
    if interval:
        tasks.append(asyncio.ensure_future(watchdog_loop(rt.notifier, interval)))
    if rt.notifier.enabled:     # STATUS= goes to systemd only: no wake-ups without it
        tasks.append(asyncio.ensure_future(_status_loop(rt)))
    tasks.append(asyncio.ensure_future(system.heartbeat_loop(rt)))

    await rt.stop_event.wait()

    log.info("stopping", clients=len(rt.server.conns), inflight=len(rt.server.inflight))
    rt.notifier.stopping()
    await rt.server.stop(rt.config.daemon.stop_grace_s)
    for u in reversed(rt.units):
        try:
            await u.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            log.error("unit_stop_failed", unit=u.name, error=repr(exc))
    for t in tasks:
        t.cancel()
    if rt.bound_path:
        try:
            os.unlink(rt.bound_path)
        except OSError:
            pass
    log.info("stopped")
    return 0


async def _safe_reload(rt: Runtime):
    try:
        await rt.reload()
    except Exception as exc:  # noqa: BLE001 - a bad file must not stop the daemon
        log.error("reload_failed", error=str(exc), kept="running config")


async def _status_loop(rt: Runtime):
    while True:
        await asyncio.sleep(2.0)
        rt.notifier.status(rt.summary())


def run(config: Config, config_file: str | None, overrides: dict, base: Config | None = None) -> int:
    import uvloop  # chosen by measurement: bench/loop_json.py

    async def main():
        rt = Runtime(config, config_file, overrides, base)
        return await serve(rt)

    return uvloop.run(main())
