/* Benchmark 1: latency of one exec of `true` through boxd, against the floor.
 *
 * usage: bench_exec SOCKET
 *   BENCH_ITERS          measured iterations (default 2000), after BENCH_ITERS/10 (>= 20) warm-up
 *   BENCH_GAP_ITERS      iterations of the idle-gap measurement below (default 100)
 *   BENCH_GAP_MS         the idle gap (default 50)
 *   BENCH_SSH_CONTROL    path of an open ssh ControlMaster socket to localhost (run.sh sets it
 *                        up when sshd and keys are there); unset: the ssh row says why not
 *   BENCH_SSH_NOTE       the reason printed when BENCH_SSH_CONTROL is unset
 *   BENCH_SSH_ITERS      ssh iterations (default 200)
 *   BENCH_SSH_BIN        the ssh client (default /usr/bin/ssh)
 *   BENCH_SSH_HOST       where it goes (default localhost; user@localhost for another user)
 *
 * One iteration measures, in turn: boxd exec cmd "true" (/bin/sh -c true, followed to `end`);
 * posix_spawn of /bin/sh -c true and waitpid (the floor); boxd exec argv ["/bin/true"]; and
 * posix_spawn of /bin/true. Interleaving them makes drift in the machine's speed (other load,
 * frequency changes) affect each the same way.
 *
 * Back-to-back runs keep kernel state warm that an interactive client, which execs now and then,
 * does not find warm (an RCU-synchronised lock that cgroup migration takes, for one). So a second
 * measurement sleeps BENCH_GAP_MS before each boxd exec and each floor spawn. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { M_BOXD_SH, M_FLOOR_SH, M_BOXD_ARGV, M_FLOOR_ARGV, M_N };

static int measure_one(struct bench_conn *c, int which, uint64_t *ns)
{
    static char *const sh_true[] = {"/bin/sh", "-c", "true", NULL};
    static char *const bin_true[] = {"/bin/true", NULL};
    uint64_t t0 = bench_now_ns();
    int e;
    switch (which) {
    case M_BOXD_SH:
        e = bench_exec_true(c, false);
        break;
    case M_FLOOR_SH:
        e = bench_spawn_wait(sh_true);
        break;
    case M_BOXD_ARGV:
        e = bench_exec_true(c, true);
        break;
    default:
        e = bench_spawn_wait(bin_true);
        break;
    }
    *ns = bench_now_ns() - t0;
    return e;
}

/* ssh -S CONTROL HOST true over the open master; fills *st. 0, or -errno. */
static int measure_ssh(const char *control, uint64_t iters, struct bench_stats *st)
{
    const char *ssh = getenv("BENCH_SSH_BIN"), *host = getenv("BENCH_SSH_HOST");
    char *bin = (char *)(ssh && ssh[0] ? ssh : "/usr/bin/ssh");
    char *const argv[] = {bin,  "-S",   (char *)control, "-o", "BatchMode=yes",
                          (char *)(host && host[0] ? host : "localhost"), "true", NULL};
    uint64_t *ns = calloc(iters, sizeof *ns);
    if (ns == NULL)
        return -ENOMEM;
    int e = 0;
    for (uint64_t i = 0; i < iters + 10 && e == 0; i++) {
        uint64_t t0 = bench_now_ns();
        e = bench_spawn_wait(argv);
        if (i >= 10)
            ns[i - 10] = bench_now_ns() - t0;
    }
    if (e == 0)
        bench_stats(ns, iters, st);
    free(ns);
    return e;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bench_exec SOCKET\n");
        return 2;
    }
    uint64_t iters = bench_env_u64("BENCH_ITERS", 2000);
    if (iters < 10)
        iters = 10;
    uint64_t warm = iters / 10 < 20 ? 20 : iters / 10;
    struct bench_conn c;
    int e = bench_conn_open(&c, argv[1]);
    if (e < 0) {
        fprintf(stderr, "bench_exec: connect %s: %s\n", argv[1], strerror(-e));
        return 1;
    }
    uint64_t *ns[M_N];
    for (int m = 0; m < M_N; m++) {
        ns[m] = calloc(iters, sizeof *ns[m]);
        if (ns[m] == NULL) {
            fprintf(stderr, "bench_exec: out of memory\n");
            return 1;
        }
    }
    fprintf(stderr, "bench_exec: %llu iterations (+%llu warm-up) of 4 measurements\n",
            (unsigned long long)iters, (unsigned long long)warm);
    for (uint64_t i = 0; i < warm + iters; i++) {
        for (int m = 0; m < M_N; m++) {
            uint64_t t;
            if ((e = measure_one(&c, m, &t)) < 0) {
                fprintf(stderr, "bench_exec: measurement %d, iteration %llu: %s\n", m,
                        (unsigned long long)i, strerror(-e));
                return 1;
            }
            if (i >= warm)
                ns[m][i - warm] = t;
        }
    }
    uint64_t gap_iters = bench_env_u64("BENCH_GAP_ITERS", 100);
    uint64_t gap_ms = bench_env_u64("BENCH_GAP_MS", 50);
    if (gap_ms > 10000)
        gap_ms = 10000;
    uint64_t *gap_ns[2] = {calloc(gap_iters + 1, sizeof(uint64_t)),
                           calloc(gap_iters + 1, sizeof(uint64_t))};
    if (gap_ns[0] == NULL || gap_ns[1] == NULL) {
        fprintf(stderr, "bench_exec: out of memory\n");
        return 1;
    }
    if (gap_iters > 0)
        fprintf(stderr, "bench_exec: %llu iterations with %llu ms idle before each\n",
                (unsigned long long)gap_iters, (unsigned long long)gap_ms);
    for (uint64_t i = 0; i < gap_iters; i++) {
        for (int m = 0; m < 2; m++) {
            bench_sleep_us(gap_ms * 1000u);
            if ((e = measure_one(&c, m == 0 ? M_BOXD_SH : M_FLOOR_SH, &gap_ns[m][i])) < 0) {
                fprintf(stderr, "bench_exec: gap measurement %d, iteration %llu: %s\n", m,
                        (unsigned long long)i, strerror(-e));
                return 1;
            }
        }
    }
    bench_conn_close(&c);

    struct bench_stats st[M_N];
    for (int m = 0; m < M_N; m++)
        bench_stats(ns[m], iters, &st[m]);

    char b[32], f[32], t[64];
    double r;
    r = st[M_BOXD_SH].p50_us / st[M_FLOOR_SH].p50_us;
    bench_row("exec cmd true, p50 (us) [floor: posix_spawn sh -c true]",
              bench_fmt(b, sizeof b, st[M_BOXD_SH].p50_us, 0),
              bench_fmt(f, sizeof f, st[M_FLOOR_SH].p50_us, 0), r,
              bench_target(t, sizeof t, "<= 1.3x", r <= 1.3));
    bench_row("exec cmd true, p99 (us)", bench_fmt(b, sizeof b, st[M_BOXD_SH].p99_us, 0),
              bench_fmt(f, sizeof f, st[M_FLOOR_SH].p99_us, 0),
              st[M_BOXD_SH].p99_us / st[M_FLOOR_SH].p99_us, "-");
    bench_row("exec cmd true, mean (us)", bench_fmt(b, sizeof b, st[M_BOXD_SH].mean_us, 0),
              bench_fmt(f, sizeof f, st[M_FLOOR_SH].mean_us, 0),
              st[M_BOXD_SH].mean_us / st[M_FLOOR_SH].mean_us, "-");
    r = st[M_BOXD_ARGV].p50_us / st[M_FLOOR_ARGV].p50_us;
    bench_row("exec argv /bin/true, p50 (us) [floor: posix_spawn /bin/true]",
              bench_fmt(b, sizeof b, st[M_BOXD_ARGV].p50_us, 0),
              bench_fmt(f, sizeof f, st[M_FLOOR_ARGV].p50_us, 0), r,
              bench_target(t, sizeof t, "<= 1.3x", r <= 1.3));
    bench_row("exec argv /bin/true, p99 (us)", bench_fmt(b, sizeof b, st[M_BOXD_ARGV].p99_us, 0),
              bench_fmt(f, sizeof f, st[M_FLOOR_ARGV].p99_us, 0),
              st[M_BOXD_ARGV].p99_us / st[M_FLOOR_ARGV].p99_us, "-");

    if (gap_iters > 0) {
        struct bench_stats gb, gf;
        bench_stats(gap_ns[0], gap_iters, &gb);
        bench_stats(gap_ns[1], gap_iters, &gf);
        char metric[128];
        snprintf(metric, sizeof metric,
                 "exec cmd true after %llu ms idle, p50 (us) [floor: the same spawn]",
                 (unsigned long long)gap_ms);
        r = gb.p50_us / gf.p50_us;
        bench_row(metric, bench_fmt(b, sizeof b, gb.p50_us, 0),
                  bench_fmt(f, sizeof f, gf.p50_us, 0), r,
                  bench_target(t, sizeof t, "<= 1.3x", r <= 1.3));
        snprintf(metric, sizeof metric, "exec cmd true after %llu ms idle, p99 (us)",
                 (unsigned long long)gap_ms);
        bench_row(metric, bench_fmt(b, sizeof b, gb.p99_us, 0),
                  bench_fmt(f, sizeof f, gf.p99_us, 0), gb.p99_us / gf.p99_us, "-");
    }
    free(gap_ns[0]);
    free(gap_ns[1]);

    const char *control = getenv("BENCH_SSH_CONTROL");
    if (control && control[0]) {
        struct bench_stats ss;
        e = measure_ssh(control, bench_env_u64("BENCH_SSH_ITERS", 200), &ss);
        if (e == 0) {
            bench_row("exec cmd true p50 (us) [baseline: ssh localhost true, ControlMaster]",
                      bench_fmt(b, sizeof b, st[M_BOXD_SH].p50_us, 0),
                      bench_fmt(f, sizeof f, ss.p50_us, 0), st[M_BOXD_SH].p50_us / ss.p50_us,
                      "-");
            bench_row("exec cmd true p99 (us) [baseline: the same ssh]",
                      bench_fmt(b, sizeof b, st[M_BOXD_SH].p99_us, 0),
                      bench_fmt(f, sizeof f, ss.p99_us, 0), st[M_BOXD_SH].p99_us / ss.p99_us,
                      "-");
        } else
            bench_row("exec cmd true p50 (us) [baseline: ssh localhost true, ControlMaster]",
                      bench_fmt(b, sizeof b, st[M_BOXD_SH].p50_us, 0), "n/a (ssh failed)", NAN,
                      "-");
    } else {
        const char *note = getenv("BENCH_SSH_NOTE");
        char nb[96];
        snprintf(nb, sizeof nb, "n/a (%s)", note && note[0] ? note : "not set up");
        bench_row("exec cmd true p50 (us) [baseline: ssh localhost true, ControlMaster]",
                  bench_fmt(b, sizeof b, st[M_BOXD_SH].p50_us, 0), nb, NAN, "-");
    }
    for (int m = 0; m < M_N; m++)
        free(ns[m]);
    return 0;
}
