/* Benchmark 4: boxd's memory (VmRSS) and its start-up time, on boxd instances of its own.
 *
 * usage: bench_rss BOXD TMPDIR LOGFILE
 *   BENCH_LIVE_RUNS      live runs at once (default 1000), `sleep 30` with follow: false
 *   BENCH_SEQ_RUNS       sequential runs of `true` (default 100000)
 *   BENCH_START_N        start-ups timed (default 20)
 *
 * A fresh boxd (stderr to LOGFILE) is measured idle, then with BENCH_LIVE_RUNS live runs
 * (started over 4 connections, then cancelled), then after BENCH_SEQ_RUNS sequential runs. Its
 * idle RSS is compared with an idle /bin/sleep, the smallest process there is to compare with;
 * the later RSS figures with boxd's own idle RSS. Start-up time is the time from fork to the
 * first successful connect to the socket, against posix_spawn and waitpid of /bin/true. Every
 * boxd started here dies with this process (PR_SET_PDEATHSIG) should it be killed. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define LIVE_CONNS 4
#define CONNECT_TIMEOUT_NS (10ull * 1000000000u)

/* fork and exec boxd on unix:sock; its stderr goes to log (NULL: /dev/null). Returns the pid
 * or -errno. */
static pid_t start_boxd(const char *boxd, const char *sock, const char *log, unsigned max_runs)
{
    char listen[256], runs[32];
    snprintf(listen, sizeof listen, "unix:%s", sock);
    snprintf(runs, sizeof runs, "%u", max_runs);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Only async-signal-safe calls from here to exec. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        char *const argv[] = {(char *)boxd, "--listen", listen, "--max-runs", runs, NULL};
        execv(boxd, argv);
        _exit(127);
    }
    return pid;
}

/* Waits until the socket accepts a connection. Returns 0, or -ETIMEDOUT. Spins without
 * sleeping so that the measured start-up time is not rounded up to a sleep's granularity. */
static int wait_listening(const char *sock, pid_t pid)
{
    uint64_t t0 = bench_now_ns();
    while (bench_now_ns() - t0 < CONNECT_TIMEOUT_NS) {
        int fd = bench_connect_fd(sock);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return -ECHILD; /* it died */
    }
    return -ETIMEDOUT;
}

static void stop_boxd(pid_t pid)
{
    kill(pid, SIGTERM);
    /* Bounded: 10 s for a clean stop, then KILL. */
    for (int i = 0; i < 1000; i++) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            return;
        bench_sleep_us(10000);
    }
    fprintf(stderr, "bench_rss: boxd %d did not stop on TERM, killing it\n", (int)pid);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

static long sleep_rss(void)
{
    char *const argv[] = {"/bin/sleep", "10", NULL};
    pid_t pid;
    if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) != 0)
        return -1;
    bench_sleep_us(200000);
    long kib = bench_rss_kib(pid);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return kib;
}

static int send_simple(struct bench_conn *c, const char *type, const char *id)
{
    struct msg_out o;
    if (msg_out_init(&o, 128) < 0)
        return -ENOMEM;
    msg_map_open(&o);
    msg_kv_str(&o, "type", type);
    if (id)
        msg_kv_str(&o, "id", id);
    msg_map_close(&o);
    return bench_send(c, &o);
}

/* Starts n runs of `sleep 30` spread over the connections, pipelined: all requests first,
 * then all replies. */
static int start_live(struct bench_conn *cs, unsigned n)
{
    int e;
    for (unsigned i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "live-%u", i);
        struct msg_out o;
        if (msg_out_init(&o, 128) < 0)
            return -ENOMEM;
        msg_map_open(&o);
        msg_kv_str(&o, "type", "exec");
        msg_kv_str(&o, "id", id);
        msg_kv_str(&o, "cmd", "sleep 30");
        msg_kv_bool(&o, "follow", false);
        msg_map_close(&o);
        if ((e = bench_send(&cs[i % LIVE_CONNS], &o)) < 0)
            return e;
    }
    for (unsigned i = 0; i < n; i++) {
        struct bench_conn *c = &cs[i % LIVE_CONNS];
        if ((e = bench_recv(c)) < 0)
            return e;
        if (!bench_is(c, "started")) {
            char tb[32];
            const char *code = "";
            size_t cn = 0;
            msg_get_str(&c->msg, "code", &code, &cn);
            fprintf(stderr, "bench_rss: live run %u: %s %.*s\n", i, bench_type(c, tb, sizeof tb),
                    (int)cn, code);
            return -EPROTO;
        }
    }
    return 0;
}

