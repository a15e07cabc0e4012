/* The agent's own log: one line per notable event, on stderr (the console when PID 1).
 * Never called from a child after fork, never given a secret.
 *
 * Logging never blocks the event loop. stderr may be a serial console throttled to its baud rate,
 * or a pipe whose reader stalls: a line the sink cannot take at once waits in a fixed in-memory
 * queue of LOG_QUEUE_BYTES, written out when the sink is writable again; a line that does not fit
 * is dropped and counted, and once the sink takes lines again one line says how many were lost.
 * How the sink is made non-blocking without touching anyone else's file description is explained
 * at log_open in log.c.
 *
 * Events that a peer without the token, another guest or a local user can trigger at will (a
 * wrong token, a refused CID or uid, the connection limit...) are logged through log_limited:
 * at most LOG_RL_BURST lines per kind per LOG_RL_WINDOW_MS; the rest are counted, and one line
 * per kind and window says how many were not logged.
 *
 * Threads: the functions below may be called from any thread (a mutex guards the queue), but the
 * queue is only written out, and the rate-limit summaries only emitted, on the loop thread. */
#ifndef BOXD_LOG_H
#define BOXD_LOG_H

#include <stdint.h>
#include <uv.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

#define LOG_LINE_MAX 1024u       /* a longer line is cut */
#define LOG_QUEUE_BYTES 65536u   /* lines waiting for a slow sink */
#define LOG_RL_BURST 10u         /* rate-limited lines per kind per window */
#define LOG_RL_WINDOW_MS 5000u
#define LOG_STOPPED_WAIT_MS 200u /* after log_stop: longest wait for the sink, per line */

/* Kinds of rate-limited events: each has a budget of its own. */
enum log_kind {
    LOG_RL_TOKEN,  /* hello with a wrong or missing token */
    LOG_RL_CID,    /* a vsock peer whose CID is not allowed */
    LOG_RL_UID,    /* a unix peer whose uid is not allowed */
    LOG_RL_CONNS,  /* a connection over max_conns */
    LOG_RL_FRAME,  /* a frame over the size limit */
    LOG_RL_ACCEPT, /* accept failures (descriptors or memory exhausted) */
    LOG_RL_TASKSTATS, /* taskstats exit records lost or unreadable (taskstats.h) */
    LOG_RL_KINDS
};

void log_set_level(enum log_level lvl);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* As log_msg, within kind's rate limit. */
void log_limited(enum log_kind kind, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Makes the log's private, non-blocking description of stderr (see log.c). Call after fds 0-2
 * are known open; call again once /proc is mounted (a VM's init starts without it): until it
 * succeeds, lines are written to fd 2 only when poll says it is writable. Idempotent. */
void log_open(void);
/* Starts writing queued lines out from the loop (a uv_poll on the sink, or a retry timer), and
 * the rate-limit summaries. Returns 0 or a negative libuv error (logging then still works, with
 * lines dropped rather than queued when the sink is full). */
int log_start(uv_loop_t *loop);
/* Closes the loop's handles (their close callbacks run on the next uv_run). From then on the
 * loop no longer runs: each line may wait up to LOG_STOPPED_WAIT_MS for the sink. */
void log_stop(void);
/* Waits up to ms for the queue to be written out (shutdown and fatal paths only: it blocks). */
void log_flush(unsigned ms);

/* Lines lost because the sink was full or failing, and rate-limited lines not logged, since
 * start-up (info.log_dropped, info.log_suppressed). */
uint64_t log_dropped(void);
uint64_t log_suppressed(void);

/* Clocks, in nanoseconds. */
uint64_t now_real_ns(void);
uint64_t now_mono_ns(void);

#endif
