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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "boxd_exec.h"
#include "boxd_exec_bin.h"
#include "io.h"
#include "pathwalk.h"

/* The exec helper (spawn.h): a sealed memfd, or an O_PATH fd of a private copy; -1 until
 * spawn_helper_init. One per process, like the image it holds. */
static int helper_fd = -1;

/* Written by the child, read by the parent after the child has exec'd or exited. */
struct spawn_child_err {
    int err;
    const char *stage;
};

struct child_arg {
    const struct spawn_req *req;
    volatile struct spawn_child_err *out;
    bool in_cgroup; /* clone3 put the child in its cgroup already */
    char *const *helper_argv; /* the helper's argv when the identity changes, else NULL */
    int status_fd;            /* the status pipe's write end for the helper, or -1 */
};

/* clone3(2) with a child function, which glibc does not export. The kernel starts the child on
 * args->stack with the parent's registers, so the child side must not return through the
 * caller's frames: it calls fn(arg) on the new stack and exits with its value. x86_64 only;
 * elsewhere (and on kernels without clone3) spawn_here falls back to clone(2) plus a write
 * to cgroup.procs. Returns the pid, or a negative errno. */
struct boxd_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#if defined(__x86_64__)
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
     * new descriptor without FD_CLOEXEC, and closing everything from 3 up removes them. With
     * the helper, two stay: the status pipe, as fd 3 without FD_CLOEXEC (the helper's exec of
     * the run closes it), and the helper's own fd (>= SPAWN_HELPER_FD_MIN, FD_CLOEXEC), which
     * its exec needs. */
    if (dup2(r->fd_in, 0) < 0 || dup2(r->fd_out, 1) < 0 || dup2(r->fd_err, 2) < 0)
        fail(a->out, "stdio", errno);
    /* A terminal run: the slave becomes the controlling terminal of the session setsid made
     * (root may always take it; the pty is new, no other session has it). */
    if (r->ctty && ioctl(0, TIOCSCTTY, 0) < 0)
        fail(a->out, "stdio", errno);
    unsigned keep = 0;
    if (a->helper_argv) {
        keep = (unsigned)helper_fd;
        if (a->status_fd >= 0 &&
            (a->status_fd == EXEC_STATUS_FD ? fcntl(EXEC_STATUS_FD, F_SETFD, 0)
                                            : dup2(a->status_fd, EXEC_STATUS_FD)) < 0)
            fail(a->out, "stdio", errno);
    }
    unsigned first = a->helper_argv && a->status_fd >= 0 ? EXEC_STATUS_FD + 1 : 3;
    long cr = keep ? syscall(SYS_close_range, first, keep - 1, 0u) : 0;
    if (cr == 0)
        cr = syscall(SYS_close_range, keep ? keep + 1 : first, ~0u, 0u);
    if (cr < 0) {
        /* Before Linux 5.9: close what could be open. */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = first; fd < max && fd < 65536; fd++)
            if (keep == 0 || fd != (long)keep)
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

    /* 6. A change of identity happens in the helper, in its own address space: from here on
     * this process is root, shares boxd's memory and holds the spawner, so it must end now
     * (spawn.h). execveat of an fd: no path lookup that anyone could redirect. */
    if (a->helper_argv) {
        syscall(SYS_execveat, (long)helper_fd, "", a->helper_argv, r->envp, (long)AT_EMPTY_PATH);
        fail(a->out, "exec", errno);
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
    if (r->file)
        fail(a->out, "exec", try_exec(r->file, r->argv, r->envp));
    const char *file = r->argv[0];
    if (strchr(file, '/') || r->search_path == NULL) {
        fail(a->out, "exec", try_exec(file, r->argv, r->envp));
    }
    int err = ENOENT;
    char path[PATH_MAX];
    struct path_walk w;
    path_walk_begin(&w, r->search_path);
    while (path_walk_next(&w, file, path, sizeof path)) {
        int e = try_exec(path, r->argv, r->envp);
        if (e == EACCES || (e != ENOENT && e != ENOTDIR && err != EACCES))
            err = e;
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

/* Makes the child. Returns its pid, or a negative errno with *stage (and *failed_pid when a
 * child was made: it has exited, and is left to the caller to reap). helper_argv non-NULL: the
 * child execs the helper with it, status_fd (or -1) becoming its fd 3. */
static pid_t spawn_here(const struct spawn_req *req, char *const *helper_argv, int status_fd,
                        const char **stage, pid_t *failed_pid)
{
    volatile struct spawn_child_err out = {0, NULL};
    struct child_arg arg = {req, &out, false, helper_argv, status_fd};
    *failed_pid = 0;
    if (req->id && req->id->change && (helper_argv == NULL || helper_fd < 0)) {
        /* Never switch identity in a child that shares our memory. */
        *stage = "user";
        return -ENOSYS;
    }

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
        /* The child has called _exit. It is left to the loop's reaper, which matches it
         * through the job's ptid (or counts it as an orphan). */
        *stage = out.stage;
        *failed_pid = pid;
        return -out.err;
    }
    return pid;
}

/* The test seam (spawn.h): what makes a job's child. spawn_here, unless a test build that must
 * never start a process (the connection fuzzer) set another before any spawner started; the
 * spawner threads only read it. */
static spawn_make_fn make_child = spawn_here;

void spawn_set_maker(spawn_make_fn fn)
{
    make_child = fn ? fn : spawn_here;
}

/* ---- The helper ------------------------------------------------------------------------------ */

/* Moves fd to SPAWN_HELPER_FD_MIN or above (the child's fds 0-3 are the run's). */
static int fd_high(int fd)
{
    if (fd >= SPAWN_HELPER_FD_MIN)
        return fd;
    int h = fcntl(fd, F_DUPFD_CLOEXEC, SPAWN_HELPER_FD_MIN);
    int e = errno;
    close(fd);
    return h >= 0 ? h : -e;
}

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

/* A sealed memfd: nobody, root included, can change it after the seals, and no path leads to it. */
static int helper_memfd(void)
{
    int fd = memfd_create("boxd-exec", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (fd < 0 && errno == EINVAL) /* before Linux 6.3, MFD_EXEC is unknown (and not needed) */
        fd = memfd_create("boxd-exec", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    struct stat st;
    int e = box_write_all(fd, boxd_exec_image, sizeof boxd_exec_image);
    if (e == 0 && fstat(fd, &st) < 0)
        e = -errno;
    /* vm.memfd_noexec: the memfd may have come without its exec bits. */
    if (e == 0 && !(st.st_mode & S_IXUSR))
        e = -EACCES;
    if (e == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_EXEC |
                                             F_SEAL_SEAL) < 0 &&
        (errno != EINVAL ||
         fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0))
        e = -errno;
    if (e < 0) {
        close(fd);
        return e;
    }
    return fd_high(fd);
}

/* Where memfds may not be executed: a copy in a new directory only boxd's uid may enter (0700),
 * on a filesystem that allows exec, opened O_PATH and then unlinked, so no path leads to it. */
static int helper_file(const char *dir)
{
    struct statvfs vfs;
    if (statvfs(dir, &vfs) < 0)
        return -errno;
    if (vfs.f_flag & (ST_NOEXEC | ST_RDONLY))
        return -EACCES;
    char tmp[128], path[160];
    snprintf(tmp, sizeof tmp, "%s/boxd-exec.XXXXXX", dir);
    if (mkdtemp(tmp) == NULL) /* mode 0700 */
        return -errno;
    snprintf(path, sizeof path, "%s/boxd-exec", tmp);
    int e = 0, fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0500);
    if (fd < 0)
        e = -errno;
    if (e == 0) {
        e = box_write_all(fd, boxd_exec_image, sizeof boxd_exec_image);
        close(fd);
    }
    fd = -1;
    if (e == 0 && (fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC)) < 0)
        e = -errno;
    unlink(path);
    rmdir(tmp);
    return e < 0 ? e : fd_high(fd);
}

