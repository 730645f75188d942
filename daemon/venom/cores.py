"""The four cores, each a pure function of the same beat inputs.

    R (regen)     urgency = min(0.9, anoms/100) if anoms > 0 else 0.4;  cost = urgency × 0.5
    B (balance)   conserve = clamp(0.3 + (1 − |T_Λ − T_threshold|) × 0.2, 0, 1),
                  a running balance state (state + conserve)/2, and the PID gains
    E (entropy)   threat = σ(w·anoms + b) from the entropy model
    O (optimize)  expected_gain = min(0.5, O_weight × 0.12)

No core reads another's output: all four see one frozen `BeatInputs`.  How
they are run is a `Runner`: inline (the default, what measures fastest here:
bench/venom.py) or a thread pool as the seed did, kept for the benchmark and
for a test showing both give the same results.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .entropy import EntropyParams

__all__ = ["BalanceCore", "BalanceOut", "BeatInputs", "CoreOutputs", "EntropyOut", "InlineRunner",
           "OptimizeOut", "RegenOut", "ThreadRunner", "entropy", "optimize", "regen", "make_runner"]


@dataclass(frozen=True)
class BeatInputs:
    anoms: float            # the sustained evidence (evidence.py), in anomaly units
    t_lambda: float         # the beat interval, seconds
    t_threshold: float      # the PID's setpoint for T_Λ (0.02 in the seed)
    o_weight: float         # the genome's O weight going into this beat
    model: EntropyParams


@dataclass(frozen=True)
class RegenOut:
    urgency: float
    cost: float


@dataclass(frozen=True)
class BalanceOut:
    conserve: float
    balance_state: float
    kp: float
    ki: float
    kd: float


@dataclass(frozen=True)
class EntropyOut:
    threat: float


@dataclass(frozen=True)
class OptimizeOut:
    expected_gain: float


@dataclass(frozen=True)
class CoreOutputs:
    r: RegenOut
    b: BalanceOut
    e: EntropyOut
    o: OptimizeOut


def regen(inp: BeatInputs) -> RegenOut:
    anoms = inp.anoms
    urgency = min(0.9, anoms / 100.0) if anoms > 0 else 0.4
    return RegenOut(urgency, urgency * 0.5)


class BalanceCore:
    """B keeps one piece of state of its own: the running balance."""

    __slots__ = ("state", "kp", "ki", "kd")

    def __init__(self, kp: float = 0.6, ki: float = 0.1, kd: float = 0.05, state: float = 0.5):
        self.state, self.kp, self.ki, self.kd = state, kp, ki, kd

    def __call__(self, inp: BeatInputs) -> BalanceOut:
        conserve = 0.3 + (1.0 - abs(inp.t_lambda - inp.t_threshold)) * 0.2
        conserve = 0.0 if conserve < 0.0 else (1.0 if conserve > 1.0 else conserve)
        self.state = (self.state + conserve) / 2.0
        return BalanceOut(conserve, self.state, self.kp, self.ki, self.kd)


def entropy(inp: BeatInputs) -> EntropyOut:
    return EntropyOut(inp.model.threat(inp.anoms))


def optimize(inp: BeatInputs) -> OptimizeOut:
    return OptimizeOut(min(0.5, inp.o_weight * 0.12))


class InlineRunner:
    """Run the four cores one after the other in the calling thread."""

    name = "inline"

    def run(self, balance: BalanceCore, inp: BeatInputs) -> CoreOutputs:
        return CoreOutputs(regen(inp), balance(inp), entropy(inp), optimize(inp))

    def close(self) -> None:
        pass


class ThreadRunner:
    """The seed's way: submit the four cores to a 4-worker thread pool and
    wait for all of them.  Same results; slower here (bench/venom.py)."""

    name = "threads"

    def __init__(self, workers: int = 4):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="venom-core")

    def run(self, balance: BalanceCore, inp: BeatInputs) -> CoreOutputs:
        fr = self.pool.submit(regen, inp)
        fb = self.pool.submit(balance, inp)
        fe = self.pool.submit(entropy, inp)
        fo = self.pool.submit(optimize, inp)
        return CoreOutputs(fr.result(), fb.result(), fe.result(), fo.result())

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def make_runner(name: str):
    if name == "inline":
        return InlineRunner()
    if name == "threads":
        return ThreadRunner()
    raise ValueError(f"core runner must be 'inline' or 'threads', got {name!r}")
