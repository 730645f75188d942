"""Runs INSIDE the cgroup v2 guest (tests/test_cgroup_v2_guest.py boots it).

Started by the worktree's venv interpreter as root on a real cgroup v2 kernel.
Each check starts the real daemon (state and socket under the guest's
writable /tmp), drives it with the real client and the kernel, and records
what it saw; it asserts nothing itself: the host-side test asserts per check,
so a failure names the check.  Writes one JSON object {check: observations}
to argv[1]; a check that raised has {"error": traceback}.

Usage: python cgroup_v2_checks.py RESULTS.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from helpers import cleanup, start_daemon, wait_for  # noqa: E402

CG = "/sys/fs/cgroup"
MB = 1 << 20

# A child that waits for a line on stdin, allocates and touches `mb` MiB in
# 4 MiB steps (one "step <MiB> <seconds since go>" line each), says "done"
# and then waits for stdin to close.
HOG = textwrap.dedent("""
    import sys, time
    mb = int(sys.argv[1])
    sys.stdin.readline()
    t0 = time.monotonic()
    blocks = []
    for i in range(mb // 4):
        blocks.append(b"\\x01" * (4 << 20))
        print("step", (i + 1) * 4, round(time.monotonic() - t0, 3), flush=True)
    print("done", round(time.monotonic() - t0, 3), flush=True)
    sys.stdin.read()
""")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _events(cgroup: str) -> dict:
    return {k: int(v) for k, v in (ln.split() for ln in _read(os.path.join(cgroup, "memory.events")).splitlines())}


def _cgroup_of(pid: int) -> str:
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def _hog(mb: int, cgroup: str | None = None) -> subprocess.Popen:
    """The hog, started (waiting for "go") in `cgroup` if given."""
    def into():
        if cgroup:
            _write(os.path.join(cgroup, "cgroup.procs"), str(os.getpid()))
    return subprocess.Popen([sys.executable, "-c", HOG, str(mb)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, preexec_fn=into)


def _finish(p: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    """Close the hog's stdin (it exits when done) and return (rc, output)."""
    try:
        out, _ = p.communicate("", timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return p.returncode, out


def _run_hog(p: subprocess.Popen, timeout: float = 30) -> tuple[float | None, int]:
    """Say go and wait up to `timeout` s for "done": (the seconds it took or
    None if it died or was not done, the MiB it had allocated)."""
    p.stdin.write("go\n")
    p.stdin.flush()
    seen = {"mb": 0, "done": None}

    def reader():
        for line in p.stdout:
            if line.startswith("done"):
                seen["done"] = float(line.split()[1])
                return
            seen["mb"] = int(line.split()[1])
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    return seen["done"], seen["mb"]


def _mkcg(path: str, **files: str) -> str:
    os.makedirs(path, exist_ok=True)
    for name, value in files.items():
        _write(os.path.join(path, name.replace("_", ".", 1)), value)
    return path


def _rmcg(path: str) -> None:
    """Kill what is left in `path` and remove it (children first)."""
    if not os.path.isdir(path):
        return
    for child in sorted((d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))), reverse=True):
        _rmcg(os.path.join(path, child))
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except OSError:
            for pid in _read(os.path.join(path, "cgroup.procs")).split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)


def _profile(soft_mb: int, hard_mb: int) -> str:
    return f"MEM[SOFT={soft_mb},HARD={hard_mb},VOL=LOW]; TIER=LOCAL; PRIORITY=3"


