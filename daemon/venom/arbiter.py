"""One beat of the control loop, with no I/O.

`Arbiter.beat(anomalies, dt)` turns the beat's anomalies into sustained
evidence (evidence.py: anomaly units over the evidence window; the cores
see that, not the raw counts), runs the four cores on the same inputs,
forms the decision vector with the genome in force, decides, then
recalibrates the genome with the PID (error = T_Λ − T_threshold; the same
Cython PID the governor uses).  What to do about the decision (actions, the
ledger, pushes) is the unit's business; this only says what was decided
and why, as a `BeatResult`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..pid import PID
from .anomalies import Anomalies
from .cores import BalanceCore, BeatInputs, CoreOutputs, InlineRunner
from .entropy import EntropyParams
from .evidence import CRITICAL_WEIGHT, EVIDENCE_WINDOW_S, Evidence, EvidenceWindow
from .genome import Action, DecisionVector, Genome, decide, decision_vector, recalibrate

__all__ = ["Arbiter", "BeatResult", "make_pid"]


def make_pid(setpoint: float, kp: float = 0.6, ki: float = 0.1, kd: float = 0.05):
    """The compiled PID (ext/pid.pyx, the governor's), same defaults as the seed's genomic PID."""
    return PID(kp=kp, ki=ki, kd=kd, setpoint=setpoint)


@dataclass(frozen=True)
class BeatResult:
    beat: int
    t_lambda: float
    anomalies: Anomalies
    evidence: Evidence
    cores: CoreOutputs
    vector: DecisionVector
    action: Action
    genome: Genome          # the genome the decision was taken with
    genome_next: Genome     # after recalibration
    delta_o: float
    pid: dict
    pid_stable: bool


class Arbiter:
    def __init__(self, *, t_lambda: float, t_threshold: float = 0.02, genome: Genome | None = None,
                 model: EntropyParams | None = None, pid=None, runner=None,
                 evidence_window_s: float = EVIDENCE_WINDOW_S, critical_weight: float = CRITICAL_WEIGHT):
        self.t_lambda = t_lambda
        self.t_threshold = t_threshold
        self.genome = genome or Genome()
        self.model = model or EntropyParams()
        self.balance = BalanceCore()
        self.pid = pid if pid is not None else make_pid(t_threshold, self.balance.kp, self.balance.ki,
                                                        self.balance.kd)
        self.runner = runner or InlineRunner()
        self.evidence = EvidenceWindow(t_lambda, evidence_window_s, critical_weight)
        self.beats = 0
        self.episode_beats = -1      # beats into the current threat > 0.5 episode; -1 outside one

    def beat(self, anomalies: Anomalies, dt: float) -> BeatResult:
        """Run one beat; `dt` is the seconds since the previous one (monotonic)."""
        g = self.genome
        ev = self.evidence.step(anomalies)
        inp = BeatInputs(anoms=ev.value, t_lambda=self.t_lambda, t_threshold=self.t_threshold,
                         o_weight=g.o, model=self.model)
        cores = self.runner.run(self.balance, inp)
        vec = decision_vector(cores, g)
        action = decide(vec)
        out = self.pid.update(self.t_lambda, dt if dt > 0 else self.t_lambda)
        self.episode_beats = self.episode_beats + 1 if vec.raw_threat > 0.5 else -1
        nxt, d_o = recalibrate(g, out, vec.raw_threat, max(0, self.episode_beats))
        self.genome = nxt
        self.beats += 1
        return BeatResult(beat=self.beats, t_lambda=self.t_lambda, anomalies=anomalies, evidence=ev, cores=cores,
                          vector=vec, action=action, genome=g, genome_next=nxt, delta_o=d_o,
                          pid=self.pid.state(), pid_stable=bool(self.pid.stable))
