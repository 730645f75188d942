"""The overlay sandbox (aal_core.overlays.sandbox, README "Confinement"), with
real processes: tests/overlay_probes/probe.py tries every forbidden thing
(create, write, O_TRUNC, truncate, delete, rename, mkdir, rmdir, symlink,
hard link, chmod, utime, TCP to a loopback server started here, UDP, a Unix
socket) and forks a child that tries them again.  In CLEAR each is denied
and nothing on disk changed; in ASCEND (network on) each succeeds.  As root
the probe runs as the overlay user and cannot read a real daemon's state
directory or signing key, nor signal it; as a non-root daemon (setpriv to
a test user) CLEAR is still confined by Landlock and seccomp.
"""
from __future__ import annotations

import asyncio
import dataclasses
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from aal_core import confine
from aal_core.config import OverlaysConfig
from aal_core.overlays import sandbox as sb

from helpers import cleanup, short_tmpdir, start_daemon

PROBE = Path(__file__).parent / "overlay_probes" / "probe.py"
# The overlay user must be able to execute the interpreter: the system's
# python3, not a venv under /root.
PY = "/usr/bin/python3"
OVERLAY_USER = "aal-overlay"
TEST_USER = "aaltest"
FILE_OPS = ("create", "write", "open_trunc", "truncate", "delete", "rename", "mkdir", "rmdir",
            "symlink", "hardlink", "chmod", "utime")
NET_OPS = ("tcp", "udp", "unix_socket")


def ensure_user(name: str) -> pwd.struct_passwd:
    """The overlay user as systemd/aal-core.sysusers makes it: a system user
    with its own group, in no other group."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/",
                        "--shell", "/usr/sbin/nologin", "--user-group", name], check=True)
        return pwd.getpwnam(name)


def make_victim(d: Path, owner: tuple[int, int]) -> None:
    d.mkdir(mode=0o755)
    for name in ("write.txt", "otrunc.txt", "truncate.txt", "delete.txt", "rename.txt", "chmod.txt",
                 "utime.txt"):
        (d / name).write_text(f"original {name}\n")
        os.chmod(d / name, 0o644)
    (d / "emptydir").mkdir(mode=0o755)
    for p in [d, *d.iterdir()]:
        os.lchown(p, *owner)


def snapshot(d: Path) -> dict:
    """Everything a write could change: names, types, modes, owners, sizes,
    times, contents, link targets."""
    out = {}
    for p in sorted(d.rglob("*")) + [d]:
        st = os.lstat(p)
        entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_size,
                 st.st_mtime_ns, st.st_nlink)
        if stat.S_ISREG(st.st_mode):
            entry += (hashlib.sha256(p.read_bytes()).hexdigest(),)
        elif stat.S_ISLNK(st.st_mode):
            entry += (os.readlink(p),)
        out[str(p.relative_to(d))] = entry
    return out


@pytest.fixture
def tcp_server():
    """A loopback TCP listener (connect completes from its backlog) that also
    counts UDP datagrams on the same port."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    udp.setblocking(False)
    yield port, srv, udp
    srv.close()
    udp.close()


def _accepted(srv: socket.socket) -> int:
    srv.setblocking(False)
    n = 0
    while True:
        try:
            c, _ = srv.accept()
        except BlockingIOError:
            return n
        c.close()
        n += 1


def _datagrams(udp: socket.socket) -> int:
    n = 0
    while True:
        try:
            udp.recv(16)
        except BlockingIOError:
            return n
        n += 1


@pytest.fixture
def base():
    """A directory the overlay user can traverse (pytest's tmp_path is 0700 root)."""
    b = Path(short_tmpdir("ovsb"))
    os.chmod(b, 0o755)
    shutil.copy(PROBE, b / "probe.py")
    os.chmod(b / "probe.py", 0o644)
    yield b
    shutil.rmtree(b, ignore_errors=True)


def run_probe(conf: sb.Confinement, base: Path, port: int, *, probe_paths=(), signal_pid=0,
              cwd: Path | None = None) -> dict:
    spec = {"dirs": {"parent": str(base / "victim" / "parent"), "child": str(base / "victim" / "child")},
            "port": port, "probe_paths": [str(p) for p in probe_paths], "signal_pid": signal_pid}

    async def go():
        proc = await sb.spawn([PY, str(base / "probe.py"), json.dumps(spec)], conf,
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=str(cwd or base))
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        return json.loads(out)

    return asyncio.run(go())


def prepare_victims(base: Path, owner: tuple[int, int]) -> None:
    (base / "victim").mkdir(mode=0o755)
    make_victim(base / "victim" / "parent", owner)
    make_victim(base / "victim" / "child", owner)


