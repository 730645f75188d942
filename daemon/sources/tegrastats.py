"""tegrastats as a child process: run it, parse every line it prints.

`tegrastats --interval <ms>` is NVIDIA's only user-space view of the GPU
load, engine clocks, rail power and the largest-free-block (fragmentation)
figures on a Jetson.  Lines are parsed by the compiled parser
(ext/tegrastats.pyx).  A child that dies, a command that does not exist
(yet: a path created later) or cannot be run, makes the source absent with
one clear reason; it is tried again with exponential backoff (0.5 s
doubling to sense.retry_max_s, reset after healthy_after_s of running),
logged and counted once per episode (sources._health).  Commands:

    "off"      the source is disabled
    "replay"   the recording bundled with the package (aal_core/data), mode "replay":
               its figures describe the recorded board, so the stress models
               never see them (tegrastats.latest still shows them, marked)
    "auto"     the real tegrastats if it is on PATH, else the replay
    anything else: a command line; "--interval <ms>" is appended
"""
from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sys
from typing import Callable

from ..errors import ParseError
from ..log import get_logger
from ..rpc import codec
from ..tasks import cancel_task
from ..tegrastats import parse_tegrastats
from ._health import OFF, OK, STARTING, Backoff, Health

log = get_logger("sense.tegrastats")

REPLAY_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                             "tegrastats_replay.py")
LINE_LIMIT = 64 * 1024


def resolve(command: str, interval_ms: int) -> tuple[list[str] | None, str, str | None]:
    """→ (argv or None, mode "live"|"replay"|"off", reason when absent)."""
    command = command.strip()
    if command == "off" or not command:
        return None, "off", "disabled (sense.tegrastats_command = off)"
    if command == "auto":
        command = "tegrastats" if shutil.which("tegrastats") else "replay"
    if command == "replay":
        return [sys.executable, REPLAY_SCRIPT, "--interval", str(interval_ms)], "replay", None
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return None, "live", f"cannot parse sense.tegrastats_command {command!r}: {exc}"
    exe = shutil.which(argv[0])
    if exe is None:
        return None, "live", (f"command not found: {argv[0]} (not a Jetson? run with --tegrastats off, "
                              f"or replay for the bundled recording)")
    return [exe] + argv[1:] + ["--interval", str(interval_ms)], "live", None


