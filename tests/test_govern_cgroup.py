"""Per-job memory cgroups, for real (cgroup v1 here; v2 where unified)."""
import json
import os
import pwd
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from aal_core.client import RpcCallError
from aal_core.config import local_cgroup_group
from aal_core.govern.cgroups import CgroupEnforcer

pytestmark = pytest.mark.root
MB = 1 << 20


def _needs_memory_cgroup():
    e = CgroupEnforcer("auto")
    if e.mode == "off":
        pytest.skip(e.note)
    return e


def _cgroup_of(pid: int, mode: str) -> str:
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            hid, ctrls, path = line.strip().split(":", 2)
            if (mode == "v2" and hid == "0") or (mode == "v1" and "memory" in ctrls.split(",")):
                return path
    return ""


def _limits(path: str, mode: str) -> tuple[int, int]:
    names = ("memory.high", "memory.max") if mode == "v2" else \
        ("memory.soft_limit_in_bytes", "memory.limit_in_bytes")
    return tuple(int(open(os.path.join(path, n)).read()) for n in names)


def _swap_knob(path: str, mode: str) -> str | None:
    f = os.path.join(path, "memory.memsw.limit_in_bytes" if mode == "v1" else "memory.swap.max")
    return f if os.path.exists(f) else None


def _read_int(path: str) -> int:
    return int(open(path).read())


def test_a_reused_cgroup_with_a_lower_swap_limit_still_takes_the_caps(sleeper):
    """memsw must stay >= the limit: a leftover cgroup whose memsw is below
    the new HARD is lifted first, then capped at HARD."""
    e = _needs_memory_cgroup()
    if e.mode != "v1" or _swap_knob(os.path.dirname(e.base), "v1") is None:
        pytest.skip("v1 with memory.memsw.limit_in_bytes only")
    job = "t-" + uuid.uuid4().hex[:8]
    os.makedirs(e.path(job))                    # left over by a crash, swap capped lower
    for f in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        with open(os.path.join(e.path(job), f), "w") as fh:
            fh.write(str(32 * MB))
    try:
        res = e.place(job, sleeper.pid, 32 * MB, 64 * MB)
        assert res["enforced"] is True, res
        assert _read_int(os.path.join(e.path(job), "memory.memsw.limit_in_bytes")) == 64 * MB
        assert _read_int(os.path.join(e.path(job), "memory.limit_in_bytes")) == 64 * MB
    finally:
        e.remove(job)


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def test_place_sets_both_limits_moves_the_pid_and_remove_restores(sleeper):
    e = _needs_memory_cgroup()
    job = "t-" + uuid.uuid4().hex[:8]
    before = _cgroup_of(sleeper.pid, e.mode)
    res = e.place(job, sleeper.pid, 32 * MB, 64 * MB)
    try:
        swap = _swap_knob(e.path(job), e.mode)
        assert res["enforced"] is True and res["cgroup"] == e.path(job)
        assert _limits(e.path(job), e.mode) == (32 * MB, 64 * MB)
        # swap capped with RAM where the kernel has the knob, said where it has not
        if swap is None:
            assert res["swap_capped"] is False and "swap not capped" in res["enforce_reason"]
        else:
            assert res["swap_capped"] is True and "enforce_reason" not in res
            assert _read_int(swap) == (64 * MB if e.mode == "v1" else 0)
        assert _cgroup_of(sleeper.pid, e.mode).endswith(f"/aal-core/{job}")
    finally:
        assert e.remove(job) is True
    assert not os.path.exists(e.path(job))
    assert _cgroup_of(sleeper.pid, e.mode) == before


def test_hard_cap_is_enforced_by_the_kernel():
    """A process in its job cgroup that allocates past HARD is OOM-killed."""
    e = _needs_memory_cgroup()
    job = "t-" + uuid.uuid4().hex[:8]
    hog = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        sys.stdin.readline()                  # wait until placed
        blocks = []
        for _ in range(64):                   # 64 x 8 MiB = 512 MiB, far above 48 MiB
            blocks.append(bytearray(8 << 20))
            time.sleep(0.005)
        print("survived", flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert e.place(job, hog.pid, 32 * MB, 48 * MB)["enforced"] is True
        out, _ = hog.communicate("go\n", timeout=60)
        assert hog.returncode == -9 and "survived" not in out
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
        e.remove(job)


def test_a_gone_pid_is_reported_not_enforced():
    e = _needs_memory_cgroup()
    p = subprocess.Popen(["true"])
    p.wait()
    job = "t-" + uuid.uuid4().hex[:8]
    res = e.place(job, p.pid, MB, MB)
    assert res["enforced"] is False and str(p.pid) in res["enforce_reason"]
    assert not os.path.exists(e.path(job))


def test_not_a_cgroup_directory_is_said_clearly(tmp_path):
    e = CgroupEnforcer(str(tmp_path))
    assert e.mode == "off"
    res = e.place("j", os.getpid(), MB, MB)
    assert res == {"enforced": False, "enforce_reason": f"{tmp_path} is not a memory cgroup directory"}
    assert CgroupEnforcer("off").place("j", 1, MB, MB)["enforced"] is False


def test_without_permission_submit_says_so():
    """An unprivileged user (nobody) gets enforced: false and the reason.

    A forked child drops to nobody and calls the real enforcer: the modules
    are already imported, so no interpreter or path has to be reachable by
    that user."""
    e = _needs_memory_cgroup()
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            res = CgroupEnforcer("auto").place("nobody-job", os.getpid(), 1 << 20, 1 << 21)
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    res = json.loads(out)
    assert res["enforced"] is False
    assert "Permission denied" in res["enforce_reason"] and "needs root" in res["enforce_reason"]
    assert not os.path.exists(e.path("nobody-job"))


@pytest.mark.slow
def test_submit_with_pid_enforces_and_release_cleans_up(daemon, sleeper):
    # a --local daemon (what `daemon` is) keeps its job cgroups in its own group
    e = CgroupEnforcer("auto", group=local_cgroup_group(daemon.base))
    if e.mode == "off":
        pytest.skip(e.note)
    job = "d-" + uuid.uuid4().hex[:8]
    with daemon.client() as c:
        res = c.call("job.submit", {"job_id": job, "profile": "MINIMAL", "metadata": {}, "pid": sleeper.pid})
        assert res["enforced"] is True and res["cgroup"] == e.path(job) and res["pid"] == sleeper.pid
        assert _limits(e.path(job), e.mode) == (512 * MB, 1024 * MB)
        rel = c.call("job.release", {"job_id": job})
        assert rel == {"job_id": job, "released": True, "cgroup_removed": True}
    assert not os.path.exists(e.path(job))
    # connection close releases too, cgroup included
    with daemon.client() as c:
        c.call("job.submit", {"job_id": job, "profile": "MINIMAL", "metadata": {}, "pid": sleeper.pid})
        assert os.path.isdir(e.path(job))
    deadline = time.monotonic() + 5
    while os.path.exists(e.path(job)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(e.path(job))
    gone = subprocess.Popen(["true"])
    gone.wait()
    with daemon.client() as c:
        with pytest.raises(RpcCallError) as ei:
            c.call("job.submit", {"job_id": job, "profile": "MINIMAL", "metadata": {}, "pid": gone.pid})
        assert ei.value.code == -32602 and "not a running process" in ei.value.message
        assert c.call("job.list")["jobs"] == []
