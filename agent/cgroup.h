/* Per-run cgroups (cgroup v2): the tree-kill that nothing escapes, and the run's resource use.
 *
 * Layout, under the cgroup boxd finds itself in (BASE):
 *   BASE/agent       boxd itself (moved there so BASE may have children with controllers)
 *   BASE/runs/<id>   one per run, entered by the child before exec (no window: the child writes
 *                    "0" into the run's cgroup.procs while it is still boxd's code); a daemon
 *                    (not PID 1) uses BASE/runs-<pid>, as two may share BASE
 * When boxd is in the root of the hierarchy and is not PID 1 (a daemon on a development host),
 * BASE is ROOT/boxd instead, so nothing of the host's is reorganized.
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
    int dir_fd;    /* BASE/runs/<id>, or -1 */
    int procs_fd;  /* its cgroup.procs, open for the child to write "0" into */
    int events_fd; /* its cgroup.events, polled (POLLPRI) for "populated 0" */
    int cpu_fd;    /* its cpu.stat (or -1), read when the run ends */
};

struct cgroups {
    bool enabled;
    char *base;       /* BASE, absolute path */
    int base_fd;      /* BASE, O_DIRECTORY */
    int runs_fd;      /* BASE/<runs_name>, O_DIRECTORY */
    char runs_name[32]; /* "runs" as PID 1, "runs-<pid>" as a daemon */
    bool memory, pids, cpu; /* controllers enabled for runs */
    /* A cgroup made ahead of time, with its limits written, for the run that will have the
     * id spare_id (the next generated one): mkdir is off the path of the run's start. */
    struct run_cgroup spare;
    char spare_id[72];
};


/* Finds the hierarchy and prepares BASE. Returns 0 (enabled, or disabled with the reason
 * logged) - the agent works either way. */
int cgroup_init(struct agent *a);
void cgroup_destroy(struct agent *a);

/* Makes the run's cgroup (or takes the spare, when it was made for this id). Returns 0 or a
 * negative errno (rc->dir_fd stays -1). */
int cgroup_run_create(struct agent *a, const char *id, struct run_cgroup *rc);
/* Makes the spare for id, when there is none. */
void cgroup_spare_make(struct agent *a, const char *id);
/* True while any process is in the run's cgroup. */
bool cgroup_run_populated(const struct run_cgroup *rc);
/* Sends sig to every member (reading cgroup.procs). Returns the number signalled. */
int cgroup_run_signal(const struct run_cgroup *rc, int sig);
/* cgroup.kill: every member dies, forks racing the kill too. Returns 0 or a negative errno. */
int cgroup_run_kill(const struct run_cgroup *rc);

struct run_usage {
    uint64_t user_us, sys_us;
    uint64_t mem_peak; /* bytes, 0 when unknown */
    uint64_t oom_kills;
    bool have_cpu, have_mem;
};
void cgroup_run_usage(const struct agent *a, const struct run_cgroup *rc, struct run_usage *u);

/* Closes the fds and removes the directory (it must be empty). */
void cgroup_run_remove(struct agent *a, const char *id, struct run_cgroup *rc);

/* The process-group fallback: TERM/KILL to the group and to every descendant of pid found by
 * walking /proc (what escaped with setsid still has its ancestry until reparented). Returns the
 * number of processes signalled. */
int proc_tree_signal(pid_t pid, pid_t pgid, int sig);

#endif
