/* Starting a run's process: the only code that runs in a child before exec.
 *
 * The child is made with clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP) - or clone(CLONE_VM |
 * CLONE_VFORK) where that is not available - as glibc's posix_spawn does: it shares the agent's
 * memory and the calling thread (the spawner thread, below) is suspended until the child execs
 * or exits, so starting a process costs no page-table copy however large the agent grows. The
 * price is discipline: the child may only make system calls (through thin libc wrappers) and
 * write to its own stack and to the shared `struct spawn_child_err`, which is how failures
 * before its exec come back with their stage and errno.
 *
 * And the child must never be within reach of the run's user: a process that shares boxd's
 * memory and that the user could stop (SIGSTOP between clone and exec) would hold the spawner
 * forever, and one the user could trace (fs.suid_dumpable=1) would give the user boxd's memory.
 * So this child never changes identity: it stays root (real, effective and saved uid 0: no user
 * may signal or trace it) and, when the run's identity differs from boxd's, it ends the vfork
 * window by exec'ing the exec helper (exec/boxd_exec.c, embedded in boxd and run from a sealed
 * memfd, spawn_helper_init), which switches identity in its own tiny address space and then
 * execs the run. The helper reports failure through a status pipe (its fd 3, FD_CLOEXEC at its
 * last exec): a record {stage, errno}, or EOF when the exec succeeded. The helper costs one
 * small exec, about 65 us (README, Benchmarks). A run as boxd's own user does not need it and
 * execs directly: that user can signal and trace boxd's children whatever boxd does.
 *
 * Order of operations in the child:
 *   1. every signal disposition back to SIG_DFL: those the agent changed (SIGPIPE, which it
 *      ignores; a sanitizer's handlers), known from spawn_signals_changed() at start-up;
 *   2. into the run's cgroup (writing "0" to its cgroup.procs), before any user code runs;
 *      then setsid(): its own session and process group, so `kill 0` cannot reach the agent;
 *   3. fds 0-2 from the request, the status pipe as fd 3 (with the helper), then every other
 *      fd closed (close_range) except the helper's own; for a terminal run (ctty) fd 0, the
 *      pty's slave, becomes the new session's controlling terminal (TIOCSCTTY);
 *   4. resource limits (RLIMIT_NOFILE, RLIMIT_CORE) and oom_score_adj (boxd's is -1000; the
 *      run's is higher, so memory pressure kills the run, never the agent);
 *   5. the seccomp filter: the default profile is inherited from the spawner thread; what
 *      the child loads itself (strict's own rules, or a whole profile when the spawner is
 *      not filtered) is loaded while still privileged (so no PR_SET_NO_NEW_PRIVS is needed and
 *      setuid programs such as sudo keep working; a boxd that is not root sets no_new_privs,
 *      as the kernel then requires);
 *   With the helper (the identity changes), the child now execs it (execveat of its fd), and
 *   the helper does 6-9 (boxd_exec.c), its uid in steps that never leave it traceable:
 *   6. the run's identity: setgroups, setresgid, setresuid(u, u, 0), PR_SET_DUMPABLE 0,
 *      setresuid(-1, -1, u);
 *   7. chdir(cwd), as the run's user, so permissions apply;
 *   8. the signal mask emptied (the agent blocks the signals it reads through signalfd);
 *   9. execve, searching the run's own PATH (not the agent's) when argv[0] has no '/'. */
#ifndef BOXD_SPAWN_H
#define BOXD_SPAWN_H

#include <linux/filter.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sandbox.h"

struct spawn_req {
    char *const *argv;       /* NULL-terminated; argv[0] is the program, unless file is set */
    const char *file;        /* or NULL: the program's path (no search), argv[0] being only its
                                name (a login shell's "-sh") */
    char *const *envp;       /* NULL-terminated */
    const char *search_path; /* the run's PATH, searched when argv[0] has no '/' */
    const char *cwd;
    int fd_in, fd_out, fd_err; /* become the child's 0, 1, 2; must all be >= 3 */
    bool ctty;                 /* fd_in is a pty slave: made the controlling terminal */
    int cgroup_dir_fd;         /* the run's cgroup directory (clone3 CLONE_INTO_CGROUP), or -1 */
    int cgroup_procs_fd;       /* its cgroup.procs, for the fallback write, or -1 */
    const struct identity *id; /* switch to it (in the helper) when id->change */
    const struct sock_fprog *seccomp; /* loaded by the child; NULL or empty: none */
    pid_t *ptid;               /* or NULL: the kernel stores the child's pid here before the
                                  child runs (CLONE_PARENT_SETTID) */
    uint64_t nofile, core;     /* rlimits (nofile 0: unchanged) */
    const char *oom_adj;       /* written to /proc/self/oom_score_adj, or NULL */
    uint64_t sig_reset;        /* signals (bit n-1 for n) whose disposition the child resets */
    char *stack;
    size_t stack_size;
};

