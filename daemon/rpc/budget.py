"""Per-peer budgets: what one uid (and one connection) may hold or write.

Pure accounting with an injectable clock, no I/O (README, "Budgets"):

- held things, counted per uid and per connection: `jobs` (jobs in the
  governor) and `subscriptions`; `hold()` refuses past either limit,
  `drop()` gives one back;
- ledger-writing calls, per uid: a token bucket of `ledger_calls_per_s`
  with `ledger_calls_burst` tokens (`ledger_call()`);
- ledger bytes, per uid: the bytes of the records appended for the uid's
  calls over a rolling 24 h window (24 hourly slots), charged through the
  `Charge` that `ledger_call()` returns and the ledger finds in `CHARGE`.

A refusal is an RpcError with code BUDGET_EXCEEDED whose data names the
budget (its config key), the limit, the use and, for the rate and the
byte window, retry_after_s.  Exempt uids (budget.exempt) are counted but
never refused.
"""
from __future__ import annotations

import contextvars
import os

from .. import errors as E
from ..errors import RpcError

HOUR_S = 3600.0
WINDOW_HOURS = 24
KINDS = ("jobs", "subscriptions")
BUDGETS = ("jobs_per_uid", "jobs_per_connection", "subscriptions_per_uid",
           "subscriptions_per_connection", "ledger_calls_per_s", "ledger_bytes_per_day")

# The Charge of the ledger-writing call running now (set by the dispatcher
# around its handler; tasks the handler starts inherit it), or None.
CHARGE: contextvars.ContextVar = contextvars.ContextVar("aal_budget_charge", default=None)


def exempt_uids(text: str, daemon_uid: int) -> frozenset:
    """budget.exempt ("root,daemon,1000") → uids.  Raises ValueError on a bad item."""
    out = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "root":
            out.add(0)
        elif item == "daemon":
            out.add(daemon_uid)
        elif item.isdigit():
            out.add(int(item))
        else:
            raise ValueError(f"{item!r} is not a uid, 'root' or 'daemon'")
    return frozenset(out)


class _Peer:
    """One uid's use."""

    __slots__ = ("jobs", "subscriptions", "tokens", "tokens_at", "slots", "refused", "ledger_calls")

    def __init__(self, burst: float, now: float):
        self.jobs = 0
        self.subscriptions = 0
        self.tokens = float(burst)
        self.tokens_at = now
        self.slots: dict[int, int] = {}   # hour number -> bytes appended in it
        self.refused: dict[str, int] = {}
        self.ledger_calls = 0


class Charge:
    """Bytes the ledger appends for one call, charged to its uid."""

    __slots__ = ("_budgets", "uid")

    def __init__(self, budgets: "Budgets", uid: int):
        self._budgets, self.uid = budgets, uid

    def add(self, nbytes: int) -> None:
        """Charge (or, negative, refund) `nbytes` in the current hour."""
        self._budgets._add_bytes(self.uid, nbytes)

    def check(self) -> None:
        """Raise BUDGET_EXCEEDED if the uid's bytes are used up now.  The
        ledger calls it before each append: the calls of one batch (or
        pipelined async calls) all pass the dispatcher's check before the
        first of them has appended anything."""
        self._budgets._check_bytes(self.uid, self._budgets.clock.monotonic())


