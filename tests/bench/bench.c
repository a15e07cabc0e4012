/* Shared helpers for the boxd benchmarks. See bench.h. */
#include "bench.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;


uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

uint64_t bench_env_u64(const char *name, uint64_t def)
{
    const char *s = getenv(name);
    if (s == NULL || s[0] < '0' || s[0] > '9')
        return def;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return def;
    return v;
}

/* ---- Client --------------------------------------------------------------------------------- */

int bench_connect_fd(const char *path)
{
    struct box_client cl;
    int e = box_client_connect(&cl, path);
    if (e < 0)
        return e;
    struct timeval tv = {BENCH_RECV_TIMEOUT_S, 0};
    setsockopt(cl.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return cl.fd; /* the fd is the caller's now; nothing else in cl needs releasing */
}

void bench_conn_close(struct bench_conn *c)
{
    box_client_close(&c->cl);
    if (c->m_ok)
        box_msg_destroy(&c->m);
    c->m_ok = false;
}

int bench_send(struct bench_conn *c, struct msg_out *o)
{
    return box_client_send(&c->cl, o);
}

int bench_recv(struct bench_conn *c)
{
    int e = box_client_recv(&c->cl, &c->m, BENCH_RECV_TIMEOUT_S * 1000);
    if (e < 0)
        return e;
    c->msg = c->m.root;
    return 0;
}

bool bench_is(const struct bench_conn *c, const char *type)
{
    const char *s;
    size_t n;
    if (msg_get_str(&c->msg, "type", &s, &n) < 0)
        return false;
    return strlen(type) == n && memcmp(s, type, n) == 0;
}

const char *bench_type(const struct bench_conn *c, char *buf, size_t size)
{
    const char *s;
    size_t n;
    if (msg_get_str(&c->msg, "type", &s, &n) < 0)
        snprintf(buf, size, "?");
    else
        snprintf(buf, size, "%.*s", (int)n, s);
    return buf;
}

/* Prints an error message from boxd: its code and text. */
static void print_error(const struct bench_conn *c, const char *what)
{
    const char *code = "?", *text = "";
    size_t cn = 1, tn = 0;
    msg_get_str(&c->msg, "code", &code, &cn);
    msg_get_str(&c->msg, "message", &text, &tn);
    fprintf(stderr, "bench: %s: boxd answered error %.*s: %.*s\n", what, (int)cn, code, (int)tn,
            text);
}

int bench_conn_open(struct bench_conn *c, const char *path)
{
    memset(c, 0, sizeof *c);
    int e = box_msg_init(&c->m);
    if (e < 0)
        return e;
    c->m_ok = true;
    e = box_client_connect(&c->cl, path);
    if (e < 0) {
        box_msg_destroy(&c->m);
        c->m_ok = false;
        return e;
    }
    e = box_client_hello(&c->cl, "boxd-bench/1", BENCH_RECV_TIMEOUT_S * 1000, &c->m);
    if (e < 0) {
        if (e == -EREMOTEIO) {
            c->msg = c->m.root;
            print_error(c, "hello");
            e = -EPROTO;
        }
        bench_conn_close(c);
        return e;
    }
    c->agent_pid = c->cl.agent_pid > 0 ? c->cl.agent_pid : -1;
    return 0;
}

int bench_exec_true(struct bench_conn *c, bool argv)
{
    struct msg_out o;
    if (msg_out_init(&o, 64) < 0)
        return -ENOMEM;
    msg_map_open(&o);
    msg_kv_str(&o, "type", "exec");
    if (argv) {
        msg_key(&o, "argv");
        msg_array(&o, 1);
        msg_str(&o, "/bin/true");
    } else {
        msg_kv_str(&o, "cmd", "true");
    }
    msg_map_close(&o);
    int e = bench_send(c, &o);
    if (e < 0)
        return e;
    /* started, possibly output (there is none for true), then end. Bounded: a run of true
     * sends only a handful of events. */
    for (int i = 0; i < 64; i++) {
        if ((e = bench_recv(c)) < 0)
            return e;
        if (bench_is(c, "end")) {
            const char *st = "?";
            size_t n = 1;
            if (msg_get_str(&c->msg, "status", &st, &n) == 0 && n == 9 &&
                memcmp(st, "completed", 9) == 0)
                return 0;
            const char *reason = "?", *stage = "";
            size_t rn = 1, sgn = 0;
            int64_t code = -1, err = 0;
            msg_get_str(&c->msg, "reason", &reason, &rn);
            msg_get_str(&c->msg, "stage", &stage, &sgn);
            msg_get_i64(&c->msg, "exit_code", &code);
            msg_get_i64(&c->msg, "errno", &err);
            fprintf(stderr,
                    "bench: exec true ended %.*s, reason %.*s, exit_code %lld, stage '%.*s', "
                    "errno %lld\n",
                    (int)n, st, (int)rn, reason, (long long)code, (int)sgn, stage, (long long)err);
            return -EPROTO;
        }
        if (bench_is(c, "error")) {
            print_error(c, "exec");
            return -EPROTO;
        }
    }
    fprintf(stderr, "bench: exec true: no end event after 64 events\n");
    return -EPROTO;
}

/* ---- Processes ------------------------------------------------------------------------------ */

int bench_spawn_wait(char *const argv[])
{
    pid_t pid;
    int e = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (e != 0)
        return -e;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -ECHILD;
}

long bench_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

/* ---- Statistics and output ------------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void bench_stats(uint64_t *ns, size_t n, struct bench_stats *s)
{
    qsort(ns, n, sizeof *ns, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)ns[i];
    size_t i99 = n * 99 / 100;
    if (i99 >= n)
        i99 = n - 1;
    s->p50_us = (double)ns[n / 2] / 1000.0;
    s->p99_us = (double)ns[i99] / 1000.0;
    s->mean_us = sum / (double)n / 1000.0;
}

void bench_row(const char *metric, const char *boxd, const char *baseline, double ratio,
               const char *target)
{
    if (isnan(ratio))
        printf("ROW\t%s\t%s\t%s\tn/a\t%s\n", metric, boxd, baseline, target);
    else
        printf("ROW\t%s\t%s\t%s\t%.2fx\t%s\n", metric, boxd, baseline, ratio, target);
    fflush(stdout);
}

const char *bench_fmt(char *buf, size_t size, double v, int decimals)
{
    snprintf(buf, size, "%.*f", decimals, v);
    return buf;
}

const char *bench_target(char *buf, size_t size, const char *target, bool met)
{
    snprintf(buf, size, "%s: %s", target, met ? "met" : "MISSED");
    return buf;
}

void bench_note(const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    printf("NOTE\t%s\n", text);
    fflush(stdout);
}

long bench_cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (util_read_small_file(path, buf, sizeof buf, NULL) < 0)
        return -1;
    /* Fields after the command name, which is in parentheses and may contain anything. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    p++;
    unsigned long long ut = 0, st = 0;
    if (sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    return (long)((ut + st) * 1000u / (unsigned long long)hz);
}
