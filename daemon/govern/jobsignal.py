"""A job's own signal: the cgroup the daemon made for it, sensed.

A job that gave its pid runs in `<cgroup_root>/<job_id>` with HARD as its
hard limit: the kernel kills it when that cgroup is full, however much the
machine has left.  So every such cgroup is a budget of its own: each
machine sample, its usage, limit and (v2) memory PSI are read
(sources/cgroup.py) and fed, with the same round's host reading, to a
FusedModel of its own -- the machine signal's model, not a copy of it -- and
the job's degradation level comes from a PID of its own (level.py) fed with
that stress.  The governor (governor.py) then steps the job on whichever of
the two signals is higher, machine or job cgroup, and says which in the
directive's cause.

One FusedModel per job: the trend fit keeps per-budget history, and a
job's history must not mix with the machine's or another job's.
"""
from __future__ import annotations

import dataclasses

from ..errors import SourceError
from ..sources.cgroup import CgroupReader
from ..stress.fused import FusedModel
from .level import Level

MB = 1 << 20


class JobSignal:
    """The sensed state of one job cgroup.  `update` does the I/O (the
    unit calls it); the stress and level it returns go to the core."""

    def __init__(self, path: str, config):
        self.path = path
        self.reader = CgroupReader(path)          # SourceError: not a memory cgroup
        self.model = FusedModel(config)
        self.level = Level(config.govern)
        self.mem = None                           # sources.cgroup.CgroupMem, last read
        self.sample = None                        # stress.sample.StressSample, last computed
        self.error: str | None = None
        self.reads = 0

    def reconfigure(self, config) -> None:
        self.model.configure(config)
        self.level.reconfigure(config.govern)

    def update(self, reading):
        """One round: read the cgroup, run the model on the round's host
        reading with this cgroup in place of the watched one.  Returns the
        job's StressSample, or None when the cgroup could not be read (the
        reason is kept in `error`)."""
        try:
            mem = self.reader.read()
        except SourceError as exc:
            self.error = str(exc)
            return None
        self.error = None
        self.reads += 1
        self.mem = mem
        r = dataclasses.replace(reading, cgroup=mem)
        s = self.model.update(r, force=True)
        self.sample = s
        self.level.update(float(s.stress), float(s.monotonic))
        return s

    def to_dict(self) -> dict:
        """For job.get: what the job's cgroup looks like to the governor now."""
        d: dict = {"cgroup": self.path, "reads": self.reads}
        if self.error:
            d["error"] = self.error
        m = self.mem
        if m is not None:
            d.update(usage_bytes=m.usage, working_set_bytes=m.working_set)
            if m.limit is not None:
                d["limit_bytes"] = m.limit
            if m.oom_kill is not None:
                d["oom_kills"] = m.oom_kill
            if m.psi is not None:
                d["psi_some_avg10"] = m.psi.some_avg10
                if m.psi.full_avg10 is not None:
                    d["psi_full_avg10"] = m.psi.full_avg10
        s = self.sample
        if s is not None:
            d.update(stress=s.stress, band=s.band, model=s.model, level=round(self.level.value, 6),
                     sample_monotonic=s.monotonic)
            if s.seconds_to_exhaustion is not None:
                d["seconds_to_exhaustion"] = s.seconds_to_exhaustion
        return d

    def close(self) -> None:
        self.reader.close()
