"""cgroup v2 for real: one QEMU guest boot (virtme-ng, Debian's stock kernel,
software emulation) runs tests/guest/cgroup_v2_checks.py with this venv;
each test below asserts one check on that boot's results.

The guest sees this machine's root read-only (through an overlay), so the
installed daemon and client run inside unchanged; the results come back
through one writable shared directory.  A guest that cannot boot FAILS with
its console output (only a non-x86_64 host skips)."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MB = 1 << 20
BOOT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """The results of the one guest boot: {check: observations}."""
    if platform.machine() != "x86_64":
        pytest.skip(f"the v2 guest is an x86_64 QEMU guest (this is {platform.machine()})")
    vng = os.path.join(os.path.dirname(sys.executable), "vng")
    assert os.path.exists(vng), "virtme-ng is not installed in this venv: run TOOLS/setup.sh --test"
    kernel = subprocess.run([os.path.join(REPO, "TOOLS", "guest_kernel.sh")], capture_output=True,
                            text=True, check=False)
    assert kernel.returncode == 0, f"no guest kernel: {kernel.stderr}"
    out = tmp_path_factory.mktemp("guest")
    script = out / "run.sh"
    results = out / "results.json"
    script.write_text(f"#!/bin/sh\ncd {REPO}\nexec {sys.executable} {HERE}/guest/cgroup_v2_checks.py {results}\n")
    script.chmod(0o755)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", ""))
    cmd = [vng, "--disable-kvm", "--run", kernel.stdout.strip(), "--user", "root", "--memory", "1G",
           "--cpus", "2", "--rwdir", str(out), "--exec", str(script)]
    try:
        boot = subprocess.run(cmd, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S, env=env,
                              cwd=str(out))
        console = boot.stdout + boot.stderr
        rc = boot.returncode
    except subprocess.TimeoutExpired as exc:
        console = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                          for x in (exc.stdout, exc.stderr))
        rc = f"timeout after {BOOT_TIMEOUT_S} s"
    assert results.exists(), f"the guest wrote no results (vng exit {rc}); console:\n{console[-8000:]}"
    data = json.loads(results.read_text())
    data["_console"] = console
    shutil.rmtree(out, ignore_errors=True)
    return data


def _check(guest, name: str) -> dict:
    got = guest[name]
    assert "error" not in got, f"{name} raised in the guest:\n{got['error']}\nobserved: {got}"
    return got


def test_guest_is_cgroup_v2_with_memory_and_psi(guest):
    env = _check(guest, "environment")
    assert env["cgroup_fs"] == "cgroup2"
    assert "memory" in env["root_controllers"] and env["psi"] is True
    assert env["swap"] is True, f"no zram swap in the guest: {env.get('swap_error')}"


def test_job_past_memory_max_is_oom_killed_and_counted(guest):
    """(a) HARD = memory.max; the kernel kills the job's process inside its
    cgroup, and the daemon counts the kill (sense.sources and venom.status
    anomalies: vmstat's oom_kill counts every kill, a job cgroup's too)."""
    got = _check(guest, "oom_kill")
    # a --local daemon: its job cgroups are in a group of its own, not the system's aal-core
    assert re.fullmatch(r"/sys/fs/cgroup/aal-core-local-[0-9a-f]{8}/oom", got["submit"]["cgroup"])
    assert got["submit"]["enforced"] is True
    if got["memory.swap.max"] is None:        # a kernel without swap accounting: said, not silent
        assert got["submit"]["swap_capped"] is False and "swap not capped" in got["submit"]["enforce_reason"]
    else:
        assert got["memory.swap.max"] == "0" and got["submit"]["swap_capped"] is True
        assert got["submit"]["enforce_reason"] is None
    assert (got["memory.max"], got["memory.high"]) == (str(64 * MB), str(56 * MB))
    assert got["hog_rc"] == -9 and got["finished_s"] is None and got["allocated_mb"] < 200
    assert got["events"]["oom_kill"] == 1
    assert got["anomalies_after"]["oom_kills"] == got["anomalies_before"]["oom_kills"] + 1
    assert got["venom_anomalies"]["oom_kills"] >= 1
    assert got["release"] == {"job_id": "oom", "released": True, "cgroup_removed": True}
    assert got["cgroup_left"] is False


def test_memory_high_throttles_below_memory_max(guest):
    """(b) SOFT = memory.high: a process above it (and below memory.max) is
    slowed, not killed, and memory.events' high counter rises."""
    got = _check(guest, "memory_high")
    assert (got["memory.high"], got["memory.max"]) == (str(32 * MB), str(512 * MB))
    assert got["unthrottled_s"] is not None, f"the unthrottled 64 MiB did not finish: {got}"
    assert got["throttled_s"] is None and got["throttled_mb"] < 64, \
        f"64 MiB above a 32 MiB memory.high was not slowed: {got}"
    assert got["alive"] is True
    assert got["events_after"]["high"] > got["events_before"]["high"]
    assert got["events_after"]["oom_kill"] == 0 and got["events_after"]["max"] == 0
    assert got["current"] > 32 * MB


