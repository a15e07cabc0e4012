#include "spawn.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Written by the child, read by the parent after the child has exec'd or exited. */
struct spawn_child_err {
    int err;
    const char *stage;
};

struct child_arg {
    const struct spawn_req *req;
    volatile struct spawn_child_err *out;
    bool in_cgroup; /* clone3 put the child in its cgroup already */
};

/* clone3(2) with a child function, which glibc does not export. The kernel starts the child on
 * args->stack with the parent's registers, so the child side must not return through the
 * caller's frames: it calls fn(arg) on the new stack and exits with its value. x86_64 only;
 * elsewhere (and on kernels without clone3) spawn_process falls back to clone(2) plus a write
 * to cgroup.procs. Returns the pid, or a negative errno. */
struct boxd_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#if defined(__x86_64__) && !defined(BOXD_FUZZ)
#define HAVE_CLONE3_STUB 1
long boxd_clone3(struct boxd_clone_args *args, size_t size, int (*fn)(void *), void *arg);
__asm__(".text\n"
        ".globl boxd_clone3\n"
        ".type boxd_clone3,@function\n"
        "boxd_clone3:\n"
        "    mov %rdx, %r8\n"   /* fn and arg survive the syscall in r8, r9 (only rcx, r11 */
        "    mov %rcx, %r9\n"   /* and rax are clobbered), in the parent and the child alike */
        "    mov $435, %eax\n"  /* __NR_clone3 */
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jnz 1f\n"
        "    xor %ebp, %ebp\n"  /* child: a fresh, 16-byte aligned stack; no frame above */
        "    mov %r9, %rdi\n"
        "    call *%r8\n"
        "    mov %eax, %edi\n"
        "    mov $60, %eax\n"   /* __NR_exit */
        "    syscall\n"
        "    hlt\n"
        "1:  ret\n"
        ".size boxd_clone3, .-boxd_clone3\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
#endif

static void fail(volatile struct spawn_child_err *out, const char *stage, int err)
{
    out->stage = stage;
    out->err = err;
    _exit(127);
}

static int try_exec(const char *path, char *const *argv, char *const *envp)
{
    execve(path, argv, envp);
    return errno;
}

static int child_main(void *p)
{
    struct child_arg *a = p;
    const struct spawn_req *r = a->req;

    /* 1. Default dispositions. The agent installs no handlers (signals come through
     * signalfd), so this resets what it ignores; EINVAL for the two glibc-reserved signals and
     * KILL/STOP is expected and harmless. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG && sig <= 64; sig++)
        if (r->sig_reset & (1ull << (sig - 1)))
            sigaction(sig, &dfl, NULL);

    /* 2. Into the run's cgroup (unless clone3 made it there), then its own session and
     * process group. */
    if (!a->in_cgroup && r->cgroup_procs_fd >= 0 && write(r->cgroup_procs_fd, "0", 1) < 0)
        fail(a->out, "cgroup", errno);
    if (setsid() < 0)
        fail(a->out, "setsid", errno);

    /* 3. stdio. The request's fds are >= 3 (the agent keeps 0-2 open), so dup2 always makes a
     * new descriptor without FD_CLOEXEC, and closing everything from 3 up removes them. */
    if (dup2(r->fd_in, 0) < 0 || dup2(r->fd_out, 1) < 0 || dup2(r->fd_err, 2) < 0)
        fail(a->out, "stdio", errno);
    if (syscall(SYS_close_range, 3u, ~0u, 0u) < 0) {
        /* Before Linux 5.9: close what could be open. */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < max && fd < 65536; fd++)
            close((int)fd);
    }

    /* 4. Limits. A limit boxd may not raise is left as boxd's own. */
    if (r->nofile) {
        struct rlimit rl = {(rlim_t)r->nofile, (rlim_t)r->nofile};
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct rlimit core = {(rlim_t)r->core, (rlim_t)r->core};
    setrlimit(RLIMIT_CORE, &core);
    if (r->oom_adj) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = write(fd, r->oom_adj, strlen(r->oom_adj));
            (void)n;
            close(fd);
        }
    }

    /* 5. seccomp, while still privileged. */
    if (r->seccomp && r->seccomp->filter) {
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, r->seccomp) < 0) {
            if (errno != EACCES || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
                syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, r->seccomp) < 0)
                fail(a->out, "seccomp", errno);
        }
    }

    /* 6. Identity. */
    if (r->id && r->id->change) {
        if (r->id->ngroups >= 0 &&
            syscall(SYS_setgroups, (long)r->id->ngroups, r->id->groups) < 0)
            fail(a->out, "user", errno);
        if (syscall(SYS_setresgid, (long)r->id->gid, (long)r->id->gid, (long)r->id->gid) < 0 ||
            syscall(SYS_setresuid, (long)r->id->uid, (long)r->id->uid, (long)r->id->uid) < 0)
            fail(a->out, "user", errno);
    }

    /* 7. Working directory, as the run's user. */
    if (r->cwd && chdir(r->cwd) < 0)
        fail(a->out, "chdir", errno);

    /* 8. An empty mask: the run must see every signal. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* 9. exec, searching the run's PATH like execvpe would (execvpe reads the agent's own PATH,
     * which is not the run's). EACCES from any candidate wins over ENOENT, as in the shell. */
    const char *file = r->argv[0];
    if (strchr(file, '/') || r->search_path == NULL) {
        fail(a->out, "exec", try_exec(file, r->argv, r->envp));
    }
    size_t flen = strlen(file);
    int err = ENOENT;
    const char *sp = r->search_path;
    char path[PATH_MAX];
    for (;;) {
        const char *colon = strchr(sp, ':');
        size_t dlen = colon ? (size_t)(colon - sp) : strlen(sp);
        /* An empty entry means the current directory. */
        if (dlen + 1 + flen + 1 <= sizeof path) {
            size_t n = 0;
            if (dlen) {
                memcpy(path, sp, dlen);
                path[dlen] = '/';
                n = dlen + 1;
            }
            memcpy(path + n, file, flen + 1);
            int e = try_exec(path, r->argv, r->envp);
            if (e == EACCES || (e != ENOENT && e != ENOTDIR && err != EACCES))
                err = e;
        }
        if (colon == NULL)
            break;
        sp = colon + 1;
    }
    fail(a->out, "exec", err);
    return 127;
}

