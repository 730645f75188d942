"""Each job's memory, read in one place: for the culprit ranking (culprit.py).

A job the daemon placed in a cgroup (`job.submit` with `pid`, enforced) is
read from that cgroup (v2 `memory.current`, v1 `memory.usage_in_bytes`):
every process in it counts.  A job that gave a pid is also read from
/proc/<pid> with psutil (its RSS; with no cgroup, plus its descendants'),
and the larger of the two is its memory (a v1 cgroup charges only pages
allocated after the move).  A job with neither has no memory reading, and
so is never the culprit on memory evidence.  Read once a beat, only for
jobs that gave a pid or have a cgroup.  Growth is the change over the evidence window, per job
submission (a job released and submitted again under the same id starts
over).
"""
from __future__ import annotations

import collections
import os

__all__ = ["JobMemory", "read_cgroup_bytes", "read_pid_bytes"]

MB = 1 << 20


def read_cgroup_bytes(path: str) -> int | None:
    for name in ("memory.current", "memory.usage_in_bytes"):
        try:
            with open(os.path.join(path, name)) as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            continue
    return None


def read_pid_bytes(pid: int, children: bool = True) -> int | None:
    """RSS of the process (and, with `children`, of its descendants: that
    walks every process's parent, so only for a job without a cgroup)."""
    import psutil          # lazily: only when some job gave a pid
    try:
        p = psutil.Process(pid)
        total = p.memory_info().rss
        for c in (p.children(recursive=True) if children else ()):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


class JobMemory:
    """Per-job readings over the last `window_s` seconds (monotonic)."""

    def __init__(self, window_s: float, read_cgroup=read_cgroup_bytes, read_pid=read_pid_bytes):
        self.window_s = window_s
        self.read_cgroup, self.read_pid = read_cgroup, read_pid
        self._hist: dict[tuple, collections.deque] = {}

    def read(self, job: dict) -> tuple[int, str] | None:
        """(bytes, source) for a job dict from the governor, or None.  With
        both a cgroup and a pid, the larger of the two: a v1 memory cgroup
        charges only what was allocated after the move (the pages the
        process already had stay charged where they were)."""
        best = None
        cg = job.get("cgroup") if job.get("enforced") else None
        if cg:
            b = self.read_cgroup(cg)
            if b is not None:
                best = (b, "cgroup")
        pid = job.get("pid")
        if pid:
            # in a cgroup, its other processes are charged there: the pid's own RSS is enough
            b = self.read_pid(int(pid), best is None)
            if b is not None and (best is None or b > best[0]):
                best = (b, "proc")
        return best

    def observe(self, jobs: list[dict], now: float) -> list[dict]:
        """The jobs with a "memory" entry added where it is known:
        {bytes, soft_bytes, growth_bytes, source}.  Forgets jobs that are gone."""
        out, seen = [], set()
        for j in jobs:
            key = (j.get("job_id"), j.get("submitted_at"))
            seen.add(key)
            r = self.read(j)
            j = dict(j)
            if r is not None:
                h = self._hist.setdefault(key, collections.deque())
                h.append((now, r[0]))
                while len(h) > 1 and now - h[0][0] > self.window_s:
                    h.popleft()
                soft_mb = ((j.get("profile") or {}).get("mem") or {}).get("soft_cap_mb") or 0
                j["memory"] = {"bytes": r[0], "soft_bytes": int(soft_mb * MB),
                               "growth_bytes": r[0] - h[0][1], "source": r[1]}
            out.append(j)
        for key in [k for k in self._hist if k not in seen]:
            del self._hist[key]
        return out
