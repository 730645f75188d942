"""Where and how an overlay process runs (README, "Confinement").

Three steps, bubblewrap style:

- `probe()` (once, at start) finds what this kernel and this process can
  enforce: the Landlock ABI, seccomp filters, user namespaces, and whether a
  root daemon can change to the overlay user.  Each is tried for real in a
  short-lived child (ext/includes/aal_confine.h: aal_probe).
- `plan()` turns (phase, capability class, network, what the probe found,
  the [overlays] config) into a `Confinement`: a frozen dataclass that is
  the whole sandbox as data (identity, Landlock rules, the seccomp program,
  rlimits, the scratch directory), or raises `SandboxUnavailable`.
- `spawn()` starts the program with that confinement applied by one C
  function in the child, between fork and exec (aal_core.confine).

Rules: an overlay never runs as root (a root daemon changes to
`overlays.user`; a non-root daemon runs overlays as itself).  CLEAR writes
nothing outside its private scratch directory and opens no socket (Landlock
for the file system, seccomp, else a network namespace, for sockets); a
CLEAR that cannot be enforced is refused unless `overlays.allow_unconfined`.
"""
from __future__ import annotations

import asyncio
import errno as errno_mod
import functools
import os
import pwd
import resource
import secrets
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field

from .. import confine as _c

__all__ = ["probe", "plan", "spawn", "SandboxUnavailable", "ConfinementFailed", "Confinement",
           "Mechanisms", "PHASES", "CAP_CLASSES"]

PHASES = ("OPEN", "ALIGN", "ASCEND", "CLEAR", "SEAL")
CAP_CLASSES = ("analysis", "exec")


class SandboxUnavailable(Exception):
    """The confinement a call needs cannot be had here; nothing ran."""


class ConfinementFailed(SandboxUnavailable):
    """The child could not apply its confinement and exited (127) before
    running anything of the overlay; the message names the step."""


# ---------------------------------------------------------------- Landlock
# include/uapi/linux/landlock.h.  Access rights by the ABI that added them.
LL_FS_EXECUTE = 1 << 0
LL_FS_WRITE_FILE = 1 << 1
LL_FS_READ_FILE = 1 << 2
LL_FS_READ_DIR = 1 << 3
LL_FS_REMOVE_DIR = 1 << 4
LL_FS_REMOVE_FILE = 1 << 5
LL_FS_MAKE_CHAR = 1 << 6
LL_FS_MAKE_DIR = 1 << 7
LL_FS_MAKE_REG = 1 << 8
LL_FS_MAKE_SOCK = 1 << 9
LL_FS_MAKE_FIFO = 1 << 10
LL_FS_MAKE_BLOCK = 1 << 11
LL_FS_MAKE_SYM = 1 << 12
LL_FS_REFER = 1 << 13       # ABI 2 (ABI 1 denies every cross-directory rename/link)
LL_FS_TRUNCATE = 1 << 14    # ABI 3
LL_NET_BIND_TCP = 1 << 0    # ABI 4
LL_NET_CONNECT_TCP = 1 << 1
LL_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
LL_SCOPE_SIGNAL = 1 << 1

# Every right that changes the file system (reading and executing stay
# allowed everywhere: the overlay reads its code, the interpreter, its input).
_LL_WRITES_ABI1 = (LL_FS_WRITE_FILE | LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE | LL_FS_MAKE_CHAR
                   | LL_FS_MAKE_DIR | LL_FS_MAKE_REG | LL_FS_MAKE_SOCK | LL_FS_MAKE_FIFO
                   | LL_FS_MAKE_BLOCK | LL_FS_MAKE_SYM)


LL_FS_READS = LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR
LL_FILE_RIGHTS = LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE  # what a rule on a file may grant

# What CLEAR may read besides its own directory (its cwd), its scratch
# directory, its executable's installation and overlays.read_paths: what
# running a program needs, and nothing of the daemon's (its state directory,
# signing key, ledger and provenance log are under none of these).
CLEAR_READ_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc")
CLEAR_READ_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")


