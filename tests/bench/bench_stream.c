/* Benchmark 3: streaming throughput of 100-byte lines through boxd, against a raw pipe.
 *
 * usage: bench_stream SOCKET [BOXCTL]
 *   BENCH_STREAM_BYTES   bytes the command writes (default 1073741824, 1 GiB)
 *
 * The command is `yes P | head -c N`, P being 99 letters and digits, so the output is N bytes of
 * 100-byte lines. Through boxd, the client follows the run and checks every record: seqs from 0
 * without gaps, stream 1, no record crossing a line end, and every byte equal to the expected
 * one at its offset; at `end`, the status, the total length and next_seq. The
 * baseline runs the same command piped through `cat` into this process, which checks every
 * byte the same way as it reads the pipe. BENCH_STREAM_ROUNDS (default 3) alternating rounds of
 * the two; the row has their medians.
 *
 * With BOXCTL (the boxctl binary), each round also runs `BOXCTL -s SOCKET exec CMD | cat` into
 * this process, checked like the baseline, and a second row gives boxctl's throughput into a
 * pipe against the same round's plain pipe: what a script that pipes boxctl into another
 * program gets. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define LINE 100u
/* The expected stream repeated: any record (at most max_line, 64 KiB by default) starting at
 * any phase is checked with one memcmp; longer ones in several. */
#define REP_LINES 1024u
#define REP_LEN (LINE * REP_LINES)
#define RAW_BUF (256u * 1024u)

struct checker {
    char rep[REP_LEN];
    uint64_t off; /* bytes checked so far */
};

static void checker_init(struct checker *k, char *pattern)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    for (unsigned i = 0; i < LINE - 1; i++)
        pattern[i] = alnum[(i * 7u + 3u) % (sizeof alnum - 1)];
    pattern[LINE - 1] = '\0';
    for (unsigned l = 0; l < REP_LINES; l++) {
        memcpy(k->rep + l * LINE, pattern, LINE - 1);
        k->rep[l * LINE + LINE - 1] = '\n';
    }
    k->off = 0;
}

/* Checks that d[0..n) are the next n bytes of the expected stream. */
static bool check_bytes(struct checker *k, const char *d, size_t n)
{
    while (n > 0) {
        size_t ph = (size_t)(k->off % LINE);
        size_t take = n < REP_LEN - ph ? n : REP_LEN - ph;
        if (memcmp(d, k->rep + ph, take) != 0)
            return false;
        d += take;
        n -= take;
        k->off += take;
    }
    return true;
}

static char *make_cmd(const char *pattern, uint64_t bytes, bool through_cat)
{
    size_t size = 256;
    char *cmd = malloc(size);
    if (cmd)
        snprintf(cmd, size, "yes %s | head -c %llu%s", pattern, (unsigned long long)bytes,
                 through_cat ? " | cat" : "");
    return cmd;
}

/* ---- Raw pipe ------------------------------------------------------------------------------- */

