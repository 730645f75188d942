"""Sources that come back (issue 8, part 3), on the real daemon: a watched
cgroup removed and created again (what `systemctl restart` of the watched
service does) or created after the daemon started, a tegrastats command
that appears later or dies, NVML absent: each is reported absent (state,
since, last error, attempts) while it is gone, counted as ONE failure
episode, reopened within the backoff bound (sense.retry_max_s), and the
stress says which view (cgroup/host) it is using."""
from __future__ import annotations

import os
import sys
import time

import pytest

from helpers import wait_for

V1 = "/sys/fs/cgroup/memory"
RETRY_MAX_S = 1.0
# The bound the reopen must meet: the backoff cap, plus a sampling round and
# slack for this shared 2-core machine.
REOPEN_BOUND_S = RETRY_MAX_S + 2.0


def sources(d, method="sense.sources") -> dict:
    return {x["name"]: x for x in d.call(method)["sources"]}


def v1_cgroup(name: str) -> str:
    if not os.path.exists(os.path.join(V1, "memory.limit_in_bytes")):
        pytest.skip("no cgroup v1 memory controller")
    path = os.path.join(V1, f"{name}-{os.getpid()}")
    if os.path.isdir(path):
        os.rmdir(path)
    return path


def make_v1(path: str, limit: int) -> None:
    os.mkdir(path)
    with open(os.path.join(path, "memory.limit_in_bytes"), "w") as fh:
        fh.write(str(limit))


def rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def alerts(d) -> int:
    return d.log().count("event=alert ")


def assert_absent(st: dict, error_part: str) -> None:
    assert st["present"] is False and st["state"] == "absent"
    assert error_part in st["last_error"] and st["reason"] == st["last_error"]
    assert st["since"] <= time.time() and st["in_state_s"] >= 0.0


@pytest.mark.root
@pytest.mark.slow
def test_removed_cgroup_is_absent_then_reopened_when_created_again(daemon_factory):
    path = v1_cgroup("aal-comeback")
    make_v1(path, 512 << 20)
    try:
        d = daemon_factory("--cgroup", path, config=f"[sense]\nretry_max_s = {RETRY_MAX_S}\n")
        s = d.call("stress.get")
        assert s["view"] == "cgroup" and "cgroup_used" in s["components"]
        assert sources(d)["cgroup"]["state"] == "ok"
        base_failures = d.call("sense.sources")["anomalies"]["source_failures"]
        base_alerts = alerts(d)

        removed_at = time.time()
        os.rmdir(path)                               # systemctl restart: the service's cgroup goes
        st = wait_for(lambda: (lambda c: c if c["state"] == "absent" and c["attempts"] >= 3 else None)(
            sources(d)["cgroup"]), timeout=15, what="cgroup absent, retried")
        assert_absent(st, path)
        assert st["since"] >= removed_at - 0.5 and st["episodes"] == 1
        assert 0.0 <= st["next_retry_s"] <= RETRY_MAX_S
        status = d.call("system.status")
        cg = {x["name"]: x for x in status["sources"]}["cgroup"]
        assert cg["state"] == "absent" and cg["last_error"] == st["last_error"] and cg["attempts"] >= 3
        assert status["stress_view"] == "host"
        s = d.call("stress.get")
        assert s["view"] == "host" and "cgroup_used" not in s["components"]
        assert d.call("sense.sources")["view"] == "host"
        # one episode, however many samples and retries it lasted; venom does not alert every beat
        time.sleep(2.0)
        src = d.call("sense.sources")
        assert src["anomalies"]["source_failures"] == base_failures + 1
        assert alerts(d) - base_alerts <= 1
        assert d.log().count("event=source_absent source=cgroup") == 1

        make_v1(path, 256 << 20)                     # ... and comes back, with a new limit
        created = time.monotonic()
        s = wait_for(lambda: (lambda x: x if x["view"] == "cgroup" else None)(d.call("stress.get")),
                     timeout=REOPEN_BOUND_S, what="the cgroup view again")
        assert time.monotonic() - created <= REOPEN_BOUND_S
        assert "cgroup_used" in s["components"]
        st = sources(d)["cgroup"]
        assert st["present"] and st["state"] == "ok" and st["attempts"] == 0 and st["episodes"] == 1
        assert "reason" not in st and path in st["last_error"]      # the last error is kept
        assert d.call("system.status")["stress_view"] == "cgroup"
        assert d.call("sense.sources")["anomalies"]["source_failures"] == base_failures + 1
        assert "event=source_recovered source=cgroup" in d.log()
        assert "event=stress_view view=host was=cgroup" in d.log()
    finally:
        rmdir_quiet(path)


