"""The loop itself: beat on the monotonic clock, count anomalies, decide,
act, record, push.  Shared by the daemon's `VenomUnit` and the standalone
`aal-core venom`; what differs between them is injected:

    sensing    .anomaly_counters() -> dict        (None: no sensed anomalies)
    governor   raise_level / allow_early_recovery / quarantine /
               release_quarantine / jobs / overdue_directives_total /
               stress_view                        (None: actions say so)
    recorder   async append(data) -> (index, hash), manifest() -> dict,
               verified -> bool                   (None: nothing recorded)
    publish    fn(decision: dict) -> None         (pushes to subscribers)

A beat with an action gets its own ledger entry (decision vector, genome,
anomalies, evidence, effect) when it differs from the previous beat: a run
of identical action beats (same action, same outcome: e.g. APPLY_BALANCE
refused below the setpoint, or QUARANTINE with every candidate already
quarantined) has its first beat recorded and the rest coalesced into the
periodic summary (counted under "coalesced", their anomalies under
"coalesced_anomalies"); NOOP beats go into the summary too.  Every decision
is still pushed (a coalesced one says "coalesced": true).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..clock import Clock
from ..log import get_logger
from ..metrics import family, sample
from .actions import Actuator, maybe_await
from .actions import RELEASE_HOLD_S
from .anomalies import KINDS, AnomalyCounter
from .evidence import CRITICAL_WEIGHT, EVIDENCE_WINDOW_S
from .arbiter import Arbiter, BeatResult
from .cores import make_runner
from .entropy import EntropyParams
from .genome import Action, Genome
from .pulse import U_DEFAULT, BeatTimer, t_lambda
from .summary import BeatSummary

__all__ = ["Settings", "VenomLoop"]

log = get_logger("venom")


@dataclass(frozen=True)
class Settings:
    t1: float = 0.001
    k_flows: int = 4
    p_nodes: int = 5
    u: float = U_DEFAULT
    t_threshold: float = 0.02
    genome: Genome = Genome()
    summary_interval_s: float = 60.0
    # A beat this fraction of T_Λ (or more) behind its deadline is a late beat.
    late_fraction: float = 0.5
    runner: str = "inline"
    # Sustained evidence (evidence.py): the window, and the units one CRITICAL second weighs.
    evidence_window_s: float = EVIDENCE_WINDOW_S
    critical_weight: float = CRITICAL_WEIGHT
    # A quarantine ends once stress stayed below the setpoint this long (actions.py).
    release_hold_s: float = RELEASE_HOLD_S

    @property
    def period(self) -> float:
        return t_lambda(self.k_flows, self.p_nodes, self.t1, self.u)


class VenomLoop:
    def __init__(self, settings: Settings, clock: Clock, *, model: EntropyParams | None = None,
                 sensing=None, governor=None, recorder=None, publish=None):
        self.settings = settings
        self.clock = clock
        self.period = settings.period
        self.sensing, self.governor, self.recorder, self.publish = sensing, governor, recorder, publish
        self.arbiter = Arbiter(t_lambda=self.period, t_threshold=settings.t_threshold,
                               genome=settings.genome, model=model or EntropyParams(),
                               runner=make_runner(settings.runner),
                               evidence_window_s=settings.evidence_window_s,
                               critical_weight=settings.critical_weight)
        self.actuator = Actuator(governor, release_hold_s=settings.release_hold_s,
                                 window_s=settings.evidence_window_s)
        self._last_sig: tuple | None = None
        self.coalesced = 0
        self.auto_releases = 0
        self.counter = AnomalyCounter()
        now = clock.monotonic()
        self.timer = BeatTimer(self.period, now)
        self.summary = BeatSummary(settings.summary_interval_s, now)
        self.last_beat_at: float | None = None
        self.last: dict | None = None
        self.actions = {a.value: 0 for a in Action}
        self.anomaly_totals = dict.fromkeys(KINDS, 0)
        self.max_lateness_s = 0.0
        self.ledger_entries = 0
        self.ledger_failures = 0
        self.running = False

    # ------------------------------------------------------------- the model
    @property
    def model(self) -> EntropyParams:
        return self.arbiter.model

    def set_model(self, model: EntropyParams) -> None:
        self.arbiter.model = model

    # -------------------------------------------------------------- one beat
    def _late(self, lateness: float) -> int:
        return 1 if lateness >= self.settings.late_fraction * self.period else 0

    async def step(self, lateness: float = 0.0) -> dict:
        """One beat at clock.monotonic(), `lateness` seconds after its deadline."""
        now = self.clock.monotonic()
        dt = now - self.last_beat_at if self.last_beat_at is not None else self.period
        self.last_beat_at = now
        counters = dict(self.sensing.anomaly_counters()) if self.sensing is not None else {}
        if self.governor is not None:
            counters["unacked_directives"] = await maybe_await(self.governor.overdue_directives_total())
        anomalies = self.counter.step(counters, self._late(lateness) + self._missed())
        await self.actuator.observe(now)
        r = self.arbiter.beat(anomalies, dt)
        effect = await self.actuator.apply(r, now)
        releases = await self.actuator.auto_release(r, now)
        decision = self._decision(r, lateness, effect)
        self._count(r, lateness)
        sig = _signature(decision)
        coalesce = sig is not None and sig == self._last_sig
        self._last_sig = sig
        self.summary.add(r, lateness, coalesced=coalesce)
        if coalesce:
            decision["coalesced"] = True
            self.coalesced += 1
        elif r.action is not Action.NOOP:
            await self._record(decision)
        for entry in releases:
            entry["time"] = self.clock.wall()
            self.auto_releases += 1
            await self.record(entry)
        if releases:
            decision["released"] = [e["job_id"] for e in releases]
        if self.summary.due(now):
            await self.flush(now)
        self.last = decision
        if self.publish is not None:
            self.publish(decision)
        return decision

    def _missed(self) -> int:
        m = self.timer.missed
        self.timer.missed = 0
        return m

    def _decision(self, r: BeatResult, lateness: float, effect: dict) -> dict:
        d = {"type": "venom.decision", "beat": r.beat, "time": self.clock.wall(),
             "t_lambda": r.t_lambda, "action": r.action.value,
             "anomalies": r.anomalies.to_dict(), "evidence": r.evidence.to_dict(), "decision": r.vector.to_dict(),
             "genome": r.genome.to_dict(), "genome_next": r.genome_next.to_dict(),
             "delta_o": r.delta_o, "lateness_s": round(lateness, 6),
             "model": {"weight": self.model.weight, "bias": self.model.bias},
             "pid": {k: r.pid[k] for k in ("error", "integral", "output")}, "pid_stable": r.pid_stable}
        if effect:
            d["effect"] = effect
        return d

    def _count(self, r: BeatResult, lateness: float) -> None:
        self.actions[r.action.value] += 1
        for k in KINDS:
            self.anomaly_totals[k] += getattr(r.anomalies, k)
        if lateness > self.max_lateness_s:
            self.max_lateness_s = lateness

    async def record(self, data: dict) -> tuple[int, str] | None:
        """Append to the ledger; a failure is logged and counted, never raised
        into the loop (the action was taken; the next beat still comes)."""
        if self.recorder is None:
            return None
        try:
            index, digest = await maybe_await(self.recorder.append(data))
        except Exception as exc:  # noqa: BLE001
            self.ledger_failures += 1
            log.error("ledger_append_failed", type=data.get("type"), beat=data.get("beat", "-"),
                      error=str(exc) or type(exc).__name__)
            return None
        self.ledger_entries += 1
        return index, digest

    async def _record(self, entry: dict) -> None:
        """record(entry), and note its ledger index and hash in it."""
        res = await self.record(entry)
        if res is not None:
            entry["ledger_index"], entry["ledger_hash"] = res

    async def flush(self, now: float | None = None) -> dict | None:
        """Write the summary of the beats so far (at most one entry per window)."""
        entry = self.summary.take(self.clock.monotonic() if now is None else now)
        if entry is None:
            return None
        entry["time"] = self.clock.wall()
        if self.recorder is not None:
            try:
                m = self.recorder.manifest()
                entry["merkle_root"] = m.get("merkle_root")
                entry["chain_length"] = m.get("chain_length")
            except Exception as exc:  # noqa: BLE001
                log.error("ledger_manifest_failed", error=str(exc))
        await self._record(entry)
        return entry

    # -------------------------------------------------------------- the loop
    async def run(self, beats: int = -1) -> None:
        """Beat until cancelled, or `beats` times (-1: endless)."""
        self.running = True
        n = 0
        try:
            while beats < 0 or n < beats:
                delay = self.timer.next_delay(self.clock.monotonic())
                if delay > 0:
                    await asyncio.sleep(delay)
                lateness = self.timer.fired(self.clock.monotonic())
                try:
                    await self.step(lateness)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad beat must not end the loop
                    log.error("beat_failed", beat=self.arbiter.beats, error=repr(exc), exc_info=True)
                n += 1
        finally:
            self.running = False

    # ------------------------------------------------------------- reporting
    def status(self) -> dict:
        pid = self.arbiter.pid.state()
        s = self.settings
        out = {
            "running": self.running,
            "beats": self.arbiter.beats,
            "t_lambda": self.period,
            "t1": s.t1, "k_flows": s.k_flows, "p_nodes": s.p_nodes, "u": s.u,
            "t_threshold": s.t_threshold,
            "genome": self.arbiter.genome.to_dict(),
            "pid": {k: pid[k] for k in ("error", "integral", "derivative", "output", "v", "dv",
                                        "updates", "setpoint", "kp", "ki", "kd")},
            "pid_stable": bool(self.arbiter.pid.stable),
            "ledger_verified": bool(getattr(self.recorder, "verified", False)),
            "model": self.model.to_dict(),
            "actions": dict(self.actions),
            "anomalies": dict(self.anomaly_totals),
            "max_lateness_s": round(self.max_lateness_s, 6),
            "ledger_entries": self.ledger_entries,
            "ledger_failures": self.ledger_failures,
            "quarantined": sorted(self.actuator.quarantined),
            "coalesced": self.coalesced,
            "auto_releases": self.auto_releases,
            "evidence_window_s": s.evidence_window_s,
            "release_hold_s": s.release_hold_s,
            "runner": self.arbiter.runner.name,
            "summary_interval_s": s.summary_interval_s,
        }
        if self.last is not None:
            out["last"] = self.last
            out["last_action"] = self.last["action"]
        return out

    def metrics(self) -> list[dict]:
        """Beats, decisions by action, anomalies by kind, lateness, ledger records."""
        return [
            family("aal_core_venom_beats_total", "counter", "Beats of the control loop since start.",
                   float(self.arbiter.beats)),
            family("aal_core_venom_decisions_total", "counter", "Decisions by action (NOOP included).",
                   [sample(float(n), {"action": k}) for k, n in sorted(self.actions.items())]),
            family("aal_core_venom_anomalies_total", "counter", "Anomalies the loop counted, by kind.",
                   [sample(float(n), {"kind": k}) for k, n in sorted(self.anomaly_totals.items())]),
            family("aal_core_venom_max_lateness_seconds", "gauge", "Largest lateness of a beat since start.",
                   float(self.max_lateness_s)),
            family("aal_core_venom_pid_stable", "gauge", "1 while the loop's PID is stable.",
                   1.0 if self.arbiter.pid.stable else 0.0),
            family("aal_core_venom_ledger_entries_total", "counter", "Ledger entries the loop appended.",
                   float(self.ledger_entries)),
            family("aal_core_venom_ledger_failures_total", "counter", "Ledger appends of the loop that failed.",
                   float(self.ledger_failures)),
        ]

    def close(self) -> None:
        self.arbiter.runner.close()


def _signature(d: dict) -> tuple | None:
    """What makes two consecutive action beats the same (None for NOOP):
    the action and its outcome, not the numbers that vary every beat."""
    if d["action"] == Action.NOOP.value:
        return None
    e = d.get("effect") or {}
    g = e.get("governor") if isinstance(e.get("governor"), dict) else {}
    return (d["action"], e.get("applied"), e.get("alert"), e.get("job_id"),
            None if e.get("applied") else e.get("why"), g.get("added"), e.get("error"))
