"""End to end: real stress from the sensing loop (a --proc-root whose meminfo
the test rewrites), directives pushed to a registered job, acks, lifts, refusal."""
import os
import re
import shutil
import time

import pytest

from aal_core.client import RpcCallError
from aal_core.client.workload import GovernedJob
from helpers import wait_for

pytestmark = pytest.mark.slow
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "meminfo", "debian-x86_64-24g.txt")
CONFIG = "[govern]\nhold_s = 0.5\nhysteresis = 0.05\n"


class FakeProc:
    def __init__(self, path):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.text = open(FIXTURE).read()
        self.total = int(re.search(r"MemTotal:\s+(\d+)", self.text).group(1))
        self.set_used(0.2)

    def set_used(self, used: float):
        """Rewrite MemAvailable/MemFree in place, same length (the reader
        keeps the file open and re-reads it, as it does /proc/meminfo)."""
        avail = int(self.total * (1 - used))

        def same_width(m):
            return m.group(1) + str(avail).rjust(len(m.group(2)))
        text = re.sub(r"(MemAvailable:\s+)(\d+)", same_width, self.text)
        text = re.sub(r"(MemFree:\s+)(\d+)", same_width, text)
        path = os.path.join(self.path, "meminfo")
        if not os.path.exists(path):
            with open(path, "w") as fh:
                fh.write(text)
            return
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, text.encode(), 0)
        finally:
            os.close(fd)


def _wait_stress(d, pred, timeout=10.0):
    def matched():
        st = d.call("govern.status")
        s = st.get("last_stress")
        return st if s is not None and pred(s) else None
    return wait_for(matched, timeout, "govern.status last_stress to match")["last_stress"]


def test_directives_follow_real_stress_and_are_acked(daemon_factory, tmp_path):
    proc = FakeProc(str(tmp_path / "proc"))
    d = daemon_factory("--proc-root", proc.path, config=CONFIG)
    _wait_stress(d, lambda s: s < 0.3)
    job = GovernedJob("e2e", "BALANCED", socket_path=d.socket, heartbeat_s=0.5)
    info = job.start()
    assert info["active_steps"] == [] and info["metadata"]["kv_shrink_factor"] == 1.0

    proc.set_used(0.9)                      # stress ~0.9: above the 0.55 threshold and the setpoint
    applied = []
    deadline = time.monotonic() + 15
    while len(applied) < 3 and time.monotonic() < deadline:
        dv = job.wait(0.5)
        if dv is None:
            continue
        assert dv["schema"] == 1 and dv["job_id"] == "e2e"
        if dv["kind"] == "APPLY":
            assert len(dv["steps"]) == 1 and dv["cause"]["stress"] > 0.55
            applied.append(dv["steps"][0]["order"])
        job.ack(dv)
    assert applied == [1, 2, 3]             # one by one, in order
    md = job.metadata
    assert md["kv_shrink_factor"] == 0.75 and md["max_context_tokens"] == 4096
    assert md["disabled_features"] == ["HIGH_COST_METRICS"]
    got = d.call("job.get", {"job_id": "e2e"})
    assert got["unacked"] == 0 and got["acked_version"] == got["directive_version"] >= 3
    assert 0 <= got["last_ack_latency_s"] < 5
    assert got["active_steps"] == [1, 2, 3]

    # recovery: memory fell to 20 % and stays flat, ample headroom: after one
    # hold every step is lifted in reverse order, in one directive (issue 9:
    # recovery follows the evidence; it was one lift per hold)
    proc.set_used(0.2)
    lifted, lifts = [], 0
    deadline = time.monotonic() + 20
    while len(lifted) < 3 and time.monotonic() < deadline:
        dv = job.wait(0.5)
        if dv is None:
            continue
        if dv["kind"] == "LIFT":
            lifts += 1
            lifted.extend(s["order"] for s in dv["steps"])
        job.ack(dv)
    assert lifted == [3, 2, 1] and lifts == 1
    assert job.metadata["degraded"] is False
    job.close()


def test_unacked_directives_are_reported(daemon_factory, tmp_path):
    proc = FakeProc(str(tmp_path / "proc"))
    d = daemon_factory("--proc-root", proc.path, config="[govern]\nack_timeout_s = 0.2\n")
    _wait_stress(d, lambda s: s < 0.3)
    with d.client() as c:
        c.call("job.subscribe", {"job_id": "lazy"})
        c.call("job.submit", {"job_id": "lazy", "profile": "BALANCED"})
        proc.set_used(0.9)
        st = wait_for(lambda: (s := c.call("govern.status"))["overdue_directives"] >= 1 and s, 10,
                      "an overdue directive", every=0.1)
        assert st["unacked_directives"] >= 1 and st["overdue_directives"] >= 1
        assert c.call("job.get", {"job_id": "lazy"})["overdue"] >= 1
        assert any(n["params"]["data"]["job_id"] == "lazy" for n in c.notifications)


def test_refusal_at_critical_stress_over_the_socket(daemon_factory, tmp_path):
    proc = FakeProc(str(tmp_path / "proc"))
    d = daemon_factory("--proc-root", proc.path)
    proc.set_used(0.99)
    _wait_stress(d, lambda s: s >= 0.98)
    with d.client() as c:
        with pytest.raises(RpcCallError) as ei:
            c.call("job.submit", {"job_id": "low", "profile": "MINIMAL"})
        assert ei.value.code == -32005 and ei.value.data["priority"] == 3
        assert c.call("job.submit", {"job_id": "high", "profile": "PERFORMANCE"})["admitted"] is True
        assert [j["job_id"] for j in c.call("job.list")["jobs"]] == ["high"]