@pytest.mark.root
@pytest.mark.slow
def test_cgroup_absent_at_start_is_watched_once_it_appears(daemon_factory):
    path = v1_cgroup("aal-comeback-late")
    try:
        d = daemon_factory("--cgroup", path, config=f"[sense]\nretry_max_s = {RETRY_MAX_S}\n")
        st = wait_for(lambda: (lambda c: c if c["attempts"] >= 2 else None)(sources(d)["cgroup"]))
        assert_absent(st, "not a cgroup directory")
        assert st["episodes"] == 1 and d.call("stress.get")["view"] == "host"
        make_v1(path, 512 << 20)
        created = time.monotonic()
        wait_for(lambda: d.call("stress.get")["view"] == "cgroup", timeout=REOPEN_BOUND_S,
                 what="the cgroup view")
        assert time.monotonic() - created <= REOPEN_BOUND_S
        st = sources(d)["cgroup"]
        assert st["state"] == "ok" and st["reads"] > 0 and st["episodes"] == 1
        assert d.call("sense.sources")["anomalies"]["source_failures"] == 1
    finally:
        rmdir_quiet(path)


def test_absent_cgroup_on_a_fake_tree_comes_back(daemon_factory, tmp_path):
    """The same without root, on a v2 tree in a temporary directory."""
    cg = tmp_path / "svc"
    d = daemon_factory("--cgroup", str(cg), config=f"[sense]\nretry_max_s = {RETRY_MAX_S}\n")
    assert sources(d)["cgroup"]["state"] == "absent" and d.call("stress.get")["view"] == "host"
    cg.mkdir()
    (cg / "memory.current").write_text(f"{100 << 20}\n")
    (cg / "memory.stat").write_text("anon 1\nfile 0\nactive_file 0\ninactive_file 0\n")
    (cg / "memory.events").write_text("oom 0\noom_kill 0\n")
    (cg / "memory.max").write_text(f"{400 << 20}\n")      # last: the reader keys on it
    s = wait_for(lambda: (lambda x: x if x["view"] == "cgroup" else None)(d.call("stress.get")),
                 timeout=REOPEN_BOUND_S)
    assert s["components"]["cgroup_used"] == pytest.approx(0.25, abs=1e-6)


def _tool(path, flag: str) -> None:
    """A tegrastats stand-in: prints a line every 50 ms while `flag` exists,
    then exits 3 (a tegrastats that dies)."""
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                    f"while os.path.exists({flag!r}):\n"
                    "    print('RAM 1200/7620MB (lfb 40x4MB) CPU [5%@1190] tj@48.5C', flush=True)\n"
                    "    time.sleep(0.05)\n"
                    "sys.exit(3)\n")
    path.chmod(0o755)


def test_tegrastats_command_that_appears_later_and_one_that_dies(daemon_factory, tmp_path):
    tool, flag = tmp_path / "my-tegrastats", tmp_path / "run"
    d = daemon_factory(tegrastats=str(tool), config=f"[sense]\nretry_max_s = {RETRY_MAX_S}\n")
    st = wait_for(lambda: (lambda t: t if t["attempts"] >= 2 else None)(sources(d)["tegrastats"]))
    assert_absent(st, f"command not found: {tool}")
    assert st["episodes"] == 1 and d.call("sense.sources")["anomalies"]["source_failures"] == 1

    flag.write_text("")
    _tool(tool, str(flag))                           # the script path is created
    st = wait_for(lambda: (lambda t: t if t["state"] == "ok" else None)(sources(d)["tegrastats"]),
                  timeout=REOPEN_BOUND_S, what="tegrastats running")
    assert st["present"] and st["pid"] > 0 and st["path"].startswith(f"{tool} --interval")
    first_pid = st["pid"]
    assert d.call("tegrastats.latest")["temps_c"] == {"tj": 48.5}

    flag.unlink()                                    # it dies, and dies again at every restart
    st = wait_for(lambda: (lambda t: t if t["state"] == "absent" and t["restarts"] >= 3 else None)(
        sources(d)["tegrastats"]), timeout=15, what="tegrastats dead, restarted")
    assert_absent(st, "exited with status 3")
    assert st["episodes"] == 2 and "pid" not in st
    assert d.call("sense.sources")["anomalies"]["source_failures"] == 2
    status = {x["name"]: x for x in d.call("system.status")["sources"]}["tegrastats"]
    assert status["state"] == "absent" and status["attempts"] >= 2

    flag.write_text("")                              # back
    st = wait_for(lambda: (lambda t: t if t["state"] == "ok" else None)(sources(d)["tegrastats"]),
                  timeout=REOPEN_BOUND_S, what="tegrastats back")
    assert st["pid"] != first_pid and st["episodes"] == 2
    assert d.call("sense.sources")["anomalies"]["source_failures"] == 2


def test_nvml_absent_is_reported_and_retried_not_counted(daemon_factory):
    """No GPU here: NVML cannot initialise (the real pynvml, nothing faked)."""
    import pynvml
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("NVML works on this machine")
    except pynvml.NVMLError:
        pass
    d = daemon_factory(config="[sense]\nretry_max_s = 0.5\n")
    st = wait_for(lambda: (lambda n: n if n["attempts"] >= 2 else None)(sources(d)["nvml"]))
    assert_absent(st, "NVML unavailable")
    assert st["episodes"] == 0 and 0.0 <= st["next_retry_s"] <= 0.5
    assert {x["name"]: x for x in d.call("system.status")["sources"]}["nvml"]["state"] == "absent"
    # an optional probe absent from the start is no failure, and is said once
    assert d.call("sense.sources")["anomalies"]["source_failures"] == 0
    assert d.log().count("event=source_absent source=nvml") == 1