# ------------------------------------------------------------- as root

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the overlay user, chown)")


@pytest.fixture(scope="module")
def overlay_ids():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    pw = ensure_user(OVERLAY_USER)
    return pw.pw_uid, pw.pw_gid


@pytest.fixture(scope="module")
def mech(overlay_ids):
    m = sb.probe(OverlaysConfig())
    assert m.identity_error == "" and m.change_ids and (m.overlay_uid, m.overlay_gid) == overlay_ids
    return m


def _assert_all_denied(result: dict):
    for who in ("parent", "child"):
        got = result[who]
        assert got["scratch"] == "ok", got
        for op in FILE_OPS:
            assert got[op] in ("EACCES", "EPERM", "EXDEV"), (who, op, got[op])
        for op in NET_OPS:
            assert got[op] == "EACCES", (who, op, got[op])


@root_only
@pytest.mark.root
def test_clear_denies_every_write_and_socket_and_changes_nothing(mech, base, tcp_server, overlay_ids):
    port, srv, udp = tcp_server
    prepare_victims(base, overlay_ids)
    before = snapshot(base / "victim")
    conf = sb.plan("CLEAR", "analysis", mechanisms=mech, config=OverlaysConfig())
    try:
        result = run_probe(conf, base, port)
        scratch = os.lstat(conf.scratch_dir)
        # The private scratch dir: the overlay's own, 0700, and it wrote there.
        assert (scratch.st_uid, stat.S_IMODE(scratch.st_mode)) == (overlay_ids[0], 0o700)
        assert os.path.exists(os.path.join(conf.scratch_dir, "scratch.txt"))
    finally:
        assert conf.cleanup()
    assert not os.path.lexists(conf.scratch_dir)
    _assert_all_denied(result)
    assert snapshot(base / "victim") == before
    assert _accepted(srv) == 0 and _datagrams(udp) == 0
    assert (result["uid"], result["gid"], result["groups"]) == (overlay_ids[0], overlay_ids[1], [])


@root_only
@pytest.mark.root
def test_ascend_with_network_does_each_of_the_same(mech, base, tcp_server, overlay_ids):
    port, srv, udp = tcp_server
    prepare_victims(base, overlay_ids)
    conf = sb.plan("ASCEND", "exec", network=True, mechanisms=mech, config=OverlaysConfig())
    try:
        result = run_probe(conf, base, port)
    finally:
        conf.cleanup()
    for who in ("parent", "child"):
        assert all(v == "ok" for v in result[who].values()), (who, result[who])
        d = base / "victim" / who
        assert (d / "new.txt").exists() and not (d / "delete.txt").exists() and (d / "renamed.txt").exists()
        assert (d / "truncate.txt").stat().st_size == 0 and "changed" in (d / "write.txt").read_text()
    assert _accepted(srv) == 2 and _datagrams(udp) == 2
    assert result["uid"] == overlay_ids[0]


@root_only
@pytest.mark.root
def test_ascend_without_network_keeps_unix_sockets_only(mech, base, tcp_server, overlay_ids):
    port, srv, udp = tcp_server
    prepare_victims(base, overlay_ids)
    conf = sb.plan("ASCEND", "exec", network=False, mechanisms=mech, config=OverlaysConfig())
    try:
        result = run_probe(conf, base, port)
    finally:
        conf.cleanup()
    for who in ("parent", "child"):
        got = result[who]
        assert all(got[op] == "ok" for op in FILE_OPS), got
        assert (got["tcp"], got["udp"], got["unix_socket"]) == ("EACCES", "EACCES", "ok")
    assert _accepted(srv) == 0


@root_only
@pytest.mark.root
@pytest.mark.slow
def test_overlay_runs_unprivileged_and_cannot_touch_a_real_daemon(mech, base, tcp_server, overlay_ids):
    """A real daemon (root, --local): its state directory and signing key are
    out of the overlay's reach, and so is its process."""
    port, _, _ = tcp_server
    prepare_victims(base, overlay_ids)
    d = start_daemon()
    try:
        state = Path(d.base) / "state"
        key = state / "signing.key"
        assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
        assert os.stat(state).st_uid == 0 and not stat.S_IMODE(os.stat(state).st_mode) & 0o007
        os.chmod(d.base, 0o755)  # even with its parent open, the state dir and key stay shut
        for phase, cls in (("CLEAR", "analysis"), ("ASCEND", "exec")):
            conf = sb.plan(phase, cls, mechanisms=mech, config=OverlaysConfig())
            try:
                r = run_probe(conf, base, port, probe_paths=[state, key], signal_pid=d.proc.pid)
            finally:
                conf.cleanup()
            assert (r["uid"], r["euid"], r["gid"], r["groups"]) == (overlay_ids[0], overlay_ids[0],
                                                                    overlay_ids[1], []), phase
            assert r["reads"] == {str(state): "EACCES", str(key): "EACCES"}, phase
            assert r["signal"] == "EPERM", phase
        assert d.call("system.health")  # untouched
    finally:
        cleanup(d)