static int run_raw(struct checker *k, const char *cmd, uint64_t bytes, double *secs)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    char *const argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
    uint64_t t0 = bench_now_ns();
    pid_t pid;
    int e = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (e != 0) {
        close(p[0]);
        return -e;
    }
    char *buf = malloc(RAW_BUF);
    bool ok = buf != NULL;
    k->off = 0;
    /* Bounded by the pipe's EOF, which comes when the command exits. */
    for (;;) {
        ssize_t n = read(p[0], buf, RAW_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (ok && !check_bytes(k, buf, (size_t)n)) {
            fprintf(stderr, "bench_stream: raw: wrong bytes at offset %llu\n",
                    (unsigned long long)k->off);
            ok = false; /* keep draining so the command can finish */
        }
    }
    close(p[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    *secs = (double)(bench_now_ns() - t0) / 1e9;
    free(buf);
    if (!ok || k->off != bytes || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench_stream: raw: got %llu of %llu bytes, status %d\n",
                (unsigned long long)k->off, (unsigned long long)bytes, st);
        return -EPROTO;
    }
    return 0;
}

/* ---- Through boxd --------------------------------------------------------------------------- */

static bool obj_u64(const msgpack_object *o, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *v = o->via.u64;
    return true;
}

/* Checks one output event's records. */
static int check_output(struct bench_conn *c, struct checker *k, uint64_t *next_seq)
{
    const msgpack_object *lines = msg_get(&c->msg, "lines");
    if (lines == NULL || lines->type != MSGPACK_OBJECT_ARRAY)
        return -EBADMSG;
    for (uint32_t i = 0; i < lines->via.array.size; i++) {
        const msgpack_object *rec = &lines->via.array.ptr[i];
        if (rec->type != MSGPACK_OBJECT_ARRAY || rec->via.array.size != 4)
            return -EBADMSG;
        const msgpack_object *f = rec->via.array.ptr;
        uint64_t seq, stream;
        if (!obj_u64(&f[0], &seq) || !obj_u64(&f[2], &stream))
            return -EBADMSG;
        const char *d;
        size_t n;
        if (f[3].type == MSGPACK_OBJECT_STR) {
            d = f[3].via.str.ptr;
            n = f[3].via.str.size;
        } else if (f[3].type == MSGPACK_OBJECT_BIN) {
            d = f[3].via.bin.ptr;
            n = f[3].via.bin.size;
        } else {
            return -EBADMSG;
        }
        if (seq != *next_seq) {
            fprintf(stderr, "bench_stream: seq %llu, expected %llu\n", (unsigned long long)seq,
                    (unsigned long long)*next_seq);
            return -EPROTO;
        }
        /* A record is one line or a piece of one: it never runs past a line's end. */
        if (stream != 1 || n == 0 || k->off % LINE + n > LINE) {
            fprintf(stderr, "bench_stream: record %llu: stream %llu, %zu bytes at phase %llu\n",
                    (unsigned long long)seq, (unsigned long long)stream, n,
                    (unsigned long long)(k->off % LINE));
            return -EPROTO;
        }
        if (!check_bytes(k, d, n)) {
            fprintf(stderr, "bench_stream: record %llu: wrong bytes at offset %llu\n",
                    (unsigned long long)seq, (unsigned long long)k->off);
            return -EPROTO;
        }
        (*next_seq)++;
    }
    return 0;
}

static int check_end(struct bench_conn *c, uint64_t records, uint64_t got, uint64_t bytes)
{
    const char *st = "";
    size_t sn = 0;
    uint64_t next_seq = 0;
    msg_get_str(&c->msg, "status", &st, &sn);
    msg_get_u64(&c->msg, "next_seq", &next_seq);
    /* dropped_records is not checked: it counts records that left the retained log, which
     * happens once the log is full even though this follower was sent every one of them. */
    if (sn != 9 || memcmp(st, "completed", 9) != 0 || next_seq != records || got != bytes) {
        fprintf(stderr,
                "bench_stream: end: status %.*s, next_seq %llu (records seen %llu), bytes %llu "
                "of %llu\n",
                (int)sn, st, (unsigned long long)next_seq, (unsigned long long)records,
                (unsigned long long)got, (unsigned long long)bytes);
        return -EPROTO;
    }
    return 0;
}

static int run_boxd(const char *sock, struct checker *k, const char *cmd, uint64_t bytes,
                    double *secs, long *agent_cpu_ms, uint64_t *events)
{
    struct bench_conn c;
    int e = bench_conn_open(&c, sock);
    if (e < 0)
        return e;
    long cpu0 = c.agent_pid > 0 ? bench_cpu_ms((pid_t)c.agent_pid) : -1;
    struct msg_out o;
    if (msg_out_init(&o, 256) < 0) {
        bench_conn_close(&c);
        return -ENOMEM;
    }
    msg_map_open(&o);
    msg_kv_str(&o, "type", "exec");
    msg_kv_str(&o, "cmd", cmd);
    msg_map_close(&o);
    uint64_t t0 = bench_now_ns();
    if ((e = bench_send(&c, &o)) < 0)
        goto out;
    k->off = 0;
    uint64_t next_seq = 0;
    *events = 0;
    /* Bounded: every event carries at least one record of at least one byte, so a correct
     * agent sends at most bytes + a few events; a stuck one trips the receive timeout. */
    for (uint64_t i = 0; i < bytes + 16; i++) {
        if ((e = bench_recv(&c)) < 0)
            goto out;
        if (bench_is(&c, "output")) {
            (*events)++;
            if ((e = check_output(&c, k, &next_seq)) < 0)
                goto out;
        } else if (bench_is(&c, "end")) {
            *secs = (double)(bench_now_ns() - t0) / 1e9;
            e = check_end(&c, next_seq, k->off, bytes);
            goto out;
        } else if (!bench_is(&c, "started")) {
            char tb[32];
            fprintf(stderr, "bench_stream: unexpected %s\n", bench_type(&c, tb, sizeof tb));
            e = -EPROTO;
            goto out;
        }
    }
    e = -EPROTO;
out:
    if (cpu0 >= 0) {
        long cpu1 = bench_cpu_ms((pid_t)c.agent_pid);
        *agent_cpu_ms = cpu1 >= 0 ? cpu1 - cpu0 : -1;
    }
    bench_conn_close(&c);
    return e;
}

/* The median of n values (reorders them). */
static double median(double *v, uint64_t n)
{
    for (uint64_t i = 1; i < n; i++)
        for (uint64_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: bench_stream SOCKET [BOXCTL]\n");
        return 2;
    }
    uint64_t bytes = bench_env_u64("BENCH_STREAM_BYTES", 1ull << 30);
    if (bytes < LINE)
        bytes = LINE;
    struct checker *k = malloc(sizeof *k);
    char pattern[LINE];
    if (k == NULL)
        return 1;
    checker_init(k, pattern);
    char *raw_cmd = make_cmd(pattern, bytes, true), *cmd = make_cmd(pattern, bytes, false);
    if (raw_cmd == NULL || cmd == NULL)
        return 1;
    /* boxctl into a pipe: the same command through boxctl exec, then | cat. */
    char *ctl_cmd = NULL;
    if (argc == 3) {
        size_t n = strlen(argv[1]) + strlen(argv[2]) + strlen(cmd) + 64;
        ctl_cmd = malloc(n);
        if (ctl_cmd == NULL)
            return 1;
        snprintf(ctl_cmd, n, "'%s' -s '%s' exec '%s' | cat", argv[2], argv[1], cmd);
    }

    /* Rounds alternate the baseline and boxd, so drift in what else the machine does lands on
     * both; the row gives the medians, a note the spread of the rounds' ratios. */
    uint64_t rounds = bench_env_u64("BENCH_STREAM_ROUNDS", 3);
    if (rounds < 1)
        rounds = 1;
    if (rounds > 15)
        rounds = 15;
    fprintf(stderr, "bench_stream: %llu bytes, %llu rounds of raw pipe then boxd\n",
            (unsigned long long)bytes, (unsigned long long)rounds);
    double raws[15] = {0}, boxds[15] = {0}, ratios[15] = {0}, ctls[15] = {0}, cratios[15] = {0};
    int e3 = 0;
    uint64_t done = 0;
    long cpu_all = 0;
    uint64_t events = 0;
    int e1 = 0, e2 = 0;
    for (uint64_t i = 0; i < rounds && !e1 && !e2; i++) {
        long cpu_ms = -1;
        uint64_t ev = 0;
        e1 = run_raw(k, raw_cmd, bytes, &raws[i]);
        if (!e1)
            e2 = run_boxd(argv[1], k, cmd, bytes, &boxds[i], &cpu_ms, &ev);
        if (e2 < 0)
            fprintf(stderr, "bench_stream: boxd: %s\n", strerror(-e2));
        if (!e1 && !e2 && ctl_cmd != NULL && !e3) {
            e3 = run_raw(k, ctl_cmd, bytes, &ctls[i]);
            if (e3 == 0) {
                cratios[i] = raws[i] / ctls[i];
                fprintf(stderr, "bench_stream: round %llu: boxctl | cat %.1f MB/s, %.2fx\n",
                        (unsigned long long)i + 1, (double)bytes / ctls[i] / 1e6, cratios[i]);
            }
        }
        if (!e1 && !e2) {
            ratios[i] = raws[i] / boxds[i];
            fprintf(stderr, "bench_stream: round %llu: raw %.1f MB/s, boxd %.1f MB/s, %.2fx\n",
                    (unsigned long long)i + 1, (double)bytes / raws[i] / 1e6,
                    (double)bytes / boxds[i] / 1e6, ratios[i]);
            cpu_all = cpu_ms < 0 || cpu_all < 0 ? -1 : cpu_all + cpu_ms;
            events += ev;
            done++;
        }
    }
    if (done == 0)
        done = 1; /* the rows say "error" */
    double raw_s = median(raws, done), boxd_s = median(boxds, done);
    double rlo = ratios[0], rhi = ratios[0];
    for (uint64_t i = 1; i < done; i++) {
        rlo = ratios[i] < rlo ? ratios[i] : rlo;
        rhi = ratios[i] > rhi ? ratios[i] : rhi;
    }
    long cpu_ms = cpu_all < 0 ? -1 : cpu_all / (long)done;
    events /= done;

    char metric[96], b[32], f[32], t[64];
    if (bytes % (1u << 20) == 0)
        snprintf(metric, sizeof metric,
                 "stream %llu MiB of 100-byte lines (MB/s) [baseline: | cat]",
                 (unsigned long long)(bytes >> 20));
    else
        snprintf(metric, sizeof metric,
                 "stream %llu bytes of 100-byte lines (MB/s) [baseline: | cat]",
                 (unsigned long long)bytes);
    double boxd_mbs = e2 ? 0 : (double)bytes / boxd_s / 1e6;
    double raw_mbs = e1 ? 0 : (double)bytes / raw_s / 1e6;
    double r = e1 || e2 ? NAN : boxd_mbs / raw_mbs;
    bench_row(metric, e2 ? "error" : bench_fmt(b, sizeof b, boxd_mbs, 1),
              e1 ? "error" : bench_fmt(f, sizeof f, raw_mbs, 1), r,
              bench_target(t, sizeof t, ">= 0.5x", !isnan(r) && r >= 0.5));
    if (e2 == 0 && cpu_ms >= 0)
        bench_note("stream: boxd used %.2f s of CPU for %.0f MB (%.2f s/GB) in %llu output events "
                   "(%.0f KiB each on average)",
                   (double)cpu_ms / 1000.0, (double)bytes / 1e6,
                   (double)cpu_ms / 1000.0 / ((double)bytes / 1e9), (unsigned long long)events,
                   events ? (double)bytes / (double)events / 1024.0 : 0.0);
    if (e1 == 0 && e2 == 0 && rounds > 1)
        bench_note("stream: medians of %llu alternating rounds; the rounds' ratios ranged from "
                   "%.2fx to %.2fx",
                   (unsigned long long)rounds, rlo, rhi);
    if (ctl_cmd != NULL) {
        double ctl_s = median(ctls, done);
        double ctl_mbs = e3 || e1 ? 0 : (double)bytes / ctl_s / 1e6;
        double cr = e1 || e3 ? NAN : ctl_mbs / raw_mbs;
        double clo = cratios[0], chi = cratios[0];
        for (uint64_t i = 1; i < done; i++) {
            clo = cratios[i] < clo ? cratios[i] : clo;
            chi = cratios[i] > chi ? cratios[i] : chi;
        }
        char cm[128], cb[32], ct[64];
        snprintf(cm, sizeof cm, "boxctl exec ... | cat, %s", metric + strlen("stream "));
        bench_row(cm, e3 ? "error" : bench_fmt(cb, sizeof cb, ctl_mbs, 1),
                  e1 ? "error" : bench_fmt(f, sizeof f, raw_mbs, 1), cr,
                  bench_target(ct, sizeof ct, ">= 0.5x", !isnan(cr) && cr >= 0.5));
        if (!e1 && !e3 && rounds > 1)
            bench_note("stream: boxctl | cat: the rounds' ratios ranged from %.2fx to %.2fx", clo,
                       chi);
        free(ctl_cmd);
    }
    free(raw_cmd);
    free(cmd);
    free(k);
    return e1 || e2 || e3 ? 1 : 0;
}
