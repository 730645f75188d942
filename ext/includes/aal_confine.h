/* The child side of an overlay's confinement (ext/confine.pyx).
 *
 * aal_confine_apply() runs in the forked child, between fork and exec, in a
 * daemon that has threads: it only makes system calls on memory prepared
 * by the parent (no allocation, no locks, no Python).  Landlock's structures
 * and constants are declared here, not taken from <linux/landlock.h>: the
 * build machine's header may be older than the kernel the daemon runs on
 * (JetPack 6 ships ABI 1 headers; this host's kernel speaks ABI 7), and the
 * kernel accepts a larger, zero-padded attribute from an older ABI.
 */
#ifndef AAL_CONFINE_H
#define AAL_CONFINE_H

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif
#define AAL_LL_CREATE_RULESET_VERSION (1U << 0)
#define AAL_SECCOMP_FILTER_FLAG_SPEC_ALLOW (1UL << 2)
#ifndef __NR_seccomp
#define __NR_seccomp -1
#endif
#define AAL_LL_RULE_PATH_BENEATH 1

struct aal_ll_ruleset_attr {   /* ABI 1: fs; ABI 4: + net; ABI 6: + scoped */
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct aal_ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#if defined(__x86_64__)
#define AAL_AUDIT_ARCH AUDIT_ARCH_X86_64
#define AAL_X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define AAL_AUDIT_ARCH AUDIT_ARCH_AARCH64
#define AAL_X32_BIT 0u
#else
#define AAL_AUDIT_ARCH 0u
#define AAL_X32_BIT 0u
#endif

/* System call numbers for the seccomp filter; -1 where the architecture
 * has no such call (aarch64 has no chmod, only fchmodat).  Calls numbered
 * 424 and up are the same on every architecture; older headers lack them. */
#ifdef __NR_socket
#define AAL_NR_socket __NR_socket
#else
#define AAL_NR_socket -1
#endif
#ifdef __NR_socketpair
#define AAL_NR_socketpair __NR_socketpair
#else
#define AAL_NR_socketpair -1
#endif
#ifdef __NR_io_uring_setup
#define AAL_NR_io_uring_setup __NR_io_uring_setup
#else
#define AAL_NR_io_uring_setup 425
#endif
/* io_uring's calls are 425-427 on every architecture. */
#ifdef __NR_io_uring_enter
#define AAL_NR_io_uring_enter __NR_io_uring_enter
#else
#define AAL_NR_io_uring_enter 426
#endif
#ifdef __NR_io_uring_register
#define AAL_NR_io_uring_register __NR_io_uring_register
#else
#define AAL_NR_io_uring_register 427
#endif
#ifdef __NR_truncate
#define AAL_NR_truncate __NR_truncate
#else
#define AAL_NR_truncate -1
#endif
#ifdef __NR_chmod
#define AAL_NR_chmod __NR_chmod
#else
#define AAL_NR_chmod -1
#endif
#ifdef __NR_fchmod
#define AAL_NR_fchmod __NR_fchmod
#else
#define AAL_NR_fchmod -1
#endif
#ifdef __NR_fchmodat
#define AAL_NR_fchmodat __NR_fchmodat
#else
#define AAL_NR_fchmodat -1
#endif
#ifdef __NR_chown
#define AAL_NR_chown __NR_chown
#else
#define AAL_NR_chown -1
#endif
#ifdef __NR_fchown
#define AAL_NR_fchown __NR_fchown
#else
#define AAL_NR_fchown -1
#endif
#ifdef __NR_lchown
#define AAL_NR_lchown __NR_lchown
#else
#define AAL_NR_lchown -1
#endif
#ifdef __NR_fchownat
#define AAL_NR_fchownat __NR_fchownat
#else
#define AAL_NR_fchownat -1
#endif
#ifdef __NR_setxattr
#define AAL_NR_setxattr __NR_setxattr
#else
#define AAL_NR_setxattr -1
#endif
#ifdef __NR_lsetxattr
#define AAL_NR_lsetxattr __NR_lsetxattr
#else
#define AAL_NR_lsetxattr -1
#endif
#ifdef __NR_fsetxattr
#define AAL_NR_fsetxattr __NR_fsetxattr
#else
#define AAL_NR_fsetxattr -1
#endif
#ifdef __NR_removexattr
#define AAL_NR_removexattr __NR_removexattr
#else
#define AAL_NR_removexattr -1
#endif
#ifdef __NR_lremovexattr
#define AAL_NR_lremovexattr __NR_lremovexattr
#else
#define AAL_NR_lremovexattr -1
#endif
#ifdef __NR_fremovexattr
#define AAL_NR_fremovexattr __NR_fremovexattr
#else
#define AAL_NR_fremovexattr -1
#endif
#ifdef __NR_utime
#define AAL_NR_utime __NR_utime
#else
#define AAL_NR_utime -1
#endif
#ifdef __NR_utimes
#define AAL_NR_utimes __NR_utimes
#else
#define AAL_NR_utimes -1
#endif
#ifdef __NR_futimesat
#define AAL_NR_futimesat __NR_futimesat
#else
#define AAL_NR_futimesat -1
#endif
#ifdef __NR_utimensat
#define AAL_NR_utimensat __NR_utimensat
#else
#define AAL_NR_utimensat -1
#endif
#ifdef __NR_fchmodat2
#define AAL_NR_fchmodat2 __NR_fchmodat2
#else
#define AAL_NR_fchmodat2 452
#endif
#ifdef __NR_setxattrat
#define AAL_NR_setxattrat __NR_setxattrat
#else
#define AAL_NR_setxattrat 463
#endif
#ifdef __NR_removexattrat
#define AAL_NR_removexattrat __NR_removexattrat
#else
#define AAL_NR_removexattrat 466
#endif

#define AAL_MAX_RULES 32
#define AAL_MAX_RLIMITS 8
#define AAL_MAX_FILTER 160
#define AAL_PATH_MAX 4096

struct aal_rule {
    const char *path;
    uint64_t access;
};

struct aal_rlim {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

/* The whole confinement, as plain data the child reads. */
struct aal_spec {
    const char *cgroup_procs;    /* join this cgroup (write our pid) first; NULL: none */
    int change_ids;              /* setgroups(0) + setresgid + setresuid */
    uid_t uid;
    gid_t gid;
    int umask;                   /* -1: keep */
    const char *scratch;         /* mkdir 0700 after the identity change; NULL: none */
    const char *cwd;             /* chdir after the identity change; NULL: keep */
    int nrlim;
    struct aal_rlim rlim[AAL_MAX_RLIMITS];
    int die_with_parent;         /* PR_SET_PDEATHSIG SIGKILL (after the uid change, which clears it) */
    int unshare_net;             /* unshare(CLONE_NEWUSER | CLONE_NEWNET): no network at all */
    int no_new_privs;
    int ll_abi;                  /* 0: no Landlock domain */
    uint64_t ll_fs, ll_net, ll_scope;
    int nrules;
    struct aal_rule rules[AAL_MAX_RULES];
    int nfilter;                 /* 0: no seccomp filter */
    struct sock_filter filter[AAL_MAX_FILTER];
    int status_fd;               /* failure report: two ints (step, errno), then _exit(127) */
};

/* Steps, in order; the names are in confine.pyx (STEP_NAMES). */
enum {
    AAL_STEP_OK = 0,
    AAL_STEP_CGROUP,
    AAL_STEP_SETGROUPS,
    AAL_STEP_SETRESGID,
    AAL_STEP_SETRESUID,
    AAL_STEP_VERIFY_IDS,
    AAL_STEP_PDEATHSIG,
    AAL_STEP_SCRATCH,
    AAL_STEP_CHDIR,
    AAL_STEP_RLIMIT,
    AAL_STEP_UNSHARE,
    AAL_STEP_NO_NEW_PRIVS,
    AAL_STEP_LL_CREATE,
    AAL_STEP_LL_OPEN,
    AAL_STEP_LL_ADD_RULE,
    AAL_STEP_LL_RESTRICT,
    AAL_STEP_SECCOMP,
};

static int aal_write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int aal_join_cgroup(const char *procs)
{
    char buf[24];
    int n = 0, fd, rc;
    pid_t pid = getpid();
    char tmp[24];
    int t = 0;
    do {
        tmp[t++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0 && t < 23);
    while (t > 0)
        buf[n++] = tmp[--t];
    buf[n++] = '\n';
    fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    rc = aal_write_all(fd, buf, (size_t)n);
    if (rc == 0) {
        rc = close(fd);
    } else {
        int e = errno;
        close(fd);
        errno = e;
    }
    return rc;
}

/* Returns AAL_STEP_OK, or the failing step with *err = errno. */
static int aal_confine_steps(const struct aal_spec *s, int *err)
{
    int i;
#define AAL_FAIL(step) do { *err = errno; return (step); } while (0)
    if (s->cgroup_procs && aal_join_cgroup(s->cgroup_procs) != 0)
        AAL_FAIL(AAL_STEP_CGROUP);
    if (s->change_ids) {
        if (setgroups(0, NULL) != 0)
            AAL_FAIL(AAL_STEP_SETGROUPS);
        if (setresgid(s->gid, s->gid, s->gid) != 0)
            AAL_FAIL(AAL_STEP_SETRESGID);
        if (setresuid(s->uid, s->uid, s->uid) != 0)
            AAL_FAIL(AAL_STEP_SETRESUID);
        {
            uid_t r, e, sv;
            gid_t gr, ge, gs;
            if (getresuid(&r, &e, &sv) != 0 || getresgid(&gr, &ge, &gs) != 0)
                AAL_FAIL(AAL_STEP_VERIFY_IDS);
            if (r != s->uid || e != s->uid || sv != s->uid || gr != s->gid || ge != s->gid
                || gs != s->gid || getgroups(0, NULL) != 0) {
                errno = EPERM;
                AAL_FAIL(AAL_STEP_VERIFY_IDS);
            }
        }
    }
    if (s->die_with_parent && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        AAL_FAIL(AAL_STEP_PDEATHSIG);
    if (s->umask >= 0)
        umask((mode_t)s->umask);
    if (s->scratch && mkdir(s->scratch, 0700) != 0) {
        /* A second spawn of the same plan reuses the directory, if it is
         * still this user's private one (not a symlink planted there). */
        struct stat st;
        if (errno != EEXIST || lstat(s->scratch, &st) != 0 || !S_ISDIR(st.st_mode)
            || st.st_uid != getuid() || (st.st_mode & 077) != 0) {
            if (errno == 0 || errno == EEXIST)
                errno = EEXIST;
            AAL_FAIL(AAL_STEP_SCRATCH);
        }
    }
    if (s->cwd && chdir(s->cwd) != 0)
        AAL_FAIL(AAL_STEP_CHDIR);
    for (i = 0; i < s->nrlim; i++) {
        struct rlimit rl;
        rl.rlim_cur = (rlim_t)s->rlim[i].soft;
        rl.rlim_max = (rlim_t)s->rlim[i].hard;
        if (setrlimit(s->rlim[i].resource, &rl) != 0)
            AAL_FAIL(AAL_STEP_RLIMIT);
    }
    if (s->unshare_net && unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0)
        AAL_FAIL(AAL_STEP_UNSHARE);
    if (s->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        AAL_FAIL(AAL_STEP_NO_NEW_PRIVS);
    if (s->ll_abi > 0) {
        struct aal_ll_ruleset_attr attr;
        size_t size = s->ll_abi >= 6 ? sizeof(attr) : s->ll_abi >= 4 ? 16 : 8;
        int rfd;
        memset(&attr, 0, sizeof(attr));
        attr.handled_access_fs = s->ll_fs;
        attr.handled_access_net = s->ll_net;
        attr.scoped = s->ll_scope;
        rfd = (int)syscall(__NR_landlock_create_ruleset, &attr, size, 0);
        if (rfd < 0)
            AAL_FAIL(AAL_STEP_LL_CREATE);
        for (i = 0; i < s->nrules; i++) {
            struct aal_ll_path_beneath_attr pb;
            int pfd = open(s->rules[i].path, O_PATH | O_CLOEXEC);
            if (pfd < 0)
                AAL_FAIL(AAL_STEP_LL_OPEN);
            pb.allowed_access = s->rules[i].access;
            pb.parent_fd = pfd;
            if (syscall(__NR_landlock_add_rule, rfd, AAL_LL_RULE_PATH_BENEATH, &pb, 0) != 0)
                AAL_FAIL(AAL_STEP_LL_ADD_RULE);
            close(pfd);
        }
        if (syscall(__NR_landlock_restrict_self, rfd, 0) != 0)
            AAL_FAIL(AAL_STEP_LL_RESTRICT);
        close(rfd);
    }
    if (s->nfilter > 0) {
        struct sock_fprog prog;
        prog.len = (unsigned short)s->nfilter;
        prog.filter = (struct sock_filter *)s->filter;
        /* SECCOMP_FILTER_FLAG_SPEC_ALLOW: without it, kernels that mitigate
         * speculative store bypass "for seccomp tasks" (the default where
         * the CPU is affected) also turn that mitigation on for the task;
         * it protects a process's secrets from code in its own address
         * space, and an overlay's address space holds only its own data.
         * (This host's CPU reports it unmitigated, so it changes nothing
         * here.)  seccomp(2) may be filtered (the unit's @system-service
         * lacks it): prctl then, without the flag. */
        if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, AAL_SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) != 0
            && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
            AAL_FAIL(AAL_STEP_SECCOMP);
    }
    return AAL_STEP_OK;
#undef AAL_FAIL
}

/* In the child: apply everything; on failure report (step, errno) on
 * status_fd and _exit(127) without running anything else. */
static void aal_confine_apply(const struct aal_spec *s)
{
    int err = 0;
    int step = aal_confine_steps(s, &err);
    if (step != AAL_STEP_OK) {
        int msg[2];
        msg[0] = step;
        msg[1] = err;
        if (s->status_fd >= 0)
            aal_write_all(s->status_fd, (const char *)msg, sizeof(msg));
        _exit(127);
    }
}

/* What this kernel and this process allow, tried for real in a short-lived
 * child (a Landlock domain or a seccomp filter cannot be undone, so the
 * daemon never applies one to itself).  Bits of *out: */
#define AAL_PROBE_NNP      (1 << 0)   /* PR_SET_NO_NEW_PRIVS worked */
#define AAL_PROBE_LANDLOCK (1 << 1)   /* a Landlock domain was entered */
#define AAL_PROBE_SECCOMP  (1 << 2)   /* a seccomp filter was installed with prctl */
#define AAL_PROBE_USERNS   (1 << 3)   /* unshare(CLONE_NEWUSER | CLONE_NEWNET) worked */
#define AAL_PROBE_SETUID   (1 << 4)   /* setresgid/setresuid to the given ids worked */
#define AAL_PROBE_NO_INET  (1 << 5)   /* socket(AF_INET) already fails (e.g. the unit's RestrictAddressFamilies=) */

struct aal_probe_result {
    int abi;        /* landlock_create_ruleset(VERSION): the ABI, or -errno */
    int bits;
    int errs[5];    /* errno per failed bit, in the order of the bits */
};

static int aal_probe(int try_ids, uid_t uid, gid_t gid, struct aal_probe_result *out)
{
    int fds[2];
    pid_t pid;
    int status;
    memset(out, 0, sizeof(*out));
    out->abi = (int)syscall(__NR_landlock_create_ruleset, NULL, 0, AAL_LL_CREATE_RULESET_VERSION);
    if (out->abi < 0)
        out->abi = -errno;
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return -e;
    }
    if (pid == 0) {
        struct aal_probe_result r = *out;
        pid_t sub;
        close(fds[0]);
        {
            int sfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            if (sfd < 0)
                r.bits |= AAL_PROBE_NO_INET;
            else
                close(sfd);
        }
        /* User namespaces in a grandchild: unshare changes this process for good. */
        sub = fork();
        if (sub == 0) {
            _exit(unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0 ? 0 : (errno & 0xff));
        }
        if (sub > 0) {
            int st = 0;
            while (waitpid(sub, &st, 0) < 0 && errno == EINTR) {}
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                r.bits |= AAL_PROBE_USERNS;
            else
                r.errs[3] = WIFEXITED(st) ? WEXITSTATUS(st) : EINTR;
        } else {
            r.errs[3] = errno;
        }
        if (try_ids) {
            if (setgroups(0, NULL) == 0 && setresgid(gid, gid, gid) == 0 && setresuid(uid, uid, uid) == 0)
                r.bits |= AAL_PROBE_SETUID;
            else
                r.errs[4] = errno;
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)
            r.bits |= AAL_PROBE_NNP;
        else
            r.errs[0] = errno;
        if (r.abi > 0) {
            struct aal_ll_ruleset_attr attr;
            int rfd;
            memset(&attr, 0, sizeof(attr));
            attr.handled_access_fs = 1ULL << 1;  /* WRITE_FILE, in every ABI */
            rfd = (int)syscall(__NR_landlock_create_ruleset, &attr, (size_t)8, 0);
            if (rfd >= 0 && syscall(__NR_landlock_restrict_self, rfd, 0) == 0)
                r.bits |= AAL_PROBE_LANDLOCK;
            else
                r.errs[1] = errno;
        } else {
            r.errs[1] = -r.abi;
        }
        {
            struct sock_filter allow[1] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
            struct sock_fprog prog;
            prog.len = 1;
            prog.filter = allow;
            if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) == 0)
                r.bits |= AAL_PROBE_SECCOMP;
            else
                r.errs[2] = errno;
        }
        aal_write_all(fds[1], (const char *)&r, sizeof(r));
        _exit(0);
    }
    close(fds[1]);
    {
        ssize_t got = 0, n;
        char *p = (char *)out;
        while (got < (ssize_t)sizeof(*out)) {
            n = read(fds[0], p + got, sizeof(*out) - (size_t)got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += n;
        }
        close(fds[0]);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        if (got != (ssize_t)sizeof(*out))
            return -EIO;
    }
    return 0;
}

#endif
