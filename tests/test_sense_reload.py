"""system.reload (and SIGHUP) of every sense.* key, on the real daemon: the
key is reported changed, never restart_required, and the running sources
show the new setting (the new cgroup is read, the new tegrastats command
runs with a new pid, the new proc_root is read, ...)."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys

import pytest

from aal_core.config import SenseConfig
from helpers import short_tmpdir, wait_for
from test_sense_daemon import fake_proc

TOTAL_KB = 8_000_000


def sources(d) -> dict:
    return {x["name"]: x for x in d.call("sense.sources")["sources"]}


def reload(d, config: str, via: str = "rpc") -> dict | None:
    """Rewrite the daemon's config file and reload it."""
    with open(os.path.join(d.base, "aal-core.toml"), "w") as fh:
        fh.write(config)
    if via == "rpc":
        r = d.call("system.reload")
        assert r["reloaded"] and r["restart_required"] == []
        return r
    d.signal(signal.SIGHUP)
    return None


def fake_cgroup(path, limit_mb: int, current_mb: int) -> str:
    """A v2 cgroup directory (tmp tree): limit and usage."""
    path.mkdir(parents=True)
    (path / "memory.current").write_text(f"{current_mb << 20}\n")
    (path / "memory.stat").write_text("anon 1\nfile 0\nactive_file 0\ninactive_file 0\n")
    (path / "memory.events").write_text("oom 0\noom_kill 0\n")
    (path / "memory.max").write_text(f"{limit_mb << 20}\n")
    return str(path)


def tool(path, temp: float) -> str:
    """A tegrastats stand-in printing one line every 50 ms (its argv in /proc/<pid>/cmdline)."""
    path.write_text(f"#!{sys.executable}\nimport time\nwhile True:\n"
                    f"    print('RAM 1200/7620MB CPU [5%@1190] tj@{temp}C', flush=True)\n"
                    "    time.sleep(0.05)\n")
    path.chmod(0o755)
    return str(path)


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [a.decode() for a in fh.read().split(b"\0") if a]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].startswith("Z")   # reaped or a zombie
    except FileNotFoundError:
        return True


def test_every_sense_key_has_a_reload_test():
    """A new [sense] key needs a test here (and must not be restart-only silently)."""
    tested = {"proc_root", "tegrastats_command", "tegrastats_interval_ms", "cgroup", "sample_hz",
              "sample_hz_max", "sample_hz_idle", "history_size", "retry_max_s"}   # sample_hz_idle: test_rpc_idle_rate.py
    assert {f.name for f in dataclasses.fields(SenseConfig)} == tested