@root_only
@pytest.mark.root
def test_a_step_that_fails_in_the_child_is_reported_and_nothing_runs(mech, base):
    """An overlay directory the overlay user cannot enter: the child stops at
    chdir (after the identity change) and the program never starts."""
    shut = base / "shut"
    shut.mkdir(mode=0o700)
    marker = base / "ran"
    conf = sb.plan("ASCEND", "exec", network=False, mechanisms=mech, config=OverlaysConfig())

    async def go():
        return await sb.spawn(["/usr/bin/touch", str(marker)], conf, env={}, cwd=str(shut))

    with pytest.raises(sb.ConfinementFailed, match=r"overlay directory .*shut is not usable by uid \d+ "
                                                   r"\(chdir: EACCES"):
        asyncio.run(go())
    conf.cleanup()
    assert not marker.exists()


@root_only
@pytest.mark.root
def test_jetson_kernel_abi1_still_read_only(mech, base, tcp_server, overlay_ids):
    """Landlock ABI 1 (the Orin's 5.15): no TRUNCATE right, no network rules.
    truncate(2) and sockets then come from seccomp; same outcome."""
    port, srv, _ = tcp_server
    prepare_victims(base, overlay_ids)
    before = snapshot(base / "victim")
    m1 = dataclasses.replace(mech, landlock_abi=1)
    conf = sb.plan("CLEAR", "analysis", mechanisms=m1, config=OverlaysConfig())
    assert conf.landlock_abi == 1 and conf.landlock_net == 0 and conf.landlock_scope == 0
    assert not conf.landlock_fs & (sb.LL_FS_TRUNCATE | sb.LL_FS_REFER)
    try:
        result = run_probe(conf, base, port)
    finally:
        conf.cleanup()
    _assert_all_denied(result)
    assert snapshot(base / "victim") == before and _accepted(srv) == 0


@root_only
@pytest.mark.root
def test_without_seccomp_a_network_namespace_denies_the_network(mech, base, tcp_server, overlay_ids):
    """The fallback where seccomp is missing: a user + network namespace
    (unprivileged), Landlock for files."""
    if not mech.user_namespaces:
        pytest.skip("no user namespaces here")
    port, srv, _ = tcp_server
    prepare_victims(base, overlay_ids)
    before = snapshot(base / "victim")
    m = dataclasses.replace(mech, seccomp=False, seccomp_error="test")
    conf = sb.plan("CLEAR", "analysis", mechanisms=m, config=OverlaysConfig())
    assert conf.unshare_net and conf.seccomp == b""
    try:
        result = run_probe(conf, base, port)
    finally:
        conf.cleanup()
    for who in ("parent", "child"):
        got = result[who]
        for op in ("create", "write", "open_trunc", "truncate", "delete", "rename", "mkdir", "rmdir",
                   "symlink", "hardlink"):
            assert got[op] in ("EACCES", "EXDEV"), (who, op, got)
        # TCP: Landlock (ABI >= 4) or the empty namespace; UDP: the namespace.
        assert got["tcp"] in ("EACCES", "ENETUNREACH") and got["udp"] == "ENETUNREACH", got
    # chmod/utime are what this fallback cannot stop (said in conf.unconfined), so only
    # the file set and the contents are compared.
    after = snapshot(base / "victim")
    assert sorted(after) == sorted(before)
    assert all(after[k][3] == before[k][3] and after[k][-1] == before[k][-1] for k in before)
    assert _accepted(srv) == 0
    assert any("chmod" in u for u in conf.unconfined)


# ----------------------------------------------------- a non-root daemon

DRIVER = r"""
import asyncio, json, sys
from aal_core.config import OverlaysConfig
from aal_core.overlays import sandbox as sb
spec = json.loads(sys.argv[1])
cfg = OverlaysConfig(scratch_dir=spec["scratch"])
m = sb.probe(cfg)
out = {"mech": m.to_dict(cfg), "runs": {}}
async def go():
    for phase, cls, net in (("CLEAR", "analysis", False), ("ASCEND", "exec", True)):
        conf = sb.plan(phase, cls, net, mechanisms=m, config=cfg)
        arg = dict(spec["probe"], dirs={"parent": spec["dirs"][phase] + "/parent",
                                        "child": spec["dirs"][phase] + "/child"})
        p = await sb.spawn([spec["py"], spec["probe_py"], json.dumps(arg)], conf, env={"PATH": "/usr/bin"},
                           cwd=spec["cwd"])
        o, e = await p.communicate()
        assert p.returncode == 0, e
        out["runs"][phase] = json.loads(o)
        conf.cleanup()
asyncio.run(go())
print(json.dumps(out))
"""


