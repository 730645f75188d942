/* Start an overlay without forking the daemon (ext/confine.pyx: Prepared.spawn).
 *
 * A fork copies the daemon's page tables and, through a Python preexec_fn,
 * runs the interpreter's at-fork machinery in the child: most of an
 * overlay call's cost (bench/overlays.py).  Here the child is made with
 * clone(CLONE_VM | CLONE_VFORK), as glibc's posix_spawn does: it shares the
 * daemon's memory, on a stack of its own, while the calling thread waits
 * until it has exec'd or exited.  The child does only system calls on data
 * the parent prepared (the aal_spec of aal_confine.h, the argv and envp
 * arrays): new session, stdio, every other descriptor close-on-exec,
 * signal dispositions reset, the confinement steps, execve.  A failure is
 * written into the shared `aal_spawn_result` (step, errno), then _exit(127).
 * CLONE_PIDFD gives the parent a pidfd to wait on (no pid reuse race).
 */
#ifndef AAL_SPAWN_H
#define AAL_SPAWN_H

#include "aal_confine.h"
#include <sys/mman.h>
#include <pthread.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define AAL_STEP_SETSID 17
#define AAL_STEP_STDIO 18
#define AAL_STEP_CLOEXEC 19
#define AAL_STEP_SIGNALS 20
#define AAL_STEP_EXEC 21
#define AAL_SPAWN_STACK (256 * 1024)

struct aal_exec {
    const char *path;            /* the executable (already resolved against PATH) */
    char *const *argv;
    char *const *envp;
    int stdio[3];                /* descriptors that become 0, 1, 2 */
    long max_fd;                 /* close-on-exec fallback bound (no close_range) */
};

struct aal_spawn_result {
    volatile int step;           /* written by the child before _exit(127); 0: it exec'd */
    volatile int err;
};

struct aal_child_arg {
    const struct aal_spec *spec;
    const struct aal_exec *x;
    struct aal_spawn_result *res;
};

static int aal_spawn_child(void *p)
{
    const struct aal_child_arg *a = (const struct aal_child_arg *)p;
    const struct aal_exec *x = a->x;
    int err = 0, step, i;
    sigset_t none;
    /* The parent's handlers run Python's C handler, which writes the
     * daemon's memory: none may run here.  Every caught signal is reset to
     * the default (ignored ones stay ignored, as across exec), and SIGPIPE
     * and SIGXFSZ, which Python ignores, to the default as subprocess does. */
    for (i = 1; i < _NSIG; i++) {
        struct sigaction sa;
        if (i == SIGKILL || i == SIGSTOP)
            continue;
        if (sigaction(i, NULL, &sa) != 0)
            continue;
        if (sa.sa_handler == SIG_IGN && i != SIGPIPE && i != SIGXFSZ)
            continue;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigaction(i, &sa, NULL);
    }
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) {
        step = AAL_STEP_SIGNALS;
        goto fail;
    }
    if (setsid() < 0) {
        step = AAL_STEP_SETSID;
        goto fail;
    }
    for (i = 0; i < 3; i++) {
        int fd = x->stdio[i];
        if (fd == i) {
            if (fcntl(fd, F_SETFD, 0) != 0) {
                step = AAL_STEP_STDIO;
                goto fail;
            }
        } else if (dup2(fd, i) < 0) {
            step = AAL_STEP_STDIO;
            goto fail;
        }
    }
    if (syscall(__NR_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        long fd;
        for (fd = 3; fd < x->max_fd; fd++) {
            int fl = fcntl((int)fd, F_GETFD);
            if (fl >= 0 && !(fl & FD_CLOEXEC) && fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC) != 0) {
                step = AAL_STEP_CLOEXEC;
                goto fail;
            }
        }
    }
    step = aal_confine_steps(a->spec, &err);
    if (step != AAL_STEP_OK)
        goto report;
    execve(x->path, x->argv, x->envp);
    step = AAL_STEP_EXEC;
fail:
    err = errno;
report:
    a->res->err = err;
    a->res->step = step;
    _exit(127);
    return 127;
}

/* Returns the child's pid (its pidfd in *pidfd, or -1 where the kernel has
 * no CLONE_PIDFD), or -errno if no child was made.  res->step != 0 means
 * the child did not exec (it has exited 127; reap it). */
static int aal_spawn(const struct aal_spec *spec, const struct aal_exec *x, int *pidfd,
                     struct aal_spawn_result *res)
{
    struct aal_child_arg a;
    sigset_t all, old;
    void *stack;
    int pid, e = 0;
    a.spec = spec;
    a.x = x;
    a.res = res;
    res->step = 0;
    res->err = 0;
    *pidfd = -1;
    stack = mmap(NULL, AAL_SPAWN_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return -errno;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = clone(aal_spawn_child, (char *)stack + AAL_SPAWN_STACK,
                CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &a, pidfd);
    if (pid < 0 && errno == EINVAL) {
        *pidfd = -1;
        pid = clone(aal_spawn_child, (char *)stack + AAL_SPAWN_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    }
    if (pid < 0)
        e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, AAL_SPAWN_STACK);
    return pid < 0 ? -e : pid;
}

#endif