uint64_t spawn_signals_changed(void)
{
    uint64_t mask = 0;
    for (int sig = 1; sig < NSIG && sig <= 64; sig++) {
        struct sigaction sa;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) < 0)
            continue;
        if (sa.sa_handler != SIG_DFL || (sa.sa_flags & SA_SIGINFO))
            mask |= 1ull << (sig - 1);
    }
    return mask;
}

static pid_t spawn_here(const struct spawn_req *req, const char **stage, pid_t *failed_pid)
{
#ifdef BOXD_FUZZ
    /* The connection fuzzer drives every request, exec included: it must never start one. */
    (void)req;
    (void)child_main;
    *failed_pid = 0;
    *stage = "fuzz";
    return -EPERM;
#endif
    volatile struct spawn_child_err out = {0, NULL};
    struct child_arg arg = {req, &out, false};
    *failed_pid = 0;

    /* Block every signal around the clone: nothing may run a handler in the child while it
     * shares our memory. The child sets its own mask before exec. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);

    /* The stack grows down on every architecture boxd targets; keep it 16-byte aligned. */
    char *top = req->stack + req->stack_size;
    top = (char *)((uintptr_t)top & ~(uintptr_t)15);
    pid_t pid = -1;
    int clone_err = ENOSYS;
#ifdef HAVE_CLONE3_STUB
    if (req->cgroup_dir_fd >= 0) {
        /* Born in its cgroup: no migration (whose write side waits for an RCU grace period,
         * milliseconds on an idle machine, with the agent suspended meanwhile). */
        struct boxd_clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
        if (req->ptid) {
            ca.flags |= CLONE_PARENT_SETTID;
            ca.parent_tid = (uint64_t)(uintptr_t)req->ptid;
        }
        ca.exit_signal = SIGCHLD;
        ca.stack = (uint64_t)(uintptr_t)req->stack;
        ca.stack_size = (uint64_t)(top - req->stack);
        ca.cgroup = (uint64_t)req->cgroup_dir_fd;
        arg.in_cgroup = true;
        long r = boxd_clone3(&ca, sizeof ca, child_main, &arg);
        if (r >= 0)
            pid = (pid_t)r;
        else
            clone_err = (int)-r;
        if (pid < 0 && clone_err != ENOSYS && clone_err != E2BIG && clone_err != EINVAL) {
            /* A real failure (EAGAIN under pids.max, ...): report it as clone's would be. */
            sigprocmask(SIG_SETMASK, &old, NULL);
            *stage = clone_err == EAGAIN ? "fork" : "cgroup";
            return -clone_err;
        }
        arg.in_cgroup = pid >= 0;
    }
#endif
    if (pid < 0) {
        int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (req->ptid ? CLONE_PARENT_SETTID : 0);
        pid = clone(child_main, top, flags, &arg, req->ptid);
        clone_err = errno;
    }
    sigprocmask(SIG_SETMASK, &old, NULL);

    if (pid < 0) {
        *stage = "fork";
        return -clone_err;
    }
    if (out.stage != NULL) {
        /* The child has called _exit; reap it here so the reaper never sees an unknown pid for
         * it. It is exiting already, so this does not block for long. */
        int st;
        while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
            ;
        *stage = out.stage;
        *failed_pid = pid;
        return -out.err;
    }
    return pid;
}