def landlock_writes(abi: int) -> int:
    """The write rights a read-only domain handles at this ABI."""
    out = _LL_WRITES_ABI1
    if abi >= 2:
        out |= LL_FS_REFER
    if abi >= 3:
        out |= LL_FS_TRUNCATE
    return out


# ----------------------------------------------------------------- seccomp
# include/uapi/linux/{filter,seccomp}.h
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16
AF_UNIX = 1

# What CLEAR's filter refuses besides sockets: the metadata writes Landlock
# does not cover (mode, owner, extended attributes, times).  Every phase's
# filter also refuses io_uring (IO_URING_CALLS): overlays never need it, and
# its requests are not seen by seccomp, and on older kernels not by Landlock.
_CLEAR_DENY = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
               "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr", "lremovexattr",
               "fremovexattr", "removexattrat", "utime", "utimes", "futimesat", "utimensat")


IO_URING_CALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program(deny: tuple[str, ...], sockets: str, *, syscalls: dict | None = None,
                    arch: int | None = None, x32_bit: int | None = None) -> bytes:
    """A classic-BPF seccomp program: each call in `deny` fails with EACCES;
    `sockets` is "none" (socket() always fails), "unix" (only AF_UNIX) or
    "any"; the io_uring calls always fail.  Another architecture's calls (x86's int 0x80, x32) fail with
    ENOSYS, so a 32-bit socketcall cannot walk around the rule."""
    syscalls = _c.SYSCALLS if syscalls is None else syscalls
    arch = _c.AUDIT_ARCH if arch is None else arch
    x32_bit = _c.X32_BIT if x32_bit is None else x32_bit
    eacces = _RET_ERRNO | errno_mod.EACCES
    p = [_insn(_BPF_LD_W_ABS, 0, 0, _OFF_ARCH),
         _insn(_BPF_JEQ_K, 1, 0, arch),
         _insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno_mod.ENOSYS),
         _insn(_BPF_LD_W_ABS, 0, 0, _OFF_NR)]
    if x32_bit:
        p += [_insn(_BPF_JGE_K, 0, 1, x32_bit), _insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno_mod.ENOSYS)]
    names = list(deny) + [n for n in IO_URING_CALLS if n not in deny]
    if sockets == "none":
        names.append("socket")
    for name in names:
        nr = syscalls.get(name, -1)
        if nr < 0:
            continue
        p += [_insn(_BPF_JEQ_K, 0, 1, nr), _insn(_BPF_RET_K, 0, 0, eacces)]
    if sockets == "unix":
        p += [_insn(_BPF_JEQ_K, 0, 3, syscalls["socket"]),
              _insn(_BPF_LD_W_ABS, 0, 0, _OFF_ARG0),
              _insn(_BPF_JEQ_K, 1, 0, AF_UNIX),
              _insn(_BPF_RET_K, 0, 0, eacces)]
    p.append(_insn(_BPF_RET_K, 0, 0, _RET_ALLOW))
    if len(p) > _c.MAX_FILTER:
        raise ValueError(f"seccomp program of {len(p)} instructions, at most {_c.MAX_FILTER}")
    return b"".join(p)