int spawn_helper_init(const char **how)
{
    if (helper_fd >= 0) {
        *how = "memfd";
        return 0;
    }
    int fd = helper_memfd();
    *how = "memfd";
    if (fd < 0) {
        static const char *const dirs[] = {"/run", "/dev/shm", "/tmp"};
        for (size_t i = 0; fd < 0 && i < sizeof dirs / sizeof dirs[0]; i++) {
            int e = helper_file(dirs[i]);
            if (e >= 0) {
                fd = e;
                *how = dirs[i];
            }
        }
    }
    if (fd < 0)
        return fd;
    helper_fd = fd;
    return 0;
}

void spawn_helper_release(void)
{
    if (helper_fd >= 0)
        close(helper_fd);
    helper_fd = -1;
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

/* The helper's identity argument (boxd_exec.c): "UID:GID:GROUPS". */
#define IDS_ARG_MAX (2 * 11 + 2 + IDENTITY_MAX_GROUPS * 11 + 2)

static void ids_arg(const struct identity *id, char *out, size_t size)
{
    int n = snprintf(out, size, "%u:%u:", (unsigned)id->uid, (unsigned)id->gid);
    if (id->ngroups < 0) {
        snprintf(out + n, size - (size_t)n, "-");
        return;
    }
    for (int i = 0; i < id->ngroups && i < IDENTITY_MAX_GROUPS; i++)
        n += snprintf(out + n, size - (size_t)n, "%s%u", i ? "," : "", (unsigned)id->groups[i]);
}

struct spawn_job *spawn_job_new(const struct spawn_req *req, void *owner)
{
    bool helper = req->id && req->id->change;
    size_t nargv, nenv;
    size_t bytes = strv_size(req->argv, &nargv) + strv_size(req->envp, &nenv);
    size_t cwd_len = req->cwd ? strlen(req->cwd) + 1 : 0;
    size_t path_len = req->search_path ? strlen(req->search_path) + 1 : 0;
    size_t file_len = req->file ? strlen(req->file) + 1 : 0;
    bytes += path_len + cwd_len + file_len;
    size_t slots = (nargv + 1) + (nenv + 1);
    if (helper) {
        /* argv[1-3], each with its one-letter tag (boxd_exec.c), then the run's argv. */
        bytes += IDS_ARG_MAX + (cwd_len + 2) + (path_len + file_len + 2);
        slots += nargv + 5;
    }
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
    j->req.file = str_copy(req->file, &at);
    if (req->id) {
        j->id = *req->id;
        j->req.id = &j->id;
    }
    if (helper) {
        char **h = slot;
        h[0] = "boxd-exec";
        h[1] = at;
        ids_arg(&j->id, at, IDS_ARG_MAX);
        at += strlen(at) + 1;
        h[2] = at;
        at += snprintf(at, cwd_len + 2, "%s%s", req->cwd ? "D" : "N", req->cwd ? req->cwd : "") + 1;
        h[3] = at;
        if (req->file)
            at += snprintf(at, file_len + 2, "F%s", req->file) + 1;
        else
            at += snprintf(at, path_len + 2, "%s%s", req->search_path ? "P" : "N",
                           req->search_path ? req->search_path : "") + 1;
        for (size_t i = 0; i <= nargv; i++)
            h[4 + i] = j->req.argv[i];
        j->helper_argv = h;
    }
    j->req.ptid = &j->ptid;
    j->req.stack = NULL; /* the spawner's */
    j->owner = owner;
    j->pid = -ECANCELED;
    j->stage = "fork";
    j->status_fd = -1;
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
    pthread_cond_t state_cv;
    const struct sock_fprog *filter;
    pid_t tid;
    int state;   /* STARTING, ARMING (tid known, waiting for spawner_arm), SERVING */
    int arm_err; /* the filter could not be loaded: serving unfiltered */
    bool arm, stop, joined;
    int ep, ev;  /* the thread's epoll (the eventfd, each in-flight job's status pipe) */
    struct spawn_job *pending, **pending_tail; /* not begun, oldest first */
    struct spawn_job *done, **done_tail;       /* started or failed, oldest first */
    /* The thread's own: jobs whose child has exec'd the helper, not yet done. */
    struct spawn_job *inflight;
    void (*notify)(void *);
    void *notify_arg;
    char *stack;    /* the children's, one at a time */
    int clear_refs; /* /proc/self/clear_refs, or -1 */
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

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void job_finish(struct spawner *s, struct spawn_job *j)
{
    pthread_mutex_lock(&s->mu);
    j->next = NULL;
    *s->done_tail = j;
    s->done_tail = &j->next;
    void (*notify)(void *) = s->notify;
    void *arg = s->notify_arg;
    pthread_mutex_unlock(&s->mu);
    if (notify)
        notify(arg);
}

static void inflight_remove(struct spawner *s, struct spawn_job *j)
{
    for (struct spawn_job **pp = &s->inflight; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    epoll_ctl(s->ep, EPOLL_CTL_DEL, j->status_fd, NULL);
    close(j->status_fd);
    j->status_fd = -1;
}

static const char *helper_stage(int32_t st)
{
    return st == EXEC_STAGE_USER ? "user" : st == EXEC_STAGE_CHDIR ? "chdir" : "exec";
}

/* Reads an in-flight job's status pipe. Returns true when the job is done: EOF (the helper's
 * exec succeeded, or the helper is gone: its exit status tells the rest) or a failure record. */
static bool job_status(struct spawner *s, struct spawn_job *j)
{
    struct exec_status st;
    ssize_t n = read(j->status_fd, &st, sizeof st);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n != 0) {
        /* A record (written in one write, so whole), or a read error: failed either way. */
        j->failed_pid = j->pid;
        j->stage = n == (ssize_t)sizeof st ? helper_stage(st.stage) : "exec";
        j->pid = n == (ssize_t)sizeof st && st.err > 0 ? -st.err : -EIO;
    }
    inflight_remove(s, j);
    job_finish(s, j);
    return true;
}

static void job_start(struct spawner *s, struct spawn_job *j)
{
    int st[2] = {-1, -1};
    j->req.stack = s->stack;
    j->req.stack_size = SPAWNER_CHILD_STACK;
    j->stage = NULL;
    j->failed_pid = 0;
    if (j->helper_argv && pipe2(st, O_CLOEXEC | O_NONBLOCK) < 0) {
        j->pid = -errno;
        j->stage = "pipe";
        job_finish(s, j);
        return;
    }
    /* A child's first exec leaves it the address space's high-water mark as its own ru_maxrss
     * (the kernel keeps the larger of it and the new program's), and that address space is
     * boxd's: reset the mark to boxd's resident size now, so that what the run reports
     * (max_rss_kb, without a cgroup memory.peak) is not boxd's all-time peak. */
    if (s->clear_refs >= 0) {
        ssize_t w = write(s->clear_refs, "5", 1);
        (void)w;
    }
    j->pid = make_child(&j->req, j->helper_argv, st[1], &j->stage, &j->failed_pid);
    /* Ours is closed at once: only the child's copy keeps the pipe open, so EOF means it has
     * exec'd (or is gone). Later children never see this end (FD_CLOEXEC, and each child
     * closes what it does not keep before it runs anything of the run's). */
    if (st[1] >= 0)
        close(st[1]);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = j};
    if (j->pid < 0 || st[0] < 0 || epoll_ctl(s->ep, EPOLL_CTL_ADD, st[0], &ev) < 0) {
        /* Done now: failed before the helper, or no helper; or (epoll_ctl ENOMEM) started,
         * with what the helper would have said left to its exit status (127). */
        if (st[0] >= 0)
            close(st[0]);
        job_finish(s, j);
        return;
    }
    /* In flight: the helper is running on its own; the next job may start. */
    j->status_fd = st[0];
    j->deadline_ns = mono_ns() + (uint64_t)SPAWN_EXEC_DEADLINE_MS * 1000000u;
    j->next = s->inflight;
    s->inflight = j;
}

/* The jobs whose deadline has passed fail with ETIMEDOUT (spawn.h): the loop kills them. */
static void jobs_expire(struct spawner *s, uint64_t now)
{
    struct spawn_job *j = s->inflight, *next;
    for (; j; j = next) {
        next = j->next;
        if (j->deadline_ns > now || job_status(s, j))
            continue;
        j->timed_out = true;
        j->failed_pid = j->pid;
        j->pid = -ETIMEDOUT;
        j->stage = "exec";
        inflight_remove(s, j);
        job_finish(s, j);
    }
}

static int next_timeout_ms(const struct spawner *s, uint64_t now)
{
    uint64_t first = UINT64_MAX;
    for (const struct spawn_job *j = s->inflight; j; j = j->next)
        if (j->deadline_ns < first)
            first = j->deadline_ns;
    if (first == UINT64_MAX)
        return -1;
    return first <= now ? 0 : (int)((first - now + 999999u) / 1000000u);
}

/* The thread is stopping (boxd's teardown, whose thread waits in pthread_join meanwhile, so
 * nothing else reaps): what is still in flight is killed and reaped here. A job whose pipe is
 * still open has a live child - a process that has exited has closed it - so its pid cannot
 * have been reaped and reused. */
static void jobs_abandon(struct spawner *s)
{
    while (s->inflight) {
        struct spawn_job *j = s->inflight;
        if (job_status(s, j))
            continue;
        pid_t pid = j->pid;
        kill(pid, SIGKILL);
        j->failed_pid = pid;
        j->pid = -ECANCELED;
        j->stage = "exec";
        /* Bounded: a child in uninterruptible sleep is left to init. */
        for (int i = 0; i < 1000; i++) {
            pid_t w = waitpid(pid, NULL, WNOHANG | __WALL);
            if (w == pid || (w < 0 && errno != EINTR)) {
                j->reaped = w == pid;
                break;
            }
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
        inflight_remove(s, j);
        job_finish(s, j);
    }
}

static void *spawner_main(void *p)
{
    struct spawner *s = p;
    prctl(PR_SET_NAME, "boxd-spawn", 0, 0, 0); /* what /proc/PID/task/TID/comm shows */
    pthread_mutex_lock(&s->mu);
    s->tid = (pid_t)syscall(SYS_gettid);
    s->state = ARMING;
    pthread_cond_broadcast(&s->state_cv);
    while (!s->arm && !s->stop)
        pthread_cond_wait(&s->state_cv, &s->mu);
    /* Only this thread is filtered (no SECCOMP_FILTER_FLAG_TSYNC): boxd's other threads keep
     * the calls the filter denies (reboot, kill of boxd's own pid, ...). If the filter will
     * not load, the thread serves unfiltered, and each child loads its own (sandbox.c). */
    if (!s->stop && s->filter)
        s->arm_err = load_filter(s->filter);
    s->state = SERVING;
    pthread_cond_broadcast(&s->state_cv);
    for (;;) {
        while (s->pending && !s->stop) {
            struct spawn_job *j = s->pending;
            s->pending = j->next;
            if (s->pending == NULL)
                s->pending_tail = &s->pending;
            pthread_mutex_unlock(&s->mu);
            job_start(s, j);
            pthread_mutex_lock(&s->mu);
        }
        if (s->stop)
            break;
        pthread_mutex_unlock(&s->mu);

        struct epoll_event evs[16];
        int n = epoll_wait(s->ep, evs, 16, next_timeout_ms(s, mono_ns()));
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t v;
                ssize_t r = read(s->ev, &v, sizeof v);
                (void)r;
            } else {
                job_status(s, evs[i].data.ptr);
            }
        }
        jobs_expire(s, mono_ns());
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    jobs_abandon(s);
    return NULL;
}

static void spawner_free(struct spawner *s)
{
    pthread_cond_destroy(&s->state_cv);
    pthread_mutex_destroy(&s->mu);
    if (s->ep >= 0)
        close(s->ep);
    if (s->ev >= 0)
        close(s->ev);
    if (s->clear_refs >= 0)
        close(s->clear_refs);
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
    pthread_cond_init(&s->state_cv, NULL);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->clear_refs = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC); /* -1 is fine */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (s->ep < 0 || s->ev < 0 || epoll_ctl(s->ep, EPOLL_CTL_ADD, s->ev, &ev) < 0) {
        *err = -errno;
        spawner_free(s);
        return NULL;
    }
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
    s->arm = true;
    pthread_cond_broadcast(&s->state_cv);
    while (s->state == ARMING)
        pthread_cond_wait(&s->state_cv, &s->mu);
    int e = s->arm_err;
    pthread_mutex_unlock(&s->mu);
    return e;
}

void spawner_set_notify(struct spawner *s, void (*notify)(void *), void *arg)
{
    pthread_mutex_lock(&s->mu);
    s->notify = notify;
    s->notify_arg = arg;
    pthread_mutex_unlock(&s->mu);
}

static void wake(struct spawner *s)
{
    uint64_t one = 1;
    /* Cannot fail short of a counter at its maximum, which only a wakeup nobody read could
     * reach; a wakeup already pending is as good. */
    ssize_t w = write(s->ev, &one, sizeof one);
    (void)w;
}

void spawner_submit(struct spawner *s, struct spawn_job *j)
{
    j->next = NULL;
    pthread_mutex_lock(&s->mu);
    *s->pending_tail = j;
    s->pending_tail = &j->next;
    pthread_mutex_unlock(&s->mu);
    wake(s);
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
    pthread_cond_broadcast(&s->state_cv);
    pthread_mutex_unlock(&s->mu);
    wake(s);
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
