"""The idle daemon samples at sense.sample_hz_idle, and the base rate is back
the moment a client connects (README "Performance": wake-ups at idle).

Real daemons, real /proc; what is counted is the meminfo source's `reads`
(one per sample), asked for over a connection after a window without one.
Bounds are on counts, loose both ways: a loaded machine only reads less.
"""
from __future__ import annotations

import time

from helpers import wait_for
from test_sense_reload import reload


def meminfo_reads(d) -> tuple[int, float]:
    """(reads of meminfo so far, the sampling rate reported) over a fresh connection."""
    src = d.call("sense.sources")
    return next(s["reads"] for s in src["sources"] if s["name"] == "meminfo"), src["sample_hz"]


def idle_reads(d, seconds: float) -> int:
    """Samples taken over `seconds` with no client connected."""
    r0, _ = meminfo_reads(d)
    time.sleep(seconds)
    r1, _ = meminfo_reads(d)
    return r1 - r0


def test_no_client_samples_at_the_idle_rate_and_a_client_brings_the_base_rate(daemon_factory):
    d = daemon_factory(config="[sense]\nsample_hz = 50.0\nsample_hz_idle = 1.0\n")
    # At 50 Hz, 2 s would be ~100 samples; at 1 Hz 2-3, plus the one a
    # connection takes at once and those during the calls themselves.
    assert 1 <= idle_reads(d, 2.0) <= 15
    # While a client is connected: the base rate, reported and taken.
    with d.client() as c:
        src = c.call("sense.sources")
        assert src["sample_hz"] == 50.0
        start = next(s["reads"] for s in src["sources"] if s["name"] == "meminfo")
        wait_for(lambda: next(s["reads"] for s in c.call("sense.sources")["sources"]
                              if s["name"] == "meminfo") >= start + 40, what="50 Hz while connected")


def test_idle_rate_equal_to_the_base_rate_keeps_sampling(daemon_factory):
    """sample_hz_idle >= sample_hz: no backoff (the idle rate never exceeds the base)."""
    d = daemon_factory(config="[sense]\nsample_hz = 50.0\nsample_hz_idle = 200.0\n")
    assert idle_reads(d, 1.0) >= 20


def test_reload_sample_hz_idle(daemon_factory):
    d = daemon_factory(config="[sense]\nsample_hz = 50.0\nsample_hz_idle = 50.0\n")
    assert idle_reads(d, 1.0) >= 20
    r = reload(d, "[sense]\nsample_hz = 50.0\nsample_hz_idle = 1.0\n")
    assert r["changed"] == ["sense.sample_hz_idle"]
    assert meminfo_reads(d)[1] == 50.0          # a client is connected: the base rate
    assert idle_reads(d, 2.0) <= 15

