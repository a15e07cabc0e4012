/* One run's life: spawn, output, timeout and cancel, exit, retention, and the subscriptions of
 * the connections that follow it.
 *
 * Ownership: the agent owns every run (a->runs). A run is freed only when it is evicted from the
 * finished list (no subscription and no open pipe left) or when the agent stops. Subscriptions
 * are owned by their connection and point at the run; a run with subscriptions is never freed. */
#ifndef BOXD_RUN_H
#define BOXD_RUN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <uv.h>

#include "agent.h"
#include "cgroup.h"
#include "list.h"
#include "runlog.h"

struct conn;

/* A request's `req` value, kept as its msgpack encoding to be echoed in replies and events. */
struct reqtag {
    uint8_t len; /* 0: no req */
    char buf[80];
};

/* STARTING: queued to, or being started by, the spawner thread (pid 0 until it is done). */
enum run_state { RUN_STARTING, RUN_RUNNING, RUN_DRAINING, RUN_ENDED };

enum run_reason {
    REASON_EXIT, REASON_SIGNAL, REASON_TIMEOUT, REASON_CANCEL, REASON_SPAWN, REASON_OOM
};

struct run_pipe {
    struct run *run;
    int fd;
    int stream; /* 1 stdout, 2 stderr */
    uv_poll_t poll;
    bool open;    /* fd valid and poll handle initialized */
    bool polling; /* poll started */
    char *partial;
    uint32_t plen, pcap;
};

struct stdin_pipe {
    uv_pipe_t h;
    bool open;
    bool eof_pending;
    uint64_t queued;
};

struct run {
    struct agent *a;
    char id[BOXD_ID_MAX + 1];
    struct list link;      /* a->runs */
    struct list fin_link;  /* a->finished, once ended */
    struct list subs;      /* struct sub.run_link */
    struct run *id_next, *pid_next;
    bool in_pid_table;

    pid_t pid;
    char *desc; /* the command for list: desc_argc NUL-terminated strings, capped */
    unsigned desc_argc;
    bool is_argv;
    enum run_state state;
    uint64_t started_ns, ended_ns, start_mono, end_mono;

    bool exited;
    int wstatus;
    struct rusage ru;
    bool cancel_requested, timed_out;
    int kill_stage; /* 0 none, 1 TERM sent, 2 KILL sent */
    uint32_t grace_ms;
    uint64_t timeout_ms;
    int spawn_err;
    const char *spawn_stage;

    uv_timer_t kill_timer;  /* timeout, then grace */
    uv_timer_t flush_timer; /* partial lines */
    uv_timer_t drain_timer; /* after the main process exited */
    bool drain_expired;

    struct run_cgroup cg;   /* dir_fd -1 when the run has none (fallback: process group) */
    uv_poll_t cg_poll;      /* cgroup.events, for "populated 0" */
    bool cg_polling;
    bool cg_watched; /* it was polled once: removed at the end, not reused */
    struct run_usage usage; /* read when the run ends */
    unsigned handles_open;
    bool freeing;

    struct run_pipe out[2];
    struct stdin_pipe in;
    int child_fd[3];        /* the child's ends of the pipes (or -1), until it has started */

    /* While STARTING. */
    struct spawn_job *job;  /* on the spawner (spawn.h), or NULL: started in the loop */
    struct list start_link; /* a->starting */
    struct {
        bool set;           /* the reply is still owed */
        uint64_t conn_no;   /* conn_find: the connection may be gone by then */
        struct reqtag req;
        bool follow, want_output;
    } starter;              /* who asked, for `started` or `spawn_failed` */
    bool early_exit;        /* the reaper had the child before the spawn was done */
    bool have_exit_peak;    /* exit_peak_kb came from the main process's taskstats record */
    uint64_t exit_peak_kb;
    int early_status;
    struct rusage early_ru;
    uint64_t pending_sigs;  /* `signal`s to deliver once started (bit n-1 for n) */
    uint32_t cancel_grace;  /* with cancel_requested: `cancel` while starting */
    char *tmpdir; /* a code run's private directory (code.h), removed when the run ends */

    /* An internal run (run_params.internal): the agent's own, e.g. an interpreter probe. */
    bool internal;
    char *capture;           /* its output (stdout and stderr, in order), capture_max bytes */
    uint32_t capture_len, capture_max;
    void (*on_end)(struct run *r, void *arg);
    void *end_arg;

    struct runlog log;
    bool paused;    /* pipe reading stopped for a follower that is behind */
    bool lingering; /* ended, but a process still holds the pipes */
    uint64_t late_bytes;
    const char *bg_killed; /* "timeout" or "cancel": what it left behind was killed after its end */
    bool slot_released;    /* lingering without a cgroup past LINGER_SLOT_MS: not counted */
};

/* A connection following a run (attach, exec with follow, or wait). */
struct sub {
    struct list run_link, conn_link, ready_link;
    struct run *run;
    struct conn *conn;
    struct reqtag req;
    uint64_t next_seq, next_cost;
    struct rl_cursor cur; /* where next_seq is in the log, while the log's gen allows */
    bool end_only;    /* wait: send only the end */
    bool want_output; /* the end carries result/stdout/stderr */
};

