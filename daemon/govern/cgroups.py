"""Hard caps made real: a memory cgroup per job that gave its pid.

The profile's SOFT cap becomes the soft limit (v2 `memory.high`, v1
`memory.soft_limit_in_bytes`) and HARD the hard limit (`memory.max` /
`memory.limit_in_bytes`); swap is capped too where the kernel has the knob
(v2 `memory.swap.max` = 0; v1 `memory.memsw.limit_in_bytes` = HARD, RAM +
swap together), so a job cannot escape HARD into swap (zram on a Jetson).
Where the knob is missing, `swap_capped` is false and `enforce_reason` says
so.  The job's process is moved in on submit and back
to where it came from on release, and the cgroup is removed.

Where this is not permitted (not root, no delegated cgroup, no memory
controller) `place` says so: enforced False and the reason, never silence.
"""
from __future__ import annotations

import errno
import os
import time

from ..log import get_logger
from ..sources.cgroup import proc_cgroup

log = get_logger("govern.cgroups")

V1_MEMORY = "/sys/fs/cgroup/memory"
V2_ROOT = "/sys/fs/cgroup"
GROUP = "aal-core"


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _kind_of(path: str) -> str | None:
    """'v2', 'v1' or None: what kind of memory cgroup directory `path` is."""
    if os.path.exists(os.path.join(path, "cgroup.controllers")):
        try:
            return "v2" if "memory" in _read(os.path.join(path, "cgroup.controllers")).split() else None
        except OSError:
            return None
    if os.path.exists(os.path.join(path, "memory.limit_in_bytes")):
        return "v1"
    return None


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror} (needs root or a delegated cgroup)"
    return exc.strerror or str(exc)


