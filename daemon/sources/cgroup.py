"""A cgroup's memory: limit, usage, working set, OOM kills (v1 and v2).

Inside a container or a memory-limited slice /proc/meminfo shows the host;
the cgroup's limit is what the kernel's OOM killer enforces, so the signal
takes the tighter of the two.  Working set = usage - inactive_file (as the
kubelet counts it): clean page cache that has not been touched twice is
reclaimed before anything is killed, so it is not counted as pressure.

v2: memory.max, memory.current, memory.stat, memory.events, memory.pressure;
the limit is the smallest memory.max of the cgroup and its ancestors (a
slice's limit binds the services in it), walking up while the parent has a
memory.max (the root cgroup has none) and never above `root`.
v1: memory.limit_in_bytes (and hierarchical_memory_limit from memory.stat,
so a limit set on a parent counts), memory.usage_in_bytes, memory.stat,
memory.oom_control.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SourceError
from ..kvfile import KeyedFile, ValueFile
from ._file import open_kept
from .psi import Psi, PsiReader

# A v1 "limit" at or above this is the kernel's way of saying "none".
UNLIMITED = 1 << 62

V2_STAT = (b"anon", b"file", b"active_file", b"inactive_file")
V1_STAT = (b"total_rss", b"total_cache", b"total_active_file", b"total_inactive_file",
           b"hierarchical_memory_limit", b"rss", b"cache", b"active_file", b"inactive_file")


@dataclass(frozen=True)
class CgroupMem:
    version: int
    path: str
    limit: int | None          # bytes; None = no limit
    usage: int
    working_set: int
    active_file: int
    inactive_file: int
    oom_kill: int | None       # None where the kernel does not count them
    under_oom: bool | None = None
    psi: Psi | None = None

    def to_dict(self) -> dict:
        d = {"version": self.version, "path": self.path, "usage": self.usage,
             "working_set": self.working_set, "active_file": self.active_file,
             "inactive_file": self.inactive_file}
        if self.limit is not None:
            d["limit"] = self.limit
        if self.oom_kill is not None:
            d["oom_kill"] = self.oom_kill
        if self.psi is not None:
            d["psi"] = self.psi.to_dict()
        return d


def proc_cgroup(pid: int | str, proc_root: str = "/proc") -> dict[str, str]:
    """Where a process is, from <proc_root>/<pid>/cgroup: "v2" (the unified
    hierarchy's "0::" line) and "v1" (the hierarchy holding the memory
    controller), each a path relative to its mount ("/a/b"), where present.
    Raises OSError when the file cannot be read (e.g. the process is gone)."""
    out: dict[str, str] = {}
    with open(os.path.join(proc_root, str(pid), "cgroup")) as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0":
                out.setdefault("v2", parts[2])
            elif "memory" in parts[1].split(","):
                out.setdefault("v1", parts[2])
    return out


def v2_ancestors(path: str, root: str | None = None) -> list[str]:
    """The v2 cgroups above `path` that have a memory.max, nearest first:
    up while the parent has one (the hierarchy's root has none), and not
    above `root` when given (the mount point, e.g. a container's
    /sys/fs/cgroup, whose own memory.max does count)."""
    out = []
    cur = os.path.abspath(path)
    top = os.path.abspath(root) if root else None
    while cur != top:
        parent = os.path.dirname(cur)
        if parent == cur or not os.path.exists(os.path.join(parent, "memory.max")):
            break
        out.append(parent)
        cur = parent
    return out


class CgroupReader:
    name = "cgroup"

    def __init__(self, path: str, root: str | None = None):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise SourceError(f"{self.path}: not a cgroup directory (sense.cgroup)")
        j = lambda f: os.path.join(self.path, f)  # noqa: E731
        self.psi: PsiReader | None = None
        self._parent_limits: list = []
        self.ancestors: list[str] = []      # v2: the memory.max files above that bind it
        if os.path.exists(j("memory.max")):
            self.version = 2
            self._limit = open_kept(ValueFile, j("memory.max"))
            self._parent_limits = [open_kept(ValueFile, os.path.join(d, "memory.max"))
                                   for d in v2_ancestors(self.path, root)]
            self.ancestors = [f.path for f in self._parent_limits]
            self._usage = open_kept(ValueFile, j("memory.current"))
            self._stat = open_kept(KeyedFile, j("memory.stat"), V2_STAT)
            self._events = open_kept(KeyedFile, j("memory.events"), (b"oom_kill", b"oom"))
            if os.path.exists(j("memory.pressure")):
                try:
                    self.psi = PsiReader(j("memory.pressure"))
                except SourceError:
                    self.psi = None
        elif os.path.exists(j("memory.limit_in_bytes")):
            self.version = 1
            self._limit = open_kept(ValueFile, j("memory.limit_in_bytes"))
            self._usage = open_kept(ValueFile, j("memory.usage_in_bytes"))
            self._stat = open_kept(KeyedFile, j("memory.stat"), V1_STAT)
            self._events = open_kept(KeyedFile, j("memory.oom_control"), (b"oom_kill", b"under_oom"))
        else:
            raise SourceError(f"{self.path}: no memory controller files (memory.max or memory.limit_in_bytes)")

    def read(self) -> CgroupMem:
        try:
            limit = self._limit.read()
            usage = self._usage.read()
            stat = self._stat.read()
            ev = self._events.read()
            parents = [f.read() for f in self._parent_limits]
        except OSError as exc:
            raise SourceError(f"{self.path}: read failed: {exc.strerror} (cgroup removed?)") from None
        if usage is None or limit is None:
            raise SourceError(f"{self.path}: malformed limit or usage file")
        if self.version == 2:
            active, inactive = stat[2] or 0, stat[3] or 0
            lim = None if limit < 0 else limit
            for f, p in zip(self._parent_limits, parents):
                if p is None:
                    raise SourceError(f"{f.path}: malformed memory.max")
                if p >= 0 and (lim is None or p < lim):     # -1: "max", no limit there
                    lim = p
            under = None
        else:
            hier = stat[4]
            if stat[3] is not None:          # total_* present (use_hierarchy)
                active, inactive = stat[2] or 0, stat[3] or 0
            else:
                active, inactive = stat[7] or 0, stat[8] or 0
            if hier is not None and hier < limit:
                limit = hier
            lim = None if limit >= UNLIMITED else limit
            under = None if ev[1] is None else bool(ev[1])
        psi = None
        if self.psi is not None:
            try:
                psi = self.psi.read()
            except SourceError:
                psi = None
        return CgroupMem(version=self.version, path=self.path, limit=lim, usage=usage,
                         working_set=max(0, usage - inactive), active_file=active, inactive_file=inactive,
                         oom_kill=ev[0], under_oom=under, psi=psi)

    def close(self) -> None:
        for f in (self._limit, self._usage, self._stat, self._events, *self._parent_limits):
            f.close()
        if self.psi is not None:
            self.psi.close()
