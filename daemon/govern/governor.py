"""The governor's core: jobs, admission, directives and acknowledgements.

Pure (no I/O, no asyncio): every input carries its time or reads the
injected clock, and every output is data (directive dicts for the unit to
publish, Job dicts for RPC results).  The unit (unit.py) feeds it stress
samples and RPC calls, and publishes what it returns.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .. import errors as E
from ..errors import RpcError, invalid_params
from ..metrics import Histogram, family, sample
from ..runes import Profile, Step, format_profile, resolve, step_json, to_json
from .level import Level
from .policy import LIFT, calm_level, make_stepper, metadata_for, threshold

DIRECTIVE_SCHEMA = 1
DIRECTIVE_KINDS = ("APPLY", "LIFT", "QUARANTINE", "RELEASE_QUARANTINE")
JOB_ID = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,64}")
# Metadata keys the governor owns; a submitted value for them is overwritten.
DEGRADATION_FIELDS = ("kv_shrink_factor", "max_context_tokens", "disabled_features", "batch_mode",
                      "offload_tier", "degraded", "degradation_level", "quarantined")


@dataclass
class Pending:
    version: int
    issued: float            # monotonic
    sample_monotonic: float | None
    overdue: bool = False    # already counted in Governor.overdue_total
    kind: str = ""           # the directive's kind, for the per-kind counters


@dataclass
class JobState:
    job_id: str
    token: int                # distinguishes a re-submission under the same id
    profile: Profile
    profile_name: str | None
    priority: int
    threshold: float
    user_metadata: dict
    stepper: object
    pid: int | None
    owner_pid: int
    owner_uid: int
    submitted_at: float
    last_heartbeat: float
    version: int = 0
    acked: int = 0
    pending: dict[int, Pending] = field(default_factory=dict)
    directives_total: int = 0
    flips: int = 0
    last_ack_latency_s: float | None = None
    quarantined: bool = False
    enforcement: dict = field(default_factory=lambda: {"enforced": False, "enforce_reason": "no pid given"})
    # The job cgroup's own signal (jobsignal.JobSignal), set by the unit
    # once the job is placed in a cgroup of its own; None otherwise.
    signal: object = None

    @property
    def active_steps(self) -> tuple[Step, ...]:
        return self.stepper.steps[:self.stepper.active]

    def metadata(self) -> dict:
        out = dict(self.user_metadata)
        out.update(metadata_for(self.active_steps))
        out["quarantined"] = self.quarantined
        return out


class Governor:
    def __init__(self, cfg, clock):
        self.cfg = cfg
        self.clock = clock
        self.mode = cfg.mode
        self.level = Level(cfg)
        self.jobs: dict[str, JobState] = {}
        self.quarantined: dict[int, set[str]] = {}
        self.early_recovery: str | None = None
        self.last_sample = None
        self.directives_total = 0
        self.refused_total = 0
        self.overdue_total = 0     # directives that went unacked past ack_timeout_s, ever
        self._tokens = 0
        # For metrics(): per directive kind (a handful of fixed names), each
        # series present from the start so rates work from the first scrape.
        kinds = dict.fromkeys(DIRECTIVE_KINDS, 0)
        self.issued_by_kind: Counter = Counter(kinds)
        self.acked_by_kind: Counter = Counter(kinds)
        self.overdue_by_kind: Counter = Counter(kinds)
        # Sample to acknowledgement, the latency the SLO is written on.
        self.ack_latency = Histogram()

    def reconfigure(self, cfg) -> None:
        """Apply a reloaded [govern]; the mode of live jobs stays as submitted."""
        self.cfg = cfg
        self.mode = cfg.mode
        self.level.reconfigure(cfg)

    # ---------------------------------------------------------- admission

    @property
    def stress(self) -> float | None:
        return None if self.last_sample is None else float(self.last_sample.stress)

    def check_admission(self, priority: int) -> None:
        """Refuse at stress >= refuse_stress for priority <= refuse_priority
        (both modes), and at a quarantined priority."""
        s = self.stress
        cfg = self.cfg
        if s is not None and s >= cfg.refuse_stress and priority <= cfg.refuse_priority:
            self.refused_total += 1
            raise RpcError(E.ADMISSION_REFUSED,
                           f"admission refused: stress {s:.3f} >= {cfg.refuse_stress} and priority "
                           f"{priority} <= {cfg.refuse_priority}; retry when stress falls",
                           {"stress": s, "priority": priority, "refuse_stress": cfg.refuse_stress,
                            "refuse_priority": cfg.refuse_priority})
        if self.quarantined.get(priority):
            self.refused_total += 1
            raise RpcError(E.QUARANTINED,
                           f"admission refused: priority {priority} is quarantined "
                           f"(job(s) {', '.join(sorted(self.quarantined[priority]))})",
                           {"priority": priority, "jobs": sorted(self.quarantined[priority])})

    # --------------------------------------------------------------- jobs

    def submit(self, job_id: str, profile_arg: str, metadata: dict | None, *, pid: int | None = None,
               owner_pid: int = 0, owner_uid: int = 0) -> JobState:
        """Validate, admit and register a job; its degradation state starts at
        what the latest sample calls for (reported in the result, no directive)."""
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise invalid_params("job_id must be 1-64 characters of A-Z a-z 0-9 . _ -",
                                 param="job_id", got=str(job_id)[:80])
        if metadata is not None and not isinstance(metadata, dict):
            raise invalid_params("metadata must be an object (JSON key/value pairs)",
                                 param="metadata", got=type(metadata).__name__)
        if job_id in self.jobs:
            raise RpcError(E.CONFLICT, f"job {job_id!r} is already registered (release it first)",
                           {"job_id": job_id})
        name, profile = resolve(profile_arg)       # ParseError → -32602 with line/column
        self.check_admission(profile.priority)
        now = self.clock.monotonic()
        thresh = threshold(profile.priority)
        stepper = make_stepper(self.mode, profile.steps, thresh, self.cfg)
        if self.last_sample is not None:
            stepper.active = stepper.target(float(self.last_sample.stress), self.level.value,
                                            self.level.notches > 0)
        self._tokens += 1
        job = JobState(job_id=job_id, token=self._tokens, profile=profile, profile_name=name,
                       priority=profile.priority, threshold=thresh,
                       user_metadata={k: v for k, v in (metadata or {}).items()
                                      if k not in DEGRADATION_FIELDS},
                       stepper=stepper, pid=pid, owner_pid=owner_pid, owner_uid=owner_uid,
                       submitted_at=self.clock.wall(), last_heartbeat=now)
        self.jobs[job_id] = job
        return job

    def get(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            raise E.not_found(f"no job {job_id!r}", job_id=job_id)
        return job

    def heartbeat(self, job_id: str) -> JobState:
        job = self.get(job_id)
        job.last_heartbeat = self.clock.monotonic()
        return job

    def release(self, job_id: str) -> JobState:
        job = self.get(job_id)
        self._mark_overdue(job.pending.values(), self.clock.monotonic())
        del self.jobs[job_id]
        if job.quarantined:
            self._unquarantine_priority(job)
        return job

    def expired(self) -> list[str]:
        """Jobs whose heartbeats stopped for longer than heartbeat_timeout_s."""
        now = self.clock.monotonic()
        limit = self.cfg.heartbeat_timeout_s
        return [j.job_id for j in self.jobs.values() if now - j.last_heartbeat > limit]

    # ---------------------------------------------------------- directives

    def on_sample(self, sample) -> list[dict]:
        """A new stress sample: update the level, then each job's steps.
        Returns the directives to push (at most one per job)."""
        self.last_sample = sample
        now = float(sample.monotonic)
        stress = float(sample.stress)
        level = self.level.update(stress, now)
        forced = self.level.notches > 0
        early = self.early_recovery is not None
        calm = calm_level(sample)
        out = []
        for job in list(self.jobs.values()):
            js = self._job_sample(job, now)
            if js is not None and float(js.stress) > stress:
                # Its own cgroup is the tighter budget: step it on that signal.
                j_stress, j_level = float(js.stress), max(level, job.signal.level.value)
            else:
                js, j_stress, j_level = None, stress, level
            change = job.stepper.evaluate(j_stress, j_level, now, forced=forced, early=early,
                                         calm_level=calm if js is None else calm_level(js))
            if change is not None:
                job.flips += 1
                out.append(self._directive(job, change.kind, change.steps, change.reason, sample,
                                           job_sample=js, level=j_level))
        if early and any(d["kind"] == LIFT for d in out):
            self.early_recovery = None
        return out

    def _job_sample(self, job: JobState, now: float):
        """The job cgroup's sample of this round (None: no cgroup of its own,
        or not read this round: a stale one must not drive a decision)."""
        sig = job.signal
        s = None if sig is None else sig.sample
        if s is None or sig.error or abs(float(s.monotonic) - now) > 1e-6:
            return None
        return s

    def _cause(self, job: JobState, reason: str, sample, job_sample=None, level: float | None = None) -> dict:
        """Why: the sample behind the decision.  `signal` says which: "machine"
        (the sensing loop's stress) or "job_cgroup" (the job's own cgroup,
        whose stress was the higher of the two); `machine_stress` and, for a
        job with a cgroup, `job_stress` are both given."""
        cause = {"reason": reason, "threshold": job.threshold,
                 "level": self.level.value if level is None else level,
                 "stress": 0.0, "sample_timestamp": 0.0, "sample_monotonic": 0.0,
                 "signal": "machine" if job_sample is None else "job_cgroup"}
        if sample is not None:
            cause.update(stress=float(sample.stress), sample_timestamp=float(sample.timestamp),
                         sample_monotonic=float(sample.monotonic), band=sample.band, model=sample.model,
                         machine_stress=float(sample.stress))
        sig = job.signal
        if sig is not None and sig.sample is not None:
            cause["job_stress"] = float(sig.sample.stress)
        if job_sample is not None:
            cause.update(stress=float(job_sample.stress), band=job_sample.band, model=job_sample.model,
                         cgroup=sig.path)
            if job_sample.seconds_to_exhaustion is not None:
                cause["seconds_to_exhaustion"] = float(job_sample.seconds_to_exhaustion)
        elif getattr(sample, "seconds_to_exhaustion", None) is not None:
            cause["seconds_to_exhaustion"] = float(sample.seconds_to_exhaustion)
        return cause

    def _directive(self, job: JobState, kind: str, steps, reason: str, sample, job_sample=None,
                   level: float | None = None) -> dict:
        job.version += 1
        job.directives_total += 1
        self.directives_total += 1
        now = self.clock.monotonic()
        cause = self._cause(job, reason, sample, job_sample, level)
        job.pending[job.version] = Pending(job.version, now,
                                           cause["sample_monotonic"] if sample is not None else None,
                                           kind=kind)
        self.issued_by_kind[kind] += 1
        return self._directive_dict(job, kind, steps, cause, now)

    def _directive_dict(self, job: JobState, kind: str, steps, cause: dict, now: float) -> dict:
        """What is pushed: the job's version and whole degradation state, and why."""
        return {"schema": DIRECTIVE_SCHEMA, "job_id": job.job_id, "version": job.version, "kind": kind,
                "steps": [step_json(s) for s in steps], "metadata": job.metadata(),
                "active_steps": [s.order for s in job.active_steps], "cause": cause,
                "issued_at": self.clock.wall(), "issued_monotonic": now, "mode": self.mode}

    def state_directive(self, job_id: str) -> dict | None:
        """The current state as a STATE directive, when the job has unacked
        directives (e.g. it subscribed after they were pushed)."""
        job = self.jobs.get(job_id)
        if job is None or job.acked >= job.version:
            return None
        return self._directive_dict(job, "STATE", (), self._cause(job, "re-sent on subscribe", self.last_sample),
                                    self.clock.monotonic())

    def ack(self, job_id: str, version: int) -> dict:
        job = self.get(job_id)
        if version > job.version:
            raise invalid_params(f"job {job_id!r} has no directive version {version} "
                                 f"(latest is {job.version})", param="version", latest=job.version)
        now = self.clock.monotonic()
        latency = None
        acked = [job.pending.pop(v) for v in [v for v in job.pending if v <= version]]
        self._mark_overdue(acked, now)       # acked too late: it was overdue all the same
        for p in acked:
            self.acked_by_kind[p.kind] += 1
            if p.version == version and p.sample_monotonic:
                latency = max(0.0, now - p.sample_monotonic)
        if latency is not None:
            job.last_ack_latency_s = latency
            self.ack_latency.observe(latency)
        job.acked = max(job.acked, version)
        out = {"job_id": job_id, "acked_version": job.acked, "unacked": len(job.pending)}
        if latency is not None:
            out["latency_s"] = round(latency, 6)
        return out

    def unacked_directives(self) -> int:
        return sum(len(j.pending) for j in self.jobs.values())

    def overdue_directives(self) -> int:
        limit = self.clock.monotonic() - self.cfg.ack_timeout_s
        return sum(1 for j in self.jobs.values() for p in j.pending.values() if p.issued < limit)

    def _mark_overdue(self, pendings, now: float) -> None:
        limit = now - self.cfg.ack_timeout_s
        for p in pendings:
            if not p.overdue and p.issued < limit:
                p.overdue = True
                self.overdue_total += 1
                self.overdue_by_kind[p.kind] += 1

    def overdue_directives_total(self) -> int:
        """Directives that ever went unacknowledged past ack_timeout_s, each
        counted once (monotonic; the control loop counts its increments).  A
        directive acked late or dropped with its job still counts."""
        now = self.clock.monotonic()
        for j in self.jobs.values():
            self._mark_overdue(j.pending.values(), now)
        return self.overdue_total

    # ----------------------------------------------- for the control loop

    def raise_level(self, reason: str) -> dict:
        """APPLY_BALANCE: the machine-wide level up one notch (taken back one
        per hold time while stress stays below setpoint - hysteresis).  Not
        while stress is below the setpoint, nor past a level of 1.0: then
        `added` is False and `why` says which."""
        why = self.level.raise_notch()
        out = {"added": why is None, "notches": self.level.notches, "level": round(self.level.value, 6)}
        if why is not None:
            out["why"] = why
        return out

    def allow_early_recovery(self, reason: str) -> None:
        """APPLY_OPTIMIZE: the next lift may skip the rest of its hold time."""
        self.early_recovery = reason

    def quarantine(self, job_id: str, reason: str) -> dict:
        job = self.get(job_id)
        job.quarantined = True
        self.quarantined.setdefault(job.priority, set()).add(job_id)
        return self._directive(job, "QUARANTINE", (), f"quarantined: {reason}", self.last_sample)

    def release_quarantine(self, job_id: str) -> dict:
        job = self.get(job_id)
        if not job.quarantined:
            raise RpcError(E.CONFLICT, f"job {job_id!r} is not quarantined", {"job_id": job_id})
        job.quarantined = False
        self._unquarantine_priority(job)
        return self._directive(job, "RELEASE_QUARANTINE", (), "quarantine released", self.last_sample)

    def _unquarantine_priority(self, job: JobState) -> None:
        ids = self.quarantined.get(job.priority)
        if ids is not None:
            ids.discard(job.job_id)
            if not ids:
                del self.quarantined[job.priority]

    # ------------------------------------------------------------ views

    def job_dict(self, job: JobState) -> dict:
        now = self.clock.monotonic()
        limit = now - self.cfg.ack_timeout_s
        d = {
            "job_id": job.job_id, "admitted": True, "mode": self.mode,
            "profile_text": format_profile(job.profile), "profile": to_json(job.profile),
            "priority": job.priority, "threshold": round(job.threshold, 6), "metadata": job.metadata(),
            "active_steps": [s.order for s in job.active_steps],
            "directive_version": job.version, "acked_version": job.acked,
            "unacked": len(job.pending),
            "overdue": sum(1 for p in job.pending.values() if p.issued < limit),
            "owner_pid": job.owner_pid,
            "heartbeat_timeout_s": self.cfg.heartbeat_timeout_s,
            "heartbeat_deadline_s": round(max(0.0, self.cfg.heartbeat_timeout_s - (now - job.last_heartbeat)), 3),
            "submitted_at": job.submitted_at, "quarantined": job.quarantined,
            "directives_total": job.directives_total, "flips": job.flips,
        }
        d.update(job.enforcement)
        if job.signal is not None:
            d["job_signal"] = job.signal.to_dict()
        if job.profile_name:
            d["profile_name"] = job.profile_name
        if job.pid is not None:
            d["pid"] = job.pid
        if job.last_ack_latency_s is not None:
            d["last_ack_latency_s"] = round(job.last_ack_latency_s, 6)
        return d

    def jobs_list(self) -> list[dict]:
        """Each job with job_id, priority, pid, anomalies (attributable count
        if known: here the directives it left unacknowledged past the timeout)."""
        out = []
        for j in self.jobs.values():
            d = self.job_dict(j)
            d["anomalies"] = d["overdue"]
            out.append(d)
        return out

    def metrics(self) -> list[dict]:
        """Jobs by state, directives by kind, ack latency, the degradation level."""
        self.overdue_directives_total()     # brings overdue_by_kind up to now
        states = Counter()
        for j in self.jobs.values():
            states["quarantined" if j.quarantined else "degraded" if j.stepper.active else "normal"] += 1

        def by_kind(c: Counter) -> list[dict]:
            return [sample(float(n), {"kind": k}) for k, n in sorted(c.items())]
        return [
            family("aal_core_jobs", "gauge", "Jobs held by the governor, by state (normal, degraded, quarantined).",
                   [sample(float(states[k]), {"state": k}) for k in ("normal", "degraded", "quarantined")]),
            family("aal_core_directives_issued_total", "counter", "Directives issued, by kind.",
                   by_kind(self.issued_by_kind)),
            family("aal_core_directives_acked_total", "counter", "Directives acknowledged, by kind.",
                   by_kind(self.acked_by_kind)),
            family("aal_core_directives_overdue_total", "counter",
                   "Directives unacknowledged past govern.ack_timeout_s, by kind (each counted once).",
                   by_kind(self.overdue_by_kind)),
            family("aal_core_directives_unacked", "gauge", "Directives not acknowledged yet.",
                   float(self.unacked_directives())),
            family("aal_core_directives_overdue_pending", "gauge", "Directives unacknowledged past the timeout now.",
                   float(self.overdue_directives())),
            family("aal_core_directive_ack_latency_seconds", "histogram",
                   "From the stress sample that caused a directive to its acknowledgement.",
                   self.ack_latency.value()),
            family("aal_core_degradation_level", "gauge", "The machine-wide degradation level (0-1).",
                   float(self.level.value)),
            family("aal_core_degradation_notches", "gauge", "Notches the control loop raised the level by.",
                   float(self.level.notches)),
            family("aal_core_admission_refused_total", "counter", "Job submissions refused under stress.",
                   float(self.refused_total)),
        ]

    def status(self) -> dict:
        st = {"mode": self.mode, "setpoint": self.cfg.setpoint, "level": round(self.level.value, 6),
              "notches": self.level.notches, "pid": self.level.state(), "jobs": len(self.jobs),
              "unacked_directives": self.unacked_directives(),
              "overdue_directives": self.overdue_directives(),
              "quarantined_priorities": sorted(self.quarantined),
              "directives_total": self.directives_total, "refused_total": self.refused_total}
        if self.stress is not None:
            st["last_stress"] = self.stress
        return st
