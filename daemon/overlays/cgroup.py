"""A memory cgroup per overlay call, under the governor's (govern.cgroup_root).

Ready before the process starts (the child writes itself into
`cgroup.procs` before exec, so nothing it allocates escapes the cap); the
profile's HARD cap is the hard limit, SOFT the soft one, swap 0 on v2.
One call at a time holds a cgroup.  After the call whatever is left in it
is killed; `oom_killed()` says whether the kernel killed something in it
for the cap during this call.

`CgroupPool` keeps a few emptied cgroups for the next calls instead of
removing them: a process's first allocations in a freshly made memory
cgroup cost ~15 ms here (bench/overlays.py), a reused one nothing.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from ..log import get_logger

log = get_logger("overlays.cgroup")


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


class CallCgroup:
    """One call's cgroup; `procs` is None where none could be made (`reason` says why)."""

    def __init__(self, enforcer, name: str, soft_bytes: int, hard_bytes: int):
        self.enforcer = enforcer
        self.mode = getattr(enforcer, "mode", "off")
        self.path: str | None = None
        self.procs: str | None = None
        self.reason: str | None = None
        self.hard_bytes = hard_bytes
        self._oom_base = 0
        self._set = (soft_bytes, hard_bytes)      # the limits written into it
        if self.mode == "off" or not getattr(enforcer, "base", None):
            self.reason = getattr(enforcer, "note", None) or "per-job cgroups are off"
            return
        path = os.path.join(enforcer.base, name)
        try:
            enforcer._ensure_base()
            if not os.path.isdir(path):
                os.mkdir(path)
            self._limits(path, soft_bytes, hard_bytes)
        except OSError as exc:
            self.reason = f"cannot create cgroup {path}: {exc.strerror}"
            try:
                os.rmdir(path)
            except OSError:
                pass
            log.warning("overlay_cgroup_not_enforced", path=path, reason=self.reason)
            return
        self.path = path
        self.procs = os.path.join(path, "cgroup.procs")
        self._oom_base = self._oom_count()

    def reuse(self, soft_bytes: int, hard_bytes: int) -> bool:
        """Set new limits on an emptied cgroup for the next call (kept as
        they are when the same: three writes into cgroupfs saved)."""
        if (soft_bytes, hard_bytes) != self._set:
            try:
                self._limits(self.path, soft_bytes, hard_bytes)
            except OSError:
                return False
            self._set = (soft_bytes, hard_bytes)
        self.hard_bytes = hard_bytes
        self._oom_base = self._oom_count()
        return True

    def _limits(self, path: str, soft_bytes: int, hard_bytes: int) -> None:
        if self.mode == "v2":
            _write(os.path.join(path, "memory.max"), str(hard_bytes))
            _write(os.path.join(path, "memory.high"), str(soft_bytes))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(os.path.join(path, "memory.swap.max"), "0")
            return
        limit = os.path.join(path, "memory.limit_in_bytes")
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        # memsw must stay >= limit: raise memsw first, lower limit first.
        try:
            _write(limit, str(hard_bytes))
        except OSError:
            if not has_memsw:
                raise
            _write(memsw, str(hard_bytes))
            _write(limit, str(hard_bytes))
        if has_memsw:
            try:
                _write(memsw, str(hard_bytes))
            except OSError:
                pass
        _write(os.path.join(path, "memory.soft_limit_in_bytes"), str(soft_bytes))

    def to_dict(self) -> dict:
        if self.path is None:
            return {"enforced": False, "enforce_reason": self.reason or ""}
        return {"enforced": True, "cgroup": self.path, "hard_bytes": self.hard_bytes}

    def pids(self) -> list[int]:
        if self.procs is None:
            return []
        try:
            return [int(p) for p in _read(self.procs).split()]
        except OSError:
            return []

    def kill_all(self) -> int:
        """SIGKILL every process still in the cgroup (a child that left the
        process group); returns how many."""
        n = 0
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                pass
        return n

    def _oom_count(self) -> int:
        """The cgroup's oom_kill counter (v2 memory.events, v1 memory.oom_control)."""
        if self.path is None:
            return 0
        name = "memory.events" if self.mode == "v2" else "memory.oom_control"
        try:
            for line in _read(os.path.join(self.path, name)).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process in it since this call began."""
        return self._oom_count() > self._oom_base

    def empty(self) -> bool:
        for _ in range(100):
            if not self.pids():
                return True
            self.kill_all()
            time.sleep(0.002)
        return False

    def remove(self) -> bool:
        if self.path is None:
            return True
        for _ in range(100):
            self.kill_all()
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    break
            time.sleep(0.005)
        log.error("overlay_cgroup_not_removed", path=self.path)
        return False


class CgroupPool:
    """Emptied call cgroups kept for reuse (at most `keep`), removed at stop."""

    def __init__(self, enforcer, keep: int = 4):
        self.enforcer = enforcer
        self.keep = keep
        self.idle: list[CallCgroup] = []
        self._n = 0

    def acquire(self, soft_bytes: int, hard_bytes: int) -> CallCgroup:
        while self.idle:
            cg = self.idle.pop()
            if cg.reuse(soft_bytes, hard_bytes):
                return cg
            cg.remove()
        self._n += 1
        return CallCgroup(self.enforcer, f"overlay-{os.getpid()}-{self._n}", soft_bytes, hard_bytes)

    def release(self, cg: CallCgroup) -> None:
        """Kill what is left in it; keep it for the next call, or remove it."""
        if cg.path is None:
            return
        if len(self.idle) < self.keep and cg.empty():
            self.idle.append(cg)
        else:
            cg.remove()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().remove()

    def sweep(self) -> int:
        """Remove pooled cgroups left by a daemon that died (overlay-<pid>-<n>
        whose pid is gone): empty ones only, never another live daemon's."""
        base = getattr(self.enforcer, "base", None)
        if not base or getattr(self.enforcer, "mode", "off") == "off":
            return 0
        n = 0
        try:
            names = os.listdir(base)
        except OSError:
            return 0
        for name in names:
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "overlay" or not parts[1].isdigit():
                continue
            if os.path.exists(f"/proc/{parts[1]}"):
                continue
            try:
                os.rmdir(os.path.join(base, name))
                n += 1
            except OSError:
                pass
        if n:
            log.info("overlay_cgroups_swept", removed=n)
        return n
