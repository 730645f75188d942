"""What each decision does, for real.

    ALERT           a log line (warning) and a push to venom subscribers
                    (every decision is pushed; ALERT is never filtered as NOOP is)
    QUARANTINE      the job most responsible for the evidence (culprit.py) is
                    quarantined by the governor: no new admissions at its
                    priority, and a QUARANTINE directive pushed to it.  It
                    ends by itself once stress has stayed below the
                    governor's setpoint, with no QUARANTINE-level threat,
                    for `venom.release_hold_s` (ledgered as venom.release,
                    auto: true), or by an admin call (`venom.release`).
    APPLY_BALANCE   the governor's degradation level up one notch (refused
                    below the setpoint: govern/level.py)
    APPLY_OPTIMIZE  the governor's next recovery may skip the rest of its hold
    NOOP            nothing (summarised, see summary.py)

The actuator's record of the jobs it quarantined follows the jobs' lives:
each beat it keeps only the jobs the governor still holds as quarantined,
under the same submission, so a job released (by anyone) or resubmitted can
be quarantined again, and one that ended is forgotten.  Without a governor
(standalone `aal-core venom`) the effect says so.
"""
from __future__ import annotations

import inspect

from ..log import get_logger
from .arbiter import BeatResult
from .culprit import pick_culprit
from .evidence import EVIDENCE_WINDOW_S
from .genome import Action
from .jobmem import JobMemory

__all__ = ["Actuator", "maybe_await", "pick_culprit"]

log = get_logger("venom")

RELEASE_HOLD_S = 30.0


async def maybe_await(v):
    """The value, awaited if the governor/recorder method was a coroutine."""
    if inspect.isawaitable(v):
        return await v
    return v


