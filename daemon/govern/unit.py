"""GovernorUnit: the governor on the socket.

Feeds every stress sample from sensing to the core (governor.py), pushes the
directives it returns to `job.subscribe` subscribers, records them in the
ledger, places jobs in cgroups, and releases jobs whose connection closed or
whose heartbeats stopped.
"""
from __future__ import annotations

import asyncio
import os

from .. import errors as E
from ..errors import RpcError, SourceError, invalid_params
from ..log import get_logger
from ..rpc.registry import Access
from ..runes import PROFILES, format_profile, resolve, to_json
from ..stress.sample import BAND_ORDER
from ..stress.unit import FAST_TTE_S
from ..units import Unit
from .cgroups import CgroupEnforcer
from .governor import Governor
from .jobsignal import JobSignal

log = get_logger("govern")

TOPIC = "job"
NOTIFY = "job.directive"
MB = 1 << 20


def _pid_uid(pid: int, proc_root: str = "/proc") -> int | None:
    try:
        with open(os.path.join(proc_root, str(pid), "status")) as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class GovernorUnit(Unit):
    name = "govern"

    def __init__(self, ctx, sensing=None, ledger=None, enforcer: CgroupEnforcer | None = None):
        super().__init__(ctx)
        self.sensing = sensing
        self.ledger = ledger
        self.core = Governor(ctx.config.govern, ctx.clock)
        self.enforcer = enforcer or CgroupEnforcer(ctx.config.govern.cgroup_root,
                                                    group=ctx.config.govern.cgroup_group)
        self._reaper: asyncio.Task | None = None
        # Set when a job is submitted: the reaper sleeps on it while there is
        # none (no wake-up per second on an idle daemon).
        self._has_jobs = asyncio.Event()
        self._ledger_tasks: set = set()
        # job_id -> (uid, connection key) of the jobs-held budget it took.
        self._held: dict[str, tuple] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.sensing is not None:
            self.sensing.add_listener(self.on_sample)
            if hasattr(self.sensing, "add_fast_hint"):
                self.sensing.add_fast_hint(self.jobs_need_fast_sampling)
            self.core.last_sample = self.sensing.latest()
        else:
            log.warning("no_sensing", effect="no stress samples: no directives, no refusals")
        self._reaper = asyncio.ensure_future(self._reap())
        log.info("started", mode=self.core.mode, setpoint=self.core.cfg.setpoint,
                 cgroups=self.enforcer.mode, cgroup_root=self.enforcer.base or "-")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for job_id in list(self.core.jobs):
            self._release(job_id, "daemon stopping")
        self.enforcer.close()
        if self._ledger_tasks:
            await asyncio.wait(list(self._ledger_tasks), timeout=2.0)

    def reload(self, config) -> None:
        super().reload(config)
        self.core.reconfigure(config.govern)
        for job in self.core.jobs.values():
            if job.signal is not None:
                job.signal.reconfigure(config)

    def status(self) -> dict:
        return {}

    def metrics(self) -> list[dict]:
        out = self.core.metrics()
        enforced = sum(1 for j in self.core.jobs.values() if j.enforcement.get("enforced"))
        out.append({"name": "aal_core_jobs_enforced", "type": "gauge",
                    "help": "Jobs placed in a cgroup with hard caps.",
                    "samples": [{"labels": {}, "value": float(enforced)}]})
        return out

    def summary(self) -> str:
        c = self.core
        unacked = c.unacked_directives()
        return (f"{len(c.jobs)} jobs, level {c.level.value:.2f}"
                + (f", {unacked} unacked" if unacked else ""))

    def govern_status(self) -> dict:
        out = self.core.status()
        out.update(self.enforcer.status())
        return out

    # ------------------------------------------------------------- samples

    def on_sample(self, sample) -> None:
        """Called in the event loop for every new stress sample."""
        self._sense_jobs(sample)
        try:
            directives = self.core.on_sample(sample)
        except Exception as exc:  # noqa: BLE001 - a bad sample must not stop sensing's loop
            log.error("sample_failed", error=repr(exc))
            return
        for d in directives:
            self._push(d)

    def _sense_jobs(self, sample) -> None:
        """Read every job cgroup for this round (the sample's own reading,
        so the job's stress and the machine's describe the same instant)."""
        r = getattr(self.sensing, "last_reading", None)
        if r is None or r.t != sample.monotonic:
            return
        for job in self.core.jobs.values():
            if job.signal is None:
                continue
            was = job.signal.error
            try:
                job.signal.update(r)
            except Exception as exc:  # noqa: BLE001 - one job's cgroup must not stop the others
                job.signal.error = repr(exc)
            if job.signal.error and job.signal.error != was:
                log.warning("job_signal_unreadable", job_id=job.job_id, reason=job.signal.error)

    def jobs_need_fast_sampling(self) -> bool:
        """A job cgroup at HIGH or worse, or under a minute from its cap:
        sample at sense.sample_hz_max, as the machine signal does for itself."""
        for job in self.core.jobs.values():
            s = None if job.signal is None else job.signal.sample
            if s is not None and (BAND_ORDER[s.band] >= BAND_ORDER["HIGH"] or (
                    s.seconds_to_exhaustion is not None and s.seconds_to_exhaustion < FAST_TTE_S)):
                return True
        return False

    def _watch(self, job) -> None:
        """A job placed in a cgroup of its own: sense that cgroup from now on."""
        path = job.enforcement.get("cgroup")
        if not job.enforcement.get("enforced") or not path:
            return
        try:
            job.signal = JobSignal(path, self.ctx.config)
        except SourceError as exc:
            log.warning("job_signal_absent", job_id=job.job_id, cgroup=path, reason=str(exc))

    def _push(self, d: dict) -> None:
        n = self.ctx.hub.publish(TOPIC, d)
        log.info("directive", job_id=d["job_id"], version=d["version"], kind=d["kind"],
                 steps=",".join(str(s["order"]) for s in d["steps"]) or "-",
                 stress=round(d["cause"]["stress"], 4), level=round(d["cause"]["level"], 4),
                 signal=d["cause"].get("signal", "-"), delivered=n)
        self._record({"type": "govern.directive", "job_id": d["job_id"], "version": d["version"],
                      "kind": d["kind"], "steps": [s["order"] for s in d["steps"]],
                      "active_steps": d["active_steps"], "reason": d["cause"]["reason"],
                      "stress": d["cause"]["stress"], "level": d["cause"]["level"], "mode": d["mode"],
                      "signal": d["cause"].get("signal", "machine")})

    def _record(self, entry: dict) -> None:
        if self.ledger is None:
            return
        try:
            fut = asyncio.ensure_future(self.ledger.append(entry))
        except Exception as exc:  # noqa: BLE001
            log.error("ledger_append_failed", error=repr(exc), type=entry.get("type"))
            return
        self._ledger_tasks.add(fut)

        def done(f):
            self._ledger_tasks.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("ledger_append_failed", error=repr(f.exception()), type=entry.get("type"))
        fut.add_done_callback(done)

    # -------------------------------------------------------- control loop

    def raise_level(self, reason: str) -> dict:
        res = self.core.raise_level(reason)
        if res["added"]:
            log.info("level_raised", reason=reason, notches=res["notches"])
        return res

    def allow_early_recovery(self, reason: str) -> None:
        self.core.allow_early_recovery(reason)
        log.info("early_recovery_allowed", reason=reason)

    def quarantine(self, job_id: str, reason: str) -> None:
        self._push(self.core.quarantine(job_id, reason))

    def release_quarantine(self, job_id: str) -> None:
        self._push(self.core.release_quarantine(job_id))

    def overdue_directives_total(self) -> int:
        """For the control loop: directives ever left unacked past ack_timeout_s (monotonic)."""
        return self.core.overdue_directives_total()

    def jobs(self) -> list[dict]:
        return self.core.jobs_list()

    def stress_view(self) -> dict:
        """For the control loop's quarantine release: the latest stress and the setpoint."""
        return {"stress": self.core.stress, "setpoint": self.core.cfg.setpoint}

    # ------------------------------------------------------------ releases

    def _release(self, job_id: str, why: str) -> dict:
        job = self.core.release(job_id)
        self._drop_held(job_id)
        if job.signal is not None:
            job.signal.close()
            job.signal = None
        out = {"job_id": job_id, "released": True}
        if job.enforcement.get("enforced"):
            out["cgroup_removed"] = self.enforcer.remove(job_id)
        log.info("job_released", job_id=job_id, why=why, directives=job.directives_total,
                 unacked=len(job.pending))
        self._record({"type": "govern.release", "job_id": job_id, "why": why})
        return out

    def _drop_held(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        if held is not None and self.ctx.budgets is not None:
            self.ctx.budgets.drop("jobs", *held)

    def _on_close(self, job_id: str, token: int) -> None:
        job = self.core.jobs.get(job_id)
        if job is not None and job.token == token:
            self._release(job_id, "connection closed")

    async def _reap(self) -> None:
        while True:
            if not self.core.jobs:
                self._has_jobs.clear()
                await self._has_jobs.wait()
            await asyncio.sleep(min(1.0, self.core.cfg.heartbeat_timeout_s / 4))
            for job_id in self.core.expired():
                self._release(job_id, "heartbeats stopped")

    # ------------------------------------------------------------------ RPC

    def register(self, registry) -> None:
        r = registry
        r.add("profile.parse", self.rpc_profile_parse, params="ProfileParseParams",
              result="ProfileParseResult", example={"text": "MEM[SOFT=512,HARD=1024,VOL=LOW]"})
        r.add("profile.list", self.rpc_profile_list, result="ProfileListResult")
        r.add("job.submit", self.rpc_submit, params="JobSubmitParams", result="Job", access=Access.WRITE,
              example={"job_id": "example", "profile": "BALANCED", "metadata": {"model": "toy"}})
        r.add("job.heartbeat", self.rpc_heartbeat, params="JobHeartbeatParams", result="JobHeartbeatResult",
              access=Access.WRITE, example={"job_id": "no-such-job"}, example_error=E.NOT_FOUND)
        r.add("job.release", self.rpc_release, params="JobReleaseParams", result="JobReleaseResult",
              access=Access.WRITE, example={"job_id": "no-such-job"}, example_error=E.NOT_FOUND)
        r.add("job.list", self.rpc_list, result="JobListResult")
        r.add("job.get", self.rpc_get, params="JobGetParams", result="Job",
              example={"job_id": "no-such-job"}, example_error=E.NOT_FOUND)
        r.add("job.ack", self.rpc_ack, params="JobAckParams", result="JobAckResult", access=Access.WRITE,
              example={"job_id": "no-such-job", "version": 1}, example_error=E.NOT_FOUND)
        r.add_topic(TOPIC, data="Directive", subscribe=self.rpc_subscribe, notify_method=NOTIFY,
                    params="JobSubscribeParams", example={"job_id": "any"},
                    summary="Push job.directive notifications for a job to this connection.")
        r.add("govern.status", lambda p, call: self.govern_status(), result="GovernStatus",
              summary="The governor: mode, level, PID state, unacknowledged directives.")

    def rpc_profile_parse(self, p, call):
        """Parse rune text (or a built-in name) into the profile JSON and its canonical text."""
        name, prof = resolve(p["text"])
        out = {"profile": to_json(prof), "text": format_profile(prof)}
        if name:
            out["name"] = name
        return out

    def rpc_profile_list(self, p, call):
        """The built-in profiles: MINIMAL, BALANCED, PERFORMANCE."""
        return {"profiles": [{"name": n, "text": format_profile(pr), "profile": to_json(pr)}
                             for n, pr in PROFILES.items()]}

    def rpc_submit(self, p, call):
        """Register a job: admission, degradation state, cgroup placement."""
        pid = p.get("pid")
        if pid is not None:
            if pid in (1, os.getpid()):
                raise invalid_params(f"pid {pid} is {'init' if pid == 1 else 'aal-core itself'}: "
                                     "it cannot be placed in a job's cgroup", param="pid", got=pid)
            uid = _pid_uid(pid)
            if uid is None or pid <= 0:
                raise invalid_params(f"pid {pid} is not a running process", param="pid", got=pid)
            if call.access < Access.ADMIN and uid != call.uid:
                raise RpcError(E.PERMISSION_DENIED,
                               f"pid {pid} belongs to uid {uid}, not to the caller (uid {call.uid})",
                               {"pid": pid, "owner_uid": uid, "peer_uid": call.uid})
        budgets = self.ctx.budgets
        if budgets is not None and p["job_id"] not in self.core.jobs:
            # Raises BUDGET_EXCEEDED past jobs_per_uid / jobs_per_connection.
            budgets.hold("jobs", call.uid, call)
            try:
                job = self.core.submit(p["job_id"], p["profile"], p.get("metadata"), pid=pid,
                                       owner_pid=call.pid, owner_uid=call.uid)
            except BaseException:
                budgets.drop("jobs", call.uid, call)
                raise
            self._held[job.job_id] = (call.uid, call)
        else:
            job = self.core.submit(p["job_id"], p["profile"], p.get("metadata"), pid=pid,
                                   owner_pid=call.pid, owner_uid=call.uid)
        if pid is not None:
            job.enforcement = self.enforcer.place(job.job_id, pid, job.profile.mem.soft_mb * MB,
                                                  job.profile.mem.hard_mb * MB)
            self._watch(job)
        call.on_close(lambda jid=job.job_id, tok=job.token: self._on_close(jid, tok))
        self._has_jobs.set()
        log.info("job_submitted", job_id=job.job_id, priority=job.priority, pid=pid or "-",
                 enforced=job.enforcement.get("enforced"), active=len(job.active_steps))
        self._record({"type": "govern.submit", "job_id": job.job_id, "priority": job.priority,
                      "profile": format_profile(job.profile), "pid": pid,
                      "enforced": job.enforcement.get("enforced", False),
                      "stress": self.core.stress})
        return self.core.job_dict(job)

    def _owner_check(self, job, call) -> None:
        if call.access < Access.ADMIN and job.owner_uid != call.uid:
            raise RpcError(E.PERMISSION_DENIED, f"job {job.job_id!r} belongs to uid {job.owner_uid}",
                           {"job_id": job.job_id, "owner_uid": job.owner_uid, "peer_uid": call.uid})

    def rpc_heartbeat(self, p, call):
        """Keep a job alive; without one for govern.heartbeat_timeout_s it is released."""
        job = self.core.get(p["job_id"])
        self._owner_check(job, call)
        self.core.heartbeat(job.job_id)
        return {"job_id": job.job_id, "heartbeat_deadline_s": self.core.cfg.heartbeat_timeout_s,
                "unacked": len(job.pending), "directive_version": job.version}

    def rpc_release(self, p, call):
        """Release a job: its cgroup is removed, its process moved back."""
        job = self.core.get(p["job_id"])
        self._owner_check(job, call)
        return self._release(job.job_id, "released by request")

    def rpc_list(self, p, call):
        """Every live job."""
        return {"jobs": [self.core.job_dict(j) for j in self.core.jobs.values()]}

    def rpc_get(self, p, call):
        """One job, with its metadata, directives and acknowledgements."""
        return self.core.job_dict(self.core.get(p["job_id"]))

    def rpc_ack(self, p, call):
        """Acknowledge directive `version` (and every earlier one) of a job."""
        job = self.core.get(p["job_id"])
        self._owner_check(job, call)
        return self.core.ack(job.job_id, p["version"])

    def rpc_subscribe(self, p, call):
        # A job may subscribe before it submits (then it misses nothing).
        job_id = p["job_id"]
        state = self.core.state_directive(job_id)
        if state is not None:
            # After the subscription exists (this handler returns first).
            asyncio.get_running_loop().call_soon(self.ctx.hub.publish, TOPIC, state)
        return lambda data, jid=job_id: data.get("job_id") == jid
