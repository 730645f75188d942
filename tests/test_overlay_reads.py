"""What an overlay may read, and io_uring, through a real daemon that runs
as an ordinary user (`--local`, no root: no identity change is possible, so
the overlay runs as the daemon's own uid and only the kernel's Landlock
rules keep it from the daemon's files).  tests/overlay_probes/reader.py
tries to read the paths it is given and to set up io_uring.

In CLEAR it cannot read the daemon's state directory, a file in it, or the
signing key, while it still reads its own directory and the system's
libraries; in OPEN (no read rules) the same uid reads them, which shows it
is the CLEAR confinement that denies them.  io_uring fails in every phase.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aal_core.client import Client
from aal_core.config import OverlaysConfig
from aal_core.overlays import sandbox as sb

from helpers import AAL_CORE, short_tmpdir, without_systemd_env

TEST_USER = "aaltest"
READER = Path(__file__).parent / "overlay_probes" / "reader.py"
MANIFEST = {
    "name": "reader", "version": "1", "description": "reads the paths it is given",
    "entrypoints": {"proc": {"command": ["python3", "reader.py"]}},
    "phases": ["OPEN", "CLEAR", "ASCEND"],
    "capabilities": {
        "read": {"runner": "proc", "class": "analysis", "timeout_s": 30, "phases": ["OPEN", "CLEAR"]},
        "readx": {"runner": "proc", "class": "exec", "timeout_s": 30, "phases": ["ASCEND"]}},
}

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to start the daemon as another user)")]


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell",
                        "/usr/sbin/nologin", "--user-group", TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


@pytest.fixture(scope="module")
def daemon():
    if sb.probe(OverlaysConfig()).landlock_abi < 1:
        pytest.skip("no Landlock on this kernel")
    pw = _user()
    base = short_tmpdir("ovrd")
    os.chmod(base, 0o755)
    os.chown(base, pw.pw_uid, pw.pw_gid)
    src = Path(base) / "src" / "reader"
    src.mkdir(parents=True)
    (src / "manifest.json").write_text(json.dumps(MANIFEST))
    shutil.copy(READER, src / "reader.py")
    for p in (src.parent, src, *src.iterdir()):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    err = open(os.path.join(base, "daemon.stderr"), "wb")
    cfg = Path(base) / "aal-core.toml"
    cfg.write_text('[govern]\ncgroup_root = "off"\n')
    os.chown(cfg, pw.pw_uid, pw.pw_gid)
    proc = subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--",
                             AAL_CORE, "run", "--local", base, "--tegrastats", "off", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=err, env=without_systemd_env())
    sock = os.path.join(base, "aal-core.sock")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, open(os.path.join(base, "daemon.stderr")).read()
            try:
                with Client(sock) as c:
                    c.call("system.health")
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, open(os.path.join(base, "daemon.stderr")).read()
                time.sleep(0.05)
        with Client(sock) as c:
            c.call("overlay.install", {"path": str(src)})
        yield base, sock, pw
    finally:        # the daemon goes whatever failed above
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
        shutil.rmtree(base, ignore_errors=True)


def _invoke(sock, cap, phase, paths):
    with Client(sock, timeout=60) as c:
        r = c.call("overlay.invoke", {"overlay": "reader", "capability": cap, "phase": phase,
                                      "payload": {"paths": paths}})
    assert r["ok"], r
    return r["result"]


def test_clear_cannot_read_the_daemons_state_or_key_even_as_its_own_uid(daemon):
    base, sock, pw = daemon
    state = Path(base) / "state"
    key = state / "signing.key"
    assert key.exists()
    some_file = next(p for p in state.iterdir() if p.is_file() and p != key)
    own = Path(base) / "overlays" / "reader" / "manifest.json"
    paths = [str(state), str(key), str(some_file), str(own), "/usr/lib", "/etc/passwd", base]
    with Client(sock) as c:
        st = c.call("system.status")["overlays"]["confinement"]
    assert st["identity"] == f"the daemon's own (uid {pw.pw_uid}, not root)"

    opened = _invoke(sock, "read", "OPEN", paths)
    assert opened["uid"] == pw.pw_uid
    # No uid drop here: without read rules the overlay reads what its daemon reads.
    assert opened["reads"][str(key)] == "ok" and opened["reads"][str(some_file)] == "ok"

    clear = _invoke(sock, "read", "CLEAR", paths)
    assert clear["uid"] == pw.pw_uid
    assert clear["reads"] == {str(state): "EACCES", str(key): "EACCES", str(some_file): "EACCES",
                              str(own): "ok", "/usr/lib": "ok", "/etc/passwd": "ok", base: "EACCES"}


def test_io_uring_is_refused_in_every_phase(daemon):
    _, sock, _ = daemon
    for cap, phase in (("read", "OPEN"), ("read", "CLEAR"), ("readx", "ASCEND")):
        assert _invoke(sock, cap, phase, [])["io_uring"] == "EACCES", phase
