"""The sensing API on a real daemon: stress.get/history/subscribe,
tegrastats.latest, sense.sources, system.status, with recorded /proc files
(--proc-root) and a replaying tegrastats child."""
from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from aal_core.client import RpcCallError as RpcError
from aal_core.errors import INVALID_PARAMS, SOURCE_ABSENT
from helpers import start_daemon, cleanup, short_tmpdir, wait_for

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
REPLAY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon", "data",
                      "tegrastats_replay.py")
MEMINFO = ("MemTotal:       {total:>10} kB\nMemFree:        {avail:>10} kB\nMemAvailable:   {avail:>10} kB\n"
           "Buffers:                 0 kB\nCached:                  0 kB\nSwapTotal:               0 kB\n"
           "SwapFree:                0 kB\nShmem:                   0 kB\n")


def fake_proc(base: str, total_kb: int, avail_kb: int) -> str:
    root = os.path.join(base, "proc")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "meminfo"), "w") as fh:
        fh.write(MEMINFO.format(total=total_kb, avail=avail_kb))
    shutil.copy("/proc/vmstat", os.path.join(root, "vmstat"))
    return root


def set_avail(root: str, total_kb: int, avail_kb: int) -> None:
    """Rewrite in place, same length: the daemon keeps the file open."""
    with open(os.path.join(root, "meminfo"), "r+") as fh:
        fh.write(MEMINFO.format(total=total_kb, avail=avail_kb))


def test_stress_get_history_and_sources(daemon):
    s = daemon.call("stress.get")
    assert set(s) >= {"stress", "band", "model", "components", "trend_per_s", "timestamp", "seq"}
    assert s["model"] == "fused" and 0.0 <= s["stress"] <= 1.0
    assert s["band"] in ("LOW", "MODERATE", "HIGH", "CRITICAL")
    assert {"host_used", "used", "level", "trend", "psi", "swap"} <= set(s["components"])
    wait_for(lambda: daemon.call("stress.get")["seq"] >= 5)
    h = daemon.call("stress.history", {"count": 3})["samples"]
    assert len(h) == 3 and h[0]["seq"] < h[1]["seq"] < h[2]["seq"]
    src = daemon.call("sense.sources")
    by = {x["name"]: x for x in src["sources"]}
    assert by["meminfo"]["present"] and by["meminfo"]["reads"] >= 5 and by["meminfo"]["errors"] == 0
    assert by["tegrastats"]["present"] is False and by["tegrastats"]["mode"] == "off"
    assert src["sample_hz"] == 10.0
    assert set(src["anomalies"]) == {"critical_samples", "oom_kills", "thermal_breaches", "throttle_events",
                                     "source_failures"}
    with pytest.raises(RpcError) as e:
        daemon.call("tegrastats.latest")
    assert e.value.code == SOURCE_ABSENT and "disabled" in e.value.message
    st = {x["name"]: x for x in daemon.call("system.status")["sources"]}
    assert st["tegrastats"] == {"name": "tegrastats", "present": False, "mode": "off", "state": "off",
                                "since": st["tegrastats"]["since"], "attempts": 0,
                                "reason": "disabled (sense.tegrastats_command = off)"}


def test_bad_params_are_refused_and_lose_nothing(daemon):
    for method, params in (("stress.history", {"count": 0}), ("stress.history", {"count": "x"}),
                           ("stress.subscribe", {"mode": "sometimes"}), ("stress.get", {"x": 1})):
        with pytest.raises(RpcError) as e:
            daemon.call(method, params)
        assert e.value.code == INVALID_PARAMS, (method, params)
    assert daemon.call("stress.get")["band"]


def test_band_subscription_and_classic_model_on_recorded_meminfo(daemon_factory):
    base = short_tmpdir()
    total = 8_000_000
    root = fake_proc(base, total, int(total * 0.9))
    d = daemon_factory("--proc-root", root, "--model", "classic", base=base)
    assert d.call("stress.get")["model"] == "classic"
    assert d.call("stress.get")["band"] == "LOW"
    with d.client(timeout=20) as c:
        every = c.call("stress.subscribe", {"mode": "every"})["subscription"]
        band = c.call("stress.subscribe", {"mode": "band"})["subscription"]
        set_avail(root, total, int(total * 0.04))   # used 0.96 → 1.0 CRITICAL
        got_band = None
        n_every = 0
        for p in c.notifications_iter():
            if p["subscription"] == every:
                n_every += 1
            elif p["subscription"] == band:
                got_band = p["data"]
            if got_band and n_every >= 3:
                break
    assert got_band["band"] == "CRITICAL" and got_band["stress"] == 1.0
    assert got_band["components"]["used"] == pytest.approx(0.96, abs=1e-6)
    # classic: at most one sample per 0.5 s
    h = d.call("stress.history", {"count": 5})["samples"]
    gaps = [b["timestamp"] - a["timestamp"] for a, b in zip(h, h[1:])]
    assert gaps and min(gaps) >= 0.45
    # earlyoom-style: sampled at sample_hz_max while CRITICAL, back to sample_hz once calm
    assert wait_for(lambda: d.call("sense.sources")["sample_hz"] == 50.0)
    set_avail(root, total, int(total * 0.9))
    assert wait_for(lambda: d.call("sense.sources")["sample_hz"] == 10.0)