# -------------------------------------------------------------- mechanisms
@dataclass(frozen=True)
class Mechanisms:
    """What the probe found; `to_dict()` is what system.status shows."""
    landlock_abi: int            # 0: no Landlock
    landlock_error: str          # why not, "" when usable
    seccomp: bool
    seccomp_error: str
    user_namespaces: bool
    euid: int
    overlay_user: str            # the configured user (used only by a root daemon)
    overlay_uid: int | None      # the ids overlays run as; None: cannot run any (root, no drop)
    overlay_gid: int | None
    change_ids: bool             # the child changes uid/gid (root daemon)
    identity_error: str          # why overlays cannot run at all, "" when they can
    inet_denied: bool = False    # socket(AF_INET) already fails for the daemon's children
                                 # (the unit's RestrictAddressFamilies=AF_UNIX)

    @property
    def clear_mechanism(self) -> str:
        """How CLEAR is enforced here, or "" if it cannot be."""
        if self.landlock_abi <= 0:
            return ""
        if self.seccomp:
            return f"landlock-abi{self.landlock_abi}+seccomp"
        if self.user_namespaces and self.landlock_abi >= 3:
            return f"landlock-abi{self.landlock_abi}+netns"
        return ""

    def identity(self) -> str:
        if self.identity_error:
            return f"refused: {self.identity_error}"
        if self.change_ids:
            return f"{self.overlay_user} (uid {self.overlay_uid}, gid {self.overlay_gid})"
        return f"the daemon's own (uid {self.overlay_uid}, not root)"

    def to_dict(self, config=None) -> dict:
        allow = bool(getattr(config, "allow_unconfined", False))
        clear = self.clear_mechanism
        if self.identity_error:
            clear_state = "refused: no overlay runs (see identity)"
        elif clear:
            clear_state = clear
        elif allow:
            clear_state = "unconfined (overlays.allow_unconfined = true)"
        else:
            clear_state = "refused: " + self.clear_gap()
        return {"identity": self.identity(), "clear": clear_state,
                "landlock_abi": self.landlock_abi, "landlock_error": self.landlock_error,
                "seccomp": self.seccomp, "seccomp_error": self.seccomp_error,
                "user_namespaces": self.user_namespaces, "inet_denied_by_service": self.inet_denied,
                "signal_scope": self.landlock_abi >= 6}

    def clear_gap(self) -> str:
        if self.landlock_abi <= 0:
            return f"no Landlock ({self.landlock_error}) to make the file system read-only"
        if self.clear_mechanism:
            return ""
        return (f"neither seccomp ({self.seccomp_error}) nor a user namespace to deny sockets"
                + (" and truncate(2)" if self.landlock_abi < 3 else ""))


def _err(no: int) -> str:
    return f"{errno_mod.errorcode.get(no, no)}: {os.strerror(no)}" if no else "unknown"


def _cap_eff() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def probe(config=None) -> Mechanisms:
    """What can be enforced here (run once at start; the result is data)."""
    user = getattr(config, "user", "aal-overlay") or "aal-overlay"
    euid = os.geteuid()
    ids = None
    identity_error = ""
    if euid == 0:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            identity_error = (f"the daemon runs as root and overlays never do, but user {user!r} "
                              f"(overlays.user) does not exist (systemd/aal-core.sysusers creates it)")
        else:
            if pw.pw_uid == 0 or pw.pw_gid == 0:
                identity_error = f"overlays.user {user!r} is uid/gid 0: overlays never run as root"
            else:
                ids = (pw.pw_uid, pw.pw_gid)
    r = _c.probe(ids)
    if ids is not None and not r["setuid"]:
        identity_error = (f"the daemon runs as root and cannot change to user {user!r} "
                          f"({_err(r['setuid_errno'])}): it needs CAP_SETUID and CAP_SETGID "
                          f"(systemd/aal-core.service grants both)")
        ids = None
    abi = r["landlock_abi"]
    if abi <= 0:
        ll_error = {errno_mod.ENOSYS: "the kernel has no Landlock system calls",
                    errno_mod.EOPNOTSUPP: "Landlock is built in but not enabled (lsm= boot parameter)",
                    errno_mod.EPERM: "the Landlock calls are filtered (a seccomp filter, e.g. the "
                                     "unit's SystemCallFilter=)"}.get(-abi, _err(-abi))
        abi = 0
    elif not r["landlock"]:
        ll_error = f"a Landlock domain could not be entered ({_err(r['landlock_errno'])})"
        abi = 0
    else:
        ll_error = ""
    if euid == 0:
        uid, gid, change = (ids[0], ids[1], True) if ids else (None, None, False)
    else:
        uid, gid, change = euid, os.getegid(), False
    return Mechanisms(landlock_abi=abi, landlock_error=ll_error,
                      seccomp=r["seccomp"], seccomp_error="" if r["seccomp"] else _err(r["seccomp_errno"]),
                      user_namespaces=r["user_namespaces"], euid=euid, overlay_user=user,
                      overlay_uid=uid, overlay_gid=gid, change_ids=change, identity_error=identity_error,
                      inet_denied=r["inet_denied"])


