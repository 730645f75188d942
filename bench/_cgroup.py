"""A throw-away memory cgroup for the efficacy benchmarks (needs root).

v1 (memory.limit_in_bytes under /sys/fs/cgroup/memory) where that
controller is mounted, else v2 (memory.max); the limit is hard: swap may
not extend it (v1 memory.memsw.limit_in_bytes, v2 memory.swap.max = 0,
where the kernel has them).  Ground truth for the benchmarks: the cgroup's
own oom_kill counter, peak and working set.
"""
from __future__ import annotations

import os
import signal
import time

V1_ROOT = "/sys/fs/cgroup/memory"
V2_ROOT = "/sys/fs/cgroup"


class Cgroup:
    def __init__(self, name: str, limit: int):
        if os.path.exists(os.path.join(V1_ROOT, "memory.limit_in_bytes")):
            self.version, self.path = 1, os.path.join(V1_ROOT, name)
        elif os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers")):
            self.version, self.path = 2, os.path.join(V2_ROOT, name)
        else:
            raise SystemExit("bench: no cgroup memory controller found (v1 or v2)")
        self.limit = limit
        os.makedirs(self.path, exist_ok=True)
        if self.version == 1:
            self._w("memory.limit_in_bytes", str(limit))
            if os.path.exists(os.path.join(self.path, "memory.memsw.limit_in_bytes")):
                self._w("memory.memsw.limit_in_bytes", str(limit))
        else:
            self._w("memory.max", str(limit))
            if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                self._w("memory.swap.max", "0")

    def _w(self, f: str, v: str) -> None:
        with open(os.path.join(self.path, f), "w") as fh:
            fh.write(v)

    def _r(self, f: str) -> str:
        with open(os.path.join(self.path, f)) as fh:
            return fh.read()

    def oom_kills(self) -> int:
        text = self._r("memory.oom_control" if self.version == 1 else "memory.events")
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return 0

    def peak(self) -> int:
        return int(self._r("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"))

    def usage(self) -> tuple[int, int]:
        """(usage, working set = usage - inactive_file)."""
        if self.version == 1:
            usage = int(self._r("memory.usage_in_bytes"))
            key = "total_inactive_file"
        else:
            usage = int(self._r("memory.current"))
            key = "inactive_file"
        inactive = 0
        for line in self._r("memory.stat").splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                inactive = int(v)
        return usage, max(0, usage - inactive)

    def procs(self) -> list[int]:
        return [int(x) for x in self._r("cgroup.procs").split()]

    def add_self(self) -> None:
        """preexec_fn: move the child into the cgroup before it runs."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))

    def oom_eventfd(self):
        """v1: an eventfd signalled on OOM in this cgroup (None on v2)."""
        if self.version != 1:
            return None
        efd = os.eventfd(0)
        ofd = os.open(os.path.join(self.path, "memory.oom_control"), os.O_RDONLY)
        self._w("cgroup.event_control", f"{efd} {ofd}")
        return efd

    def remove(self) -> None:
        """Kill what is left in it, then rmdir (retried while the kernel lets go)."""
        for pid in self.procs():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.05)