class TegrastatsSource:
    name = "tegrastats"

    def __init__(self, command: str, interval_ms: int, clock, on_sample: Callable[[dict], None] | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, healthy_after_s: float = 30.0):
        self.clock = clock
        self.on_sample = on_sample
        self.backoff_initial_s, self.backoff_max_s, self.healthy_after_s = backoff_initial_s, backoff_max_s, healthy_after_s
        self.health = Health(self.name, clock, expected=True, max_s=backoff_max_s)
        self.latest: dict | None = None
        self.latest_encoded: bytes | None = None
        self.last_read: float | None = None      # monotonic
        self.last_read_wall: float | None = None
        self.lines = self.parsed = self.unparseable = self.unknown_tokens = 0
        self.restarts = 0
        self.start_failures = 0                  # attempts that found no command or could not run it
        self.pid: int | None = None
        self._task: asyncio.Task | None = None
        self._proc = None
        self._configure(command, interval_ms)

    def _configure(self, command: str, interval_ms: int) -> None:
        self.command = command
        self.interval_ms = interval_ms
        self.argv, self.mode, reason = resolve(command, interval_ms)
        # An explicit command is expected to run; "auto" fell back or found it.
        self.health.expected = command.strip() != "auto"
        if self.mode == "off":
            self.health.off(reason)

    @property
    def present(self) -> bool:
        """The child runs (not absent waiting for a retry, not off)."""
        return self.health.state in (OK, STARTING) and self._proc is not None

    @property
    def reason(self) -> str | None:
        return self.health.reason

    async def start(self) -> None:
        if self.mode != "off" and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_task(task)
        await self._kill()

    async def reconfigure(self, command: str, interval_ms: int, backoff_max_s: float | None = None) -> None:
        """A reload changed the command, its interval or the backoff cap: stop
        the child and start the new one (its pid and argv in state())."""
        await self.stop()
        if backoff_max_s is not None:
            self.backoff_max_s = backoff_max_s
            self.health.set_max(backoff_max_s)
        self.pid = None
        log.info("tegrastats_reconfigured", command=command, interval_ms=interval_ms)
        if self.health.state != OFF:
            self.health.starting()
        self._configure(command, interval_ms)
        await self.start()

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 2.0)
        except ProcessLookupError:
            pass
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def _spawn(self):
        """The child, or None (absent, reason kept) when there is no command
        to run yet; resolved again each time, so a command installed later is found."""
        self.argv, self.mode, reason = resolve(self.command, self.interval_ms)
        if self.argv is None:
            self.start_failures += 1
            return None, reason
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT, start_new_session=True)
        except OSError as exc:
            self.start_failures += 1
            return None, f"cannot run {self.argv[0]}: {exc.strerror or exc}"
        return proc, None

    async def _run(self) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            proc, reason = await self._spawn()
            if proc is None:
                # A command line that does not parse will not parse later: wait for a reload.
                retry = not reason.startswith("cannot parse")
                delay = self.health.down(reason, delay=backoff.next() if retry else None, retry=retry)
                if delay is None:
                    return
                await asyncio.sleep(delay)
                continue
            self._proc = proc
            self.pid = proc.pid
            self.health.starting()
            started = self.clock.monotonic()
            log.info("tegrastats_started", pid=proc.pid, mode=self.mode, argv=" ".join(self.argv))
            err_tail = asyncio.ensure_future(self._stderr_tail(proc))
            try:
                await self._read_lines(proc)
                rc = await proc.wait()
            finally:
                if self._proc is proc and proc.returncode is None:
                    await self._kill()
            tail = await err_tail
            ran = self.clock.monotonic() - started
            if ran >= self.healthy_after_s:
                backoff.reset()
            self.restarts += 1
            delay = backoff.next()
            self.health.down(f"exited with status {rc}" + (f": {tail}" if tail else "") +
                             f"; restart #{self.restarts} in {delay:g}s", delay=delay)
            log.warning("tegrastats_exited", status=rc, ran_s=round(ran, 3), restart_in_s=delay, stderr=tail or "-")
            await asyncio.sleep(delay)

    async def _stderr_tail(self, proc) -> str:
        last = b""
        while True:
            try:
                chunk = await proc.stderr.readline()
            except ValueError:
                continue
            if not chunk:
                return last.strip()[-200:].decode("utf-8", "replace")
            if chunk.strip():
                last = chunk

    async def _read_lines(self, proc) -> None:
        stdout = proc.stdout
        while True:
            try:
                line = await stdout.readline()
            except ValueError:          # a line over LINE_LIMIT: counted, skipped
                self.lines += 1
                self.unparseable += 1
                continue
            if not line:
                return
            self.handle_line(line)

    def handle_line(self, line: bytes) -> dict | None:
        """Parse one line; keep it as the latest.  Unparseable lines are counted and skipped."""
        self.lines += 1
        try:
            parsed = parse_tegrastats(line)
        except ParseError as exc:
            self.unparseable += 1
            if self.unparseable <= 5 or self.unparseable % 1000 == 0:
                log.warning("tegrastats_unparseable", error=str(exc), count=self.unparseable,
                            line=line[:80].decode("utf-8", "replace"))
            return None
        self.parsed += 1
        self.unknown_tokens += len(parsed["unknown"])
        self.last_read = self.clock.monotonic()
        self.last_read_wall = self.clock.wall()
        self.health.up()
        parsed["received_at"] = round(self.last_read_wall, 3)
        parsed["mode"] = self.mode
        self.latest = parsed
        self.latest_encoded = codec.dumps_value(parsed)
        if self.on_sample is not None:
            self.on_sample(parsed)
        return parsed

    @property
    def errors(self) -> int:
        """Lines that could not be parsed, exits of the child, and attempts
        that found no command to run."""
        return self.unparseable + self.restarts + self.start_failures

    def state(self) -> dict:
        d = {"name": self.name, "present": self.present, "mode": self.mode,
             "reads": self.parsed, "errors": self.errors,
             "lines": self.lines, "parsed": self.parsed, "unparseable": self.unparseable,
             "unknown_tokens": self.unknown_tokens, "restarts": self.restarts}
        d.update(self.health.to_dict())
        if self.pid is not None and self.present:
            d["pid"] = self.pid
        if self.last_read is not None:
            d["last_read"] = round(self.last_read_wall, 3)
            d["age_s"] = round(self.clock.monotonic() - self.last_read, 3)
        if self.argv:
            d["path"] = " ".join(self.argv)        # SenseSource.path: the command it runs
        if self.reason:
            d["reason"] = self.reason
        return d