# ------------------------------------------------------------- confinement
@dataclass(frozen=True)
class Confinement:
    """One call's sandbox, as data.  `prepare()` makes the child's C struct;
    `cleanup()` removes the scratch directory (call it once the process and
    its group are gone)."""
    phase: str
    cap_class: str
    uid: int                     # what the overlay runs as (never 0)
    gid: int
    change_ids: bool             # setgroups([]) + setresgid + setresuid in the child
    read_only: bool              # writes only in scratch_dir (CLEAR)
    scratch_dir: str             # private, created 0700 by the child as uid, removed by cleanup()
    network: bool                # AF_INET/AF_INET6 allowed (never in CLEAR)
    sockets: str                 # seccomp socket rule: "none", "unix" or "any"
    landlock_abi: int            # 0: no Landlock domain
    landlock_fs: int             # handled file-system rights (denied except under the rules)
    landlock_net: int            # handled TCP rights (denied: no rule grants any port)
    landlock_scope: int          # IPC scoping (signals, abstract Unix sockets) outside the domain
    landlock_rules: tuple        # ((path, rights), ...)
    seccomp: bytes               # the filter program, b"": none
    unshare_net: bool            # a new (empty) network namespace, where seccomp is missing
    no_new_privs: bool
    die_with_parent: bool
    umask: int
    rlimits: tuple               # ((name, soft, hard), ...)
    enforced: tuple              # what is enforced, in words (for logs and provenance)
    unconfined: tuple = ()       # what CLEAR lacks where overlays.allow_unconfined let it run
    read_rights: int = 0         # reads are handled by Landlock (CLEAR): prepare() grants these
                                 # on the overlay's cwd and its executable's installation
    env: dict = field(default_factory=dict)  # added to the overlay's environment

    def read_rules(self, cwd: str | None, exe: str | None) -> list:
        """The read rules of one process: its directory (cwd) and where its
        executable is installed (its directory; a venv's or a prefix's root,
        so an interpreter finds its library), unless a rule covers them."""
        if not self.read_rights:
            return []
        have = [p for p, _ in self.landlock_rules]
        want: list[str] = []
        if cwd:
            want.append(cwd)
        if exe:
            for e in dict.fromkeys((os.path.abspath(exe), os.path.realpath(exe))):
                d = os.path.dirname(e)
                root = os.path.dirname(d)
                if os.path.basename(d) == "bin" and root != "/" and (
                        os.path.exists(os.path.join(root, "pyvenv.cfg")) or os.path.isdir(os.path.join(root, "lib"))):
                    want.append(root)
                else:
                    want.append(d)
        out = []
        for w in want:
            w = os.path.abspath(w)
            if any(w == h or w.startswith(h.rstrip("/") + "/") for h in have):
                continue
            if os.path.isdir(w):
                out.append((w, self.read_rights))
                have.append(w)
        return out

    def prepare(self, *, cwd: str | None = None, cgroup_procs: str | None = None, status_fd: int = -1,
                impl=None, exe: str | None = None):
        """The child's half (aal_core.confine.Prepared; `impl` = the pure-Python
        reference's class, for the differential tests only)."""
        landlock = None
        if self.landlock_abi > 0:
            landlock = (self.landlock_abi, self.landlock_fs, self.landlock_net, self.landlock_scope,
                        list(self.landlock_rules) + self.read_rules(cwd, exe))
        return (impl or _c.Prepared)(cgroup_procs=cgroup_procs, ids=(self.uid, self.gid) if self.change_ids else None,
                           umask=self.umask, scratch=self.scratch_dir, cwd=cwd,
                           rlimits=[(getattr(resource, name), s, h) for name, s, h in self.rlimits],
                           die_with_parent=self.die_with_parent, unshare_net=self.unshare_net,
                           no_new_privs=self.no_new_privs, landlock=landlock, seccomp=self.seccomp,
                           status_fd=status_fd)

    def cleanup(self) -> bool:
        """Remove the scratch directory; True if it is gone.  What the daemon
        cannot remove itself (an entry of a sticky directory the overlay made:
        that needs CAP_FOWNER, which the unit does not grant) is removed by
        `rm -rf` run as the overlay's user."""
        try:
            shutil.rmtree(self.scratch_dir)
        except FileNotFoundError:
            pass
        except OSError:
            if self.change_ids:
                import subprocess
                prep = _c.Prepared(ids=(self.uid, self.gid), no_new_privs=True)
                subprocess.run(["rm", "-rf", "--", self.scratch_dir], preexec_fn=prep.apply,
                               env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
            return not os.path.lexists(self.scratch_dir)
        return True

    def to_dict(self) -> dict:
        return {"phase": self.phase, "class": self.cap_class, "uid": self.uid, "gid": self.gid,
                "read_only": self.read_only, "network": self.network,
                "enforced": list(self.enforced), "unconfined": list(self.unconfined)}


def scratch_root(config, euid: int | None = None, change_ids: bool = False) -> str:
    """The parent of the scratch directories: owned by the daemon's euid, not
    a symlink; 0733 where overlays run as another user (they create their own
    directory in it, and cannot list it), else 0700."""
    euid = os.geteuid() if euid is None else euid
    root = getattr(config, "scratch_dir", "") or os.path.join(tempfile.gettempdir(), f"aal-core-overlays-{euid}")
    mode = 0o733 if change_ids else 0o700
    try:
        os.mkdir(root, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SandboxUnavailable(f"cannot create the overlays' scratch directory {root}: {exc.strerror}") from None
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid:
        raise SandboxUnavailable(f"overlay scratch directory {root} is not a directory owned by uid {euid} "
                                 f"(set overlays.scratch_dir)")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(root, mode)
    return root


def plan(phase: str, cap_class: str, network: bool | None = None, *, mechanisms: Mechanisms,
         config=None) -> Confinement:
    """The confinement of one call, or SandboxUnavailable saying why none
    that keeps the rules can be had."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} (one of {', '.join(PHASES)})")
    if cap_class not in CAP_CLASSES:
        raise ValueError(f"unknown capability class {cap_class!r} (analysis or exec)")
    m = mechanisms
    if m.identity_error or m.overlay_uid is None:
        raise SandboxUnavailable(m.identity_error or "no unprivileged identity for overlays")
    allow_unconfined = bool(getattr(config, "allow_unconfined", False))
    read_only = phase == "CLEAR"
    if network is None:
        network = bool(getattr(config, "network", False))
    if read_only:
        network = False
    enforced = [f"uid {m.overlay_uid}" + (f" ({m.overlay_user})" if m.change_ids else " (the daemon's own)"),
                "no_new_privs"]
    unconfined: list[str] = []
    ll_abi = ll_fs = ll_net = ll_scope = read_rights = 0
    rules: list = []
    deny: list[str] = []
    sockets = "any" if network else "unix"
    unshare_net = False
    scratch = os.path.join(scratch_root(config, m.euid, m.change_ids), "call-" + secrets.token_hex(8))
    if read_only:
        sockets = "none"
        if m.landlock_abi > 0:
            ll_abi = m.landlock_abi
            writes = landlock_writes(ll_abi)
            ll_fs = writes | LL_FS_READS
            read_rights = LL_FS_READS
            static, extra = _clear_rules(ll_abi, getattr(config, "read_paths", "") or "")
            rules = [(scratch, ll_fs)] + list(static)
            enforced.append(f"landlock abi {ll_abi}: no write outside {scratch}")
            enforced.append("landlock: reads only under the overlay's directory, its scratch directory, its "
                            "executable's installation, " + ", ".join(CLEAR_READ_DIRS + CLEAR_READ_FILES)
                            + (", " + ", ".join(extra) if extra else ""))
            if ll_abi >= 4:
                ll_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP
                enforced.append("landlock: no TCP bind/connect")
            if ll_abi >= 6:
                ll_scope = LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL
                enforced.append("landlock: no signal or abstract Unix socket outside the call")
        else:
            unconfined.append(f"file system writable (no Landlock: {m.landlock_error})")
        if m.seccomp:
            deny = list(_CLEAR_DENY)
            if ll_abi and ll_abi < 3:
                deny.append("truncate")
            enforced.append("seccomp: no socket, no chmod/chown/xattr/utimes, no io_uring"
                            + (", no truncate(2)" if "truncate" in deny else ""))
        elif m.user_namespaces:
            unshare_net = True
            enforced.append("network namespace: no network")
            if ll_abi and ll_abi < 3:
                unconfined.append("truncate(2) by path (Landlock ABI < 3, no seccomp)")
            unconfined.append("chmod/chown/xattr/utimes (no seccomp)")
        else:
            unconfined.append(f"sockets allowed (no seccomp: {m.seccomp_error}; no user namespaces)")
        if (not ll_abi or not (m.seccomp or unshare_net)) and not allow_unconfined:
            raise SandboxUnavailable(f"CLEAR refused: it cannot be made read-only here ({m.clear_gap()}); "
                                     f"set overlays.allow_unconfined = true to run it anyway")
    else:
        if not network:
            if m.inet_denied:
                # Already true for every child of the service; a filter of our own
                # costs a spawn up to ~1.3 ms on a loaded host (bench/overlay_seccomp_cost.py)
                # for nothing.
                sockets = "any"
                enforced.append("no inet sockets (inherited: the service's RestrictAddressFamilies=)")
            elif m.seccomp:
                enforced.append("seccomp: Unix sockets only")
            elif m.user_namespaces:
                unshare_net = True
                enforced.append("network namespace: no network")
            if m.landlock_abi >= 4:
                ll_abi, ll_net = m.landlock_abi, LL_NET_BIND_TCP | LL_NET_CONNECT_TCP
        if m.landlock_abi >= 6:
            ll_abi, ll_scope = m.landlock_abi, LL_SCOPE_SIGNAL
            enforced.append("landlock: no signal outside the call")
    if m.seccomp:
        seccomp = _seccomp_cached(tuple(deny), sockets)
        if not read_only:
            enforced.append("seccomp: no io_uring")
    else:
        seccomp = b""
        unconfined.append(f"io_uring allowed (no seccomp: {m.seccomp_error})")
    nofile = int(getattr(config, "max_open_files", 1024))
    rl = [("RLIMIT_CORE", 0, 0)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    rl.append(("RLIMIT_NOFILE", nofile, nofile))
    if m.change_ids:
        nproc = int(getattr(config, "max_processes", 512))
        rl.append(("RLIMIT_NPROC", nproc, nproc))
    return Confinement(phase=phase, cap_class=cap_class, uid=m.overlay_uid, gid=m.overlay_gid,
                       change_ids=m.change_ids, read_only=read_only, scratch_dir=scratch, network=network,
                       sockets=sockets if m.seccomp else ("none" if unshare_net else "any"),
                       landlock_abi=ll_abi, landlock_fs=ll_fs, landlock_net=ll_net, landlock_scope=ll_scope,
                       landlock_rules=tuple(rules), seccomp=seccomp, unshare_net=unshare_net,
                       no_new_privs=True, die_with_parent=True, umask=0o077, rlimits=tuple(rl),
                       enforced=tuple(enforced), unconfined=tuple(unconfined), read_rights=read_rights,
                       env={"TMPDIR": scratch, "HOME": scratch})


@functools.lru_cache(maxsize=16)
def _clear_rules(ll_abi: int, read_paths: str) -> tuple[tuple, tuple]:
    """CLEAR's Landlock rules other than the scratch directory's, and the
    extra read paths: made once per (ABI, overlays.read_paths) instead of
    once a call (a stat per path); `plan_cache_clear()` (system.reload,
    overlay.rescan) forgets them, so a path that appears or goes is seen."""
    rules = [("/dev/null", LL_FS_READ_FILE | LL_FS_WRITE_FILE | (LL_FS_TRUNCATE if ll_abi >= 3 else 0))]
    rules += [(d, LL_FS_READS) for d in CLEAR_READ_DIRS if _real_dir(d)]
    rules += [(f, LL_FS_READ_FILE) for f in CLEAR_READ_FILES[1:] if os.path.exists(f)]
    extra = tuple(x for x in read_paths.split(":") if x)
    for x in extra:
        if not os.path.isabs(x) or not os.path.exists(x):
            raise SandboxUnavailable(f"overlays.read_paths: {x!r} is not an existing absolute path")
        rules.append((x, LL_FS_READS if os.path.isdir(x) else LL_FS_READ_FILE | LL_FS_EXECUTE))
    if len(rules) + 5 > _c.MAX_RULES:
        raise SandboxUnavailable(f"overlays.read_paths: too many paths (at most "
                                 f"{_c.MAX_RULES - 5 - (len(rules) - len(extra))})")
    return tuple(rules), extra


@functools.lru_cache(maxsize=16)
def _seccomp_cached(deny: tuple, sockets: str) -> bytes:
    return seccomp_program(deny, sockets)


def plan_cache_clear() -> None:
    _clear_rules.cache_clear()


def _real_dir(d: str) -> bool:
    """A directory (a symlink to one, as /lib on merged-/usr systems, is
    covered by its target's rule and is skipped only if that is listed)."""
    return os.path.isdir(d)


# ------------------------------------------------------------------- spawn
def _failure(conf: Confinement, step: int, err: int, cwd: str | None) -> str:
    name = _c.STEP_NAMES[step] if 0 <= step < len(_c.STEP_NAMES) else f"step {step}"
    why = _err(err)
    who = f"uid {conf.uid}"
    if name in ("setgroups", "setresgid", "setresuid", "verify the ids"):
        return (f"the overlay could not change to {who} ({name}: {why}): the daemon needs CAP_SETUID "
                f"and CAP_SETGID")
    if name == "chdir to the overlay directory":
        return f"the overlay directory {cwd} is not usable by {who} (chdir: {why})"
    if name == "create the scratch directory":
        return f"the overlay's scratch directory {conf.scratch_dir} could not be created as {who} ({why})"
    return f"the overlay's confinement failed in the child at {name} ({why}); nothing of the overlay ran"


class Process:
    """An overlay process started by `Confinement`'s C spawn: the part of
    asyncio.subprocess.Process the runners use (pid, stdin/stdout/stderr
    streams, returncode, wait, communicate).  Its exit is read from its
    pidfd, so no child watcher is involved."""

    def __init__(self, pid: int, pidfd: int, loop):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._loop = loop
        self._exited = loop.create_future()
        self._pidfd = pidfd
        if pidfd >= 0:
            loop.add_reader(pidfd, self._reap)
        else:                                  # a kernel without CLONE_PIDFD (< 5.2)
            self._poll()

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8   # reaped by someone else: status unknown
        if pid == 0:
            return
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        self.returncode = os.waitstatus_to_exitcode(status)
        if not self._exited.done():
            self._exited.set_result(self.returncode)

    def _poll(self) -> None:
        self._reap()
        if self.returncode is None:
            self._loop.call_later(0.005, self._poll)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def communicate(self, input: bytes | None = None):
        async def feed():
            if self.stdin is None:
                return
            try:
                if input:
                    self.stdin.write(input)
                    await self.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                self.stdin.close()

        async def read(s):
            return await s.read() if s is not None else None
        _, out, err = await asyncio.gather(feed(), read(self.stdout), read(self.stderr))
        await self.wait()
        return out, err


async def _pipe_ends(loop, which: int, spec, fds_child: list, close_after: list):
    """(the child's descriptor, the parent's stream or None) for one of stdin/stdout/stderr."""
    PIPE, DEVNULL = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    if spec == PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        mine, theirs = (w, r) if which == 0 else (r, w)
        close_after.append(theirs)
        return theirs, mine
    if spec == DEVNULL or spec is None:
        fd = os.open(os.devnull, (os.O_RDONLY if which == 0 else os.O_WRONLY) | os.O_CLOEXEC)
        close_after.append(fd)
        return fd, None
    if isinstance(spec, int) and spec >= 0:
        return spec, None
    raise ValueError(f"stdio must be PIPE, DEVNULL or a descriptor, got {spec!r}")


async def _stream(loop, fd: int, write: bool):
    f = os.fdopen(fd, "wb" if write else "rb", buffering=0)
    if write:
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, f)
        return asyncio.StreamWriter(transport, protocol, None, loop)
    reader = asyncio.StreamReader(limit=1 << 16, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), f)
    return reader


def _which(name: str, env: dict) -> str:
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno_mod.ENOENT, f"{name!r} not found in PATH={env.get('PATH', os.defpath)}",
                                name)
    return found


