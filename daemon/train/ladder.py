"""The policy ladder: which knobs a training run should have at this stress.

Pure: a stress value and a monotonic time in, a rung out; rung -> knobs;
(knobs now, knobs wanted) -> the commands between them.  The rungs, from
the bottom (README, "Training loops", and config [train]):

    0                      the run's own knobs
    halve_batch_1..k       micro-batch halved, gradient accumulation doubled
                           (k = train.batch_halvings, fewer when the base
                           micro-batch is not divisible; the effective batch
                           micro x accum, hence the optimisation, is unchanged)
    cut_batch_1..          a halving whose doubled accumulation would pass
                           train.max_grad_accum: the micro-batch is halved and
                           accumulation kept, so the effective batch halves,
                           and the learning rate is scaled by train.lr_rule
                           (sqrt: x 0.707, linear: x 0.5 per cut) with an
                           optimizer_adjustment; "off": no such rung
    activation_checkpointing  recompute activations in the backward pass
    pause                  checkpoint to disk, then wait for `resume`

Climbing: as soon as stress reaches a rung's `enter_at`, the run goes
straight to the highest such rung (a spike is answered at once).
Descending: one rung at a time, once stress stayed below the rung's exit
line (enter_at - hysteresis; resume_below for pause) for hold_s, as the
governor lifts steps.  Between the two lines nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Knobs", "Ladder", "Rung", "build_rungs", "commands_between", "knobs_at"]


@dataclass(frozen=True)
class Rung:
    name: str
    enter_at: float
    exit_below: float


@dataclass(frozen=True)
class Knobs:
    """What the ladder controls (the rest of TrainingKnobs it leaves alone)."""
    micro_batch: int
    grad_accum: int
    checkpointing: bool = False
    paused: bool = False
    # The learning rate's factor (1.0 unless the effective batch was cut).
    lr_scale: float = 1.0


LR_CUT = {"sqrt": 0.5 ** 0.5, "linear": 0.5, "off": 1.0}


def halvings_possible(base_micro: int, wanted: int, min_micro: int) -> int:
    """Halvings of base_micro that stay integral and >= min_micro, at most wanted."""
    n = 0
    m = base_micro
    while n < wanted and m % 2 == 0 and m // 2 >= min_micro:
        m //= 2
        n += 1
    return n


def build_rungs(cfg, base_micro: int, base_accum: int = 1) -> tuple[Rung, ...]:
    """The rungs above 0 for a run whose base knobs are base_micro x base_accum."""
    out = []
    accum, cuts = base_accum, 0
    for i in range(halvings_possible(base_micro, cfg.batch_halvings, cfg.min_micro_batch)):
        at = cfg.halve_at + i * cfg.halve_step
        if accum * 2 <= cfg.max_grad_accum:
            accum *= 2
            out.append(Rung(f"halve_batch_{i + 1}", at, at - cfg.hysteresis))
        elif cfg.lr_rule != "off":
            cuts += 1
            out.append(Rung(f"cut_batch_{cuts}", at, at - cfg.hysteresis))
        else:
            break
    out.append(Rung("activation_checkpointing", cfg.checkpointing_at, cfg.checkpointing_at - cfg.hysteresis))
    out.append(Rung("pause", cfg.pause_at, cfg.resume_below))
    return tuple(out)


def knobs_at(rungs: tuple[Rung, ...], rung: int, base: Knobs, lr_rule: str = "sqrt") -> Knobs:
    """The knobs rung `rung` stands for, from the run's base knobs."""
    names = [r.name for r in rungs[:rung]]
    halved = sum(1 for n in names if n.startswith("halve_batch_"))
    cut = sum(1 for n in names if n.startswith("cut_batch_"))
    return Knobs(micro_batch=base.micro_batch >> (halved + cut), grad_accum=base.grad_accum << halved,
                 checkpointing=base.checkpointing or "activation_checkpointing" in names,
                 paused="pause" in names, lr_scale=round(LR_CUT[lr_rule] ** cut, 12) if cut else 1.0)


def commands_between(now: Knobs, want: Knobs, *, resume_below: float) -> list[tuple[str, dict]]:
    """(payload field, payload) for each command that takes `now` to `want`,
    in ladder order: batch, checkpointing, checkpoint + pause going up;
    resume, checkpointing, batch coming down (an LR scale travels just
    before the batch change it belongs to)."""
    batch = []
    if abs(now.lr_scale - want.lr_scale) > 1e-9:
        # With the batch change it goes with: the LR follows the effective batch.
        batch.append(("optimizer_adjustment", {"lr_scale": want.lr_scale}))
    if (now.micro_batch, now.grad_accum) != (want.micro_batch, want.grad_accum):
        batch.append(("batch_adjustment", {"micro_batch": want.micro_batch, "grad_accum_steps": want.grad_accum}))
    saving = []
    if now.checkpointing != want.checkpointing:
        saving.append(("memory_saving", {"activation_checkpointing": want.checkpointing}))
    if now.paused and not want.paused:
        return [("resume", {})] + saving + batch
    if want.micro_batch > now.micro_batch or (now.checkpointing and not want.checkpointing):
        return saving + batch                       # coming down
    out = batch + saving
    if want.paused and not now.paused:
        out += [("checkpoint", {"reason": "pausing under memory stress"}),
                ("pause", {"until_stress_below": resume_below})]
    return out


class Ladder:
    """One run's rung, with the time stress has been below its exit line."""

    def __init__(self, rungs: tuple[Rung, ...], hold_s: float):
        self.rungs = rungs
        self.hold_s = hold_s
        self.rung = 0
        self.below_since: float | None = None

    def target(self, stress: float) -> int:
        """The highest rung whose enter_at stress has reached."""
        n = 0
        for i, r in enumerate(self.rungs):
            if stress >= r.enter_at:
                n = i + 1
        return n

    def evaluate(self, stress: float, now: float, below: float | None = None) -> tuple[int, str] | None:
        """(new rung, why) when the rung changes, else None.  `below`: the
        stress the rung below would bring (the run's next peak there); a rung
        is lifted only once that too is under its exit line."""
        want = self.target(stress)
        if want > self.rung:
            old, self.rung = self.rung, want
            self.below_since = None
            r = self.rungs[want - 1]
            return want, f"stress {stress:.3f} >= {r.enter_at:.3f}: rung {old} -> {want} ({r.name})"
        if self.rung == 0:
            return None
        top = self.rungs[self.rung - 1]
        if below is not None and below > stress:
            stress = below
        if stress >= top.exit_below:
            self.below_since = None
            return None
        if self.below_since is None:
            self.below_since = now
        held = now - self.below_since
        if held < self.hold_s:
            return None
        self.rung -= 1
        self.below_since = now          # the next rung down waits a full hold again
        return self.rung, (f"stress {stress:.3f} < {top.exit_below:.3f} for {held:.1f} s: "
                           f"{top.name} lifted, rung {self.rung}")

    def names(self) -> list[str]:
        return [r.name for r in self.rungs[:self.rung]]