class CgroupEnforcer:
    """Creates <base>/<job_id> cgroups.  `setting` is govern.cgroup_root:
    "auto" (base = <hierarchy root>/<group>, group = govern.cgroup_group:
    "aal-core", or a `--local` run's own "aal-core-local-<hash>"), "off",
    or a memory cgroup directory to create them under."""

    def __init__(self, setting: str = "auto", proc_root: str = "/proc", group: str = GROUP):
        self.proc_root = proc_root
        self.group = group
        self.mode, self.base, self.note = self._detect(setting)
        # Only the group "auto" makes is ours to remove; a configured directory is not.
        self._own_base = setting == "auto"
        self._origin: dict[str, str] = {}       # job_id -> cgroup dir the pid came from

    def _detect(self, setting: str) -> tuple[str, str | None, str | None]:
        if setting == "off":
            return "off", None, "per-job cgroups are off (govern.cgroup_root = \"off\")"
        if setting == "auto":
            if _kind_of(V2_ROOT) == "v2":
                return "v2", os.path.join(V2_ROOT, self.group), None
            if _kind_of(V1_MEMORY) == "v1":
                return "v1", os.path.join(V1_MEMORY, self.group), None
            return "off", None, "no memory cgroup controller found (neither cgroup v2 with memory nor v1 memory)"
        kind = _kind_of(setting)
        if kind is None:
            return "off", None, f"{setting} is not a memory cgroup directory"
        return kind, setting, None

    def status(self) -> dict:
        out = {"cgroup_mode": self.mode}
        if self.base:
            out["cgroup_root"] = self.base
        if self.note:
            out["cgroup_note"] = self.note
        return out

    def path(self, job_id: str) -> str:
        return os.path.join(self.base, job_id)

    def _origin_of(self, pid: int) -> str | None:
        """The cgroup directory (in this hierarchy) the process is in now."""
        try:
            rel = proc_cgroup(pid, self.proc_root).get(self.mode)
        except OSError:
            return None
        if rel is None:
            return None
        return os.path.join(V2_ROOT if self.mode == "v2" else V1_MEMORY, rel.lstrip("/"))

    def _ensure_base(self) -> None:
        if self.mode == "v2":
            parent = os.path.dirname(self.base)
            ctl = os.path.join(parent, "cgroup.subtree_control")
            if "memory" not in _read(ctl).split():
                _write(ctl, "+memory")
            os.makedirs(self.base, exist_ok=True)
            ctl = os.path.join(self.base, "cgroup.subtree_control")
            if "memory" not in _read(ctl).split():
                _write(ctl, "+memory")
        else:
            os.makedirs(self.base, exist_ok=True)

    def place(self, job_id: str, pid: int, soft_bytes: int, hard_bytes: int) -> dict:
        """Create the job's cgroup with its limits and move `pid` in.
        Returns {"enforced": bool, "enforce_reason"?: str, "cgroup"?: str}."""
        if self.mode == "off":
            return {"enforced": False, "enforce_reason": self.note}
        path = self.path(job_id)
        step = "create"
        try:
            self._ensure_base()
            if os.path.isdir(path):       # left over by a crash: reuse it
                log.warning("cgroup_reused", path=path)
            else:
                os.mkdir(path)
            step = "set limits on"
            swap_note = None
            if self.mode == "v2":
                _write(os.path.join(path, "memory.max"), str(hard_bytes))
                _write(os.path.join(path, "memory.high"), str(soft_bytes))
                swap_max = os.path.join(path, "memory.swap.max")
                if os.path.exists(swap_max):    # else a job past memory.max swaps instead of being held at HARD
                    _write(swap_max, "0")
                else:
                    swap_note = (f"swap not capped: {swap_max} does not exist (kernel without "
                                 "swap accounting): past HARD the job can use swap (zram)")
            else:
                memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
                has_memsw = os.path.exists(memsw)
                if has_memsw:                   # memsw >= limit always: lift it first (a reused cgroup)
                    _write(memsw, "-1")
                _write(os.path.join(path, "memory.limit_in_bytes"), str(hard_bytes))
                _write(os.path.join(path, "memory.soft_limit_in_bytes"), str(soft_bytes))
                if has_memsw:                   # RAM + swap <= HARD: swap cannot extend the cap
                    _write(memsw, str(hard_bytes))
                else:
                    swap_note = (f"swap not capped: {memsw} does not exist (kernel without "
                                 "CONFIG_MEMCG_SWAP or booted with swapaccount=0): past HARD the "
                                 "job can use swap (zram)")
            origin = self._origin_of(pid)
            step = f"move pid {pid} into"
            _write(os.path.join(path, "cgroup.procs"), str(pid))
        except OSError as exc:
            reason = f"cannot {step} cgroup {path}: {_why(exc)}"
            if exc.errno == errno.ESRCH:
                reason = f"pid {pid} exited before it could be placed in {path}"
            self._rmdir(path)
            log.warning("cgroup_not_enforced", job_id=job_id, reason=reason)
            return {"enforced": False, "enforce_reason": reason}
        if origin:
            self._origin[job_id] = origin
        log.info("cgroup_placed", job_id=job_id, pid=pid, path=path, soft=soft_bytes, hard=hard_bytes,
                 swap_capped=swap_note is None)
        out = {"enforced": True, "cgroup": path, "swap_capped": swap_note is None}
        if swap_note:
            out["enforce_reason"] = swap_note
        return out

    def remove(self, job_id: str) -> bool:
        """Move what is left in the job's cgroup back where it came from and
        remove the cgroup.  True when it is gone."""
        if self.mode == "off":
            return False
        path = self.path(job_id)
        origin = self._origin.pop(job_id, None) or os.path.dirname(self.base)
        for _ in range(20):
            try:
                pids = _read(os.path.join(path, "cgroup.procs")).split()
            except OSError:
                pids = []
            for p in pids:
                try:
                    _write(os.path.join(origin, "cgroup.procs"), p)
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        log.warning("cgroup_move_back_failed", pid=p, to=origin, error=exc.strerror)
            if self._rmdir(path):
                log.info("cgroup_removed", job_id=job_id, path=path)
                return True
            time.sleep(0.01)          # a process was exiting or forking: try again
        log.error("cgroup_not_removed", job_id=job_id, path=path)
        return False

    def close(self) -> None:
        """On stop, after every job's release: remove the group directory when
        it is empty (rmdir fails on one with children: a job cgroup left by
        another daemon is never touched), so a `--local` run leaves no
        aal-core-local-<hash> behind.  A configured cgroup_root is left alone."""
        if self._own_base and self.mode != "off" and os.path.isdir(self.base) and self._rmdir(self.base):
            log.info("cgroup_group_removed", path=self.base)

    @staticmethod
    def _rmdir(path: str) -> bool:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