class Budgets:
    def __init__(self, cfg, clock, daemon_uid: int | None = None):
        self.clock = clock
        self.daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid
        self._peers: dict[int, _Peer] = {}
        self._conns: dict[object, list[int]] = {}    # connection key -> [jobs, subscriptions]
        self.refused_total = dict.fromkeys(BUDGETS, 0)
        self.configure(cfg)

    def configure(self, cfg) -> None:
        """Take new limits (reload): held things above a lowered limit stay;
        new ones are refused until use is below it."""
        self.cfg = cfg
        self.exempt = exempt_uids(cfg.exempt, self.daemon_uid)

    # ------------------------------------------------------------ internals

    def _peer(self, uid: int) -> _Peer:
        p = self._peers.get(uid)
        if p is None:
            p = self._peers[uid] = _Peer(self.cfg.ledger_calls_burst, self.clock.monotonic())
        return p

    def _prune(self, uid: int, p: _Peer) -> None:
        """Forget a uid that holds nothing and was never refused (bounded table)."""
        if p.jobs or p.subscriptions or p.slots or p.refused:
            return
        refill = (self.clock.monotonic() - p.tokens_at) * self.cfg.ledger_calls_per_s
        if p.tokens + refill >= self.cfg.ledger_calls_burst:
            self._peers.pop(uid, None)

    def _refuse(self, p: _Peer, budget: str, uid: int, scope: str, limit, used, what: str,
                retry_after_s: float | None = None) -> RpcError:
        p.refused[budget] = p.refused.get(budget, 0) + 1
        self.refused_total[budget] += 1
        data = {"budget": budget, "scope": scope, "uid": uid, "limit": limit, "used": used}
        msg = f"budget {budget} exceeded: {what} (limit {limit}, in use {used}"
        if retry_after_s is not None:
            data["retry_after_s"] = round(retry_after_s, 3)
            msg += f"; retry after {data['retry_after_s']} s"
        return RpcError(E.BUDGET_EXCEEDED, msg + ")", data)

    def _window(self, p: _Peer, hour: int) -> int:
        """Bytes in the last 24 hourly slots (older ones are dropped)."""
        stale = [h for h in p.slots if h <= hour - WINDOW_HOURS]
        for h in stale:
            del p.slots[h]
        return sum(p.slots.values())

    def _add_bytes(self, uid: int, nbytes: int) -> None:
        p = self._peer(uid)
        hour = int(self.clock.monotonic() // HOUR_S)
        n = p.slots.get(hour, 0) + nbytes
        if n > 0:
            p.slots[hour] = n
        else:  # a refund (failed append) that crossed an hour boundary is dropped
            p.slots.pop(hour, None)
        self._window(p, hour)

    # ------------------------------------------------------------ checks

    def hold(self, kind: str, uid: int, conn) -> None:
        """Take one of `kind` ("jobs", "subscriptions") for uid on connection
        key `conn`; raises RpcError BUDGET_EXCEEDED past either limit."""
        p = self._peer(uid)
        c = self._conns.get(conn)
        if c is None:
            c = self._conns[conn] = [0, 0]
        i = KINDS.index(kind)
        if uid not in self.exempt:
            used_uid = p.jobs if i == 0 else p.subscriptions
            lim_conn = getattr(self.cfg, f"{kind}_per_connection")
            lim_uid = getattr(self.cfg, f"{kind}_per_uid")
            err = None
            if c[i] >= lim_conn:
                err = self._refuse(p, f"{kind}_per_connection", uid, "connection", lim_conn, c[i],
                                   f"this connection holds {c[i]} {kind}")
            elif used_uid >= lim_uid:
                err = self._refuse(p, f"{kind}_per_uid", uid, "uid", lim_uid, used_uid,
                                   f"uid {uid} holds {used_uid} {kind}")
            if err is not None:
                if not any(c):
                    del self._conns[conn]
                raise err
        c[i] += 1
        if i == 0:
            p.jobs += 1
        else:
            p.subscriptions += 1

    def drop(self, kind: str, uid: int, conn) -> None:
        """Give back one `kind` taken by hold() (release, unsubscribe, close)."""
        i = KINDS.index(kind)
        c = self._conns.get(conn)
        if c is not None:
            c[i] = max(0, c[i] - 1)
            if not any(c):
                del self._conns[conn]
        p = self._peers.get(uid)
        if p is not None:
            if i == 0:
                p.jobs = max(0, p.jobs - 1)
            else:
                p.subscriptions = max(0, p.subscriptions - 1)
            self._prune(uid, p)

    def ledger_call(self, uid: int) -> Charge:
        """Admit one ledger-writing call of uid (takes a token), or raise
        RpcError BUDGET_EXCEEDED (rate, or the 24 h bytes used up)."""
        now = self.clock.monotonic()
        cfg = self.cfg
        p = self._peer(uid)
        rate, burst = cfg.ledger_calls_per_s, float(cfg.ledger_calls_burst)
        p.tokens = min(burst, p.tokens + (now - p.tokens_at) * rate)
        p.tokens_at = now
        if uid not in self.exempt:
            if p.tokens < 1.0:
                raise self._refuse(p, "ledger_calls_per_s", uid, "uid", rate, int(burst - p.tokens),
                                   f"uid {uid} made more than {burst:g} ledger-writing calls "
                                   f"at over {rate:g}/s", (1.0 - p.tokens) / rate)
            self._check_bytes(uid, now)
        p.tokens = max(0.0, p.tokens - 1.0)
        p.ledger_calls += 1
        return Charge(self, uid)

    def _check_bytes(self, uid: int, now: float) -> None:
        if uid in self.exempt:
            return
        p = self._peer(uid)
        used = self._window(p, int(now // HOUR_S))
        limit = self.cfg.ledger_bytes_per_day
        if used >= limit:
            raise self._refuse(p, "ledger_bytes_per_day", uid, "uid", limit, used,
                               f"uid {uid} appended {used} ledger bytes in 24 h",
                               self._bytes_retry(p, now, used - limit + 1))

    def _bytes_retry(self, p: _Peer, now: float, excess: int) -> float:
        """Seconds until enough old hourly slots leave the window to free `excess` bytes."""
        freed = 0
        for h in sorted(p.slots):
            freed += p.slots[h]
            if freed >= excess:
                return max(0.0, (h + WINDOW_HOURS) * HOUR_S - now)
        return WINDOW_HOURS * HOUR_S

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        """For system.status: totals, refusals, and each uid that holds,
        wrote in the window, or was refused."""
        hour = int(self.clock.monotonic() // HOUR_S)
        uids = []
        jobs = subs = nbytes = 0
        for uid in sorted(self._peers):
            p = self._peers[uid]
            b = self._window(p, hour)
            self._prune(uid, p)
            if uid not in self._peers:
                continue
            jobs, subs, nbytes = jobs + p.jobs, subs + p.subscriptions, nbytes + b
            row = {"uid": uid, "jobs": p.jobs, "subscriptions": p.subscriptions,
                   "ledger_calls": p.ledger_calls, "ledger_bytes_24h": b}
            if p.refused:
                row["refused"] = dict(p.refused)
            if uid in self.exempt:
                row["exempt"] = True
            uids.append(row)
        return {"exempt_uids": sorted(self.exempt), "jobs": jobs, "subscriptions": subs,
                "ledger_bytes_24h": nbytes,
                "refused_total": sum(self.refused_total.values()),
                "refused": {k: v for k, v in self.refused_total.items() if v},
                "uids": uids}

