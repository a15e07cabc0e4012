/* Per-run cgroups (cgroup v2): the tree-kill that nothing escapes, and the run's resource use.
 *
 * Layout, under the cgroup boxd finds itself in (BASE):
 *   BASE/agent       boxd itself (moved there so BASE may have children with controllers)
 *   BASE/runs/cN     one per live run, entered as the child is made (clone3 CLONE_INTO_CGROUP, or
 *                    the child writes "0" into cgroup.procs while it is still boxd's code); a
 *                    daemon (not PID 1) uses BASE/runs-<pid>, as two may share BASE
 *
 * A run's cgroup is reused: once the run has ended and the cgroup is empty, it goes back to a
 * small pool and a later run takes it. A cgroup new to its first process costs that spawn
 * 45-60 us more than one that has had processes before, and its removal costs the kernel
 * deferred work besides (README, Benchmarks). What a run used is the difference between the
 * cgroup's counters at its end and at its start. A cgroup whose processes had to be killed,
 * or that was watched (a killed or lingering run), is removed instead, never reused.
 * When boxd is in the root of the hierarchy and is not PID 1 (a daemon on a development host),
 * BASE is ROOT/boxd instead, so nothing of the host's is reorganized.
 *
 * A previous boxd's run cgroups found at start-up (it was SIGKILLed and this one started in its
 * cgroup) are killed and removed before boxd serves, the wait bounded (cgroup.c, clean_stale).
 *
 * Without a writable cgroup2 hierarchy, runs fall back to their process group plus a walk of
 * /proc for descendants (cgroup_enabled false); `info` says which mechanism is in use. */
#ifndef BOXD_CGROUP_H
#define BOXD_CGROUP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct agent;

struct run_cgroup {
    int dir_fd;    /* BASE/runs/<name>, or -1 */
    int procs_fd;  /* its cgroup.procs, open for the child to write "0" into */
    int events_fd; /* its cgroup.events, polled (POLLPRI) for "populated 0" */
    int cpu_fd;    /* its cpu.stat (or -1), read when the run ends */
    int peak_fd;   /* its memory.peak, reset through this fd for this run (or -1) */
    bool used;     /* it has had a run before (it comes from the pool) */
    bool peak_ok;  /* memory.peak is this run's: the cgroup is new, or peak_fd was reset */
    char name[24]; /* "cN" */
    /* The counters as the earlier runs in it left them: this run's use is above these. */
    uint64_t base_user_us, base_sys_us, base_oom_kills;
};

/* Empty cgroups kept for later runs, at most. */
#define CGROUP_POOL_MAX 8

struct cgroups {
    bool enabled;
    char *base;       /* BASE, absolute path */
    int base_fd;      /* BASE, O_DIRECTORY */
    int runs_fd;      /* BASE/<runs_name>, O_DIRECTORY */
    char runs_name[32]; /* "runs" as PID 1, "runs-<pid>" as a daemon */
    bool memory, pids, cpu; /* controllers enabled for runs */
    /* Empty cgroups with their limits written, for the next runs: the last one back is
     * taken first. */
    struct run_cgroup pool[CGROUP_POOL_MAX];
    unsigned n_pool;
    uint64_t next_no; /* the N of the next cgroup made */
};


/* Finds the hierarchy and prepares BASE. Returns 0 (enabled, or disabled with the reason
 * logged) - the agent works either way. */
int cgroup_init(struct agent *a);
void cgroup_destroy(struct agent *a);

/* Gives the run a cgroup: one from the pool, else a new one. Returns 0 or a negative errno
 * (rc->dir_fd stays -1). */
int cgroup_run_create(struct agent *a, struct run_cgroup *rc);
/* Makes one ahead when the pool is empty, so the next run's start has no mkdir on its path. */
void cgroup_pool_fill(struct agent *a);
/* The run is done with its cgroup. Empty and reusable: its counters become the next run's
 * base and it goes to the pool (or, the pool full, is removed). reusable false, or still
 * populated: members are killed and it is removed. rc is reset either way. */
void cgroup_run_release(struct agent *a, struct run_cgroup *rc, bool reusable);
/* True while any process is in the run's cgroup. */
bool cgroup_run_populated(const struct run_cgroup *rc);
/* Sends sig to every member (reading cgroup.procs). Returns the number signalled. */
int cgroup_run_signal(const struct run_cgroup *rc, int sig);
/* cgroup.kill: every member dies, forks racing the kill too. Returns 0 or a negative errno. */
int cgroup_run_kill(const struct run_cgroup *rc);

/* What the run used: the cgroup's counters now, less its base. */
struct run_usage {
    uint64_t user_us, sys_us;
    uint64_t oom_kills;
    bool have_cpu;
    /* memory.peak, where the memory controller is on and the figure is this run's alone: a new
     * cgroup, or a reused one whose memory.peak could be reset (Linux 6.12, a write to it
     * resets it for the fd that wrote). */
    uint64_t peak_kb;
    bool have_peak;
};
void cgroup_run_usage(const struct agent *a, const struct run_cgroup *rc, struct run_usage *u);

/* The process-group fallback: TERM/KILL to the group and to every descendant of pid found by
 * walking /proc (what escaped with setsid still has its ancestry until reparented). Returns the
 * number of processes signalled. */
int proc_tree_signal(pid_t pid, pid_t pgid, int sig);

/* Without a cgroup, what escaped the process group and was reparented to boxd (a setsid plus
 * double fork) has nothing in /proc linking it to its run but the fds it holds: sends sig to
 * every process (boxd aside) with an fd on one of the n pipes (their inodes), or on the
 * terminal whose device is tty (a terminal run's pty slave; 0: none), each checked again
 * through a pidfd before it is signalled, so a reused pid is never hit. Returns the number
 * signalled. */
int proc_pipe_holders_signal(const ino_t *inos, int n, dev_t tty, int sig);

#endif
