"""Whether a source is up, and when to try again: the bookkeeping every
source shares so that one that goes away (a cgroup removed by `systemctl
restart`, a tegrastats that dies, an NVML driver that loads late) comes
back by itself, is reported while it is gone, and counts once.

States (`SenseSource.state`):

    ok        read successfully since it was (re)opened
    starting  opened (tegrastats: the child runs), no good read yet
    absent    cannot be opened or read; retried with backoff
    off       not configured (sense.cgroup = "", tegrastats "off")

A failure *episode* starts when a source leaves ok (or, for a source the
configuration asked for, when it is absent from the start) and ends at its
next good read; retries inside one episode are attempts, not new failures.
`episodes` is what `source_failures` (venom's anomalies) counts.

Backoff: the first retry `INITIAL_S` after the failure, then doubling up
to the cap (`sense.retry_max_s`); a good read resets it.  Pure: the caller
passes the clock.
"""
from __future__ import annotations

from ..log import get_logger

log = get_logger("sense")

INITIAL_S = 0.5
MAX_S = 30.0

OK, STARTING, ABSENT, OFF = "ok", "starting", "absent", "off"


class Backoff:
    """0.5 s, 1 s, 2 s, ... up to max_s."""

    __slots__ = ("initial_s", "max_s", "_next")

    def __init__(self, initial_s: float = INITIAL_S, max_s: float = MAX_S):
        self.initial_s, self.max_s = initial_s, max(initial_s, max_s)
        self._next = self.initial_s

    def next(self) -> float:
        """The delay to wait now; the one after it doubles (up to max_s)."""
        d = min(self._next, self.max_s)
        self._next = min(d * 2, self.max_s)
        return d

    def reset(self) -> None:
        self._next = self.initial_s


class Health:
    """State, since when, the last error, attempts and episodes of one source."""

    def __init__(self, name: str, clock, expected: bool = True, max_s: float = MAX_S):
        self.name, self.clock = name, clock
        # expected: the configuration asked for it, so being absent from the
        # start is a failure (the cgroup, an explicit tegrastats command);
        # an optional probe (NVML, PSI) absent from the start is not.
        self.expected = expected
        self.backoff = Backoff(INITIAL_S, max_s)
        self.state = STARTING
        self.since = clock.monotonic()
        self.since_wall = clock.wall()
        self.last_error: str | None = None
        self.off_reason: str | None = None
        self.attempts = 0          # failed (re)open attempts in this episode
        self.episodes = 0
        self.next_retry: float | None = None   # monotonic; None: no retry planned
        self._was_up = False

    def _enter(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = self.clock.monotonic()
            self.since_wall = self.clock.wall()

    def up(self) -> None:
        """A good read."""
        if self.state != OK:
            if self.state == ABSENT:
                log.info("source_recovered", source=self.name, attempts=self.attempts,
                         absent_s=round(self.clock.monotonic() - self.since, 3))
            self._enter(OK)
        self._was_up = True
        self.attempts = 0
        self.next_retry = None
        self.backoff.reset()

    def starting(self) -> None:
        """Opened or started again; not read yet."""
        if self.state != ABSENT:
            self._enter(STARTING)

    def down(self, error: str, delay: float | None = None, retry: bool = True) -> float | None:
        """Could not open or read: absent, retried after `delay` (the backoff's
        next one by default; retry=False: no retry until reconfigured).
        Counts an episode and logs once when it was up (or is expected);
        returns the delay."""
        now = self.clock.monotonic()
        if self.state != ABSENT:
            if self._was_up or self.expected:
                self.episodes += 1
            level = log.warning if (self._was_up or self.expected) else log.info
            level("source_absent", source=self.name, reason=error)
            self._enter(ABSENT)
        else:
            self.attempts += 1
        self.last_error = error
        if not retry:
            self.next_retry = None
            return None
        d = self.backoff.next() if delay is None else delay
        self.next_retry = now + d
        return d

    def off(self, reason: str | None = None) -> None:
        self._enter(OFF)
        self.off_reason = reason
        self.next_retry = None
        self.attempts = 0

    @property
    def reason(self) -> str | None:
        """Why it is not reading now (None while ok or starting)."""
        if self.state == ABSENT:
            return self.last_error
        return self.off_reason if self.state == OFF else None

    def retry_due(self) -> bool:
        return self.state == ABSENT and self.next_retry is not None and self.clock.monotonic() >= self.next_retry

    def set_max(self, max_s: float) -> None:
        """A new cap (reload): a retry planned further away than it comes sooner."""
        self.backoff.max_s = max(self.backoff.initial_s, max_s)
        self.backoff._next = min(self.backoff._next, self.backoff.max_s)
        if self.next_retry is not None:
            self.next_retry = min(self.next_retry, self.clock.monotonic() + self.backoff.max_s)

    def to_dict(self) -> dict:
        """The fields SenseSource and SourceState share."""
        now = self.clock.monotonic()
        d = {"state": self.state, "since": round(self.since_wall, 3),
             "in_state_s": round(now - self.since, 3), "attempts": self.attempts, "episodes": self.episodes}
        if self.last_error:
            d["last_error"] = self.last_error
        if self.state == ABSENT and self.next_retry is not None:
            d["next_retry_s"] = round(max(0.0, self.next_retry - now), 3)
        return d