/* Parameters of a new run; strings are borrowed for the duration of run_start. Every field
 * is meant to be set (request_run.c's run_launch is the one caller): a zero seccomp is "none". */
struct run_params {
    /* Who asked: once the run has started or failed to, request_run_started answers there
     * (req NULL: nobody). */
    uint64_t conn_no;
    const struct reqtag *req;
    bool follow, want_output;
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
    const struct identity *ident;  /* who it runs as (NULL: the agent's default) */
    enum seccomp_profile seccomp;  /* its filter */
    int pre_err;                   /* non-zero: do not start; record a spawn failure */
    const char *pre_stage;         /* with pre_err: the stage it failed at */
    const char *desc; /* what list shows as cmd instead of the argv (code runs), or NULL */
    char *tmpdir;     /* heap, or NULL: a directory the run removes when it ends (code runs).
                       * run_start takes it when it returns 0 or 1; else the caller keeps it. */
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

void runs_init(struct agent *a);
/* Makes a cgroup ahead of time when none is ready for the next run (cgroup.h: pool). */
void runs_spare(struct agent *a);
void runs_destroy(struct agent *a);

struct run *run_find(struct agent *a, const char *id, size_t len);

/* Starts a run. Returns 0 and *out when the run exists: started, being started by the spawner
 * thread (RUN_STARTING), or already failed to start (ended, reason spawn). In each case the
 * requester's reply is request_run_started's, called once the outcome is known - during this
 * call or from runs_spawns_done. Else, with nothing created:
 *   -EAGAIN  max_runs reached
 *   -ENOMEM */
int run_start(struct agent *a, const struct run_params *p, struct run **out);
/* The loop's side of the spawner: finishes the runs whose spawns are done (called when the
 * spawner notifies). */
void runs_spawns_done(struct agent *a);
/* At teardown, before runs_destroy: stops the spawner after its current spawn, finishes that
 * run, and fails those never begun. */
void runs_spawner_halt(struct agent *a);

/* Reaper hook: the main process of some run (or an orphan) changed state. Returns true if pid
 * belonged to a run. */
bool run_on_exit(struct agent *a, pid_t pid, int wstatus, const struct rusage *ru);
/* True if pid is a live run's main process (one run_on_exit would take). */
bool runs_is_main(struct agent *a, pid_t pid);
/* Taskstats hook (taskstats.h): the exit record of pid says its own peak was hiwater_kb, and it
 * began at btime_s (seconds since 1970). Recorded on the run whose main process pid is, and
 * returns true; else false (another process of the machine: nothing is done). */
bool runs_note_exit_peak(struct agent *a, pid_t pid, uint64_t hiwater_kb, uint64_t btime_s);

/* Cancel (TERM + CONT now, KILL after grace_ms; while it is starting: once it has started).
 * Returns false if the run has ended. */
bool run_cancel(struct run *r, uint32_t grace_ms);
/* Sends sig to the run's process group (while it is starting: once it has started). -ESRCH if
 * the run has ended. */
int run_signal(struct run *r, int sig);

/* stdin. Returns 0 (the write is queued; cb reports its completion), 1 (nothing to write: done
 * now, cb is not called), -EPIPE (no open stdin), -ENOBUFS (stdin_bytes exceeded), -ENOMEM. */
typedef void (*stdin_done_cb)(void *arg, int status);
int run_stdin_write(struct run *r, const char *data, size_t len, bool eof, stdin_done_cb cb,
                    void *arg);

/* Subscriptions. sub_new attaches conn to r from from_seq; the sub is made ready at once. */
struct sub *sub_new(struct run *r, struct conn *c, const struct reqtag *req, uint64_t from_seq,
                    bool end_only, bool want_output);
/* Unlinks and frees; may resume a paused run. */
void sub_free(struct sub *s);
/* Replaces old (the same connection following the same run again: attach, a retried exec) by
 * a new subscription from from_seq; old sends nothing more. The new one exists before old goes,
 * so the run cannot be forgotten in between. Returns the new sub, or NULL (out of memory: old
 * is gone all the same, and the run may have been forgotten with it). */
struct sub *sub_replace(struct sub *old, const struct reqtag *req, uint64_t from_seq,
                        bool want_output);
/* Sends what the sub is owed, within budget bytes. Returns 1 if more remains, 0 if not, and -1
 * if the sub finished (end sent) and was freed. */
int sub_pump(struct sub *s, uint64_t budget);

const char *run_status_str(const struct run *r);
/* The exit code as reported: the status, 128+N for signal N, 127/126 for a spawn failure. */
int run_exit_code(const struct run *r);
const char *run_reason_str(const struct run *r);

/* Shutdown: cancel every live run with the given grace. */
void runs_cancel_all(struct agent *a, uint32_t grace_ms);

#endif