def _jetson_daemon(daemon_factory, tegrastats: str):
    """A daemon on the recorded Orin Nano meminfo (70 % used, CMA 23 % free),
    tegrastats every 50 ms from `tegrastats`."""
    base = short_tmpdir()
    root = os.path.join(base, "proc")
    os.makedirs(root)
    shutil.copy(os.path.join(FIX, "meminfo", "jetson-orin-nano-8g.txt"), os.path.join(root, "meminfo"))
    return daemon_factory("--proc-root", root, base=base, tegrastats=tegrastats,
                          config="[sense]\ntegrastats_interval_ms = 50\n")


# The bundled recording's lfb ranges from 100 MB down to 5 MB; at 70 % used a
# 5 MB lfb is a fragmentation component of 0.6 * (1 - 5/64) = 0.55.  The CMA
# figures of the meminfo fixture alone give 0.6 * (1 - (118784/524288)/0.25).
CMA_ONLY_FRAG = 0.6 * (1 - (118784 / 524288) / 0.25)


def test_jetson_meminfo_and_live_tegrastats_feed_the_stress(daemon_factory):
    # The replay script run as a command is a live source: its lines count.
    d = _jetson_daemon(daemon_factory, f"{sys.executable} {REPLAY}")
    t = wait_for(lambda: _latest_or_none(d))
    assert t["ram"]["total_mb"] == 7620 and "cpus" in t and t["unknown"] == [] and t["mode"] == "live"
    s = wait_for(lambda: (lambda x: x if "temp_c" in x else None)(d.call("stress.get")))
    assert s["thermal_sensor"] == "tj" and s["thermal_margin_c"] == pytest.approx(95.0 - s["temp_c"], abs=1e-3)
    assert s["components"]["nvmap_used"] == pytest.approx(1543168 / 7620268, abs=1e-6)
    # the smallest recorded lfb shows up in the fragmentation component
    s = wait_for(lambda: (lambda x: x if x["components"].get("lfb_mb", 99) <= 6 else None)(d.call("stress.get")))
    assert s["components"]["fragmentation"] >= 0.5 > CMA_ONLY_FRAG
    st = {x["name"]: x for x in d.call("system.status")["sources"]}
    assert st["tegrastats"]["mode"] == "live" and st["tegrastats"]["present"]
    assert st["psi"]["present"] is False                 # not in the fake proc root


def test_bundled_replay_is_shown_but_never_feeds_the_stress(daemon_factory):
    d = _jetson_daemon(daemon_factory, "replay")
    t = wait_for(lambda: _latest_or_none(d))
    assert t["mode"] == "replay" and t["ram"]["total_mb"] == 7620 and t["ram"]["lfb_blocks"] >= 1
    # two passes over the recording (7 lines, 50 ms apart), its 5 MB lfb included
    wait_for(lambda: {x["name"]: x for x in d.call("sense.sources")["sources"]}["tegrastats"]["parsed"] >= 14)
    samples = d.call("stress.history", {"count": 100})["samples"]
    assert len(samples) >= 5
    for s in samples:
        assert "lfb_mb" not in s["components"]
        assert s["components"]["fragmentation"] == pytest.approx(CMA_ONLY_FRAG, abs=1e-5)
    st = {x["name"]: x for x in d.call("system.status")["sources"]}
    assert st["tegrastats"]["mode"] == "replay" and st["tegrastats"]["present"]
    src = {x["name"]: x for x in d.call("sense.sources")["sources"]}
    assert src["tegrastats"]["parsed"] >= 1 and src["tegrastats"]["unparseable"] == 0
    assert src["tegrastats"]["reads"] >= 1 and src["tegrastats"]["errors"] == 0
    assert src["tegrastats"]["last_read"] > 0 and src["tegrastats"]["age_s"] >= 0


def _latest_or_none(d):
    try:
        return d.call("tegrastats.latest")
    except RpcError as e:
        assert e.code == SOURCE_ABSENT
        return None


def test_missing_tegrastats_is_absent_logged_once_while_retried(daemon_factory):
    d = daemon_factory(tegrastats="no-such-tegrastats-binary", config="[sense]\nretry_max_s = 0.5\n")
    st = wait_for(lambda: (lambda s: s if s["attempts"] >= 2 else None)(
        {x["name"]: x for x in d.call("system.status")["sources"]}["tegrastats"]))
    assert st["present"] is False and st["state"] == "absent"
    assert st["reason"].startswith("command not found: no-such-tegrastats-binary")
    with pytest.raises(RpcError) as e:
        d.call("tegrastats.latest")
    assert e.value.code == SOURCE_ABSENT and "command not found" in e.value.data["reason"]
    assert d.log().count("event=source_absent source=tegrastats") == 1
    assert d.call("sense.sources")["anomalies"]["source_failures"] == 1