/* ---- Jobs --------------------------------------------------------------------------------- */

static size_t strv_size(char *const *v, size_t *n)
{
    size_t bytes = 0;
    *n = 0;
    for (; v && v[*n]; (*n)++)
        bytes += strlen(v[*n]) + 1;
    return bytes;
}

static char **strv_copy(char *const *v, size_t n, char ***slots, char **at)
{
    if (v == NULL)
        return NULL;
    char **out = *slots;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(v[i]) + 1;
        memcpy(*at, v[i], len);
        out[i] = *at;
        *at += len;
    }
    out[n] = NULL;
    *slots += n + 1;
    return out;
}

static const char *str_copy(const char *s, char **at)
{
    if (s == NULL)
        return NULL;
    size_t len = strlen(s) + 1;
    memcpy(*at, s, len);
    const char *out = *at;
    *at += len;
    return out;
}

struct spawn_job *spawn_job_new(const struct spawn_req *req, void *owner)
{
    size_t nargv, nenv;
    size_t bytes = strv_size(req->argv, &nargv) + strv_size(req->envp, &nenv);
    bytes += (req->search_path ? strlen(req->search_path) + 1 : 0) +
             (req->cwd ? strlen(req->cwd) + 1 : 0);
    size_t slots = (nargv + 1) + (nenv + 1);
    struct spawn_job *j = malloc(sizeof *j + slots * sizeof(char *) + bytes);
    if (j == NULL)
        return NULL;
    memset(j, 0, sizeof *j);
    char **slot = (char **)(j + 1);
    char *at = (char *)(slot + slots);
    j->req = *req;
    j->req.argv = strv_copy(req->argv, nargv, &slot, &at);
    j->req.envp = strv_copy(req->envp, nenv, &slot, &at);
    j->req.search_path = str_copy(req->search_path, &at);
    j->req.cwd = str_copy(req->cwd, &at);
    if (req->id) {
        j->id = *req->id;
        j->req.id = &j->id;
    }
    j->req.ptid = &j->ptid;
    j->req.stack = NULL; /* the spawner's */
    j->owner = owner;
    j->pid = -ECANCELED;
    j->stage = "fork";
    return j;
}

void spawn_job_free(struct spawn_job *j)
{
    free(j);
}

pid_t spawn_job_pid(const struct spawn_job *j)
{
    /* Stored by the kernel in the spawner thread's clone, before the child first ran; read
     * here after wait(2) has returned that child, which orders the two. */
    return __atomic_load_n(&j->ptid, __ATOMIC_ACQUIRE);
}

/* ---- Spawner threads ----------------------------------------------------------------------- */

struct spawner {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t job_cv, state_cv;
    const struct sock_fprog *filter;
    pid_t tid;
    int state; /* STARTING, ARMING (tid known, waiting for its filter), SERVING, or a negative
                  errno: the filter could not be loaded */
    bool stop, joined;
    struct spawn_job *pending, **pending_tail; /* not begun, oldest first */
    struct spawn_job *done, **done_tail;       /* started or failed, oldest first */
    void (*notify)(void *);
    void *notify_arg;
    char *stack; /* the children's, one at a time */
};

static int load_filter(const struct sock_fprog *f)
{
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, f) == 0)
        return 0;
    /* Without CAP_SYS_ADMIN the kernel requires no_new_privs, as in the child. It is per
     * thread too, and children inherit it, as they would have set it themselves. */
    if (errno != EACCES || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, f) < 0)
        return -errno;
    return 0;
}

enum { STARTING, ARMING, SERVING };

