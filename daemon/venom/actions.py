"""What each decision does, for real.

    ALERT           a log line (warning) and a push to venom subscribers
                    (every decision is pushed; ALERT is never filtered as NOOP is)
    QUARANTINE      the job most responsible for the anomalies is quarantined
                    by the governor: no new admissions at its priority, and a
                    QUARANTINE directive pushed to it.  Reversible by an admin
                    call (`venom.release`).
    APPLY_BALANCE   the governor's degradation level goes up one notch
    APPLY_OPTIMIZE  the governor's next recovery may skip the rest of its hold
    NOOP            nothing (summarised, see summary.py)

"Most responsible": the job with the most anomalies the governor attributes
to it; with none attributed, the job the governor would shed first (the
lowest priority, the most recently admitted among equals).  A job already
quarantined by the loop is not quarantined again.  Without a governor
(standalone `aal-core venom`) the effect says so.
"""
from __future__ import annotations

import inspect

from ..log import get_logger
from .arbiter import BeatResult
from .genome import Action

__all__ = ["Actuator", "maybe_await", "pick_culprit"]

log = get_logger("venom")


async def maybe_await(v):
    """The value, awaited if the governor/recorder method was a coroutine."""
    if inspect.isawaitable(v):
        return await v
    return v


def pick_culprit(jobs: list[dict], exclude: set[str] = frozenset()) -> dict | None:
    """The job to quarantine, or None when there is no candidate."""
    cands = [j for j in jobs if j.get("job_id") not in exclude and not j.get("quarantined")]
    if not cands:
        return None
    with_anoms = [j for j in cands if (j.get("anomalies") or 0) > 0]
    if with_anoms:
        return max(with_anoms, key=lambda j: (j.get("anomalies") or 0, -(j.get("priority") or 0)))
    # Nothing attributed: the lowest priority, latest admitted among equals.
    return min(reversed(cands), key=lambda j: j.get("priority") or 0)


class Actuator:
    def __init__(self, governor=None):
        self.governor = governor
        self.quarantined: dict[str, str] = {}     # job_id -> reason, set by this loop

    async def apply(self, r: BeatResult) -> dict:
        """Carry out r.action; return what was done, for the ledger entry."""
        a = r.action
        if a is Action.NOOP:
            return {}
        if a is Action.ALERT:
            log.warning("alert", beat=r.beat, threat=round(r.vector.raw_threat, 4),
                        anomalies=r.anomalies.total,
                        kinds=",".join(k for k, v in r.anomalies.to_dict().items() if v and k != "total"))
            return {"alert": True}
        if self.governor is None:
            return {"applied": False, "why": "no governor (standalone loop)"}
        reason = f"venom beat {r.beat}: {a.value} (threat {r.vector.raw_threat:.3f}, " \
                 f"{r.anomalies.total} anomalies)"
        try:
            if a is Action.APPLY_BALANCE:
                res = await maybe_await(self.governor.raise_level(reason))
                log.info("apply_balance", beat=r.beat)
                return {"applied": True, "governor": _jsonable(res)}
            if a is Action.APPLY_OPTIMIZE:
                res = await maybe_await(self.governor.allow_early_recovery(reason))
                log.info("apply_optimize", beat=r.beat)
                return {"applied": True, "governor": _jsonable(res)}
            if a is Action.QUARANTINE:
                jobs = await maybe_await(self.governor.jobs())
                job = pick_culprit(list(jobs or []), exclude=set(self.quarantined))
                if job is None:
                    already = sorted(self.quarantined)
                    log.warning("quarantine_no_target", beat=r.beat, already=",".join(already) or "-")
                    return {"applied": False, "why": "no job to quarantine" if not already
                            else "every candidate already quarantined", "quarantined": already}
                job_id = job["job_id"]
                res = await maybe_await(self.governor.quarantine(job_id, reason))
                self.quarantined[job_id] = reason
                log.warning("quarantine", beat=r.beat, job_id=job_id, priority=job.get("priority"),
                            job_anomalies=job.get("anomalies") or 0)
                return {"applied": True, "job_id": job_id, "priority": job.get("priority"),
                        "job_anomalies": job.get("anomalies") or 0, "governor": _jsonable(res)}
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
