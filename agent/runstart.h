/* Starting a run: its allocation, its pipes, the job handed to a spawner thread (spawn.h), and
 * the loop's side of the spawns that are done. Above run.h: once a spawn is over, the run is
 * handed to the state machine (run__spawned) and never comes back here. */
#ifndef BOXD_RUNSTART_H
#define BOXD_RUNSTART_H

#include "run.h"

/* Parameters of a new run; strings are borrowed for the duration of run_start. Every field
 * is meant to be set (request.c's run_launch and code.c's probes are the callers): a zero seccomp is "none". */
struct run_params {
    /* Who asked (the tmux completecb pattern): on_started(r, started_arg) is called once, when
     * the run has started (RUN_RUNNING) or failed to (ended, reason spawn) - during run_start
     * or later from runs_spawns_done - whenever run_start returned 0. NULL: nobody to tell.
     * When run_start fails it is never called, and the caller keeps started_arg. */
    void (*on_started)(struct run *r, void *arg);
    void *started_arg;
    const char *id; /* NULL: generated */
    size_t id_len;
    char **argv;    /* NULL-terminated, owned by the caller */
    bool is_shell;  /* argv is {"/bin/sh", "-c", "--", cmd} */
    char **envp;    /* NULL-terminated, complete environment */
    const char *path; /* PATH value searched for argv[0] */
    const char *cwd;
    uint64_t timeout_ms;
    uint32_t grace_ms;
    bool want_stdin;
    /* A terminal run (PROTOCOL.md 4.9): a pty of rows x cols as its controlling terminal and
     * fds 0-2 (want_stdin is implied). */
    bool tty;
    uint16_t rows, cols;
    const char *file; /* or NULL: the program's path when argv[0] is not it (a login shell) */
    const struct identity *ident;  /* who it runs as (NULL: the agent's default) */
    enum seccomp_profile seccomp;  /* its filter */
    int pre_err;                   /* non-zero: do not start; record a spawn failure */
    const char *pre_stage;         /* with pre_err: the stage it failed at */
    const char *desc; /* what list shows as cmd instead of the argv (code runs), or NULL */
    /* What the run holds for its caller until it ends (a code run's directory), or NULL:
     * release(release_arg, id) is called once, when the run ends however it ends, or is
     * forgotten first. run_start takes it when it returns 0; else the caller keeps it. */
    void (*release)(void *arg, const char *run_id);
    void *release_arg;
    /* An internal run: one the agent starts for itself (an interpreter probe, code.c), through
     * the same path as every run (spawner thread, seccomp, its own cgroup, the run user,
     * rlimits, oom_score_adj), but not a client's: it is not in the id table (no request can
     * find, list, attach to or signal it), does not count against max_runs, runs_live or
     * started_total (its caller bounds how many run), keeps no log (the first `capture`
     * bytes of its output, stdout and stderr interleaved, are kept instead), and when its
     * main process exits its whole tree is killed at once (what it left behind never
     * lingers). Once it has ended - exit, timeout, cancel, spawn failure - on_end is called
     * (unless the agent is tearing down; perhaps during run_start itself, on a spawn failure)
     * and the run is forgotten right after: on_end must not keep r. id (given) is for logs. */
    bool internal;
    uint32_t capture;
    void (*on_end)(struct run *r, void *arg);
    void *end_arg;
};

/* Starts a run. Returns 0 and *out when the run exists: started, being started by the spawner
 * thread (RUN_STARTING), or already failed to start (ended, reason spawn). In each case
 * p->on_started is called once the outcome is known - during this call or from
 * runs_spawns_done. Else, with nothing created:
 *   -EAGAIN  max_runs reached
 *   -ENOMEM */
int run_start(struct agent *a, const struct run_params *p, struct run **out);
/* The loop's side of the spawner: finishes the runs whose spawns are done (called when the
 * spawner notifies). */
void runs_spawns_done(struct agent *a);
/* At teardown, before runs_destroy: stops the spawner after its current spawn, finishes that
 * run, and fails those never begun. */
void runs_spawner_halt(struct agent *a);


#endif
