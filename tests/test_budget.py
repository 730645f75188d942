"""The budget accounting on its own (rpc/budget.py): a manual clock, no
sockets.  Each budget is refused past its limit with BUDGET_EXCEEDED and
data naming it; giving back frees it; exempt uids are counted, never refused."""
from __future__ import annotations

from dataclasses import replace

import pytest

from aal_core import errors as E
from aal_core.clock import ManualClock
from aal_core.config import BudgetConfig, ConfigError, from_mapping
from aal_core.errors import RpcError
from aal_core.rpc.budget import Budgets, exempt_uids

UID = 1000
CFG = BudgetConfig(exempt="", jobs_per_uid=3, jobs_per_connection=2, subscriptions_per_uid=4,
                   subscriptions_per_connection=3, ledger_calls_per_s=2.0, ledger_calls_burst=5,
                   ledger_bytes_per_day=1000)


def _budgets(**kw):
    clock = ManualClock()
    return Budgets(replace(CFG, **kw), clock, daemon_uid=4242), clock


def _refused(fn, *a) -> dict:
    with pytest.raises(RpcError) as ei:
        fn(*a)
    assert ei.value.code == E.BUDGET_EXCEEDED
    return ei.value.data


def test_jobs_per_connection_then_per_uid_and_release_frees():
    b, _ = _budgets()
    conn_a, conn_b = object(), object()
    b.hold("jobs", UID, conn_a)
    b.hold("jobs", UID, conn_a)
    d = _refused(b.hold, "jobs", UID, conn_a)
    assert d == {"budget": "jobs_per_connection", "scope": "connection", "uid": UID, "limit": 2, "used": 2}
    b.hold("jobs", UID, conn_b)
    d = _refused(b.hold, "jobs", UID, conn_b)
    assert d == {"budget": "jobs_per_uid", "scope": "uid", "uid": UID, "limit": 3, "used": 3}
    # Another uid is not affected.
    b.hold("jobs", UID + 1, object())
    b.drop("jobs", UID, conn_a)
    b.hold("jobs", UID, conn_a)          # the uid slot freed by the release
    st = b.status()
    assert st["jobs"] == 4 and st["refused"] == {"jobs_per_connection": 1, "jobs_per_uid": 1}
    assert st["refused_total"] == 2
    row = next(r for r in st["uids"] if r["uid"] == UID)
    assert row["jobs"] == 3 and row["refused"] == {"jobs_per_connection": 1, "jobs_per_uid": 1}


def test_subscriptions_per_connection_and_per_uid():
    b, _ = _budgets()
    c1, c2 = object(), object()
    for _ in range(3):
        b.hold("subscriptions", UID, c1)
    assert _refused(b.hold, "subscriptions", UID, c1)["budget"] == "subscriptions_per_connection"
    b.hold("subscriptions", UID, c2)
    d = _refused(b.hold, "subscriptions", UID, c2)
    assert d["budget"] == "subscriptions_per_uid" and d["used"] == 4 and d["limit"] == 4
    for _ in range(3):
        b.drop("subscriptions", UID, c1)
    b.hold("subscriptions", UID, c2)
    assert b.status()["subscriptions"] == 2


def test_ledger_call_rate_is_a_token_bucket_with_retry_after():
    b, clock = _budgets()
    for _ in range(5):                  # the burst
        b.ledger_call(UID)
    d = _refused(b.ledger_call, UID)
    assert d["budget"] == "ledger_calls_per_s" and d["limit"] == 2.0 and d["used"] == 5
    assert d["retry_after_s"] == pytest.approx(0.5)
    clock.advance(0.49)
    _refused(b.ledger_call, UID)
    clock.advance(0.02)                 # one token back after 0.5 s at 2/s
    b.ledger_call(UID)
    _refused(b.ledger_call, UID)
    clock.advance(10)                   # refills to the burst, not beyond
    for _ in range(5):
        b.ledger_call(UID)
    _refused(b.ledger_call, UID)
    row = b.status()["uids"][0]
    assert row["ledger_calls"] == 11 and row["refused"] == {"ledger_calls_per_s": 4}