class Actuator:
    def __init__(self, governor=None, *, release_hold_s: float = RELEASE_HOLD_S,
                 window_s: float = EVIDENCE_WINDOW_S, memory: JobMemory | None = None):
        self.governor = governor
        self.release_hold_s = release_hold_s
        # job_id -> {"reason", "since", "submitted_at"}: quarantines this loop imposed, still in force
        self.quarantined: dict[str, dict] = {}
        self.memory = memory or JobMemory(window_s)
        self.jobs: list[dict] = []
        self.calm_since: float | None = None
        self._no_target: str | None = None

    async def observe(self, now: float) -> None:
        """Once per beat, before the decision is carried out: the governor's
        jobs with their memory, and the quarantine record kept in step with them."""
        if self.governor is None:
            return
        jobs = list(await maybe_await(self.governor.jobs()) or [])
        self.jobs = self.memory.observe(jobs, now)
        live = {j.get("job_id"): j for j in self.jobs}
        for job_id in list(self.quarantined):
            j = live.get(job_id)
            if j is None or not j.get("quarantined") or \
                    j.get("submitted_at") != self.quarantined[job_id]["submitted_at"]:
                del self.quarantined[job_id]

    async def auto_release(self, r: BeatResult, now: float) -> list[dict]:
        """Lift this loop's quarantines once stress stayed below the setpoint
        (and no beat wanted a QUARANTINE) for release_hold_s.  Returns the
        ledger entries for what was released."""
        if self.governor is None or not self.quarantined:
            self.calm_since = None
            return []
        view = getattr(self.governor, "stress_view", None)
        s = view() if view is not None else None
        stress, setpoint = (s or {}).get("stress"), (s or {}).get("setpoint")
        calm = stress is not None and setpoint is not None and stress < setpoint \
            and r.action is not Action.QUARANTINE
        if not calm:
            self.calm_since = None
            return []
        if self.calm_since is None:
            self.calm_since = now
            return []
        if now - self.calm_since < self.release_hold_s:
            return []
        out = []
        for job_id in sorted(self.quarantined):
            why = (f"stress stayed below the setpoint {setpoint} for {self.release_hold_s:g} s "
                   f"(venom.release_hold_s); now {stress:.3f}")
            try:
                await maybe_await(self.governor.release_quarantine(job_id))
            except Exception as exc:  # noqa: BLE001 - gone or released meanwhile: forget it
                log.info("auto_release_skipped", job_id=job_id, error=str(exc) or type(exc).__name__)
                self.quarantined.pop(job_id, None)
                continue
            q = self.quarantined.pop(job_id)
            log.warning("quarantine_auto_released", job_id=job_id, stress=round(stress, 4),
                        held_s=round(now - q["since"], 3))
            out.append({"type": "venom.release", "job_id": job_id, "auto": True, "why": why,
                        "beat": r.beat, "stress": stress, "setpoint": setpoint,
                        "quarantined_s": round(now - q["since"], 6)})
        self.calm_since = None
        return out

    async def apply(self, r: BeatResult, now: float = 0.0) -> dict:
        """Carry out r.action; return what was done, for the ledger entry."""
        a = r.action
        if a is not Action.QUARANTINE:
            self._no_target = None
        if a is Action.NOOP:
            return {}
        if a is Action.ALERT:
            log.warning("alert", beat=r.beat, threat=round(r.vector.raw_threat, 4),
                        evidence=round(r.evidence.value, 3),
                        kinds=",".join(k for k, v in r.anomalies.to_dict().items() if v and k != "total"))
            return {"alert": True}
        if self.governor is None:
            return {"applied": False, "why": "no governor (standalone loop)"}
        reason = f"venom beat {r.beat}: {a.value} (threat {r.vector.raw_threat:.3f}, " \
                 f"evidence {r.evidence.value:.2f} over {r.evidence.window_s:g} s)"
        try:
            if a is Action.APPLY_BALANCE:
                res = await maybe_await(self.governor.raise_level(reason))
                added = res.get("added", True) if isinstance(res, dict) else True
                log.info("apply_balance", beat=r.beat, added=added)
                return {"applied": bool(added), "governor": _jsonable(res)}
            if a is Action.APPLY_OPTIMIZE:
                res = await maybe_await(self.governor.allow_early_recovery(reason))
                log.info("apply_optimize", beat=r.beat)
                return {"applied": True, "governor": _jsonable(res)}
            if a is Action.QUARANTINE:
                job, why = pick_culprit(self.jobs, r.evidence.to_dict(), exclude=set(self.quarantined))
                if job is None:
                    already = sorted(self.quarantined)
                    if already and why == "no job to quarantine":
                        why = "every candidate already quarantined"
                    if why != self._no_target:           # once per run of them, not once a beat
                        log.warning("quarantine_no_target", beat=r.beat, why=why, already=",".join(already) or "-")
                    self._no_target = why
                    return {"applied": False, "why": why, "quarantined": already}
                self._no_target = None
                job_id = job["job_id"]
                res = await maybe_await(self.governor.quarantine(job_id, f"{reason}; {why}"))
                self.quarantined[job_id] = {"reason": reason, "since": now,
                                            "submitted_at": job.get("submitted_at")}
                log.warning("quarantine", beat=r.beat, job_id=job_id, priority=job.get("priority"), why=why)
                out = {"applied": True, "job_id": job_id, "priority": job.get("priority"), "why": why,
                       "job_overdue": job.get("overdue") or 0, "governor": _jsonable(res)}
                if job.get("memory"):
                    out["job_memory"] = dict(job["memory"])
                return out
        except Exception as exc:  # noqa: BLE001 - an action failing must not stop the loop
            log.error("action_failed", beat=r.beat, action=a.value, error=repr(exc))
            return {"applied": False, "error": str(exc) or type(exc).__name__}
        return {}

    async def release(self, job_id: str) -> dict:
        if self.governor is None:
            raise RuntimeError("no governor")
        res = await maybe_await(self.governor.release_quarantine(job_id))
        self.quarantined.pop(job_id, None)
        return {"governor": _jsonable(res)}


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)
