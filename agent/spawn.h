/* Starting a run's process: the only code that runs in a child before exec.
 *
 * The child is made with clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP) - or clone(CLONE_VM |
 * CLONE_VFORK) where that is not available - as glibc's posix_spawn does: it shares the agent's
 * memory and the calling thread (the spawner thread, below) is suspended until the child execs
 * or exits, so starting a process costs no page-table copy however large the agent grows. The
 * price is discipline: the
 * child may only make system calls (through thin libc wrappers) and write to its own stack and to
 * the shared `struct spawn_child_err`, which is how exec failures come back with their stage and
 * errno (no pipe round trip needed: the parent resumes only after the child is done).
 *
 * Order of operations in the child:
 *   1. every signal disposition back to SIG_DFL: those the agent changed (SIGPIPE, which it
 *      ignores; a sanitizer's handlers), known from spawn_signals_changed() at start-up;
 *   2. into the run's cgroup (writing "0" to its cgroup.procs), before any user code runs;
 *      then setsid(): its own session and process group, so `kill 0` cannot reach the agent;
 *   3. fds 0-2 from the request, then every other fd closed (close_range);
 *   4. resource limits (RLIMIT_NOFILE, RLIMIT_CORE) and oom_score_adj (boxd's is -1000; the
 *      run's is higher, so memory pressure kills the run, never the agent);
 *   5. the seccomp filter: the default profile is inherited from the spawner thread; what
 *      the child loads itself (strict's own rules, or a whole profile when there is no
 *      spawner) is loaded while still privileged (so no PR_SET_NO_NEW_PRIVS is needed and
 *      setuid programs such as sudo keep working; a boxd that is not root sets no_new_privs,
 *      as the kernel then requires);
 *   6. the run's identity: setgroups, setresgid, setresuid (raw system calls: glibc's
 *      wrappers would try to broadcast to the threads of a process whose memory we share);
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
    char *const *argv;       /* NULL-terminated; argv[0] is the program */
    char *const *envp;       /* NULL-terminated */
    const char *search_path; /* the run's PATH, searched when argv[0] has no '/' */
    const char *cwd;
    int fd_in, fd_out, fd_err; /* become the child's 0, 1, 2; must all be >= 3 */
    int cgroup_dir_fd;         /* the run's cgroup directory (clone3 CLONE_INTO_CGROUP), or -1 */
    int cgroup_procs_fd;       /* its cgroup.procs, for the fallback write, or -1 */
    const struct identity *id; /* switch to it when id->change */
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
 * thread that cloned it, and is still boxd's child for wait(2).
 *
 * The thread is boxd too - a fatal signal to its tid kills the process, a ptrace of it reaches
 * boxd's memory - so the filter must guard its tid as well as boxd's pid, and the tid is known
 * only once the thread runs. Hence two steps:
 *   spawner_create  starts the thread, unfiltered and idle, and gives its tid (or NULL, *err);
 *   spawner_arm     loads filter on it (setting no_new_privs first when boxd lacks
 *                   CAP_SYS_ADMIN, as a child would). On failure (negative errno) the thread
 *                   is gone and s freed.
 *
 * Jobs: the loop's thread submits a job (spawn_job_new copies the request, so nothing it
 * points to need outlive the call); the spawner starts them one at a time, in order, on its
 * own child stack, moves each to its done list and calls notify (from its own thread: it must
 * be thread-safe, e.g. uv_async_send). The loop takes the done jobs and frees them.
 *
 * A child can exit, and be reaped by the loop's wait(-1), before its job is done: the job's
 * ptid holds its pid from before the child first runs, for the reaper to match it. */
#define SPAWNER_THREAD_STACK (256 * 1024)
#define SPAWNER_CHILD_STACK (64 * 1024)

struct spawn_job {
    struct spawn_job *next;
    struct spawn_req req;  /* the copy: its pointers point into this job */
    struct identity id;
    pid_t ptid;            /* the child's pid, stored by the kernel (read with spawn_job_pid) */
    /* The result, as spawn_process returns it. */
    pid_t pid, failed_pid;
    const char *stage;
    void *owner;           /* the caller's */
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
/* Stops the thread after the job it is starting (if any) and joins it. Returns the jobs it
 * had not begun, oldest first; spawner_take_done still gives the done ones. Idempotent. */
struct spawn_job *spawner_halt(struct spawner *s);
/* Halts it (jobs not begun are dropped: halt first to keep them) and frees it. */
void spawner_stop(struct spawner *s);

/* The signals whose disposition is not SIG_DFL now (call once at start-up, after the agent
 * has set its own). */
uint64_t spawn_signals_changed(void);

/* Starts the process from the calling thread, which is suspended meanwhile (runs under seccomp
 * none, the interpreter probes; a spawner runs its jobs with it). Returns the pid (> 0) on
 * success. On failure returns a negative errno and sets *stage to where it failed ("fork",
 * "cgroup", "setsid", "stdio", "seccomp", "user", "chdir", "exec"); if a child was created it
 * has already been reaped, and its pid is stored in *failed_pid (else 0). */
pid_t spawn_process(const struct spawn_req *req, const char **stage, pid_t *failed_pid);

#endif
