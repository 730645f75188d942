"""Pure-Python reference of aal_core.confine.Prepared (ext/confine.pyx):
the same steps, in the same order, with os and ctypes.  Imported only by
tests (tests/test_overlay_sandbox.py runs the probe overlay under both and
compares the outcomes); the daemon uses the compiled one, which allocates
nothing in the child of a threaded process.
"""
from __future__ import annotations

import ctypes
import os
import struct

_NR_CREATE, _NR_ADD_RULE, _NR_RESTRICT = 444, 445, 446
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 1, 38, 22
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_O_PATH = 0o10000000
_SIGKILL = 9

# The step numbers of aal_confine.h (STEP_NAMES in ext/confine.pyx).
(_CGROUP, _SETGROUPS, _SETRESGID, _SETRESUID, _VERIFY, _PDEATHSIG, _SCRATCH, _CHDIR, _RLIMIT, _UNSHARE,
 _NNP, _LL_CREATE, _LL_OPEN, _LL_ADD, _LL_RESTRICT, _SECCOMP) = range(1, 17)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Fail(Exception):
    def __init__(self, step: int, err: int):
        self.step, self.err = step, err


class Prepared:
    def __init__(self, *, cgroup_procs=None, ids=None, umask=-1, scratch=None, cwd=None, rlimits=(),
                 die_with_parent=True, unshare_net=False, no_new_privs=True, landlock=None, seccomp=b"",
                 status_fd=-1):
        if len(seccomp) % 8:
            raise ValueError("a seccomp program is a whole number of 8-byte instructions")
        self.__dict__.update(cgroup_procs=cgroup_procs, ids=ids, umask=umask, scratch=scratch, cwd=cwd,
                             rlimits=list(rlimits), die_with_parent=die_with_parent, unshare_net=unshare_net,
                             no_new_privs=no_new_privs, landlock=landlock, seccomp=seccomp, status_fd=status_fd)
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _call(self, step, fn, *args):
        if fn(*args) < 0:
            raise _Fail(step, ctypes.get_errno())

    def _os(self, step, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise _Fail(step, exc.errno) from None

    def _steps(self):
        c = self._libc
        if self.cgroup_procs:
            fd = self._os(_CGROUP, os.open, self.cgroup_procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                self._os(_CGROUP, os.write, fd, b"%d\n" % os.getpid())
            finally:
                os.close(fd)
        if self.ids is not None:
            uid, gid = self.ids
            self._os(_SETGROUPS, os.setgroups, [])
            self._os(_SETRESGID, os.setresgid, gid, gid, gid)
            self._os(_SETRESUID, os.setresuid, uid, uid, uid)
            if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3 or os.getgroups():
                raise _Fail(_VERIFY, 1)
        if self.die_with_parent:
            self._call(_PDEATHSIG, c.prctl, _PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if self.umask >= 0:
            os.umask(self.umask)
        if self.scratch:
            try:
                os.mkdir(self.scratch, 0o700)
            except FileExistsError:
                st = os.lstat(self.scratch)
                if not (os.path.isdir(self.scratch) and not os.path.islink(self.scratch)
                        and st.st_uid == os.getuid() and not st.st_mode & 0o077):
                    raise _Fail(_SCRATCH, 17) from None
            except OSError as exc:
                raise _Fail(_SCRATCH, exc.errno) from None
        if self.cwd:
            self._os(_CHDIR, os.chdir, self.cwd)
        import resource
        for res, soft, hard in self.rlimits:
            self._os(_RLIMIT, resource.setrlimit, res, (soft, hard))
        if self.unshare_net:
            self._call(_UNSHARE, c.unshare, _CLONE_NEWUSER | _CLONE_NEWNET)
        if self.no_new_privs:
            self._call(_NNP, c.prctl, _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if self.landlock is not None:
            abi, fs, net, scope, rules = self.landlock
            attr = struct.pack("=QQQ", fs, net, scope)
            size = 24 if abi >= 6 else 16 if abi >= 4 else 8
            buf = ctypes.create_string_buffer(attr, 24)
            rfd = c.syscall(ctypes.c_long(_NR_CREATE), buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
            if rfd < 0:
                raise _Fail(_LL_CREATE, ctypes.get_errno())
            for path, access in rules:
                pfd = self._os(_LL_OPEN, os.open, path, _O_PATH | os.O_CLOEXEC)
                pb = ctypes.create_string_buffer(struct.pack("=Qi", access, pfd), 12)
                if c.syscall(ctypes.c_long(_NR_ADD_RULE), rfd, 1, pb, ctypes.c_uint32(0)) != 0:
                    raise _Fail(_LL_ADD, ctypes.get_errno())
                os.close(pfd)
            if c.syscall(ctypes.c_long(_NR_RESTRICT), rfd, ctypes.c_uint32(0)) != 0:
                raise _Fail(_LL_RESTRICT, ctypes.get_errno())
            os.close(rfd)
        if self.seccomp:
            prog_buf = ctypes.create_string_buffer(self.seccomp, len(self.seccomp))
            prog = _Fprog(len(self.seccomp) // 8, ctypes.cast(prog_buf, ctypes.c_void_p))
            self._call(_SECCOMP, c.prctl, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0)

    def apply(self):
        try:
            self._steps()
        except _Fail as f:
            if self.status_fd >= 0:
                os.write(self.status_fd, struct.pack("=ii", f.step, f.err))
            os._exit(127)
