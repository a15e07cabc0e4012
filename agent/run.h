/* One run's life, the state machine: output read into its log (with flow control for its
 * readers), timeout and cancel, exit, the end, lingering, retention across runs. It knows
 * nothing of connections or encoding: whoever reads its log (sub.h, the follower bridge)
 * registers a struct run_reader, and the run reports through the callbacks its starter and its
 * readers gave it, never by name. Starting a run is runstart.h; finding one, runtab.h.
 *
 * Ownership: the agent owns every run (a->runs). A run is freed only when it is evicted from the
 * finished list (no reader and no open pipe left) or when the agent stops. Readers are owned by
 * whoever registered them; a run with readers is never forgotten, except at teardown, when each
 * is told (RUN_GONE) and must let go. */
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

#include "linesplit.h"

/* STARTING: queued to, or being started by, the spawner thread (pid 0 until it is done). */
enum run_state { RUN_STARTING, RUN_RUNNING, RUN_DRAINING, RUN_ENDED };

enum run_reason {
    REASON_EXIT, REASON_SIGNAL, REASON_TIMEOUT, REASON_CANCEL, REASON_SPAWN, REASON_OOM
};

/* The streams of output records (PROTOCOL.md 4.2, 4.9). */
#define RUN_STREAM_STDOUT 1
#define RUN_STREAM_STDERR 2
#define RUN_STREAM_TTY 3

struct run_pipe {
    struct run *run;
    int fd;     /* a pipe's read end, or a terminal run's pty master */
    int stream; /* RUN_STREAM_* */
    uv_poll_t poll;
    bool open;    /* fd valid and poll handle initialized */
    bool polling; /* poll started */
    struct linesplit split; /* bytes read, cut into records */
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
    struct list readers;   /* struct run_reader.link */
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

    /* A terminal run (run_params.tty) has one: out[0] reads its pty master (stream
     * RUN_STREAM_TTY, raw), out[1] is unused, and in writes to a second fd of the master. */
    struct run_pipe out[2];
    struct stdin_pipe in;
    bool tty;
    uint16_t tty_rows, tty_cols; /* its window size, as last set */
    dev_t tty_rdev;              /* the slave's device: what its holders have open */
    int child_fd[3];        /* the child's ends of the pipes (or -1), until it has started */

    /* While STARTING. */
    struct spawn_job *job;  /* on the spawner (spawn.h), or NULL: started in the loop */
    struct list start_link; /* a->starting */
    /* Who asked, told once when the run has started or failed to (run_params.on_started). */
    void (*on_started)(struct run *r, void *arg);
    void *started_arg;
    bool early_exit;        /* the reaper had the child before the spawn was done */
    bool have_exit_peak;    /* exit_peak_kb came from the main process's taskstats record */
    uint64_t exit_peak_kb;
    int early_status;
    struct rusage early_ru;
    uint64_t pending_sigs;  /* `signal`s to deliver once started (bit n-1 for n) */
    uint32_t cancel_grace;  /* with cancel_requested: `cancel` while starting */
    /* What the run holds for its caller until it ends (a code run's directory): released once
     * (run_params.release). */
    void (*release)(void *arg, const char *run_id);
    void *release_arg;

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

/* What a reader is told (run_reader.notify). */
enum run_event {
    RUN_MORE, /* more output, or the end: read it */
    RUN_GONE, /* the run is being forgotten (teardown): run_reader_remove at once */
};

/* A reader of a run's log (sub.h embeds one in each subscription). The run knows where each
 * reader is: flow control holds the run back for the slowest, and retention never drops a
 * record a reader is owed. It calls notify when there is more to read (for an end_only reader:
 * only at the end). The reader advances next_seq and next_cost itself and then calls
 * run_reader_moved. */
struct run_reader {
    struct list link; /* r->readers */
    uint64_t next_seq;  /* the first record it has not read */
    uint64_t next_cost; /* the log's cost (runlog.h) before it */
    bool end_only; /* reads only the end: never holds the run back */
    bool idle;     /* reads nothing more for now (its connection is closing): holds nothing */
    void (*notify)(struct run_reader *rd, enum run_event ev);
};

/* Registers rd (next_seq, next_cost, end_only and notify set) with r. Does not notify. */
void run_reader_add(struct run *r, struct run_reader *rd);
/* Unregisters rd: r may resume, or, ended and without readers, be forgotten (r may be invalid
 * afterwards). */
void run_reader_remove(struct run *r, struct run_reader *rd);
/* A reader advanced or went idle: flow control and retention look again. */
void run_reader_moved(struct run *r);

/* For runstart.c, the state machine's entries: the spawn is over (pid > 0: running; else -errno,
 * failed at stage, with failed_pid the child's pid if there was one), a run refused before any
 * process, its stdin closed. */
void run__spawned(struct run *r, pid_t pid, const char *stage, pid_t failed_pid);
void run__spawn_failed(struct run *r, const char *stage, int err);
void run__stdin_close(struct run *r);

/* Makes a cgroup ahead of time when none is ready for the next run (cgroup.h: pool). */
void runs_spare(struct agent *a);
void runs_destroy(struct agent *a);

/* Reaper hook: the main process of some run (or an orphan) changed state. Returns true if pid
 * belonged to a run. */
bool run_on_exit(struct agent *a, pid_t pid, int wstatus, const struct rusage *ru);

/* Cancel (TERM + CONT now, KILL after grace_ms; while it is starting: once it has started).
 * Returns false if the run has ended. */
bool run_cancel(struct run *r, uint32_t grace_ms);
/* Sends sig to the run's process group (while it is starting: once it has started). -ESRCH if
 * the run has ended. */
int run_signal(struct run *r, int sig);

/* stdin. Returns 0 (the write is queued; cb reports its completion), 1 (nothing to write: done
 * now, cb is not called), -EPIPE (no open stdin), -ENOBUFS (stdin_bytes exceeded), -ENOMEM.
 * For a terminal run the bytes go to the pty master, and eof writes its VEOF character after
 * them (the terminal stays open). */
typedef void (*stdin_done_cb)(void *arg, int status);
int run_stdin_write(struct run *r, const char *data, size_t len, bool eof, stdin_done_cb cb,
                    void *arg);

/* A terminal run's new window size (TIOCSWINSZ: the foreground process group gets SIGWINCH).
 * Returns 0, -ENOTTY (not a terminal run), -ESRCH (its main process has exited), or the
 * ioctl's negative errno. */
int run_resize(struct run *r, uint16_t rows, uint16_t cols);

const char *run_status_str(const struct run *r);
/* The exit code as reported: the status, 128+N for signal N, 127/126 for a spawn failure. */
int run_exit_code(const struct run *r);
const char *run_reason_str(const struct run *r);

/* Shutdown: cancel every live run with the given grace. */
void runs_cancel_all(struct agent *a, uint32_t grace_ms);

#endif
