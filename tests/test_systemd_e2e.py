"""aal-core under a real systemd, booted in a systemd-nspawn container.

The container boots the host's own /usr (`--volatile=yes`: / is a tmpfs, so
nothing it does survives).  Into it go, bind-mounted from a staged root
that TOOLS/install_systemd.sh filled: the venv (/opt/aal-core, built from
this checkout and installed with pip exactly as on a board), the units, the
sysusers/tmpfiles snippets and the default config (TOOLS/orin_nano_prep.sh
--root, the board's install path minus apt and systemctl).  systemd-sysusers and
systemd-tmpfiles apply the snippets at boot.  The tests drive the
container's systemd with `nsenter -t <its PID 1> -a systemctl ...` and read
its journal, with the manager at debug level so that every sd_notify
message the daemon sends (READY=1, WATCHDOG=1, RELOADING=1, STOPPING=1) is
logged with its order relative to the job that waited on it.

Test-only changes, in one drop-in, each to keep the run short: WatchdogSec=3s
and RestartSec=500ms.  The shipped hardening is used as is: every directive
works inside nspawn (the one difference, that nspawn itself mounts the
cgroup v1 controllers read-only, does not stop the service).

The tests run in file order and share one container; each one sets up the
state it needs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aal_core.config import DaemonConfig, LedgerConfig
from helpers import wait_for, without_systemd_env

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[1]
UNIT = "aal-core.service"
SOCKET_UNIT = "aal-core.socket"
SOCK = "/run/aal-core/aal-core.sock"
AALCTL = "/opt/aal-core/bin/aalctl"
# Inside the container: no pyenv shims, no pager, no colours.
CENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
        "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "TERM": "dumb"}
E2E_DROPIN = """\
# Test only: a short watchdog and restart delay keep the test fast.
[Service]
WatchdogSec=3s
RestartSec=500ms
"""
# A first boot would apply presets (enable everything); the test enables by hand.
E2E_PRESET = "disable aal-core.service\ndisable aal-core.socket\n"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (TOOLS/setup.sh --test installs systemd-container)")
    return path


def _usr_python() -> tuple[str, bool]:
    """A Python under /usr (the container shares only /usr with the host),
    and whether it has the test interpreter's major.minor (then the wheel the
    test interpreter builds fits it)."""
    want = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (f"/usr/bin/{want}", "/usr/bin/python3"):
        if os.path.exists(cand):
            out = subprocess.run([cand, "-c", "import sys, venv, ensurepip; "
                                  "print(f'python{sys.version_info.major}.{sys.version_info.minor}')"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                return cand, out.stdout.strip() == want
    pytest.fail("the container needs /usr/bin/python3 with venv/ensurepip (apt-get install python3-venv)")


def _tree_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored), to build from
    without writing into the working tree."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if src.is_file():
            (dest / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(rel))
    return dest


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """A root with /opt/aal-core and /etc/{systemd/system,sysusers.d,tmpfiles.d,aal-core}."""
    for tool in ("systemd-nspawn", "nsenter", "systemctl"):
        _need(tool)
    root = tmp_path_factory.mktemp("aal-e2e-root")
    wheels = tmp_path_factory.mktemp("aal-e2e-wheel")
    python, same_version = _usr_python()
    if same_version:
        # The wheel: built from this checkout by the interpreter the suite runs
        # (TOOLS/setup.sh just built the same tree, so the compiled objects are reused).
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                                "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
                               capture_output=True, text=True, timeout=600)
        assert build.returncode == 0, f"wheel build failed:\n{build.stdout}\n{build.stderr}"
        (source,) = wheels.glob("aal_core-*.whl")
    else:  # the installer's own build path, with /usr's Python (slower: a fresh build)
        source = _tree_copy(tmp_path_factory.mktemp("aal-e2e-src"))
    # The board's own path: the prep script (not a Jetson here: it warns),
    # which hands over to install_systemd.sh, staged into `root`.
    inst = subprocess.run([str(REPO / "TOOLS/orin_nano_prep.sh"), "--root", str(root), "--no-apt",
                           "--from", str(source), "--python", python],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, f"orin_nano_prep.sh failed:\n{inst.stdout}\n{inst.stderr}"
    assert "not a Jetson" in inst.stderr
    dropin = root / "etc/systemd/system/aal-core.service.d"
    dropin.mkdir(parents=True)
    (dropin / "50-e2e.conf").write_text(E2E_DROPIN)
    preset = root / "etc/systemd/system-preset"
    preset.mkdir(parents=True)
    (preset / "00-aal-core-e2e.preset").write_text(E2E_PRESET)
    return root


class Container:
    """A booted systemd-nspawn container; `run` executes inside all its namespaces."""

    def __init__(self, root: Path, log_path: Path):
        self.root, self.log_path = root, log_path
        self.name = f"aal-e2e-{os.getpid()}"
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self, timeout: float = 60.0) -> None:
        r = self.root
        binds = [f"--bind-ro={r}/opt/aal-core:/opt/aal-core",
                 f"--bind={r}/etc/systemd/system:/etc/systemd/system",
                 f"--bind-ro={r}/etc/systemd/system-preset:/etc/systemd/system-preset",
                 f"--bind={r}/etc/aal-core:/etc/aal-core",
                 f"--bind-ro={r}/etc/sysusers.d:/etc/sysusers.d",
                 f"--bind-ro={r}/etc/tmpfiles.d:/etc/tmpfiles.d"]
        cmd = ["systemd-nspawn", "-b", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
               "--console=pipe", "-M", self.name, *binds,
               # nspawn's own system call filter (systemd 252) predates Landlock and answers
               # EPERM for it; a board has no nspawn, only the unit's filter, which allows it
               # (tests/test_overlay_sandbox_unit.py).
               "--system-call-filter=landlock_create_ruleset landlock_add_rule landlock_restrict_self",
               # Kernel-command-line style arguments for the container's systemd:
               "--", "systemd.firstboot=off", "systemd.log_level=debug", "systemd.show_status=0"]
        env = without_systemd_env()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no container PID 1 within {timeout}s:\n{self.console()}")
            self.leader = self._find_leader()
            time.sleep(0.05)
        while True:  # until PID 1 answers on its private bus and the boot is over
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"container did not boot within {timeout}s: "
                                     f"{st.stdout}{st.stderr}\n{self.console()}")
            st = self.run("systemctl", "is-system-running", "--wait", timeout=left, check=False)
            # "degraded": some unrelated host unit (e.g. one needing real hardware) failed.
            if st.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.1)

    def _find_leader(self) -> int:
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return 0
        for kid in kids:
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                    return int(kid)
            except OSError:
                pass
        return 0

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        cp = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], capture_output=True, text=True,
                            timeout=timeout, env=CENV, input=input)
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {cp.returncode}:\n{cp.stdout}{cp.stderr}")
        return cp

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = UNIT) -> list[str]:
        return self.run("journalctl", "-u", unit, "-o", "cat", "--no-pager").stdout.splitlines()

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"cat > {path}", input=text)

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader:
            try:
                self.run("systemctl", "poweroff", "--no-block", timeout=10, check=False)
            except subprocess.TimeoutExpired:
                pass
            try:
                self.proc.wait(20)
                return
            except subprocess.TimeoutExpired:
                pass
            try:  # killing the container's PID 1 ends its whole PID namespace
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def box(staged, tmp_path_factory):
    c = Container(staged, tmp_path_factory.mktemp("aal-e2e-log") / "console.log")
    try:
        c.boot()
        yield c
    finally:
        c.shutdown()


def aalctl(box: Container, *args: str, user: str | None = None, timeout: float = 20.0):
    argv = [AALCTL, "--socket", SOCK, *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    return box.run(*argv, timeout=timeout, check=False)


def notifications(lines: list[str], pid: str) -> list[str]:
    """The sd_notify messages systemd logged for `pid`, in order."""
    pat = re.compile(rf"Got notification message from PID {pid} \((.*)\)")
    return [m.group(1) for m in map(pat.search, lines) if m]


def test_units_start_disabled(box):
    assert box.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert box.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    # sysusers.d and tmpfiles.d were applied at boot.
    assert box.run("getent", "group", "aal").stdout.split(":")[3].strip() == "aal-core"
    assert box.run("getent", "passwd", "aal-core").stdout.split(":")[6].strip().endswith("nologin")
    assert box.run("stat", "-c", "%a %U %G", "/var/lib/aal-core").stdout.split() == ["750", "root", "aal"]


def test_enable_now_returns_only_after_ready(box):
    box.run("systemctl", "enable", "--now", UNIT, timeout=60)
    # Sampled right after `systemctl` returned: for Type=notify the unit is
    # active/running only once READY=1 arrived, and the STATUS= line sent
    # with it is already there.
    st = box.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "Type", "NotifyAccess")
    assert (st["ActiveState"], st["SubState"]) == ("active", "running"), st
    assert (st["Type"], st["NotifyAccess"]) == ("notify", "main")
    assert st["StatusText"], "READY=1 came with a STATUS= line"
    pid = st["MainPID"]
    out = aalctl(box, "status", timeout=5)
    assert out.returncode == 0, out.stderr
    assert f"pid {pid} " in out.stdout and "(socket-activated)" in out.stdout, out.stdout
    # systemd's own log: READY=1 from the main PID before the start job finished.
    lines = box.journal()
    ready = next(i for i, line in enumerate(lines)
                 if f"notification message from PID {pid} (READY=1" in line)
    done = next(i for i, line in enumerate(lines) if f"{UNIT}/start finished, result=done" in line)
    assert ready < done
    # `Also=` enabled the socket unit with the service.
    assert box.run("systemctl", "is-enabled", SOCKET_UNIT).stdout.strip() == "enabled"


def test_aalctl_through_the_socket(box):
    box.run("systemctl", "start", UNIT, timeout=60)
    assert box.run("stat", "-c", "%a %U %G %F", SOCK).stdout.strip().split(maxsplit=3) == \
        ["660", "root", "aal", "socket"]
    out = aalctl(box, "status")
    assert out.returncode == 0, out.stderr
    assert f"socket    {SOCK}" in out.stdout and "config    /etc/aal-core/aal-core.toml" in out.stdout
    health = aalctl(box, "call", "system.health")
    assert health.returncode == 0 and '"ok": true' in health.stdout, health.stdout + health.stderr

    # The sandbox leaves the daemon what it needs: every /proc source reads
    # (tegrastats and NVML are absent: not a Jetson, no GPU), and its state directory is
    # writable, with files for group aal only (Group=aal, UMask=0027).
    status = json.loads(aalctl(box, "call", "system.status").stdout)
    sources = {s["name"]: s for s in status["sources"]}
    assert sources and all(s["present"] for n, s in sources.items() if n not in ("tegrastats", "nvml")), sources
    ledger = f"{DaemonConfig().state_dir}/{LedgerConfig().file}"
    wait_for(lambda: box.run("test", "-s", ledger, check=False).returncode == 0, 10, ledger)
    assert box.run("stat", "-c", "%a %U %G", ledger).stdout.split() == ["640", "root", "aal"]

    # A member of group aal may connect; admin methods stay refused to it.
    box.run("useradd", "--no-create-home", "--user-group", "--groups", "aal", "alice")
    box.run("useradd", "--no-create-home", "--user-group", "bob")
    member = aalctl(box, "status", user="alice")
    assert member.returncode == 0, member.stderr
    denied = aalctl(box, "call", "system.reload", user="alice")
    assert denied.returncode == 1 and "-32001" in denied.stderr, denied.stdout + denied.stderr
    # Anyone else cannot even connect: one clear sentence, exit code 3.
    outsider = aalctl(box, "status", user="bob")
    assert outsider.returncode == 3, outsider.stdout + outsider.stderr
    assert "'aal' group" in outsider.stderr and "Traceback" not in outsider.stderr


def test_watchdog_restarts_a_stalled_daemon(box):
    box.run("systemctl", "start", UNIT, timeout=60)
    before = box.show(UNIT, "MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "3s"
    old_pid = before["MainPID"]
    pings = notifications(box.journal(), old_pid)
    assert "WATCHDOG=1" in pings, pings
    box.run("kill", "-STOP", old_pid)  # the event loop stops: no more WATCHDOG=1

    def restarted():
        st = box.show(UNIT, "MainPID", "NRestarts", "ActiveState", "SubState")
        ok = (int(st["NRestarts"]) > int(before["NRestarts"]) and st["MainPID"] not in ("0", old_pid)
              and (st["ActiveState"], st["SubState"]) == ("active", "running"))
        return st if ok else None

    st = wait_for(restarted, 30, "the watchdog to restart the service")
    out = aalctl(box, "status")
    assert out.returncode == 0 and f"pid {st['MainPID']} " in out.stdout, out.stdout + out.stderr
    log = "\n".join(box.journal())
    assert "Watchdog timeout" in log
    # PYTHONFAULTHANDLER=1: the aborted daemon said where its loop was stuck.
    assert "Fatal Python error: Aborted" in log


def test_reload_keeps_the_daemon(box):
    box.run("systemctl", "start", UNIT, timeout=60)
    pid = box.show(UNIT, "MainPID")["MainPID"]
    box.run("systemctl", "reload", UNIT)

    def reloaded():
        msgs = notifications(box.journal(), pid)
        r = [i for i, m in enumerate(msgs) if m.startswith("RELOADING=1") and "MONOTONIC_USEC=" in m]
        return r and any(m.startswith("READY=1") for m in msgs[r[-1] + 1:])

    wait_for(reloaded, 10, "RELOADING=1 then READY=1")
    st = box.show(UNIT, "MainPID", "ActiveState", "SubState")
    assert (st["MainPID"], st["ActiveState"], st["SubState"]) == (pid, "active", "running")


def test_bad_config_fails_without_restart_loop(box):
    good = box.run("cat", "/etc/aal-core/aal-core.toml").stdout
    try:
        box.write("/etc/aal-core/aal-core.toml", "[daemon]\nbogus_key = 1\n")
        res = box.run("systemctl", "restart", UNIT, timeout=60, check=False)
        assert res.returncode != 0
        time.sleep(1.5)  # three RestartSec= periods: a restart would have happened
        st = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert (st["ActiveState"], st["Result"], st["ExecMainStatus"]) == ("failed", "exit-code", "2"), st
        assert st["NRestarts"] == "0"  # counts automatic restarts since `systemctl restart`
        # The reason, naming the key and the file, is in the journal.
        assert any("daemon.bogus_key" in line and "/etc/aal-core/aal-core.toml" in line
                   for line in box.journal())
    finally:
        box.write("/etc/aal-core/aal-core.toml", good)
        box.run("systemctl", "reset-failed", UNIT, check=False)


def test_first_connection_starts_the_service(box):
    box.run("systemctl", "disable", "--now", UNIT, timeout=60)  # Also= disables the socket too
    box.run("systemctl", "enable", "--now", SOCKET_UNIT)
    assert box.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert box.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    st = box.show(SOCKET_UNIT, "ActiveState", "SubState")
    assert (st["ActiveState"], st["SubState"]) == ("active", "listening")

    out = aalctl(box, "status", timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    st = box.show(UNIT, "ActiveState", "SubState", "MainPID")
    assert (st["ActiveState"], st["SubState"]) == ("active", "running")
    assert f"pid {st['MainPID']} " in out.stdout and "(socket-activated)" in out.stdout
    assert any(f"{SOCKET_UNIT}: Incoming traffic" in line for line in box.journal(SOCKET_UNIT))


def test_stop_is_clean(box):
    box.run("systemctl", "start", UNIT, timeout=60)
    pid = box.show(UNIT, "MainPID")["MainPID"]
    box.run("systemctl", "stop", UNIT, timeout=60)
    st = box.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    # ExecMainCode 1 is CLD_EXITED: a normal exit, status 0, not a signal.
    assert st == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                  "ExecMainStatus": "0"}, st
    assert "STOPPING=1" in notifications(box.journal(), pid)
    assert any("event=stopped" in line for line in box.journal())
    # The socket belongs to aal-core.socket: it stays, listening, for the next client ...
    assert box.run("stat", "-c", "%F", SOCK).stdout.strip() == "socket"
    assert box.show(SOCKET_UNIT, "SubState")["SubState"] == "listening"
    # ... and goes away with it.
    box.run("systemctl", "stop", SOCKET_UNIT)
    assert box.run("test", "-e", SOCK, check=False).returncode == 1


def test_sigterm_from_outside_is_a_clean_stop(box):
    box.run("systemctl", "start", UNIT, timeout=60)
    st = box.show(UNIT, "MainPID", "NRestarts")
    box.run("kill", "-TERM", st["MainPID"])
    wait_for(lambda: box.show(UNIT, "ActiveState")["ActiveState"] == "inactive", 20, "the service to stop")
    after = box.show(UNIT, "Result", "ExecMainStatus", "NRestarts")
    assert (after["Result"], after["ExecMainStatus"]) == ("success", "0")
    assert after["NRestarts"] == st["NRestarts"]  # a clean exit is not restarted
    assert "STOPPING=1" in notifications(box.journal(), st["MainPID"])
