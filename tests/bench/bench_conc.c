/* Benchmark 2: runs per second with 1, 8 and 64 concurrent clients, against the floor.
 *
 * usage: bench_conc SOCKET
 *   BENCH_CONC_LEVELS    comma-separated client counts (default "1,8,64", each at most 256)
 *   BENCH_CONC_MS        duration of each measurement in ms (default 3000)
 *
 * Each client is a thread with its own connection that execs `true` (cmd, followed to `end`) in
 * a loop until the deadline. The floor is the same number of threads each looping posix_spawn
 * of /bin/sh -c true and waitpid. A run that is in flight at the deadline is finished and
 * counted, and the rate is divided by the time until the last thread stopped. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CLIENTS 256

struct shared {
    const char *sock;
    bool use_boxd;
    uint64_t start_ns, deadline_ns;
    pthread_barrier_t ready;
};

struct worker {
    pthread_t th;
    struct shared *sh;
    uint64_t runs;
    uint64_t stop_ns;
    int err;
};

static void *worker_main(void *p)
{
    struct worker *w = p;
    struct shared *sh = w->sh;
    static char *const sh_true[] = {"/bin/sh", "-c", "true", NULL};
    struct bench_conn c;
    bool open = false;
    if (sh->use_boxd) {
        w->err = bench_conn_open(&c, sh->sock);
        open = w->err == 0;
    }
    /* Everyone starts together; the main thread sets the deadline after this barrier. */
    pthread_barrier_wait(&sh->ready);
    pthread_barrier_wait(&sh->ready);
    while (w->err == 0 && bench_now_ns() < sh->deadline_ns) {
        w->err = sh->use_boxd ? bench_exec_true(&c, false) : bench_spawn_wait(sh_true);
        if (w->err == 0)
            w->runs++;
    }
    w->stop_ns = bench_now_ns();
    if (open)
        bench_conn_close(&c);
    return NULL;
}

/* Runs one measurement; stores runs per second in *rate. */
static int measure(const char *sock, bool use_boxd, unsigned n, uint64_t ms, double *rate)
{
    struct shared sh = {.sock = sock, .use_boxd = use_boxd};
    struct worker *w = calloc(n, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    pthread_barrier_init(&sh.ready, NULL, n + 1);
    unsigned started = 0;
    int e = 0;
    for (; started < n; started++) {
        w[started].sh = &sh;
        if ((e = pthread_create(&w[started].th, NULL, worker_main, &w[started])) != 0)
            break;
    }
    if (started < n) {
        /* Cannot happen with sane limits; fail rather than wait on a barrier forever. */
        fprintf(stderr, "bench_conc: pthread_create: %s\n", strerror(e));
        exit(1);
    }
    pthread_barrier_wait(&sh.ready);
    sh.start_ns = bench_now_ns();
    sh.deadline_ns = sh.start_ns + ms * 1000000u;
    pthread_barrier_wait(&sh.ready);
    uint64_t runs = 0, last = sh.start_ns;
    for (unsigned i = 0; i < n; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].err && e == 0) {
            e = w[i].err;
            fprintf(stderr, "bench_conc: %s client %u: %s\n", use_boxd ? "boxd" : "floor", i,
                    strerror(-e));
        }
        runs += w[i].runs;
        if (w[i].stop_ns > last)
            last = w[i].stop_ns;
    }
    pthread_barrier_destroy(&sh.ready);
    free(w);
    *rate = (double)runs * 1e9 / (double)(last - sh.start_ns);
    return e;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bench_conc SOCKET\n");
        return 2;
    }
    const char *levels = getenv("BENCH_CONC_LEVELS");
    if (levels == NULL || levels[0] == '\0')
        levels = "1,8,64";
    uint64_t ms = bench_env_u64("BENCH_CONC_MS", 3000);
    int rc = 0;
    const char *p = levels;
    for (int guard = 0; *p && guard < 32; guard++) {
        char *end;
        unsigned long n = strtoul(p, &end, 10);
        if (end == p || n == 0 || n > MAX_CLIENTS) {
            fprintf(stderr, "bench_conc: bad BENCH_CONC_LEVELS '%s'\n", levels);
            return 2;
        }
        p = *end == ',' ? end + 1 : end;
        double floor_rate = 0, boxd_rate = 0;
        fprintf(stderr, "bench_conc: %lu clients, %llu ms each for floor and boxd\n", n,
                (unsigned long long)ms);
        int e1 = measure(argv[1], false, (unsigned)n, ms, &floor_rate);
        int e2 = measure(argv[1], true, (unsigned)n, ms, &boxd_rate);
        char metric[96], b[32], f[32];
        snprintf(metric, sizeof metric, "runs/s, %lu client%s [floor: %lu posix_spawn loops]", n,
                 n == 1 ? "" : "s", n);
        if (e1 || e2) {
            rc = 1;
            bench_row(metric, e2 ? "error" : bench_fmt(b, sizeof b, boxd_rate, 0),
                      e1 ? "error" : bench_fmt(f, sizeof f, floor_rate, 0), NAN, "-");
            continue;
        }
        bench_row(metric, bench_fmt(b, sizeof b, boxd_rate, 0),
                  bench_fmt(f, sizeof f, floor_rate, 0), boxd_rate / floor_rate, "-");
    }
    return rc;
}