def test_ledger_bytes_rolling_24h_window():
    b, clock = _budgets(ledger_calls_burst=1000, ledger_calls_per_s=1000.0)
    b.ledger_call(UID).add(600)
    clock.advance(5 * 3600)
    b.ledger_call(UID).add(500)          # 1100 >= 1000: the next is refused
    d = _refused(b.ledger_call, UID)
    assert d["budget"] == "ledger_bytes_per_day" and d["used"] == 1100 and d["limit"] == 1000
    # The first 600 bytes leave the window 24 h after their hour began.
    assert 0 < d["retry_after_s"] <= 19 * 3600
    clock.advance(d["retry_after_s"] + 1)
    charge = b.ledger_call(UID)          # 500 left in the window
    charge.add(300)
    charge.add(-300)                     # a failed append is refunded
    assert b.status()["ledger_bytes_24h"] == 500
    clock.advance(24 * 3600)
    assert b.status()["ledger_bytes_24h"] == 0


def test_exempt_uids_are_counted_never_refused():
    b, _ = _budgets(exempt="root,daemon,77")
    assert b.exempt == {0, 4242, 77}
    conn = object()
    for uid in (0, 4242, 77):
        for _ in range(10):
            b.hold("jobs", uid, conn)
            b.ledger_call(uid).add(500)
    st = b.status()
    assert st["refused_total"] == 0 and st["jobs"] == 30 and st["exempt_uids"] == [0, 77, 4242]
    assert all(r["exempt"] for r in st["uids"])


def test_status_forgets_a_uid_that_holds_nothing():
    b, clock = _budgets()
    conn = object()
    b.hold("jobs", UID, conn)
    b.drop("jobs", UID, conn)
    b.hold("subscriptions", UID, conn)
    b.drop("subscriptions", UID, conn)
    assert b.status()["uids"] == [] and b._conns == {}


def test_reload_changes_limits_and_keeps_what_is_held():
    b, _ = _budgets()
    conn = object()
    b.hold("jobs", UID, conn)
    b.hold("jobs", UID, conn)
    b.configure(replace(CFG, jobs_per_connection=1))
    assert _refused(b.hold, "jobs", UID, conn)["limit"] == 1
    b.configure(replace(CFG, jobs_per_connection=10, exempt=str(UID)))
    b.hold("jobs", UID, conn)
    assert b.status()["jobs"] == 3


def test_exempt_parsing_and_config_validation():
    assert exempt_uids(" root , 12,", 5) == {0, 12}
    assert exempt_uids("", 5) == frozenset()
    with pytest.raises(ValueError):
        exempt_uids("nobody", 5)
    cfg = from_mapping({"budget": {"exempt": "daemon", "jobs_per_uid": 7}}, "t.toml")
    assert cfg.budget.exempt == "daemon" and cfg.budget.jobs_per_uid == 7
    with pytest.raises(ConfigError, match="budget.exempt"):
        from_mapping({"budget": {"exempt": "root,nobody"}}, "t.toml")
    with pytest.raises(ConfigError, match="budget.jobs_per_uid"):
        from_mapping({"budget": {"jobs_per_uid": 0}}, "t.toml")


def test_defaults_let_a_supervisor_submit_and_release_a_job_per_second_for_a_day():
    """A job per second (job.submit + job.release, ~500 B each) never hits the defaults."""
    b = Budgets(BudgetConfig(exempt=""), clock := ManualClock(), daemon_uid=4242)
    conn = object()
    for _ in range(86400):
        b.ledger_call(UID).add(500)
        b.hold("jobs", UID, conn)
        clock.advance(0.5)
        b.ledger_call(UID).add(500)
        b.drop("jobs", UID, conn)
        clock.advance(0.5)
    assert b.status()["refused_total"] == 0