@root_only
@pytest.mark.root
@pytest.mark.slow
def test_a_non_root_daemon_still_confines_clear(base, tcp_server):
    """`--local` as an ordinary user: no identity change (the overlay runs as
    that user), and CLEAR is still read-only and offline.  With Landlock ABI
    >= 6 the overlay cannot even signal its (same-uid) daemon."""
    port, srv, _ = tcp_server
    pw = ensure_user(TEST_USER)
    owner = (pw.pw_uid, pw.pw_gid)
    dirs = {}
    for phase in ("CLEAR", "ASCEND"):
        (base / phase).mkdir(mode=0o755)
        make_victim(base / phase / "parent", owner)
        make_victim(base / phase / "child", owner)
        dirs[phase] = str(base / phase)
    scratch = base / "scratch"
    before = snapshot(base / "CLEAR")
    spec = {"scratch": str(scratch), "dirs": dirs, "py": PY, "probe_py": str(base / "probe.py"),
            "cwd": str(base), "probe": {"port": port, "signal_pid": 1, "probe_paths": []}}
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    os.chmod(driver, 0o644)
    os.chown(base, *owner)
    r = subprocess.run(["setpriv", f"--reuid={TEST_USER}", f"--regid={TEST_USER}", "--clear-groups", "--",
                        sys.executable, str(driver), json.dumps(spec)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mech"]["identity"] == f"the daemon's own (uid {pw.pw_uid}, not root)"
    assert out["mech"]["clear"].startswith("landlock-abi")
    clear, ascend = out["runs"]["CLEAR"], out["runs"]["ASCEND"]
    assert clear["uid"] == ascend["uid"] == pw.pw_uid
    _assert_all_denied(clear)
    assert snapshot(base / "CLEAR") == before
    for who in ("parent", "child"):
        assert all(v == "ok" for v in ascend[who].values()), ascend[who]
    assert _accepted(srv) == 2
    assert clear["signal"] == ascend["signal"] == "EPERM"  # pid 1 is root's either way


# ------------------------------------------------------------ plan as data

def _mech(**kw) -> sb.Mechanisms:
    base = dict(landlock_abi=7, landlock_error="", seccomp=True, seccomp_error="", user_namespaces=True,
                euid=os.geteuid(), overlay_user="aal-overlay", overlay_uid=1000, overlay_gid=1000, change_ids=False,
                identity_error="")
    base.update(kw)
    return sb.Mechanisms(**base)


@pytest.fixture
def cfg(tmp_path):
    return OverlaysConfig(scratch_dir=str(tmp_path / "scratch"))


def test_clear_with_no_mechanism_is_refused_unless_allowed(cfg):
    m = _mech(landlock_abi=0, landlock_error="the kernel has no Landlock system calls")
    with pytest.raises(sb.SandboxUnavailable, match=r"CLEAR refused: .*no Landlock \(the kernel has no "
                                                    r"Landlock system calls\).*allow_unconfined = true"):
        sb.plan("CLEAR", "analysis", mechanisms=m, config=cfg)
    assert m.to_dict(cfg)["clear"].startswith("refused: no Landlock")
    loose = dataclasses.replace(cfg, allow_unconfined=True)
    conf = sb.plan("CLEAR", "analysis", mechanisms=m, config=loose)
    assert conf.landlock_abi == 0 and conf.unconfined and "file system writable" in conf.unconfined[0]
    assert m.to_dict(loose)["clear"] == "unconfined (overlays.allow_unconfined = true)"
    # Other phases never needed it.
    assert sb.plan("ASCEND", "exec", mechanisms=m, config=cfg).read_only is False


def test_landlock_without_seccomp_or_userns_is_not_enough_for_clear(cfg):
    m = _mech(seccomp=False, seccomp_error="EPERM: Operation not permitted", user_namespaces=False)
    with pytest.raises(sb.SandboxUnavailable, match="neither seccomp .* nor a user namespace"):
        sb.plan("CLEAR", "analysis", mechanisms=m, config=cfg)


def test_a_root_daemon_that_cannot_drop_runs_nothing(cfg):
    m = _mech(euid=0, overlay_uid=None, overlay_gid=None,
              identity_error="the daemon runs as root and cannot change to user 'aal-overlay'")
    for phase, cls in (("CLEAR", "analysis"), ("ASCEND", "exec"), ("OPEN", "analysis")):
        with pytest.raises(sb.SandboxUnavailable, match="cannot change to user"):
            sb.plan(phase, cls, mechanisms=m, config=cfg)
    assert m.to_dict(cfg)["identity"].startswith("refused: ")


def test_bad_phase_and_class_are_value_errors(cfg):
    with pytest.raises(ValueError, match="unknown phase 'clear'"):
        sb.plan("clear", "analysis", mechanisms=_mech(), config=cfg)
    with pytest.raises(ValueError, match="unknown capability class 'run'"):
        sb.plan("CLEAR", "run", mechanisms=_mech(), config=cfg)


def test_clear_never_has_network_and_rights_follow_the_abi(cfg):
    for abi, net, scope, trunc in ((1, 0, 0, False), (3, 0, 0, True), (4, 3, 0, True), (6, 3, 3, True),
                                   (7, 3, 3, True)):
        c = sb.plan("CLEAR", "analysis", network=True, mechanisms=_mech(landlock_abi=abi), config=cfg)
        assert c.network is False and c.sockets == "none"
        assert (c.landlock_net, c.landlock_scope) == (net, scope), abi
        assert bool(c.landlock_fs & sb.LL_FS_TRUNCATE) == trunc
        assert c.landlock_rules[0] == (c.scratch_dir, c.landlock_fs)
        assert c.env == {"TMPDIR": c.scratch_dir, "HOME": c.scratch_dir}
        assert os.path.dirname(c.scratch_dir) == cfg.scratch_dir
        assert stat.S_IMODE(os.stat(cfg.scratch_dir).st_mode) == 0o700
        # seccomp also refuses truncate(2) exactly where Landlock cannot.
        nrs = _denied_numbers(c.seccomp)
        assert (confine.SYSCALLS["truncate"] in nrs) == (not trunc)
        assert confine.SYSCALLS["socket"] in nrs


def test_scratch_root_must_be_ours(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(sb.SandboxUnavailable, match="is not a directory owned by uid"):
        sb.plan("CLEAR", "analysis", mechanisms=_mech(euid=os.geteuid()),
                config=OverlaysConfig(scratch_dir=str(link)))


def _decode(prog: bytes):
    return [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]


def _denied_numbers(prog: bytes) -> set[int]:
    """Numbers compared by a JEQ directly followed by RET ERRNO(EACCES)."""
    ins = _decode(prog)
    out = set()
    for a, b in zip(ins, ins[1:]):
        if a[0] == 0x15 and b[0] == 0x06 and b[3] == 0x00050000 | 13:
            out.add(a[3])
    return out


def test_seccomp_program_checks_the_architecture_first():
    sys_x86 = {"socket": 41, "io_uring_setup": 425, "chmod": 90}
    p = _decode(sb.seccomp_program(("chmod",), "unix", syscalls=sys_x86, arch=0xC000003E, x32_bit=0x40000000))
    assert p[0] == (0x20, 0, 0, 4) and p[1] == (0x15, 1, 0, 0xC000003E)
    assert p[2] == (0x06, 0, 0, 0x00050000 | 38)  # another arch: ENOSYS
    assert p[4] == (0x35, 0, 1, 0x40000000)         # x32 calls: ENOSYS
    assert p[-1] == (0x06, 0, 0, 0x7FFF0000)
    # aarch64: no x32 check, and a call the arch lacks (chmod) is skipped.
    sys_a64 = {"socket": 198, "io_uring_setup": 425, "chmod": -1}
    p = _decode(sb.seccomp_program(("chmod",), "none", syscalls=sys_a64, arch=0xC00000B7, x32_bit=0))
    assert 0x35 not in [i[0] for i in p] and 90 not in [i[3] for i in p]
    assert {198, 425} <= _denied_numbers(sb.seccomp_program((), "none", syscalls=sys_a64, arch=0xC00000B7,
                                                            x32_bit=0))


@pytest.mark.parametrize("phase,cls,network", [("OPEN", "analysis", False), ("ASCEND", "exec", True),
                                               ("SEAL", "analysis", False), ("CLEAR", "analysis", False)])
def test_every_phase_filters_io_uring(phase, cls, network):
    conf = sb.plan(phase, cls, network, mechanisms=_mech(), config=OverlaysConfig(scratch_dir=short_tmpdir("ovio")))
    nrs = [confine.SYSCALLS[n] for n in sb.IO_URING_CALLS]
    assert conf.seccomp and set(nrs) <= _denied_numbers(conf.seccomp)
    assert any("io_uring" in e for e in conf.enforced)
    without = sb.plan(phase, cls, network, mechanisms=_mech(seccomp=False, seccomp_error="EINVAL"),
                      config=OverlaysConfig(scratch_dir=short_tmpdir("ovio")))
    assert without.seccomp == b"" and any("io_uring allowed" in u for u in without.unconfined)


def test_clear_reads_only_its_allow_list():
    """CLEAR handles the read rights: granted only under the listed paths;
    prepare() adds the overlay's directory and its executable's installation."""
    scratch = short_tmpdir("ovrl")
    conf = sb.plan("CLEAR", "analysis", mechanisms=_mech(), config=OverlaysConfig(scratch_dir=scratch))
    assert conf.landlock_fs & sb.LL_FS_READS == sb.LL_FS_READS
    ruled = dict(conf.landlock_rules)
    assert ruled[conf.scratch_dir] == conf.landlock_fs
    assert ruled["/usr"] == sb.LL_FS_READS and ruled["/dev/urandom"] == sb.LL_FS_READ_FILE
    assert not any(p in ("/", "/tmp", "/var", "/root", "/home", scratch) for p in ruled)
    venv = Path(scratch) / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    own = short_tmpdir("ovrd")
    extra = conf.read_rules(own, str(venv / "bin" / "python"))
    assert extra == [(own, sb.LL_FS_READS), (str(venv), sb.LL_FS_READS)]
    os.rmdir(own)
    assert conf.read_rules(None, "/usr/bin/python3") == []        # under /usr already
    other = sb.plan("OPEN", "analysis", mechanisms=_mech(), config=OverlaysConfig(scratch_dir=scratch))
    assert other.read_rights == 0 and other.read_rules("/x", "/y/bin/z") == []
    with pytest.raises(sb.SandboxUnavailable, match="read_paths"):
        sb.plan("CLEAR", "analysis", mechanisms=_mech(),
                config=OverlaysConfig(scratch_dir=scratch, read_paths="/usr:relative/path"))
    shutil.rmtree(scratch, ignore_errors=True)


def test_clear_read_rules_are_made_once_and_remade_after_a_cache_clear():
    """plan() keeps CLEAR's static rules per (ABI, read_paths): each call
    still gets its own scratch directory; a read path that appears later is
    refused until plan_cache_clear() (system.reload, overlay.rescan)."""
    if not _mech().landlock_abi:
        pytest.skip("no Landlock here")
    scratch = short_tmpdir("ovsc")
    later = os.path.join(short_tmpdir("ovrp"), "later")
    cfg = OverlaysConfig(scratch_dir=scratch, read_paths=later)
    sb.plan_cache_clear()
    with pytest.raises(sb.SandboxUnavailable, match="not an existing absolute path"):
        sb.plan("CLEAR", "analysis", mechanisms=_mech(), config=cfg)
    os.mkdir(later)                       # a refusal is not remembered
    a = sb.plan("CLEAR", "analysis", mechanisms=_mech(), config=cfg)
    b = sb.plan("CLEAR", "analysis", mechanisms=_mech(), config=cfg)
    assert a.scratch_dir != b.scratch_dir and dict(a.landlock_rules)[later] == sb.LL_FS_READS
    assert dict(a.landlock_rules)[a.scratch_dir] == a.landlock_fs and a.scratch_dir not in dict(b.landlock_rules)
    os.rmdir(later)
    assert later in dict(sb.plan("CLEAR", "analysis", mechanisms=_mech(), config=cfg).landlock_rules)
    sb.plan_cache_clear()                 # gone now: the next plan sees it
    with pytest.raises(sb.SandboxUnavailable, match="not an existing absolute path"):
        sb.plan("CLEAR", "analysis", mechanisms=_mech(), config=cfg)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(os.path.dirname(later), ignore_errors=True)


def test_probe_reports_what_it_found():
    m = sb.probe(OverlaysConfig())
    d = m.to_dict(OverlaysConfig())
    assert set(d) >= {"identity", "clear", "landlock_abi", "seccomp", "user_namespaces"}
    assert d["landlock_abi"] == m.landlock_abi >= 0
    if m.landlock_abi == 0:
        assert m.landlock_error
    json.dumps(d)


def test_prepared_rejects_bad_input():
    with pytest.raises(ValueError, match="whole number of 8-byte"):
        confine.Prepared(seccomp=b"1234567")
    with pytest.raises(ValueError, match="not a usable path"):
        confine.Prepared(cwd="a\0b")
    with pytest.raises(ValueError, match=f"at most {confine.MAX_RULES} Landlock rules"):
        confine.Prepared(landlock=(1, 2, 0, 0, [("/", 2)] * (confine.MAX_RULES + 1)))


# ------------------------------------------- the reference, cgroup, cleanup

@root_only
@pytest.mark.root
def test_the_python_reference_confines_the_same(mech, base, tcp_server, overlay_ids):
    """aal_core.overlays.confine_ref (os + ctypes) applied to the same plans
    gives the probe the same outcomes as the compiled aal_core.confine."""
    from aal_core.overlays import confine_ref

    port, _, _ = tcp_server
    outcomes = {}
    for impl in (None, confine_ref.Prepared):
        for phase, cls, net in (("CLEAR", "analysis", False), ("ASCEND", "exec", False)):
            b = base / f"{phase}-{'ref' if impl else 'c'}"
            b.mkdir(mode=0o755)
            shutil.copy(base / "probe.py", b / "probe.py")
            prepare_victims(b, overlay_ids)
            conf = sb.plan(phase, cls, net, mechanisms=mech, config=OverlaysConfig())
            spec = {"dirs": {"parent": str(b / "victim/parent"), "child": str(b / "victim/child")},
                    "port": port}

            async def go(conf=conf, spec=spec, b=b, impl=impl):
                proc = await sb.spawn([PY, str(b / "probe.py"), json.dumps(spec)], conf, env={"PATH": "/usr/bin"},
                                      cwd=str(b), impl=impl)
                out, err = await proc.communicate()
                assert proc.returncode == 0, err
                return json.loads(out)

            try:
                r = asyncio.run(go())
            finally:
                conf.cleanup()
            outcomes[(phase, impl is None)] = (r["uid"], r["groups"], r["parent"], r["child"])
    for phase in ("CLEAR", "ASCEND"):
        assert outcomes[(phase, True)] == outcomes[(phase, False)], phase
    _assert_all_denied({"parent": outcomes[("CLEAR", True)][2], "child": outcomes[("CLEAR", True)][3]})


@root_only
@pytest.mark.root
def test_the_reference_reports_a_failed_step_like_the_compiled_one(mech, base):
    from aal_core.overlays import confine_ref

    shut = base / "shut"
    shut.mkdir(mode=0o700)
    msgs = []
    for impl in (None, confine_ref.Prepared):
        conf = sb.plan("ASCEND", "exec", mechanisms=mech, config=OverlaysConfig())
        with pytest.raises(sb.ConfinementFailed) as ei:
            asyncio.run(sb.spawn(["/bin/true"], conf, env={}, cwd=str(shut), impl=impl))
        conf.cleanup()
        msgs.append(str(ei.value))
    assert msgs[0] == msgs[1] and "chdir: EACCES" in msgs[0]


V1_MEMORY = Path("/sys/fs/cgroup/memory")


@root_only
@pytest.mark.root
def test_the_child_joins_its_cgroup_before_anything_runs(mech, base):
    if not (V1_MEMORY / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory controller here")
    cg = V1_MEMORY / f"aal-test-sandbox-{os.getpid()}"
    cg.mkdir()
    try:
        conf = sb.plan("ASCEND", "exec", mechanisms=mech, config=OverlaysConfig())

        async def go():
            proc = await sb.spawn(["/bin/cat", "/proc/self/cgroup"], conf, env={}, cwd="/",
                                  cgroup_procs=str(cg / "cgroup.procs"))
            out, _ = await proc.communicate()
            return proc.returncode, out.decode()

        rc, out = asyncio.run(go())
        conf.cleanup()
        assert rc == 0
        memory = [line for line in out.splitlines() if ":memory:" in line]
        assert memory and memory[0].endswith("/" + cg.name), out
        # A cgroup that is not there: the child stops at the first step.
        conf = sb.plan("ASCEND", "exec", mechanisms=mech, config=OverlaysConfig())
        with pytest.raises(sb.ConfinementFailed, match=r"at join the cgroup \(ENOENT"):
            asyncio.run(sb.spawn(["/bin/true"], conf, env={}, cwd="/",
                                 cgroup_procs=str(cg / "missing" / "cgroup.procs")))
        conf.cleanup()
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                import time
                time.sleep(0.05)


@root_only
@pytest.mark.root
def test_cleanup_removes_what_the_overlay_left_even_in_a_sticky_directory(mech, base):
    """An ASCEND overlay fills its scratch dir, including a sticky directory
    whose entries only their owner (or CAP_FOWNER) may remove."""
    conf = sb.plan("ASCEND", "exec", mechanisms=mech, config=OverlaysConfig())
    script = ("import os; d = os.environ['TMPDIR']; os.mkdir(d + '/st'); os.chmod(d + '/st', 0o1777); "
              "open(d + '/st/f', 'w').write('x'); os.makedirs(d + '/a/b/c'); open(d + '/a/b/c/g', 'w')")

    async def go():
        proc = await sb.spawn([PY, "-c", script], conf, env={}, cwd="/")
        _, err = await proc.communicate()
        assert proc.returncode == 0, err

    asyncio.run(go())
    assert os.path.exists(os.path.join(conf.scratch_dir, "st", "f"))
    assert conf.cleanup() and not os.path.lexists(conf.scratch_dir)
    assert conf.cleanup()  # twice is fine


def test_a_service_that_already_denies_inet_gets_no_socket_rule_outside_clear(cfg):
    """Under the unit (RestrictAddressFamilies=AF_UNIX, inherited by every
    child) ASCEND's filter has no socket rule of its own, only the io_uring
    one every phase has; CLEAR keeps its own (it denies more than sockets)."""
    m = _mech(inet_denied=True)
    a = sb.plan("ASCEND", "exec", network=False, mechanisms=m, config=cfg)
    assert confine.SYSCALLS["socket"] not in _denied_numbers(a.seccomp) and not a.unshare_net
    assert confine.SYSCALLS["io_uring_setup"] in _denied_numbers(a.seccomp)
    assert any("inherited" in e for e in a.enforced)
    clear = sb.plan("CLEAR", "analysis", mechanisms=m, config=cfg)
    assert confine.SYSCALLS["socket"] in _denied_numbers(clear.seccomp)
    assert sb.plan("ASCEND", "exec", network=False, mechanisms=_mech(), config=cfg).seccomp != b""


def test_probe_sees_an_inherited_inet_ban():
    """A daemon started under a filter like the unit's RestrictAddressFamilies=
    (here: our own unix-only program, applied to a child that probes)."""
    prog = sb.seccomp_program((), "unix")
    code = "import json; from aal_core import confine; print(json.dumps(confine.probe()))"
    r = subprocess.run([sys.executable, "-c", code], preexec_fn=confine.Prepared(seccomp=prog).apply,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inet_denied"] is True


# ------------------------------------ the seccomp program, run by a tiny cBPF VM

def _run_bpf(prog: bytes, nr: int, arch: int, arg0: int) -> int:
    """Evaluate a classic-BPF seccomp program on seccomp_data (nr, arch,
    args[0]); only the instructions seccomp_program emits are known."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    ins, pc, acc = _decode(prog), 0, 0
    for _ in range(len(ins) + 1):
        code, jt, jf, k = ins[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unknown instruction {code:#x}")
    raise AssertionError("ran off the program")


_SYS = {"socket": 41, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "chmod": 90,
        "utimensat": 280, "truncate": 76, "fchmodat2": 452}
_X86, _I386, _EACCES, _ENOSYS, _ALLOW = 0xC000003E, 0x40000003, 0x00050000 | 13, 0x00050000 | 38, 0x7FFF0000


def _expected(deny, sockets, nr, arch, arg0) -> int:
    if arch != _X86 or nr & 0xFFFFFFFF >= 0x40000000:
        return _ENOSYS
    names = {v: k for k, v in _SYS.items()}
    name = names.get(nr & 0xFFFFFFFF)
    if name in deny:
        return _EACCES
    if name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):   # every phase
        return _EACCES
    if name == "socket" and (sockets == "none" or (sockets == "unix" and arg0 & 0xFFFFFFFF != 1)):
        return _EACCES
    return _ALLOW


@settings(max_examples=400, deadline=None)
@given(deny=st.sets(st.sampled_from(["chmod", "utimensat", "truncate", "fchmodat2"])),
       sockets=st.sampled_from(["none", "unix", "any"]),
       nr=st.one_of(st.sampled_from(sorted(_SYS.values())), st.integers(0, 500),
                    st.integers(0x40000000, 0x40000200), st.integers(-(1 << 31), -1)),
       arch=st.sampled_from([_X86, _X86, _I386, 0xC00000B7]),
       arg0=st.one_of(st.sampled_from([1, 2, 10, 16, 17, 1 | (1 << 32)]), st.integers(0, (1 << 64) - 1)))
def test_seccomp_program_decides_as_the_policy_says(deny, sockets, nr, arch, arg0):
    prog = sb.seccomp_program(tuple(sorted(deny)), sockets, syscalls=_SYS, arch=_X86, x32_bit=0x40000000)
    assert _run_bpf(prog, nr, arch, arg0) == _expected(deny, sockets, nr, arch, arg0)