@pytest.mark.parametrize("via", ["rpc", "sighup"])
def test_reload_proc_root_reads_the_new_root(daemon_factory, via):
    base = short_tmpdir()
    a = fake_proc(os.path.join(base, "a"), TOTAL_KB, TOTAL_KB // 2)          # used 0.5
    b = fake_proc(os.path.join(base, "b"), TOTAL_KB, TOTAL_KB // 10)         # used 0.9
    d = daemon_factory(base=base, config=f'[sense]\nproc_root = "{a}"\n')
    assert d.call("stress.get")["components"]["host_used"] == pytest.approx(0.5, abs=1e-6)
    r = reload(d, f'[sense]\nproc_root = "{b}"\n', via)
    if r is not None:
        assert r["changed"] == ["sense.proc_root"]
    wait_for(lambda: d.call("stress.get")["components"]["host_used"] == pytest.approx(0.9, abs=1e-6),
             what="host_used from the new proc_root")
    src = sources(d)
    assert src["meminfo"]["path"] == os.path.join(b, "meminfo") and src["meminfo"]["state"] == "ok"
    assert src["vmstat"]["path"] == os.path.join(b, "vmstat")
    assert d.call("system.status")["config"]["sense"]["proc_root"] == b


def test_reload_proc_root_without_meminfo_says_absent_and_keeps_serving(daemon_factory, tmp_path):
    base = short_tmpdir()
    a = fake_proc(os.path.join(base, "a"), TOTAL_KB, TOTAL_KB // 2)
    d = daemon_factory(base=base, config=f'[sense]\nproc_root = "{a}"\n')
    reload(d, f'[sense]\nproc_root = "{tmp_path}"\n')
    m = sources(d)["meminfo"]
    assert m["state"] == "absent" and "meminfo: cannot open" in m["last_error"]
    assert d.call("system.health")["ok"]
    reload(d, f'[sense]\nproc_root = "{a}"\n')
    wait_for(lambda: sources(d)["meminfo"]["state"] == "ok")


def test_reload_cgroup_watches_the_new_cgroup_and_empty_stops(daemon_factory, tmp_path):
    one = fake_cgroup(tmp_path / "one", 512, 128)        # used 0.25
    two = fake_cgroup(tmp_path / "two", 512, 384)        # used 0.75
    d = daemon_factory(config=f'[sense]\ncgroup = "{one}"\n')
    assert d.call("stress.get")["components"]["cgroup_used"] == pytest.approx(0.25, abs=1e-6)
    assert reload(d, f'[sense]\ncgroup = "{two}"\n')["changed"] == ["sense.cgroup"]
    wait_for(lambda: d.call("stress.get")["components"].get("cgroup_used") == pytest.approx(0.75, abs=1e-6))
    assert sources(d)["cgroup"]["path"] == two
    reload(d, "[sense]\n")
    wait_for(lambda: d.call("stress.get")["view"] == "host")
    assert "cgroup" not in sources(d) and d.call("system.status")["stress_view"] == "host"


def test_reload_tegrastats_command_runs_the_new_command(daemon_factory, tmp_path):
    old, new = tool(tmp_path / "ts-old", 40.5), tool(tmp_path / "ts-new", 60.5)
    # tegrastats="": no --tegrastats override, the file's command is the one in force
    d = daemon_factory(tegrastats="", config=f'[sense]\ntegrastats_command = "{old}"\n')
    t = wait_for(lambda: (lambda s: s if s["state"] == "ok" else None)(sources(d)["tegrastats"]))
    old_pid = t["pid"]
    assert cmdline(old_pid)[1:] == [old, "--interval", "1000"]
    assert reload(d, f'[sense]\ntegrastats_command = "{new}"\n')["changed"] == ["sense.tegrastats_command"]
    t = wait_for(lambda: (lambda s: s if s.get("pid") not in (None, old_pid) else None)(sources(d)["tegrastats"]))
    assert cmdline(t["pid"])[1:] == [new, "--interval", "1000"] and t["path"] == f"{new} --interval 1000"
    assert gone(old_pid)
    wait_for(lambda: d.call("tegrastats.latest")["temps_c"] == {"tj": 60.5})
    reload(d, '[sense]\ntegrastats_command = "off"\n')
    t = sources(d)["tegrastats"]
    assert t["state"] == "off" and t["present"] is False and gone(old_pid)


def test_reload_tegrastats_interval_restarts_the_child(daemon_factory, tmp_path):
    cmd = tool(tmp_path / "ts", 45.0)
    d = daemon_factory(tegrastats="", config=f'[sense]\ntegrastats_command = "{cmd}"\n')
    old_pid = wait_for(lambda: sources(d)["tegrastats"].get("pid"))
    r = reload(d, f'[sense]\ntegrastats_command = "{cmd}"\ntegrastats_interval_ms = 250\n')
    assert r["changed"] == ["sense.tegrastats_interval_ms"]
    pid = wait_for(lambda: (lambda p: p if p not in (None, old_pid) else None)(sources(d)["tegrastats"].get("pid")))
    assert cmdline(pid)[1:] == [cmd, "--interval", "250"]


def test_reload_sample_hz(daemon_factory):
    d = daemon_factory(config="[sense]\n")
    assert d.call("sense.sources")["sample_hz"] == 10.0
    assert reload(d, "[sense]\nsample_hz = 20.0\n")["changed"] == ["sense.sample_hz"]
    assert d.call("sense.sources")["sample_hz"] == 20.0


def test_reload_sample_hz_max_while_fast(daemon_factory):
    base = short_tmpdir()
    root = fake_proc(base, TOTAL_KB, TOTAL_KB // 25)        # used 0.96: CRITICAL, sampled at the max
    d = daemon_factory(base=base, config=f'[sense]\nproc_root = "{root}"\n')
    wait_for(lambda: d.call("sense.sources")["sample_hz"] == 50.0)
    reload(d, f'[sense]\nproc_root = "{root}"\nsample_hz_max = 25.0\n')
    assert d.call("sense.sources")["sample_hz"] == 25.0


def test_reload_history_size(daemon_factory):
    d = daemon_factory(config="[sense]\n")
    wait_for(lambda: len(d.call("stress.history", {"count": 100})["samples"]) >= 8)
    reload(d, "[sense]\nhistory_size = 5\n")
    assert len(d.call("stress.history", {"count": 100})["samples"]) <= 5


@pytest.mark.slow
def test_reload_retry_max_s_shortens_a_pending_retry(daemon_factory, tmp_path):
    d = daemon_factory("--cgroup", str(tmp_path / "later"), config="[sense]\nretry_max_s = 600.0\n")
    wait_for(lambda: sources(d)["cgroup"]["attempts"] >= 3)      # 0.5, 1, 2: the next one 4 s away
    assert sources(d)["cgroup"]["next_retry_s"] > 1.0
    reload(d, "[sense]\nretry_max_s = 0.5\n")
    assert sources(d)["cgroup"]["next_retry_s"] <= 0.5
    fake_cgroup(tmp_path / "later", 512, 256)
    wait_for(lambda: d.call("stress.get")["view"] == "cgroup", timeout=3.0)
