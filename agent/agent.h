/* The agent: configuration, and the state every part of boxd shares. There is one struct agent,
 * made in main() and passed explicitly; there are no hidden globals. */
#ifndef BOXD_AGENT_H
#define BOXD_AGENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "auth.h"
#include "cgroup.h"
#include "init.h"
#include "list.h"
#include "sandbox.h"
#include "taskstats.h"

#define BOXD_DEFAULT_SOCKET "/run/boxd.sock"
#define BOXD_MAX_LISTEN 16
#define BOXD_ID_MAX 64

/* Every limit and default, named. Checked in 64-bit arithmetic before allocating. */
struct config {
    const char *listen[BOXD_MAX_LISTEN];
    unsigned n_listen;
    uint32_t max_frame;     /* largest request frame body accepted */
    uint32_t max_event;     /* largest frame the agent sends (output batches stop below it) */
    uint32_t max_line;      /* a longer line is cut into pieces of this size */
    uint32_t max_runs;      /* live runs at once */
    uint32_t max_finished;  /* finished runs remembered */
    uint32_t max_conns;     /* connections at once */
    uint64_t log_bytes;     /* retained log per run */
    uint64_t log_total;     /* retained logs of all runs: past it, oldest finished runs go */
    uint32_t stdin_bytes;   /* stdin bytes queued per run */
    uint32_t max_subs;      /* runs one connection may follow at once */
    uint64_t conn_queue;    /* unsent bytes per connection before reading requests pauses */
    uint64_t queue_total;   /* unsent bytes over all connections before reading pauses */
    uint32_t hello_timeout_ms; /* a connection that has not passed hello by then is closed */
    uint32_t grace_ms;      /* TERM -> KILL grace for cancel and timeout */
    uint32_t drain_ms;      /* wait for pipe EOF after the main process exits */
    uint32_t flush_ms;      /* idle time before a partial line is sent */
    uint32_t vsock_allow_cid; /* a guest CID allowed besides the host (0: none) */
    const char *token_file;
    uint32_t socket_mode;     /* unix sockets: mode (never world-writable), owner, group */
    int64_t socket_uid, socket_gid; /* -1: unchanged */
    const char *run_user;     /* runs execute as this user (NULL: boxd's own) */
    const char *seccomp;      /* default profile: "default", "strict" or "none" */
    bool allow_root_runs;     /* with a token, runs may still execute as root / boxd's uid */
    bool allow_seccomp_none;  /* a request may ask for no seccomp filter */
    uint64_t run_nofile;      /* RLIMIT_NOFILE of runs (soft = hard) */
    uint64_t run_core;        /* RLIMIT_CORE of runs */
    uint64_t run_memory_max;  /* cgroup memory.max of each run (0: none) */
    uint64_t run_pids_max;    /* cgroup pids.max of each run (0: none) */
    int run_oom_score_adj;    /* runs' oom_score_adj (boxd's own is -1000) */
    bool vsock_any_cid;       /* allow every CID (testing inside one VM) */
};

void config_defaults(struct config *c);

struct run;
struct conn;
struct code_table;
struct files;

struct agent {
    uv_loop_t *loop;
    struct config cfg;
    char boot_id[37];
    pid_t pid;
    bool pid1;
    enum agent_mode mode;
    enum final_action final_action;
    bool others_killed; /* PID 1: SIGKILL sent to -1 */
    bool subreaper;
    uint64_t start_mono_ns;

    struct identity ident; /* who runs execute as (--user, else boxd's own user) */
    char oom_adj[16];      /* runs' oom_score_adj, formatted for the child */
    int devnull_fd;   /* /dev/null, O_CLOEXEC, dup'ed into runs as stdin */
    char *read_buf;   /* shared read buffer for pipes and sockets (single-threaded) */
    size_t read_buf_size;
    char *spawn_stack; /* the CLONE_VFORK child's stack; the parent is suspended meanwhile */
    size_t spawn_stack_size;

    /* Runs: all of them in start order; finished ones also on a FIFO for eviction. */
    struct list runs;
    struct list finished;
    struct list starting;   /* runs whose spawn the spawner thread has not finished */
    uint32_t n_starting;
    uv_async_t spawn_async; /* the spawner's notification (runs_spawns_done) */
    struct run **by_id;  /* hash buckets, chained through run->id_next */
    struct run **by_pid; /* chained through run->pid_next */
    unsigned n_buckets;
    uint32_t n_live;     /* running or draining: count against max_runs */
    uint32_t n_finished;
    uint32_t n_lingering; /* ended runs whose background processes still live, counted
                           * against max_runs (run.c: without a cgroup, for a bounded time) */
    uint64_t sig_nondefault; /* signals whose disposition is not SIG_DFL (bit n-1 for n) */
    uint64_t next_run_no;
    uint64_t log_held; /* memory held by the logs of the runs in `runs` (runlog.total) */
    uint64_t started_total;
    uint64_t reaped;     /* processes reaped that were not a run's main process */

    struct list conns;
    /* Where every connection's frames go (conns_init: request_frame). */
    void (*on_frame)(struct conn *c, const uint8_t *body, size_t len);
    uint32_t n_conns;
    uint32_t n_closing;    /* conns closing, not yet freed (they hold no slot any more) */
    struct list prehello;  /* conns that have not passed hello, oldest first (conn.pre_link) */
    uint32_t n_prehello;
    uv_timer_t hello_timer; /* the hello deadline of the oldest of them */
    uint64_t queued_total; /* conn.queued over all connections */
    bool queue_full;       /* queued_total reached queue_total: no conn is read or pumped */
    uint64_t next_conn_no;
    struct list listeners;
    struct code_table *code; /* the language table (code.h): made on first use, code_destroy */
    struct files *files;     /* file requests (files/files.h): files_start, files_stop */
    struct list tunnels;     /* every open tunnel (tunnel.h: struct tunnel.agent_link) */
    uint32_t n_tunnels;      /* tunnels open or connecting: what max_tunnels bounds */

    struct cgroups cg;
    struct auth auth;
    struct sandbox sandbox;
    struct taskstats_listener taskstats; /* exit records: runs' own peaks (taskstats.h) */

    int sig_fd;
    uv_poll_t sig_poll;
    void (*on_stop_signal)(struct agent *a, const char *why); /* signals_start's on_stop */
    bool shutting_down;
    bool tearing_down; /* runs_destroy under way: no eviction */
    uv_timer_t shutdown_timer;
    uint64_t shutdown_start_ns;
    int exit_code;
};

/* Allocates the tables and buffers sized at start-up (a->cfg must be set). Returns 0,
 * -ENOMEM, or a negative errno for /dev/null. */
int agent_init(struct agent *a);
void agent_release(struct agent *a);

#endif