async def spawn(argv, conf: Confinement, *, env: dict, cwd: str | None = None, cgroup_procs: str | None = None,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, impl=None):
    """Start argv confined by `conf`, in its own session and process group.
    The child joins `cgroup_procs` (writes its pid there) first, as the
    daemon, then drops to the overlay's identity, chdirs to `cwd` as that
    user, and applies the rest; env gets `conf.env` (TMPDIR, HOME = the
    scratch directory).  ConfinementFailed when the child could not;
    OSError (FileNotFoundError, PermissionError, ...) when execve failed.

    The daemon's path is the C spawn (no fork of the daemon, no Python in
    the child: ext/includes/aal_spawn.h).  `impl` (the pure-Python
    reference's Prepared, for the differential tests) runs the same steps
    as a preexec_fn through asyncio instead."""
    full_env = dict(env)
    full_env.update(conf.env)
    if impl is not None:
        return await _spawn_preexec(argv, conf, full_env, cwd, cgroup_procs, stdin, stdout, stderr, impl)
    loop = asyncio.get_running_loop()
    path = _which(argv[0], full_env)
    prep = conf.prepare(cwd=cwd, cgroup_procs=cgroup_procs, exe=path)
    close_after: list = []
    ends = []
    try:
        for i, spec in enumerate((stdin, stdout, stderr)):
            ends.append(await _pipe_ends(loop, i, spec, [], close_after))
        envp = [f"{k}={v}" for k, v in full_env.items()]
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        pid, pidfd, step, err = prep.spawn(path, argv, envp, tuple(e[0] for e in ends),
                                           min(nofile if nofile != resource.RLIM_INFINITY else 65536, 1 << 20))
    except BaseException:
        for _, mine in ends:
            if mine is not None:
                os.close(mine)
        raise
    finally:
        for fd in close_after:
            os.close(fd)
    if step != 0:
        for _, mine in ends:
            if mine is not None:
                os.close(mine)
        os.waitpid(pid, 0)
        if pidfd >= 0:
            os.close(pidfd)
        if step == _c.STEP_EXEC:
            raise OSError(err, f"{os.strerror(err)}: {argv[0]!r}", argv[0])
        raise ConfinementFailed(_failure(conf, step, err, cwd))
    proc = Process(pid, pidfd, loop)
    try:
        for i, (_, mine) in enumerate(ends):
            if mine is not None:
                stream = await _stream(loop, mine, write=(i == 0))
                setattr(proc, ("stdin", "stdout", "stderr")[i], stream)
                ends[i] = (None, None)
    except BaseException:
        for _, mine in ends:
            if mine is not None:
                os.close(mine)
        raise
    return proc


async def _spawn_preexec(argv, conf, full_env, cwd, cgroup_procs, stdin, stdout, stderr, impl):
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            exe = shutil.which(argv[0], path=full_env.get("PATH", os.defpath)) or argv[0]
            prep = conf.prepare(cwd=cwd, cgroup_procs=cgroup_procs, status_fd=wfd, impl=impl, exe=exe)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env, start_new_session=True,
                preexec_fn=prep.apply, close_fds=True)
        finally:
            os.close(wfd)
        os.set_blocking(rfd, False)
        try:
            report = os.read(rfd, 8)
        except BlockingIOError:  # another child, mid-fork, still holds the write end: ours exec'd
            report = b""
    finally:
        os.close(rfd)
    if len(report) == 8:
        step, err = struct.unpack("=ii", report)
        await proc.wait()
        raise ConfinementFailed(_failure(conf, step, err, cwd))
    return proc
