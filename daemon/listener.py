"""The listening socket: inherited from systemd (socket activation) or bound here.

Socket activation (sd_listen_fds(3)): when LISTEN_PID is our pid and
LISTEN_FDS >= 1, fd 3 is an already-listening AF_UNIX stream socket.
Otherwise bind the path; an existing socket file is removed only after a
connect() to it fails with ECONNREFUSED (nobody listening): a live socket
is never stolen.
"""
from __future__ import annotations

import errno
import grp
import os
import socket
import stat

from .errors import AalError

SD_LISTEN_FDS_START = 3


class ListenError(AalError):
    pass


def inherited_socket() -> socket.socket | None:
    """The socket passed by systemd, or None.  Unsets the LISTEN_* variables
    so child processes do not inherit them."""
    pid = os.environ.get("LISTEN_PID")
    fds = os.environ.get("LISTEN_FDS")
    if pid is None or fds is None:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not pid.isdigit() or int(pid) != os.getpid():
        return None
    if not fds.isdigit() or int(fds) < 1:
        return None
    if int(fds) > 1:
        raise ListenError(f"systemd passed {fds} sockets; aal-core.socket must define exactly one")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ListenError("the socket passed by systemd is not an AF_UNIX stream socket")
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    sock.setblocking(False)
    return sock


def _is_live(path: str) -> bool:
    """True if a server listens on `path`, False only if connect() is refused
    (nobody listening).  Anything else (EACCES: a socket we may not probe)
    means we cannot tell, and a ListenError: never remove what may be live."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        # EAGAIN (backlog full) or a timeout: someone is there.
        if exc.errno in (errno.EAGAIN, errno.ETIMEDOUT) or isinstance(exc, socket.timeout):
            return True
        raise ListenError(f"{path} exists and cannot be probed ({exc.strerror or exc}); "
                          "not removing it (it may be a live server's)") from None
    finally:
        probe.close()


def bind_socket(path: str, group: str) -> socket.socket:
    """Bind and listen on `path`, mode 0660, group `group` when it exists."""
    try:
        return _bind(path, group)
    except OSError as exc:
        raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from None


def _bind(path: str, group: str) -> socket.socket:
    if len(os.fsencode(path)) >= 108:
        raise ListenError(f"socket path too long for AF_UNIX ({len(path)} bytes, limit 107): {path}")
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(f"{path} exists and is not a socket; refusing to remove it")
        if _is_live(path):
            raise ListenError(f"{path} is in use by a running server (another aal-core?); not taking it over")
        os.unlink(path)
    # Bind under a temporary name and rename once listening: a client that
    # sees the path can connect (bound but not yet listening, it would be
    # refused with ECONNREFUSED).
    tmp = path + ".new"
    if len(os.fsencode(tmp)) >= 108:
        tmp = path
    try:
        os.unlink(tmp) if tmp != path and stat.S_ISSOCK(os.lstat(tmp).st_mode) else None
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o117)
        try:
            sock.bind(tmp)
        finally:
            os.umask(old_umask)
        os.chmod(tmp, 0o660)
        try:
            gid = grp.getgrnam(group).gr_gid
            os.chown(tmp, -1, gid)
        except (KeyError, PermissionError):
            pass  # no such group, or not root: the owner's own group applies
        sock.listen(1024)
        sock.setblocking(False)
        if tmp != path:
            os.rename(tmp, path)
    except BaseException:
        sock.close()
        if tmp != path:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    return sock