def test_dying_child_restarts_with_backoff_and_bad_lines_are_counted(daemon_factory, tmp_path):
    rec = tmp_path / "rec.txt"
    rec.write_bytes(b"this is not tegrastats\n"
                    b"RAM 100/7620MB (lfb 9x4MB) CPU [1%@729] BOGUS_TOKEN? tj@50.5C\n")
    cmd = f"{sys.executable} {REPLAY} --file {rec} --count 2"
    d = daemon_factory(tegrastats=cmd, config="[sense]\ntegrastats_interval_ms = 20\n")
    src = wait_for(lambda: (lambda s: s if s["restarts"] >= 2 else None)(
        {x["name"]: x for x in d.call("sense.sources")["sources"]}["tegrastats"]), timeout=15)
    assert src["unparseable"] >= 2 and src["parsed"] >= 2
    assert src["unknown_tokens"] >= 2 and src["lines"] == src["parsed"] + src["unparseable"]
    assert src["errors"] == src["unparseable"] + src["restarts"] and src["reads"] == src["parsed"]
    latest = d.call("tegrastats.latest")
    assert latest["unknown"] == ["BOGUS_TOKEN?"] and latest["temps_c"] == {"tj": 50.5}
    # one failure episode per death (each run parsed a line first), none per unparseable line
    src = {x["name"]: x for x in d.call("sense.sources")["sources"]}["tegrastats"]
    assert src["episodes"] >= 2 and d.call("sense.sources")["anomalies"]["source_failures"] == src["episodes"]
    assert "event=tegrastats_exited status=0" in d.log()


def test_missing_meminfo_fails_fast_with_a_clear_message(tmp_path):
    base = short_tmpdir()
    with pytest.raises(AssertionError, match=r"cannot sense memory: .*meminfo: cannot open"):
        start_daemon("--proc-root", str(tmp_path), base=base, wait=10)
    shutil.rmtree(base, ignore_errors=True)


def test_bad_signal_config_exits_2_naming_the_key(tmp_path):
    base = short_tmpdir()
    try:
        with pytest.raises(AssertionError, match=r"signal.trend_min_used must be between 0.0 and 1.0") as e:
            start_daemon(base=base, config="[signal]\ntrend_min_used = 2.0\n", wait=10)
        assert "exited with 2" in str(e.value)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_absent_cgroup_is_reported_and_the_daemon_runs(daemon_factory, tmp_path):
    d = daemon_factory("--cgroup", str(tmp_path / "nope"))
    st = {x["name"]: x for x in d.call("system.status")["sources"]}
    assert st["cgroup"]["present"] is False and "not a cgroup directory" in st["cgroup"]["reason"]
    assert "cgroup_used" not in d.call("stress.get")["components"]


def test_v2_slice_limit_above_the_watched_cgroup_drives_the_signal(daemon_factory, tmp_path):
    """A service with no limit of its own in a 512 MiB slice: the slice's limit is the budget."""
    def cg(d, max_, current):
        d.mkdir(parents=True)
        (d / "memory.max").write_text(max_)
        (d / "memory.current").write_text(current)
        (d / "memory.stat").write_text("anon 1\nfile 0\nactive_file 0\ninactive_file 10485760\n")
        (d / "memory.events").write_text("oom 0\noom_kill 0\n")
    cg(tmp_path / "ai.slice", f"{512 << 20}\n", f"{500 << 20}\n")
    cg(tmp_path / "ai.slice" / "svc", "max\n", f"{490 << 20}\n")
    d = daemon_factory("--cgroup", str(tmp_path / "ai.slice" / "svc"))
    s = d.call("stress.get")
    assert s["components"]["cgroup_used"] == pytest.approx(480 / 512, abs=1e-6)
    assert s["components"]["used"] == s["components"]["cgroup_used"] and s["band"] == "CRITICAL"
    src = {x["name"]: x for x in d.call("sense.sources")["sources"]}
    assert src["cgroup"]["present"] and src["cgroup"]["errors"] == 0


@pytest.mark.root
@pytest.mark.slow
def test_real_cgroup_usage_shows_in_the_signal(daemon_factory):
    import subprocess
    base_cg = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(base_cg, "memory.limit_in_bytes")):
        pytest.skip("no cgroup v1 memory controller")
    path = os.path.join(base_cg, f"aal-sense-test-{os.getpid()}")
    os.makedirs(path)
    child = None
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as fh:
            fh.write(str(512 << 20))
        d = daemon_factory("--cgroup", path)

        def join():
            with open(os.path.join(path, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        child = subprocess.Popen([sys.executable, "-c", "import sys,time; b=b'\\x01'*(330<<20); print('ok',flush=True); time.sleep(60)"],
                                 stdout=subprocess.PIPE, preexec_fn=join)
        assert child.stdout.readline().strip() == b"ok"
        # once the allocation has stopped growing, the trend fades and the level remains
        s = wait_for(lambda: (lambda x: x if x["components"].get("cgroup_used", 0) > 0.6
                              and x["components"]["trend"] == 0 else None)(d.call("stress.get")))
        assert s["components"]["used"] == s["components"]["cgroup_used"]
        assert s["band"] == "MODERATE" and s["stress"] == s["components"]["level"]
    finally:
        if child is not None:
            child.kill()
            child.wait()
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)
