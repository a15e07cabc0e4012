/* Shared helpers for the boxd benchmarks (tests/bench/run.sh runs them).
 *
 * A blocking unix-socket client built on the codec library, timing and statistics, process
 * helpers for the baselines, and the one output format every benchmark uses: each result is a
 * line "ROW<TAB>metric<TAB>boxd<TAB>baseline<TAB>ratio<TAB>target" on stdout, which run.sh turns
 * into the table. Progress and diagnostics go to stderr.
 *
 * Every function returns 0 or a negative errno unless it says otherwise. Nothing here is
 * thread-safe except that distinct struct bench_conn objects may be used from distinct threads.
 */
#ifndef BOXD_BENCH_H
#define BOXD_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"
#include "codec.h"

/* Largest frame the client accepts from boxd (boxd's --max-event is at most 64 MiB). */
#define BENCH_MAX_FRAME (64u << 20)
/* A read that waits longer than this for boxd is treated as a hang, so no benchmark can block
 * forever on a stuck agent. */
#define BENCH_RECV_TIMEOUT_S 60

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);
void bench_sleep_us(uint64_t us);
/* The decimal value of environment variable name, or def when it is unset or not a number. */
uint64_t bench_env_u64(const char *name, uint64_t def);

/* ---- Client --------------------------------------------------------------------------------- */

/* One connection to boxd, through the client library (protocol/client): the benchmarks measure
 * boxd through the same code boxctl uses. The last received message, c->msg (a copy of
 * c->m.root), and every pointer into it stay valid until the next bench_recv on the same
 * connection. */
struct bench_conn {
    struct box_client cl;
    struct box_msg m;
    bool m_ok;
    msgpack_object msg;
    int64_t agent_pid; /* from hello */
};

/* Connects to the unix socket at path. Returns the fd (CLOEXEC, blocking), or -errno. */
int bench_connect_fd(const char *path);
/* Connects and completes the hello exchange. On failure nothing is left to release. */
int bench_conn_open(struct bench_conn *c, const char *path);
void bench_conn_close(struct bench_conn *c);
/* Finishes o's frame and writes all of it. Always destroys o. */
int bench_send(struct bench_conn *c, struct msg_out *o);
/* Reads the next frame and parses it into c->msg. -ECONNRESET when boxd closed the connection,
 * -ETIMEDOUT after BENCH_RECV_TIMEOUT_S without a frame, -EBADMSG for a malformed one. */
int bench_recv(struct bench_conn *c);
/* True when c->msg's type is type. */
bool bench_is(const struct bench_conn *c, const char *type);
/* Copies c->msg's type (or "?") into buf, for diagnostics. */
const char *bench_type(const struct bench_conn *c, char *buf, size_t size);

/* Sends exec of `true` (cmd "true", i.e. /bin/sh -c true, or argv ["/bin/true"] when argv is
 * set), follows it to its end event, and checks it completed. -EPROTO (after a message on
 * stderr) when boxd answered anything else. */
int bench_exec_true(struct bench_conn *c, bool argv);

/* ---- Processes ------------------------------------------------------------------------------ */

/* posix_spawn of argv[0] (not searched in PATH) with argv, then waitpid. Returns 0 when it exited
 * 0, -ECHILD when it exited otherwise, or the spawn's -errno. */
int bench_spawn_wait(char *const argv[]);
/* VmRSS of pid in KiB, or -1 when it cannot be read. */
long bench_rss_kib(pid_t pid);

/* ---- Statistics and output ------------------------------------------------------------------ */

struct bench_stats {
    double p50_us, p99_us, mean_us;
};
/* Sorts ns[0..n) in place and summarises it (n > 0). */
void bench_stats(uint64_t *ns, size_t n, struct bench_stats *s);

/* Prints one result row. ratio is boxd / baseline; a NaN ratio prints as "n/a". */
void bench_row(const char *metric, const char *boxd, const char *baseline, double ratio,
               const char *target);
/* Prints a free-form note that run.sh shows under the table (printf-style, one line). */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* User plus system CPU time of pid so far, in milliseconds, or -1. */
long bench_cpu_ms(pid_t pid);
/* Formats v with the given number of decimals into buf and returns buf (for bench_row). */
const char *bench_fmt(char *buf, size_t size, double v, int decimals);
/* The target text with its verdict appended: "<= 1.3x: met" or "<= 1.3x: MISSED". */
const char *bench_target(char *buf, size_t size, const char *target, bool met);

#endif
