"""The child half of an overlay's sandbox (README, "Confinement").

`Prepared` holds one confinement as a C struct, filled in the parent from
the plan (aal_core.overlays.sandbox); its `apply` is the subprocess's
preexec_fn.  It runs in the forked child of a daemon that has threads, so it
does nothing but system calls on that struct (ext/includes/aal_confine.h):
join the cgroup, drop to the overlay's user, rlimits, no_new_privs, a
Landlock domain, a seccomp filter, in that order, and on any failure reports
(step, errno) on a pipe and _exit(127)s before anything of the overlay runs.
The pure-Python reference (aal_core.overlays.confine_ref) does the same
steps with ctypes; tests run the probe programs under both.
"""
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free
from posix.types cimport uid_t, gid_t

# The order of the steps in aal_confine_steps (the enum in aal_confine.h).
STEP_NAMES = ("ok", "join the cgroup", "setgroups", "setresgid", "setresuid", "verify the ids",
              "PR_SET_PDEATHSIG", "create the scratch directory", "chdir to the overlay directory",
              "setrlimit", "unshare a user and network namespace", "PR_SET_NO_NEW_PRIVS", "landlock_create_ruleset", "open a Landlock rule path",
              "landlock_add_rule", "landlock_restrict_self", "install the seccomp filter",
              "setsid", "set up stdin/stdout/stderr", "mark descriptors close-on-exec", "reset signals",
              "execve")
STEP_EXEC = 21

AUDIT_ARCH = AAL_AUDIT_ARCH
X32_BIT = AAL_X32_BIT
MAX_RULES = AAL_MAX_RULES
MAX_RLIMITS = AAL_MAX_RLIMITS
MAX_FILTER = AAL_MAX_FILTER

# This architecture's numbers (-1: no such call here).
SYSCALLS = {
    "socket": AAL_NR_socket, "socketpair": AAL_NR_socketpair, "io_uring_setup": AAL_NR_io_uring_setup,
    "io_uring_enter": AAL_NR_io_uring_enter, "io_uring_register": AAL_NR_io_uring_register,
    "truncate": AAL_NR_truncate,
    "chmod": AAL_NR_chmod, "fchmod": AAL_NR_fchmod, "fchmodat": AAL_NR_fchmodat, "fchmodat2": AAL_NR_fchmodat2,
    "chown": AAL_NR_chown, "fchown": AAL_NR_fchown, "lchown": AAL_NR_lchown, "fchownat": AAL_NR_fchownat,
    "setxattr": AAL_NR_setxattr, "lsetxattr": AAL_NR_lsetxattr, "fsetxattr": AAL_NR_fsetxattr,
    "setxattrat": AAL_NR_setxattrat,
    "removexattr": AAL_NR_removexattr, "lremovexattr": AAL_NR_lremovexattr,
    "fremovexattr": AAL_NR_fremovexattr, "removexattrat": AAL_NR_removexattrat,
    "utime": AAL_NR_utime, "utimes": AAL_NR_utimes, "futimesat": AAL_NR_futimesat, "utimensat": AAL_NR_utimensat,
}


