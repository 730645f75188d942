"""Ignored directives as anomalies: the governor counts each directive that
goes unacknowledged past govern.ack_timeout_s exactly once (a monotonic
total), and the control loop counts the increments of that total per beat.
A directive acked in time is never an anomaly, however close to the beat;
an ack and a new directive in one beat do not cancel out."""
import asyncio
from dataclasses import dataclass, replace

from aal_core.clock import ManualClock
from aal_core.config import GovernConfig
from aal_core.govern.governor import Governor
from aal_core.ledger import Ledger
from aal_core.venom.engine import Settings, VenomLoop

FIVE = ("MEM[SOFT=100,HARD=200,VOL=MED]; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),"
        "STEP2:SHRINK_KV(0.5),STEP3:CONTEXT(4096),STEP4:CONTEXT(1024),STEP5:OFFLOAD(COLD)}")
TIMEOUT = 2.0


@dataclass(frozen=True)
class Sample:
    stress: float
    monotonic: float
    timestamp: float
    band: str = "CRITICAL"
    model: str = "test"


def governor(clock):
    return Governor(replace(GovernConfig(), ack_timeout_s=TIMEOUT), clock)


class LoopView:
    """The part of GovernorUnit's API the loop reads each beat, over the core."""

    def __init__(self, core):
        self.core = core

    def overdue_directives_total(self):
        return self.core.overdue_directives_total()

    def jobs(self):
        return self.core.jobs_list()


def directive(gov, job_id="j"):
    """Push two directives to `job_id` (QUARANTINE, then its release: directives
    whatever the stress); both stay pending until acked."""
    gov.quarantine(job_id, "test")
    gov.release_quarantine(job_id)


def test_each_ignored_directive_counts_once_when_it_becomes_overdue():
    clock = ManualClock()
    gov = governor(clock)
    gov.submit("j", FIVE, {})
    directive(gov)                                  # versions 1 and 2
    assert gov.overdue_directives_total() == 0
    clock.advance(TIMEOUT - 0.01)
    assert gov.overdue_directives_total() == 0             # not yet
    clock.advance(0.02)
    assert gov.overdue_directives_total() == 2
    clock.advance(10.0)
    assert gov.overdue_directives_total() == 2             # still pending: not counted again
    gov.ack("j", 2)
    assert gov.overdue_directives_total() == 2             # the late ack does not count again


def test_acked_in_time_is_never_counted_and_acked_late_counts_without_a_sweep():
    clock = ManualClock()
    gov = governor(clock)
    gov.submit("j", FIVE, {})
    directive(gov)
    clock.advance(TIMEOUT - 0.001)
    gov.ack("j", 1)                                        # 1 ms before its deadline
    clock.advance(TIMEOUT * 5)
    assert gov.overdue_directives_total() == 1             # only version 2
    d = gov.quarantine("j", "again")                       # version 3
    clock.advance(TIMEOUT + 0.5)
    gov.ack("j", d["version"])                             # late, and nobody looked in between
    assert gov.overdue_directives_total() == 2


def test_directives_dropped_with_their_job_still_count_if_overdue():
    clock = ManualClock()
    gov = governor(clock)
    gov.submit("a", FIVE, {})
    gov.submit("b", FIVE, {})
    directive(gov, "a")
    directive(gov, "b")
    clock.advance(TIMEOUT + 1)
    gov.release("a")                                       # overdue, never swept
    gov.release("b")
    assert gov.overdue_directives_total() == 4
    gov.submit("c", FIVE, {})
    directive(gov, "c")
    gov.release("c")                                       # released in time: not an anomaly
    clock.advance(TIMEOUT + 1)
    assert gov.overdue_directives_total() == 4


def test_the_loop_counts_newly_overdue_directives_per_beat():
    """1 s beats, 2 s ack timeout.  The old count (a rise in the number
    pending) would see the first directives at once, count a prompt ack's
    replacement as nothing, and count a directive acked 1 ms after the beat."""
    clock = ManualClock()
    gov = governor(clock)
    gov.submit("j", FIVE, {})
    loop = VenomLoop(Settings(t1=0.2375, summary_interval_s=60.0), clock, governor=LoopView(gov),
                     recorder=Ledger.memory(clock=clock))

    async def beat():
        clock.advance(1.0)
        d = await loop.step(loop.timer.fired(clock.monotonic()))
        return d["anomalies"]["unacked_directives"]

    async def go():
        seen = [await beat()]                              # baseline beat
        directive(gov)                              # v1, v2 at t=1
        seen.append(await beat())                          # t=2: pending, not overdue
        gov.ack("j", 2)                                    # acked in time
        gov.quarantine("j", "x")                           # v3 at t=2: ack + new one in one beat
        seen.append(await beat())                          # t=3
        seen.append(await beat())                          # t=4: v3 issued at 2, not past 2 s yet
        seen.append(await beat())                          # t=5: v3 overdue → 1
        seen.append(await beat())                          # t=6: still pending → 0
        gov.ack("j", 3)
        seen.append(await beat())
        return seen

    seen = asyncio.run(go())
    assert seen == [0, 0, 0, 0, 1, 0, 0]
    assert loop.status()["anomalies"]["unacked_directives"] == 1
