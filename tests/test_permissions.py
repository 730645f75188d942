"""Who may call what, with real second users (created here if missing):
`aaltest` (not in the socket's group) and `aalmember` (in group `aal`).
The socket is 0660 root:aal; SO_PEERCRED gives root and the daemon's own
user admin, group members write, anyone else who can connect read."""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time

import pytest

from aal_core import errors as E

from helpers import AAL_CORE, AALCTL, short_tmpdir, without_systemd_env

pytestmark = [pytest.mark.root, pytest.mark.slow]

OUTSIDER, MEMBER, GROUP = "aaltest", "aalmember", "aal"


def _ensure_users():
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    for user, groups in ((OUTSIDER, []), (MEMBER, [GROUP])):
        try:
            pwd.getpwnam(user)
        except KeyError:
            cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            if groups:
                cmd += ["--groups", ",".join(groups)]
            subprocess.run(cmd + [user], check=True)
    assert GROUP in [g.gr_name for g in grp.getgrall() if MEMBER in g.gr_mem]
    assert OUTSIDER not in grp.getgrnam(GROUP).gr_mem


def as_user(user: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run cmd as `user` with its own groups (no inherited root privileges)."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *cmd],
                          capture_output=True, text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"})


def _start(base: str, *, user: str | None = None) -> subprocess.Popen:
    cmd = [AAL_CORE, "run", "--local", base, "--tegrastats", "off"]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + cmd
    env = without_systemd_env()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(base, "err"), "wb"))
    sock = os.path.join(base, "aal-core.sock")
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        assert p.poll() is None and time.monotonic() < deadline, open(os.path.join(base, "err")).read()
        time.sleep(0.05)
    time.sleep(0.2)
    return p


def _stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0


@pytest.fixture(scope="module")
def root_daemon():
    _ensure_users()
    base = short_tmpdir()
    os.chmod(base, 0o755)
    p = _start(base)
    yield os.path.join(base, "aal-core.sock")
    _stop(p)
    shutil.rmtree(base, ignore_errors=True)


def _call(user, sock, method, params=None):
    args = [AALCTL, "--socket", sock, "call", method] + ([json.dumps(params)] if params is not None else [])
    return as_user(user, *args)


def test_socket_is_0660_and_owned_by_the_group(root_daemon):
    st = os.stat(root_daemon)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == grp.getgrnam(GROUP).gr_gid


def test_outsider_cannot_connect_and_is_told_why(root_daemon):
    r = as_user(OUTSIDER, AALCTL, "--socket", root_daemon, "status")
    assert r.returncode == 3
    assert r.stderr.startswith(f"aalctl: permission denied on {root_daemon}: is your user in the 'aal' group?")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_group_member_reads_but_is_refused_admin(root_daemon):
    r = _call(MEMBER, root_daemon, "system.status")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"]
    r = _call(MEMBER, root_daemon, "system.reload")
    assert r.returncode == 1 and r.stdout == ""
    err = json.loads(r.stderr.split("error: ", 1)[1])
    assert err["code"] == E.PERMISSION_DENIED
    assert err["data"]["required"] == "admin" and err["data"]["granted"] == "write"
    assert err["data"]["peer_uid"] == pwd.getpwnam(MEMBER).pw_uid
    assert "root or the daemon's user only" in err["message"]
    # the signing key: anyone may read the public half, only an admin rotates it
    r = _call(MEMBER, root_daemon, "system.public_key")
    assert r.returncode == 0 and len(json.loads(r.stdout)["public_key"]) == 64, r.stderr
    r = _call(MEMBER, root_daemon, "system.rotate_key")
    assert r.returncode == 1 and json.loads(r.stderr.split("error: ", 1)[1])["code"] == E.PERMISSION_DENIED


def test_root_may_reload(root_daemon):
    r = subprocess.run([AALCTL, "--socket", root_daemon, "call", "system.reload"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["reloaded"] is True


def test_a_peer_outside_the_group_gets_read_only(root_daemon):
    # As if a socket unit had SocketMode=0666: anyone may connect, and
    # SO_PEERCRED, not the file mode, decides what they may do.
    os.chmod(root_daemon, 0o666)
    try:
        r = _call(OUTSIDER, root_daemon, "system.health")
        assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
        r = _call(OUTSIDER, root_daemon, "system.reload")
        err = json.loads(r.stderr.split("error: ", 1)[1])
        assert r.returncode == 1 and err["code"] == E.PERMISSION_DENIED and err["data"]["granted"] == "read"
    finally:
        os.chmod(root_daemon, 0o660)


def test_the_daemons_own_user_is_admin():
    _ensure_users()
    base = short_tmpdir()
    os.chmod(base, 0o755)
    shutil.chown(base, OUTSIDER, OUTSIDER)
    p = _start(base, user=OUTSIDER)
    sock = os.path.join(base, "aal-core.sock")
    try:
        st = os.stat(sock)
        assert st.st_uid == pwd.getpwnam(OUTSIDER).pw_uid and stat.S_IMODE(st.st_mode) == 0o660
        r = _call(OUTSIDER, sock, "system.reload")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["reloaded"] is True
    finally:
        _stop(p)
        shutil.rmtree(base, ignore_errors=True)