def test_the_governor_senses_the_job_cgroup_and_its_own_psi(guest):
    """Issue 9 part 2 on v2: job.get's job_signal is that cgroup's usage,
    memory.max and its own memory.pressure (throttled at memory.high: PSI)."""
    got = _check(guest, "memory_high")
    js = got["job_signal"]
    assert js is not None and js["cgroup"].endswith("/high") and js["reads"] > 0, got
    assert js["limit_bytes"] == 512 * MB and js["usage_bytes"] > 32 * MB
    assert js["model"] == "fused" and 0 <= js["stress"] <= 1
    assert "psi_some_avg10" in js and js["psi_some_avg10"] > 0, js


def test_watched_v2_cgroup_usage_and_pressure_drive_the_stress(guest):
    """(c) --cgroup on a v2 cgroup: its memory.current / memory.max become
    cgroup_used (the tighter budget, so `used`), and its memory.pressure the
    psi component, while a process in it allocates."""
    got = _check(guest, "watched_cgroup")
    cg = [s for s in got["sources_idle"]["sources"] if s["name"] == "cgroup"][0]
    assert cg["present"] is True and cg["path"] == "/sys/fs/cgroup/watched" and cg["errors"] == 0
    idle, loaded = got["idle"]["components"], got["loaded"]["components"]
    assert idle["cgroup_used"] < 0.1 and idle["psi"] == 0.0
    assert loaded["cgroup_used"] > 0.5 and loaded["used"] == loaded["cgroup_used"] > loaded["host_used"]
    assert loaded["headroom_mb"] < 256 - 100
    assert loaded["psi"] > 0, f"the cgroup's memory.pressure ({got['cgroup_pressure']!r}) did not reach psi"
    assert got["loaded"]["stress"] > got["idle"]["stress"]


def test_job_cgroups_in_a_delegated_subtree(guest):
    """(d) govern.cgroup_root in a delegated subtree (the daemon in a leaf of
    it): <root>/<job_id> made with the profile's limits (MINIMAL: 512/1024
    MiB; swap 0), the pid moved in, removed and the pid moved back on
    job.release and on connection close."""
    got = _check(guest, "delegated_subtree")
    root = "/sys/fs/cgroup/aal.slice/aal-core"
    assert got["daemon_cgroup"] == "/aal.slice/daemon"
    assert got["govern"]["cgroup_mode"] == "v2" and got["govern"]["cgroup_root"] == root
    assert got["submit"] == {"enforced": True, "enforce_reason": None, "cgroup": f"{root}/dj"}
    assert got["limits"] == {"memory.max": str(1024 * MB), "memory.high": str(512 * MB), "memory.swap.max": "0"}
    assert got["pid_in"] == "/aal.slice/aal-core/dj"
    assert got["release"] == {"job_id": "dj", "released": True, "cgroup_removed": True}
    assert got["after_release_exists"] is False and got["after_release_pid"] == got["origin"]
    assert got["second_exists"] is True and got["second_pid_in"] == "/aal.slice/aal-core/dj2"
    assert got["after_close_exists"] is False and got["after_close_pid"] == got["origin"]
