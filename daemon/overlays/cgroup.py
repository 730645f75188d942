"""A memory cgroup per overlay call, under the governor's (govern.cgroup_root).

Made before the process starts (the child writes itself into `cgroup.procs`
before exec, so nothing it allocates escapes the cap); the profile's HARD
cap is the hard limit, SOFT the soft one, swap 0 on v2.  After the call
whatever is left in it is killed and the cgroup removed; `oom_killed()`
says whether the kernel killed something in it for the cap.
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
        if self.mode == "off" or not getattr(enforcer, "base", None):
            self.reason = getattr(enforcer, "note", None) or "per-job cgroups are off"
            return
        path = os.path.join(enforcer.base, name)
        try:
            enforcer._ensure_base()
            os.mkdir(path)
            if self.mode == "v2":
                _write(os.path.join(path, "memory.max"), str(hard_bytes))
                _write(os.path.join(path, "memory.high"), str(soft_bytes))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), "0")
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), str(hard_bytes))
                _write(os.path.join(path, "memory.soft_limit_in_bytes"), str(soft_bytes))
                ms = os.path.join(path, "memory.memsw.limit_in_bytes")
                if os.path.exists(ms):
                    try:
                        _write(ms, str(hard_bytes))
                    except OSError:
                        pass
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

    def oom_killed(self) -> bool:
        if self.path is None:
            return False
        try:
            if self.mode == "v2":
                for line in _read(os.path.join(self.path, "memory.events")).splitlines():
                    k, _, v = line.partition(" ")
                    if k == "oom_kill" and int(v) > 0:
                        return True
                return False
            for line in _read(os.path.join(self.path, "memory.oom_control")).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill" and int(v) > 0:
                    return True
            return int(_read(os.path.join(self.path, "memory.failcnt")).strip() or 0) > 0 and False
        except (OSError, ValueError):
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
