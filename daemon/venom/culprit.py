"""Which job a QUARANTINE falls on, as a pure function of what is known.

The evidence says what kind of trouble it is (evidence.py): memory (CRITICAL
seconds, OOM kills), ignored directives (directives left unacknowledged past
`govern.ack_timeout_s`), or neither (thermal, late beats, a failing source:
nothing a job can be blamed for).

    directives   the job with the most overdue directives (only jobs with
                 at least one); ties go to the larger memory score
    memory       among jobs whose memory is known (the daemon's cgroup for
                 it, or /proc/<pid>: jobmem.py), the largest score
                     (usage + max(0, growth over the evidence window)) / SOFT cap
                 A job is a candidate only if it grew over the window or
                 uses at least its SOFT cap; a job that reported no pid and
                 has no cgroup is never one; nor is a job that obeys its
                 directives (none overdue) and whose memory is falling.
    neither      nobody (the loop says why instead of picking an innocent)

A job already quarantined (by the governor's record) is never picked again;
once released, or resubmitted, it can be.
"""
from __future__ import annotations

__all__ = ["memory_score", "pick_culprit", "rank_memory"]


def memory_score(job: dict) -> float | None:
    """(usage + max(0, growth)) / soft cap, or None when the job's memory or cap is unknown."""
    mem = job.get("memory")
    if not mem:
        return None
    soft = mem.get("soft_bytes") or 0
    if soft <= 0:
        return None
    return (mem["bytes"] + max(0, mem.get("growth_bytes") or 0)) / soft


def _memory_candidate(job: dict) -> bool:
    mem = job.get("memory")
    if memory_score(job) is None:
        return False
    growth = mem.get("growth_bytes") or 0
    obeys = (job.get("overdue") or 0) == 0
    if obeys and growth < 0:
        return False                      # doing what it was told, and it shows
    return growth > 0 or mem["bytes"] >= mem["soft_bytes"]


def rank_memory(jobs: list[dict]) -> list[dict]:
    """Memory candidates, most responsible first."""
    cands = [j for j in jobs if not j.get("quarantined") and _memory_candidate(j)]
    return sorted(cands, key=lambda j: (-memory_score(j), j.get("priority") or 0, j.get("job_id", "")))


def pick_culprit(jobs: list[dict], evidence: dict, exclude=frozenset()) -> tuple[dict | None, str]:
    """(the job to quarantine or None, why).  `evidence` is the beat's
    evidence dict (its "memory_units" and "directive_units" say which kinds
    of trouble there was over the window)."""
    live = [j for j in jobs if j.get("job_id") not in exclude and not j.get("quarantined")]
    if (evidence.get("directive_units") or 0) > 0:
        overdue = [j for j in live if (j.get("overdue") or 0) > 0]
        if overdue:
            best = max(overdue, key=lambda j: (j.get("overdue") or 0, memory_score(j) or 0.0))
            return best, f"{best.get('overdue')} overdue directive(s)"
    if (evidence.get("memory_units") or 0) > 0:
        ranked = rank_memory(live)
        if ranked:
            j = ranked[0]
            return j, f"memory {memory_score(j):.2f} x its SOFT cap ({j['memory']['source']})"
        known = [j for j in live if j.get("memory")]
        if not live:
            return None, "no job to quarantine"
        return None, ("no job's memory grew or reached its SOFT cap" if known
                      else "no job's memory is known (no pid given, no cgroup)")
    if not live:
        return None, "no job to quarantine"
    return None, "the evidence is not attributable to a job"