def environment(out: dict) -> None:
    """What kind of kernel and hierarchy the guest has; swap on zram when
    the kernel has it (a Jetson's swap), so memory.swap.max matters."""
    try:
        subprocess.run(["modprobe", "zram"], check=True, capture_output=True)
        _write("/sys/block/zram0/disksize", str(256 * MB))
        subprocess.run(["mkswap", "/dev/zram0"], check=True, capture_output=True)
        subprocess.run(["swapon", "/dev/zram0"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        out["swap_error"] = str(getattr(exc, "stderr", None) or exc)
    out.update({"kernel": os.uname().release, "cgroup_fs": _fs_type(CG),
                "root_controllers": _read(os.path.join(CG, "cgroup.controllers")).split(),
                "psi": os.path.exists("/proc/pressure/memory"),
                "swap": len(_read("/proc/swaps").splitlines()) > 1})


def _fs_type(path: str) -> str:
    best = ("", "")
    for line in _read("/proc/mounts").splitlines():
        _, mnt, fstype = line.split()[:3]
        if path.startswith(mnt) and len(mnt) > len(best[0]):
            best = (mnt, fstype)
    return best[1]


def oom_kill(d, out: dict) -> None:
    """(a) A job whose process allocates past HARD (memory.max) is OOM-killed
    by the kernel; what the job's cgroup and the daemon report."""
    hog = _hog(200)
    try:
        with d.client() as c:
            before = c.call("sense.sources")["anomalies"]
            job = c.call("job.submit", {"job_id": "oom", "profile": _profile(56, 64), "metadata": {}, "pid": hog.pid})
            out["submit"] = {k: job.get(k) for k in ("enforced", "enforce_reason", "cgroup", "swap_capped")}
            path = job.get("cgroup") or os.path.join(CG, "aal-core", "oom")
            out["memory.swap.max"] = _read(os.path.join(path, "memory.swap.max")).strip() \
                if os.path.exists(os.path.join(path, "memory.swap.max")) else None
            out["memory.max"] = _read(os.path.join(path, "memory.max")).strip()
            out["memory.high"] = _read(os.path.join(path, "memory.high")).strip()
            out["finished_s"], out["allocated_mb"] = _run_hog(hog)
            out["hog_rc"] = _finish(hog)[0]
            out["events"] = _events(path)
            out["anomalies_before"] = before
            wait_for(lambda: c.call("sense.sources")["anomalies"]["oom_kills"] > before["oom_kills"],
                     timeout=5, what="oom_kills")
            out["anomalies_after"] = c.call("sense.sources")["anomalies"]
            try:
                wait_for(lambda: c.call("venom.status")["anomalies"].get("oom_kills", 0) > 0, timeout=5,
                         what="venom oom_kills")
            except AssertionError:
                pass
            vs = c.call("venom.status")
            out["venom_anomalies"] = vs.get("anomalies")
            out["job_get"] = c.call("job.get", {"job_id": "oom"})
            out["release"] = c.call("job.release", {"job_id": "oom"})
            out["cgroup_left"] = os.path.exists(path)
    finally:
        if hog.poll() is None:
            hog.kill()


def memory_high(d, out: dict) -> None:
    """(b) SOFT becomes memory.high: a process above it but below memory.max
    is throttled (slowed, memory.events high rises), not killed."""
    free = _hog(64, _mkcg(os.path.join(CG, "free-run")))
    throttled = _hog(64)
    try:
        out["unthrottled_s"], out["unthrottled_mb"] = _run_hog(free)
        _finish(free)
        with d.client() as c:
            job = c.call("job.submit", {"job_id": "high", "profile": _profile(32, 512), "metadata": {},
                                        "pid": throttled.pid})
            path = job.get("cgroup") or os.path.join(CG, "aal-core", "high")
            out["submit"] = {k: job.get(k) for k in ("enforced", "enforce_reason", "cgroup")}
            out["memory.high"] = _read(os.path.join(path, "memory.high")).strip()
            out["memory.max"] = _read(os.path.join(path, "memory.max")).strip()
            before = _events(path)
            # 6 s: the unthrottled run takes well under 1 s even under TCG
            out["throttled_s"], out["throttled_mb"] = _run_hog(throttled, timeout=6)
            out["alive"] = throttled.poll() is None
            out["events_before"], out["events_after"] = before, _events(path)
            out["current"] = int(_read(os.path.join(path, "memory.current")))
            out["pressure"] = _read(os.path.join(path, "memory.pressure"))
            # the job's own cgroup as the governor senses it (usage, limit, its PSI)
            out["job_signal"] = c.call("job.get", {"job_id": "high"}).get("job_signal")
            throttled.kill()
            throttled.wait()
    finally:
        for p in (free, throttled):
            if p.poll() is None:
                p.kill()
        _rmcg(os.path.join(CG, "free-run"))


def watched_cgroup(d, out: dict) -> None:
    """(c) `--cgroup` on a v2 cgroup: its usage and memory.pressure drive
    the stress (components, view) while a process in it allocates."""
    hog = _hog(224, WATCHED)
    try:
        with d.client() as c:
            out["sources_idle"] = c.call("sense.sources")
            out["idle"] = c.call("stress.get")
            hog.stdin.write("go\n")
            hog.stdin.flush()
            t0 = time.monotonic()
            busiest = None
            while time.monotonic() - t0 < 20:
                s = c.call("stress.get")
                comp = s.get("components", {})
                if busiest is None or comp.get("cgroup_used", 0) + comp.get("psi", 0) > \
                        busiest["components"].get("cgroup_used", 0) + busiest["components"].get("psi", 0):
                    busiest = s
                if comp.get("cgroup_used", 0) > 0.55 and comp.get("psi", 0) > 0:
                    break
                time.sleep(0.2)
            out["loaded"] = busiest
            out["cgroup_current"] = int(_read(os.path.join(WATCHED, "memory.current")))
            out["cgroup_pressure"] = _read(os.path.join(WATCHED, "memory.pressure"))
            out["sources_loaded"] = c.call("sense.sources")
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()


def delegated_subtree(out: dict) -> None:
    """(d) With govern.cgroup_root a delegated subtree (the daemon in a leaf
    of it, as systemd's Delegate=yes + DelegateSubgroup= puts it): job
    cgroups created there with the profile's limits, the pid moved in, and
    removed on job.release and on connection close."""
    deleg = _mkcg(os.path.join(CG, "aal.slice"))
    _write(os.path.join(deleg, "cgroup.subtree_control"), "+memory")
    leaf = _mkcg(os.path.join(deleg, "daemon"))
    jobs = os.path.join(deleg, "aal-core")
    os.makedirs(jobs, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "300"])
    origin = _cgroup_of(sleeper.pid)
    out["origin"] = origin
    d = start_daemon(config=f'[govern]\ncgroup_root = "{jobs}"\n', wait=60)
    try:
        _write(os.path.join(leaf, "cgroup.procs"), str(d.proc.pid))
        out["daemon_cgroup"] = _cgroup_of(d.proc.pid)
        with d.client() as c:
            out["govern"] = {k: v for k, v in c.call("govern.status").items() if k.startswith("cgroup")}
            job = c.call("job.submit", {"job_id": "dj", "profile": "MINIMAL", "metadata": {}, "pid": sleeper.pid})
            out["submit"] = {k: job.get(k) for k in ("enforced", "enforce_reason", "cgroup")}
            path = os.path.join(jobs, "dj")
            out["exists"] = os.path.isdir(path)
            out["limits"] = {n: _read(os.path.join(path, n)).strip()
                             for n in ("memory.max", "memory.high", "memory.swap.max") if os.path.exists(os.path.join(path, n))}
            out["pid_in"] = _cgroup_of(sleeper.pid)
            out["release"] = c.call("job.release", {"job_id": "dj"})
            out["after_release_exists"] = os.path.isdir(path)
            out["after_release_pid"] = _cgroup_of(sleeper.pid)
        with d.client() as c:
            c.call("job.submit", {"job_id": "dj2", "profile": "MINIMAL", "metadata": {}, "pid": sleeper.pid})
            out["second_exists"] = os.path.isdir(os.path.join(jobs, "dj2"))
            out["second_pid_in"] = _cgroup_of(sleeper.pid)
        try:
            wait_for(lambda: not os.path.isdir(os.path.join(jobs, "dj2")), timeout=5, what="dj2 removed")
        except AssertionError:
            pass
        out["after_close_exists"] = os.path.isdir(os.path.join(jobs, "dj2"))
        out["after_close_pid"] = _cgroup_of(sleeper.pid)
        out["log_tail"] = d.log()[-3000:]
    finally:
        sleeper.kill()
        sleeper.wait()
        cleanup(d)
        _rmcg(deleg)


WATCHED = os.path.join(CG, "watched")


def _record(results: dict, fn, *args) -> None:
    out = results[fn.__name__] = {}
    t0 = time.monotonic()
    try:
        fn(*args, out)
    except Exception:  # noqa: BLE001 - recorded for the host-side test
        out["error"] = traceback.format_exc()
    out["seconds"] = round(time.monotonic() - t0, 2)
    print(f"guest: {fn.__name__} done in {out['seconds']} s", flush=True)


def main() -> int:
    results: dict = {}
    _record(results, environment)
    # One daemon for (a)-(c): govern.cgroup_root "auto" (jobs in the --local
    # run's own /sys/fs/cgroup/aal-core-local-<hash>), watching a v2 cgroup with --cgroup.
    _write(os.path.join(CG, "cgroup.subtree_control"), "+memory")   # as systemd has it
    _mkcg(WATCHED, memory_max=str(256 * MB), memory_high=str(160 * MB))
    t0 = time.monotonic()
    d = start_daemon("--cgroup", WATCHED, wait=60)
    results["environment"]["daemon_start_s"] = round(time.monotonic() - t0, 2)
    try:
        _record(results, watched_cgroup, d)
        _record(results, oom_kill, d)
        _record(results, memory_high, d)
        results["log_tail"] = d.log()[-4000:]
    finally:
        cleanup(d)
        _rmcg(WATCHED)
    _record(results, delegated_subtree)
    with open(sys.argv[1] + ".part", "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    os.replace(sys.argv[1] + ".part", sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