static int cancel_live(struct bench_conn *cs, unsigned n)
{
    int e;
    for (unsigned i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "live-%u", i);
        if ((e = send_simple(&cs[i % LIVE_CONNS], "cancel", id)) < 0)
            return e;
    }
    for (unsigned i = 0; i < n; i++)
        if ((e = bench_recv(&cs[i % LIVE_CONNS])) < 0)
            return e;
    /* Wait for them to end: runs_live from info, bounded to 20 s. */
    for (int tries = 0; tries < 200; tries++) {
        if ((e = send_simple(&cs[0], "info", NULL)) < 0 || (e = bench_recv(&cs[0])) < 0)
            return e;
        uint64_t live = 1;
        msg_get_u64(&cs[0].msg, "runs_live", &live);
        if (live == 0)
            return 0;
        bench_sleep_us(100000);
    }
    return -ETIMEDOUT;
}

static uint64_t median_ns(uint64_t *v, size_t n)
{
    struct bench_stats st;
    bench_stats(v, n, &st);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench_rss BOXD TMPDIR LOGFILE\n");
        return 2;
    }
    const char *boxd = argv[1], *tmp = argv[2], *log = argv[3];
    unsigned live_n = (unsigned)bench_env_u64("BENCH_LIVE_RUNS", 1000);
    uint64_t seq_n = bench_env_u64("BENCH_SEQ_RUNS", 100000);
    unsigned start_n = (unsigned)bench_env_u64("BENCH_START_N", 20);
    if (live_n > 100000)
        live_n = 100000;
    if (start_n < 1 || start_n > 1000)
        start_n = 20;
    char sock[256];
    snprintf(sock, sizeof sock, "%s/rss.sock", tmp);
    char b[32], f[32], t[64], metric[128];
    int rc = 0;

    /* Idle. */
    long base_kib = sleep_rss();
    pid_t pid = start_boxd(boxd, sock, log, 2 * live_n + 16);
    int e = pid < 0 ? (int)pid : wait_listening(sock, pid);
    if (e < 0) {
        fprintf(stderr, "bench_rss: boxd did not start: %s\n", strerror(-e));
        return 1;
    }
    bench_sleep_us(200000);
    long idle = bench_rss_kib(pid);
    bench_row("boxd RSS idle (KiB) [baseline: idle /bin/sleep]", bench_fmt(b, sizeof b, idle, 0),
              bench_fmt(f, sizeof f, base_kib, 0), (double)idle / (double)base_kib,
              bench_target(t, sizeof t, "< 4096 KiB", idle < 4096));

    /* Live runs. */
    struct bench_conn cs[LIVE_CONNS];
    unsigned opened = 0;
    for (; opened < LIVE_CONNS; opened++)
        if ((e = bench_conn_open(&cs[opened], sock)) < 0)
            break;
    if (e == 0) {
        fprintf(stderr, "bench_rss: starting %u live runs\n", live_n);
        e = start_live(cs, live_n);
    }
    if (e == 0) {
        bench_sleep_us(300000);
        long live = bench_rss_kib(pid);
        snprintf(metric, sizeof metric, "boxd RSS with %u live runs (KiB) [baseline: idle boxd]",
                 live_n);
        bench_row(metric, bench_fmt(b, sizeof b, live, 0), bench_fmt(f, sizeof f, idle, 0),
                  (double)live / (double)idle, "-");
        bench_note("live runs: %.1f KiB of boxd RSS per live run", (double)(live - idle) / live_n);
        e = cancel_live(cs, live_n);
        if (e == 0) {
            bench_sleep_us(300000);
            long after = bench_rss_kib(pid);
            bench_row("boxd RSS after cancelling them (KiB) [baseline: idle boxd]",
                      bench_fmt(b, sizeof b, after, 0), bench_fmt(f, sizeof f, idle, 0),
                      (double)after / (double)idle, "-");
        }
    }
    if (e < 0) {
        fprintf(stderr, "bench_rss: live runs: %s\n", strerror(-e));
        rc = 1;
    }
    for (unsigned i = 0; i < opened; i++)
        bench_conn_close(&cs[i]);

    /* Sequential runs. */
    struct bench_conn c;
    if (seq_n > 0 && (e = bench_conn_open(&c, sock)) == 0) {
        uint64_t step = seq_n / 10 ? seq_n / 10 : 1;
        long rss_10 = -1;
        uint64_t t0 = bench_now_ns(), tl = t0;
        long cpu0 = bench_cpu_ms(pid);
        for (uint64_t i = 0; i < seq_n; i++) {
            if ((e = bench_exec_true(&c, false)) < 0) {
                fprintf(stderr, "bench_rss: sequential run %llu: %s\n", (unsigned long long)i,
                        strerror(-e));
                break;
            }
            if ((i + 1) % step == 0) {
                uint64_t now = bench_now_ns();
                long rss = bench_rss_kib(pid);
                if (rss_10 < 0)
                    rss_10 = rss;
                fprintf(stderr, "bench_rss: %llu/%llu sequential runs, %.0f runs/s, RSS %ld KiB\n",
                        (unsigned long long)(i + 1), (unsigned long long)seq_n,
                        (double)step * 1e9 / (double)(now - tl), rss);
                tl = now;
            }
        }
        bench_conn_close(&c);
        if (e == 0) {
            double secs = (double)(bench_now_ns() - t0) / 1e9;
            long cpu1 = bench_cpu_ms(pid);
            long rss = bench_rss_kib(pid);
            snprintf(metric, sizeof metric,
                     "boxd RSS after %llu sequential runs (KiB) [baseline: idle boxd]",
                     (unsigned long long)seq_n);
            bench_row(metric, bench_fmt(b, sizeof b, rss, 0), bench_fmt(f, sizeof f, idle, 0),
                      (double)rss / (double)idle, "-");
            /* The first max_finished (256 by default) runs fill the finished-run table, so
             * growth after the first tenth means something only past a few thousand runs. */
            bench_note("sequential runs: %.0f runs/s; boxd CPU %.1f us per run; RSS %ld KiB "
                       "after the first 10%%, %ld KiB at the end%s",
                       (double)seq_n / secs,
                       cpu0 >= 0 && cpu1 >= 0 ? (double)(cpu1 - cpu0) * 1000.0 / (double)seq_n
                                              : -1.0,
                       rss_10, rss,
                       step < 1000       ? " (too few runs to judge leaks)"
                       : rss > rss_10    ? " (it grew: a leak?)"
                                         : " (no growth: no leak)");
        } else {
            rc = 1;
        }
    } else if (seq_n > 0) {
        fprintf(stderr, "bench_rss: connect: %s\n", strerror(-e));
        rc = 1;
    }
    stop_boxd(pid);

    /* Start-up time. */
    uint64_t *up = calloc(start_n, sizeof *up), *base = calloc(start_n, sizeof *base);
    if (up == NULL || base == NULL)
        return 1;
    static char *const bin_true[] = {"/bin/true", NULL};
    for (unsigned i = 0; i < start_n; i++) {
        snprintf(sock, sizeof sock, "%s/start-%u.sock", tmp, i);
        uint64_t t0 = bench_now_ns();
        pid = start_boxd(boxd, sock, NULL, 1024);
        e = pid < 0 ? (int)pid : wait_listening(sock, pid);
        up[i] = bench_now_ns() - t0;
        if (pid > 0)
            stop_boxd(pid);
        if (e < 0) {
            fprintf(stderr, "bench_rss: start-up %u: %s\n", i, strerror(-e));
            return 1;
        }
        t0 = bench_now_ns();
        if ((e = bench_spawn_wait(bin_true)) < 0)
            return 1;
        base[i] = bench_now_ns() - t0;
    }
    double up_ms = (double)median_ns(up, start_n) / 1e6;
    double base_ms = (double)median_ns(base, start_n) / 1e6;
    snprintf(metric, sizeof metric,
             "boxd start-up to listening, median of %u (ms) [baseline: spawn+wait /bin/true]",
             start_n);
    bench_row(metric, bench_fmt(b, sizeof b, up_ms, 2), bench_fmt(f, sizeof f, base_ms, 2),
              up_ms / base_ms, "-");
    free(up);
    free(base);
    return rc;
}