cdef class Prepared:
    """One confinement as the C struct the child reads; `apply` is the
    preexec_fn.  Every path is kept alive (as bytes) as long as this object."""

    def __cinit__(self):
        memset(&self.spec, 0, sizeof(self.spec))
        self.spec.umask = -1
        self.spec.status_fd = -1
        self._keep = []

    def __init__(self, *, cgroup_procs=None, ids=None, umask=-1, scratch=None, cwd=None, rlimits=(),
                 bint die_with_parent=True, bint unshare_net=False, bint no_new_privs=True, landlock=None, bytes seccomp=b"",
                 int status_fd=-1):
        if cgroup_procs is not None:
            self.spec.cgroup_procs = self._path(cgroup_procs)
        if ids is not None:
            self.spec.change_ids = 1
            self.spec.uid = ids[0]
            self.spec.gid = ids[1]
        self.spec.umask = umask
        if scratch is not None:
            self.spec.scratch = self._path(scratch)
        if cwd is not None:
            self.spec.cwd = self._path(cwd)
        if len(rlimits) > AAL_MAX_RLIMITS:
            raise ValueError(f"at most {AAL_MAX_RLIMITS} rlimits")
        for i, (res, soft, hard) in enumerate(rlimits):
            self.spec.rlim[i].resource = res
            self.spec.rlim[i].soft = soft
            self.spec.rlim[i].hard = hard
        self.spec.nrlim = len(rlimits)
        self.spec.die_with_parent = die_with_parent
        self.spec.unshare_net = unshare_net
        self.spec.no_new_privs = no_new_privs
        if landlock is not None:
            abi, fs, net, scope, rules = landlock
            if abi <= 0:
                raise ValueError("a Landlock ABI is >= 1")
            if len(rules) > AAL_MAX_RULES:
                raise ValueError(f"at most {AAL_MAX_RULES} Landlock rules")
            self.spec.ll_abi = abi
            self.spec.ll_fs = fs
            self.spec.ll_net = net
            self.spec.ll_scope = scope
            for i, (path, access) in enumerate(rules):
                self.spec.rules[i].path = self._path(path)
                self.spec.rules[i].access = access
            self.spec.nrules = len(rules)
        if len(seccomp) % 8 or len(seccomp) > 8 * AAL_MAX_FILTER:
            raise ValueError(f"a seccomp program is a whole number of 8-byte instructions, at most {AAL_MAX_FILTER}")
        if seccomp:
            memcpy(<void *>self.spec.filter, <const char *>seccomp, len(seccomp))
            self.spec.nfilter = len(seccomp) // 8
        self.spec.status_fd = status_fd

    cdef const char *_path(self, p) except NULL:
        cdef bytes b = p.encode() if isinstance(p, str) else bytes(p)
        if b"\0" in b or not b:
            raise ValueError(f"not a usable path: {p!r}")
        self._keep.append(b)
        return <const char *>b

    def apply(self):
        """In the child only (preexec_fn): returns, confined, or never returns."""
        with nogil:
            aal_confine_apply(&self.spec)

    def spawn(self, path, argv, envp, stdio, long max_fd=65536):
        """Start `path` confined by this spec without forking the daemon
        (clone(CLONE_VM | CLONE_VFORK), ext/includes/aal_spawn.h): the child
        starts a new session, takes `stdio` (three descriptors) as 0, 1, 2,
        marks every other descriptor close-on-exec, applies the spec and
        execs.  Returns (pid, pidfd or -1, step, errno): step 0 means it
        exec'd; otherwise it has exited 127 at that step (reap it).
        OSError if no child could be made."""
        cdef bytes bpath = _b(path)
        cdef list keep = [_b(a) for a in argv]
        cdef list keepe = [_b(e) for e in envp]
        cdef Py_ssize_t i, na = len(keep), ne = len(keepe)
        cdef char **cargv = <char **>malloc((na + 1) * sizeof(char *))
        cdef char **cenv = <char **>malloc((ne + 1) * sizeof(char *))
        cdef aal_exec x
        cdef aal_spawn_result res
        cdef int pidfd = -1, pid
        if cargv == NULL or cenv == NULL:
            free(cargv)
            free(cenv)
            raise MemoryError()
        try:
            for i in range(na):
                cargv[i] = <char *>(<bytes>keep[i])
            cargv[na] = NULL
            for i in range(ne):
                cenv[i] = <char *>(<bytes>keepe[i])
            cenv[ne] = NULL
            memset(&x, 0, sizeof(x))
            x.path = <const char *>bpath
            x.argv = cargv
            x.envp = cenv
            x.stdio[0], x.stdio[1], x.stdio[2] = stdio
            x.max_fd = max_fd
            with nogil:
                pid = aal_spawn(&self.spec, &x, &pidfd, &res)
        finally:
            free(cargv)
            free(cenv)
        if pid < 0:
            import os
            raise OSError(-pid, f"cannot start {path!r}: {os.strerror(-pid)}")
        return pid, pidfd, res.step, res.err


cdef bytes _b(s):
    cdef bytes b = s.encode() if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        raise ValueError(f"a NUL byte in {s!r}")
    return b


def probe(ids=None) -> dict:
    """Try, in a short-lived child, what this process may apply; `ids`
    (uid, gid) also tries the identity change."""
    cdef aal_probe_result r
    cdef int rc
    cdef int try_ids = ids is not None
    cdef uid_t uid = ids[0] if ids is not None else 0
    cdef gid_t gid = ids[1] if ids is not None else 0
    with nogil:
        rc = aal_probe(try_ids, uid, gid, &r)
    if rc != 0:
        raise OSError(-rc, "aal-core confine probe: the probe child failed")
    return {
        "landlock_abi": r.abi,
        "no_new_privs": bool(r.bits & AAL_PROBE_NNP), "no_new_privs_errno": r.errs[0],
        "landlock": bool(r.bits & AAL_PROBE_LANDLOCK), "landlock_errno": r.errs[1],
        "seccomp": bool(r.bits & AAL_PROBE_SECCOMP), "seccomp_errno": r.errs[2],
        "user_namespaces": bool(r.bits & AAL_PROBE_USERNS), "user_namespaces_errno": r.errs[3],
        "setuid": bool(r.bits & AAL_PROBE_SETUID), "setuid_errno": r.errs[4],
        "inet_denied": bool(r.bits & AAL_PROBE_NO_INET),
    }
