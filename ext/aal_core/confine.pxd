# cdef API of aal_core.confine (see ext/confine.pyx and ext/includes/aal_confine.h).
from libc.stdint cimport uint64_t
from posix.types cimport uid_t, gid_t

cdef extern from "aal_confine.h" nogil:
    struct sock_filter:
        pass
    struct aal_rule:
        const char *path
        uint64_t access
    struct aal_rlim:
        int resource
        uint64_t soft
        uint64_t hard
    struct aal_spec:
        const char *cgroup_procs
        int change_ids
        uid_t uid
        gid_t gid
        int umask
        const char *scratch
        const char *cwd
        int nrlim
        aal_rlim rlim[8]
        int die_with_parent
        int unshare_net
        int no_new_privs
        int ll_abi
        uint64_t ll_fs
        uint64_t ll_net
        uint64_t ll_scope
        int nrules
        aal_rule rules[32]
        int nfilter
        sock_filter filter[160]
        int status_fd
    struct aal_probe_result:
        int abi
        int bits
        int errs[5]
    int AAL_MAX_RULES, AAL_MAX_RLIMITS, AAL_MAX_FILTER
    int AAL_PROBE_NNP, AAL_PROBE_LANDLOCK, AAL_PROBE_SECCOMP, AAL_PROBE_USERNS, AAL_PROBE_SETUID, AAL_PROBE_NO_INET
    unsigned int AAL_AUDIT_ARCH, AAL_X32_BIT
    void aal_confine_apply(const aal_spec *s)
    int aal_probe(int try_ids, uid_t uid, gid_t gid, aal_probe_result *out)
    long AAL_NR_socket, AAL_NR_socketpair, AAL_NR_io_uring_setup, AAL_NR_io_uring_enter
    long AAL_NR_io_uring_register, AAL_NR_truncate
    long AAL_NR_chmod, AAL_NR_fchmod, AAL_NR_fchmodat, AAL_NR_fchmodat2
    long AAL_NR_chown, AAL_NR_fchown, AAL_NR_lchown, AAL_NR_fchownat
    long AAL_NR_setxattr, AAL_NR_lsetxattr, AAL_NR_fsetxattr, AAL_NR_setxattrat
    long AAL_NR_removexattr, AAL_NR_lremovexattr, AAL_NR_fremovexattr, AAL_NR_removexattrat
    long AAL_NR_utime, AAL_NR_utimes, AAL_NR_futimesat, AAL_NR_utimensat


cdef class Prepared:
    cdef aal_spec spec
    cdef list _keep
    cdef const char *_path(self, p) except NULL

cdef extern from "aal_spawn.h" nogil:
    struct aal_exec:
        const char *path
        char *const *argv
        char *const *envp
        int stdio[3]
        long max_fd
    struct aal_spawn_result:
        int step
        int err
    int aal_spawn(const aal_spec *spec, const aal_exec *x, int *pidfd, aal_spawn_result *res)