static void *spawner_main(void *p)
{
    struct spawner *s = p;
    pthread_mutex_lock(&s->mu);
    s->tid = (pid_t)syscall(SYS_gettid);
    s->state = ARMING;
    pthread_cond_broadcast(&s->state_cv);
    while (s->filter == NULL && !s->stop)
        pthread_cond_wait(&s->job_cv, &s->mu);
    int e = -ECANCELED;
    if (!s->stop) {
        /* Only this thread is filtered (no SECCOMP_FILTER_FLAG_TSYNC): boxd's other threads
         * keep the calls the filter denies (reboot, kill of boxd's own pid, ...). */
        e = load_filter(s->filter);
    }
    s->state = e < 0 ? e : SERVING;
    pthread_cond_broadcast(&s->state_cv);
    while (e == 0) {
        while (s->pending == NULL && !s->stop)
            pthread_cond_wait(&s->job_cv, &s->mu);
        if (s->stop)
            break;
        struct spawn_job *j = s->pending;
        s->pending = j->next;
        if (s->pending == NULL)
            s->pending_tail = &s->pending;
        pthread_mutex_unlock(&s->mu);

        j->req.stack = s->stack;
        j->req.stack_size = SPAWNER_CHILD_STACK;
        j->stage = NULL;
        j->failed_pid = 0;
        j->pid = spawn_here(&j->req, &j->stage, &j->failed_pid);

        pthread_mutex_lock(&s->mu);
        j->next = NULL;
        *s->done_tail = j;
        s->done_tail = &j->next;
        void (*notify)(void *) = s->notify;
        void *arg = s->notify_arg;
        pthread_mutex_unlock(&s->mu);
        if (notify)
            notify(arg);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void spawner_free(struct spawner *s)
{
    pthread_cond_destroy(&s->job_cv);
    pthread_cond_destroy(&s->state_cv);
    pthread_mutex_destroy(&s->mu);
    free(s->stack);
    free(s);
}

struct spawner *spawner_create(pid_t *tid, int *err)
{
    struct spawner *s = calloc(1, sizeof *s);
    if (s == NULL || (s->stack = malloc(SPAWNER_CHILD_STACK)) == NULL) {
        free(s);
        *err = -ENOMEM;
        return NULL;
    }
    s->pending_tail = &s->pending;
    s->done_tail = &s->done;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->job_cv, NULL);
    pthread_cond_init(&s->state_cv, NULL);
    /* The thread inherits the caller's signal mask; make sure it is everything, so that no
     * signal is ever delivered to it (boxd reads its signals through a signalfd). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* It only waits and clones: a small stack (the children run on s->stack). */
    pthread_attr_setstacksize(&attr, SPAWNER_THREAD_STACK);
    int e = pthread_create(&s->thread, &attr, spawner_main, s);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        *err = -e;
        spawner_free(s);
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    while (s->state == STARTING)
        pthread_cond_wait(&s->state_cv, &s->mu);
    *tid = s->tid;
    pthread_mutex_unlock(&s->mu);
    *err = 0;
    return s;
}

int spawner_arm(struct spawner *s, const struct sock_fprog *filter)
{
    pthread_mutex_lock(&s->mu);
    s->filter = filter;
    pthread_cond_signal(&s->job_cv);
    while (s->state == ARMING)
        pthread_cond_wait(&s->state_cv, &s->mu);
    int e = s->state;
    pthread_mutex_unlock(&s->mu);
    if (e < 0) {
        /* The thread has returned already. */
        pthread_join(s->thread, NULL);
        spawner_free(s);
        return e;
    }
    return 0;
}

void spawner_set_notify(struct spawner *s, void (*notify)(void *), void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->notify = notify;
    s->notify_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

void spawner_submit(struct spawner *s, struct spawn_job *j)
{
    j->next = NULL;
    pthread_mutex_lock(&s->mu);
    *s->pending_tail = j;
    s->pending_tail = &j->next;
    pthread_cond_signal(&s->job_cv);
    pthread_mutex_unlock(&s->mu);
}

struct spawn_job *spawner_take_done(struct spawner *s)
{
    pthread_mutex_lock(&s->mu);
    struct spawn_job *j = s->done;
    s->done = NULL;
    s->done_tail = &s->done;
    pthread_mutex_unlock(&s->mu);
    return j;
}

struct spawn_job *spawner_halt(struct spawner *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->job_cv);
    pthread_mutex_unlock(&s->mu);
    if (!s->joined) {
        pthread_join(s->thread, NULL);
        s->joined = true;
    }
    struct spawn_job *j = s->pending;
    s->pending = NULL;
    s->pending_tail = &s->pending;
    return j;
}

void spawner_stop(struct spawner *s)
{
    if (s == NULL)
        return;
    for (struct spawn_job *j = spawner_halt(s), *next; j; j = next) {
        next = j->next;
        spawn_job_free(j);
    }
    for (struct spawn_job *j = spawner_take_done(s), *next; j; j = next) {
        next = j->next;
        spawn_job_free(j);
    }
    spawner_free(s);
}

pid_t spawn_process(const struct spawn_req *req, const char **stage, pid_t *failed_pid)
{
    return spawn_here(req, stage, failed_pid);
}