/* A spawner is a thread that starts runs, so that the event loop goes on while each child is
 * in its vfork window (the parent of a CLONE_VFORK child is suspended until the child execs),
 * and that carries a seccomp filter, so that the children it starts inherit the filter instead
 * of each loading its own: seccomp(SECCOMP_SET_MODE_FILTER) costs about 100 us (the kernel
 * JITs the program, then, with interrupts off, runs it for every system call number of both
 * x86 ABIs to fill its allow-cache), and the filter is freed again at every exit. Filters
 * belong to threads: boxd's main thread stays unfiltered. A child inherits the filter of the
 * thread that cloned it, and is still boxd's child for wait(2). Every run is started by a
 * spawner (with `--seccomp none` it carries no filter): the loop's thread never clones.
 *
 * The thread is boxd too - a fatal signal to its tid kills the process, a ptrace of it reaches
 * boxd's memory - so the filter must guard its tid as well as boxd's pid, and the tid is known
 * only once the thread runs. Hence two steps:
 *   spawner_create  starts the thread, unfiltered and idle, and gives its tid (or NULL, *err);
 *   spawner_arm     loads filter on it (NULL: none; setting no_new_privs first when boxd lacks
 *                   CAP_SYS_ADMIN, as a child would). Returns 0, or the negative errno of a
 *                   filter that would not load: the thread then serves unfiltered.
 *
 * Jobs: the loop's thread submits a job (spawn_job_new copies the request, so nothing it
 * points to need outlive the call); the spawner starts them in order, on its own child stack,
 * and is held by each only for its root-only vfork window. A job with the helper is then in
 * flight: its status pipe waits in the thread's epoll with the eventfd that announces new jobs,
 * and the next job starts meanwhile. A job is done when the child has exec'd the run (EOF),
 * has failed (a stage and errno), or SPAWN_EXEC_DEADLINE_MS have passed (stage "exec",
 * ETIMEDOUT, timed_out set: the helper is stopped or traced by the run's user, and the loop
 * kills it). Done jobs go to the done list, and notify is called (from the thread: it must be
 * thread-safe, e.g. uv_async_send). The loop takes the done jobs and frees them.
 *
 * The loop's reaper is the only one (but for spawner_halt, below): a child can exit, and be
 * reaped, before its job is done - the job's ptid holds its pid from before the child first
 * ran, for the reaper to match it - or after its job failed (an orphan, then). While its run is
 * starting and not reaped, the pid is the child's: the loop may signal it (cancel). */
#define SPAWNER_THREAD_STACK (256 * 1024)
#define SPAWNER_CHILD_STACK (64 * 1024)
/* How long a child may take from the helper's exec to the run's. */
#define SPAWN_EXEC_DEADLINE_MS 5000
/* The helper's fd is at least this, clear of the child's 0-3. */
#define SPAWN_HELPER_FD_MIN 10

struct spawn_job {
    struct spawn_job *next;
    struct spawn_req req;  /* the copy: its pointers point into this job */
    struct identity id;
    char *const *helper_argv; /* the helper's argv (boxd_exec.c), when the identity changes */
    pid_t ptid;            /* the child's pid, stored by the kernel (read with spawn_job_pid) */
    /* The result: the pid (> 0), or a negative errno with stage and failed_pid. */
    pid_t pid, failed_pid;
    const char *stage;
    bool timed_out;        /* the deadline passed: failed_pid is alive, for the loop to kill */
    bool reaped;           /* spawner_halt reaped failed_pid */
    void *owner;           /* the caller's */
    /* The thread's, while in flight. */
    int status_fd;
    uint64_t deadline_ns;
};

struct spawn_job *spawn_job_new(const struct spawn_req *req, void *owner);
void spawn_job_free(struct spawn_job *j);
/* The child's pid once the kernel has made it, else 0. */
pid_t spawn_job_pid(const struct spawn_job *j);

struct spawner;
struct spawner *spawner_create(pid_t *tid, int *err);
int spawner_arm(struct spawner *s, const struct sock_fprog *filter);
void spawner_set_notify(struct spawner *s, void (*notify)(void *), void *arg);
void spawner_submit(struct spawner *s, struct spawn_job *j);
/* Takes the done jobs, oldest first, as a list through ->next (NULL if none). */
struct spawn_job *spawner_take_done(struct spawner *s);
/* Stops the thread after the job it is starting (if any) and joins it: the jobs in flight are
 * killed, reaped (reaped set) and done with stage "exec", ECANCELED. Returns the jobs it had
 * not begun, oldest first; spawner_take_done still gives the done ones. Idempotent. Call it
 * from the thread that reaps (the loop's), which then reaps nothing meanwhile. */
struct spawn_job *spawner_halt(struct spawner *s);
/* Halts it (jobs not begun are dropped: halt first to keep them) and frees it. */
void spawner_stop(struct spawner *s);

/* The signals whose disposition is not SIG_DFL now (call once at start-up, after the agent
 * has set its own). */
uint64_t spawn_signals_changed(void);

/* Makes a job's child: returns its pid, or a negative errno with *stage (and *failed_pid when a
 * child was made and has exited). helper_argv non-NULL: the child execs the helper with it,
 * status_fd (or -1) becoming its fd 3. */
typedef pid_t (*spawn_make_fn)(const struct spawn_req *req, char *const *helper_argv,
                               int status_fd, const char **stage, pid_t *failed_pid);
/* The test seam: replaces how children are made (NULL restores the real clone). For a build
 * that must never start a process, such as the connection fuzzer (tests/fuzz/fuzz_conn.c),
 * which refuses every spawn at stage "fuzz". Call before any spawner starts. */
void spawn_set_maker(spawn_make_fn fn);

/* Makes the exec helper's fd (a sealed memfd; where memfds may not be exec'd, a private copy
 * on a filesystem that allows exec). Call once at start-up; *how says which ("memfd", or the
 * directory). Returns 0 or a negative errno: start-up must fail then, as no run could switch
 * identity. spawn_helper_release closes it. */
int spawn_helper_init(const char **how);
void spawn_helper_release(void);


#endif
