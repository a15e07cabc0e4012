/* boxctl: the local debugging CLI for boxd.
 *
 * One invocation is one connection: connect, hello, one command, exit. Everything the agent sends
 * goes through the blocking client library (client.h); the streaming commands (exec, attach,
 * logs --follow) multiplex the socket, the SIGINT self-pipe and, for exec --stdin, fd 0 with one
 * poll() loop, and only read from the socket when poll says it is readable, with a zero timeout,
 * so a slow or partial frame never blocks the loop.
 *
 * Output from runs is written to fds 1 and 2 with write(), never through stdio, so the bytes are
 * exactly those the run wrote and nothing is held back in a buffer.
 *
 * Exit status: 2 usage errors, 1 connection/protocol errors and error replies, else what the
 * command says (exec, attach and wait: the run's exit code).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "client.h"
#include "cmd_files.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef BOXD_VERSION
#define BOXD_VERSION "0.0.0"
#endif

#define EXIT_USAGE 2
#define EXIT_FAIL 1
#define DEFAULT_SOCKET "/run/boxd.sock"
#define CLIENT_NAME "boxctl/" BOXD_VERSION

/* How long to wait for hello, and for the reply to a request that answers at once. Waiting for
 * a run (wait, exec, attach) has no limit. */
#define HELLO_TIMEOUT_MS 10000
#define REPLY_TIMEOUT_MS 30000
/* Largest stdin chunk per request. One chunk at a time is in flight (we wait for its `ok`), so
 * it always fits in the socket's send buffer and a write of it never blocks while the agent
 * is itself blocked sending us output. */
#define STDIN_CHUNK_MAX (64u * 1024u)
/* Room in a request for the fields around a stdin chunk. */
#define STDIN_FRAME_OVERHEAD 256u
/* --json assembles stdout and stderr from output records when the agent's copy is truncated;
 * each stream is kept up to this many bytes, and output_truncated says when more was lost. */
#define CAPTURE_MAX (64u << 20)
/* Most text a JSON writer buffers between flushes (stdout+stderr+result, escaped). */
#define JSON_BUF_MAX (1024u << 20)
/* logs: records per page request. */
#define LOGS_PAGE_RECORDS 1000
#define RUN_ID_MAX 64

/* ---- Small helpers ------------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One line on stderr, "boxctl: " first, written with a single write() so that concurrent
 * output does not split it. Messages are short: a longer one is cut. */
__attribute__((format(printf, 1, 2))) static void errmsg(const char *fmt, ...)
{
    char buf[2048];
    int n = snprintf(buf, sizeof buf, "boxctl: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof buf - 2)
        len = sizeof buf - 2;
    buf[len++] = '\n';
    write_all(STDERR_FILENO, buf, len);
}

/* A growable byte buffer with a hard cap: bytes past `max` are dropped and `over` is set. */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    size_t max;
    bool over;   /* something did not fit under max */
    bool nomem;  /* an allocation failed */
};

static void sbuf_init(struct sbuf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

static void sbuf_free(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void sbuf_add(struct sbuf *b, const void *s, size_t n)
{
    if (n > b->max - b->len) {
        n = b->max - b->len;
        b->over = true;
    }
    if (n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->nomem = b->over = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

__attribute__((format(printf, 2, 3))) static void sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        sbuf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL) {
        b->nomem = b->over = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sbuf_add(b, big, (size_t)n);
    free(big);
}

/* Parses a decimal unsigned integer (no sign, no spaces). Returns 0 or -EINVAL. */
static int parse_u64(const char *s, uint64_t *v)
{
    if (s[0] < '0' || s[0] > '9')
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *v = x;
    return 0;
}

struct bytes {
    const char *p;
    size_t n;
};

static bool bytes_is(struct bytes b, const char *s)
{
    size_t n = strlen(s);
    return b.p != NULL && b.n == n && memcmp(b.p, s, n) == 0;
}

static bool get_bytes(const msgpack_object *map, const char *key, struct bytes *b)
{
    if (msg_get_bytes(map, key, &b->p, &b->n) == 0)
        return true;
    b->p = NULL;
    b->n = 0;
    return false;
}

/* Text from the agent going to a terminal in a message: control characters become '?'. */
static void sanitize(char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            s[i] = '?';
}

/* Copies up to cap-1 bytes of b into dst as a C string. */
static void bytes_cstr(struct bytes b, char *dst, size_t cap)
{
    size_t n = b.n < cap - 1 ? b.n : cap - 1;
    if (n > 0 && b.p != NULL)
        memcpy(dst, b.p, n);
    dst[n] = '\0';
}

static const char *io_error(int r)
{
    switch (r) {
    case -ECONNRESET:
    case -EPIPE:
        return "the agent closed the connection";
    case -EMSGSIZE:
        return "message over the agent's size limit";
    case -EBADMSG:
        return "malformed message from the agent";
    case -ETIMEDOUT:
        return "no answer from the agent in time";
    case -EPROTO:
        return "the agent does not speak protocol version 1";
    case -ENOTCONN:
        return "connection to the agent lost";
    default:
        return strerror(-r);
    }
}

/* ---- Connection ---------------------------------------------------------------------------- */

/* One boxctl invocation: the socket path, the connection, and a message buffer for replies. */
struct ctl {
    const char *sock;
    struct box_client c;
    struct box_msg m;
    bool connected;
    bool msg_ready;
};

static void print_agent_error(const struct box_msg *m)
{
    const char *code = "", *text = "";
    size_t clen = 0, tlen = 0;
    if (box_msg_error(m, &code, &clen, &text, &tlen) != 0) {
        errmsg("unexpected reply from the agent");
        return;
    }
    char c[64], t[512];
    bytes_cstr((struct bytes){code, clen}, c, sizeof c);
    bytes_cstr((struct bytes){text, tlen}, t, sizeof t);
    sanitize(c, strlen(c));
    sanitize(t, strlen(t));

    /* A spawn failure also says which errno and at which stage. */
    char extra[96] = "";
    struct bytes en = {NULL, 0}, st = {NULL, 0};
    get_bytes(&m->root, "errno_name", &en);
    get_bytes(&m->root, "stage", &st);
    if (en.p != NULL || st.p != NULL) {
        char e[32], s[32];
        bytes_cstr(en, e, sizeof e);
        bytes_cstr(st, s, sizeof s);
        sanitize(e, strlen(e));
        sanitize(s, strlen(s));
        snprintf(extra, sizeof extra, " (%s%s%s%s)", e, en.p && st.p ? " " : "",
                 st.p ? "at stage " : "", s);
    }
    if (t[0] != '\0')
        errmsg("%s: %s%s", c[0] ? c : "error", t, extra);
    else
        errmsg("%s%s", c[0] ? c : "error", extra);
}

/* Reports a failed request: the agent's error line, or the I/O error. Returns EXIT_FAIL. */
static int request_failed(struct ctl *x, int r)
{
    if (r == -EREMOTEIO)
        print_agent_error(&x->m);
    else
        errmsg("%s: %s", x->sock, io_error(r));
    return EXIT_FAIL;
}

static int ctl_connect(struct ctl *x)
{
    int r = box_msg_init(&x->m);
    if (r < 0) {
        errmsg("%s", strerror(-r));
        return EXIT_FAIL;
    }
    x->msg_ready = true;
    r = box_client_connect(&x->c, x->sock);
    if (r < 0) {
        errmsg("cannot connect to %s: %s", x->sock, strerror(-r));
        return EXIT_FAIL;
    }
    x->connected = true;
    r = box_client_hello(&x->c, CLIENT_NAME, HELLO_TIMEOUT_MS, &x->m);
    if (r < 0) {
        if (r == -EPROTO)
            errmsg("%s: the agent does not speak protocol version %d", x->sock,
                   BOX_PROTOCOL_VERSION);
        else
            request_failed(x, r);
        return EXIT_FAIL;
    }
    return 0;
}

static void ctl_close(struct ctl *x)
{
    if (x->connected)
        box_client_close(&x->c);
    x->connected = false;
    if (x->msg_ready)
        box_msg_destroy(&x->m);
    x->msg_ready = false;
}

/* Starts a request that names a run: type, req, id and nfields more. */
static int req_with_id(struct ctl *x, struct msg_out *o, const char *type, const char *id,
                       uint32_t nfields, uint64_t *req)
{
    int r = box_req_begin(&x->c, o, type, nfields + 1, req);
    if (r < 0)
        return r;
    msg_kv_str(o, "id", id);
    return 0;
}

/* ---- SIGINT -------------------------------------------------------------------------------- */

/* The handler can only reach globals: a counter the loop compares with what it has handled, and
 * the write end of a self-pipe whose read end is in every poll(), so a signal that lands just
 * before poll() still wakes it. */
static volatile sig_atomic_t sigint_count;
static int sigint_pipe[2] = {-1, -1};

static void on_sigint(int sig)
{
    (void)sig;
    int saved = errno;
    sigint_count++;
    if (sigint_pipe[1] >= 0 && write(sigint_pipe[1], "x", 1) < 0) {
        /* A full pipe already holds a wake-up. */
    }
    errno = saved;
}

static int sigint_install(void)
{
    if (pipe2(sigint_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    /* SA_RESTART keeps blocking writes going; poll() is never restarted, and the pipe wakes it
     * in any case. */
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) < 0)
        return -errno;
    return 0;
}

static void sigint_drain(void)
{
    char buf[64];
    while (read(sigint_pipe[0], buf, sizeof buf) > 0) {
    }
}

/* ---- Records ------------------------------------------------------------------------------- */

struct record {
    uint64_t seq;
    int64_t ts_ns;
    int stream; /* 1 stdout, 2 stderr */
    const char *data;
    size_t len;
};

static int record_parse(const msgpack_object *o, struct record *r)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 4)
        return -EBADMSG;
    const msgpack_object *e = o->via.array.ptr;
    if (e[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -EBADMSG;
    r->seq = e[0].via.u64;
    if (e[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        r->ts_ns = e[1].via.u64 > INT64_MAX ? INT64_MAX : (int64_t)e[1].via.u64;
    else if (e[1].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        r->ts_ns = e[1].via.i64;
    else
        return -EBADMSG;
    if (e[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[2].via.u64 < 1 || e[2].via.u64 > 2)
        return -EBADMSG;
    r->stream = (int)e[2].via.u64;
    if (e[3].type == MSGPACK_OBJECT_STR) {
        r->data = e[3].via.str.ptr;
        r->len = e[3].via.str.size;
    } else if (e[3].type == MSGPACK_OBJECT_BIN) {
        r->data = e[3].via.bin.ptr;
        r->len = e[3].via.bin.size;
    } else {
        return -EBADMSG;
    }
    return 0;
}

/* RFC 3339 UTC with nanoseconds: 2026-02-23T10:01:02.123456789Z. */
static void format_ts(int64_t ts_ns, char *out, size_t size)
{
    int64_t sec = ts_ns / 1000000000;
    int64_t ns = ts_ns % 1000000000;
    if (ns < 0) {
        ns += 1000000000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL) {
        snprintf(out, size, "1970-01-01T00:00:00.000000000Z");
        return;
    }
    char day[40];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, size, "%s.%09" PRId64 "Z", day, ns);
}

/* Where records go: raw to fds 1/2, into two capture buffers, or as JSON objects. */
enum sink_mode { SINK_RAW, SINK_CAPTURE, SINK_JSON };

struct sink {
    enum sink_mode mode;
    struct sbuf cap[2];  /* SINK_CAPTURE: stdout, stderr */
    struct json *j;      /* SINK_JSON */
    bool lines;          /* SINK_JSON: one object per line instead of array elements */
    bool gap;            /* records were missing (dropped by retention) */
    uint64_t next_seq;   /* the seq after the last record seen */
};

static void sink_init(struct sink *s, enum sink_mode mode)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    sbuf_init(&s->cap[0], CAPTURE_MAX);
    sbuf_init(&s->cap[1], CAPTURE_MAX);
}

static void sink_destroy(struct sink *s)
{
    sbuf_free(&s->cap[0]);
    sbuf_free(&s->cap[1]);
}

static void json_record(struct json *j, const struct record *r, bool lines)
{
    char ts[64];
    format_ts(r->ts_ns, ts, sizeof ts);
    size_t n = r->len;
    if (n > 0 && r->data[n - 1] == '\n')
        n--;
    json_object_begin(j);
    json_key(j, "timestamp");
    json_cstr(j, ts);
    json_key(j, "level");
    json_cstr(j, r->stream == 2 ? "error" : "info");
    json_key(j, "message");
    json_string(j, r->data, n);
    json_key(j, "seq");
    json_uint(j, r->seq);
    json_key(j, "stream");
    json_cstr(j, r->stream == 2 ? "stderr" : "stdout");
    json_object_end(j);
    if (lines)
        json_newline(j);
}

/* -ECANCELED: the failure has been reported on stderr already. */
#define ALREADY_REPORTED (-ECANCELED)

/* Takes the `lines` of an output event or a logs page. Returns 0, -EBADMSG for a malformed
 * record, or ALREADY_REPORTED when writing the output failed. */
static int sink_lines(struct sink *s, const msgpack_object *lines)
{
    if (lines == NULL || lines->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (lines->type != MSGPACK_OBJECT_ARRAY)
        return -EBADMSG;
    for (uint32_t i = 0; i < lines->via.array.size; i++) {
        struct record r;
        if (record_parse(&lines->via.array.ptr[i], &r) < 0)
            return -EBADMSG;
        s->next_seq = r.seq + 1;
        switch (s->mode) {
        case SINK_RAW: {
            int w = write_all(r.stream == 2 ? STDERR_FILENO : STDOUT_FILENO, r.data, r.len);
            if (w < 0) {
                errmsg("writing output: %s", strerror(-w));
                return ALREADY_REPORTED;
            }
            break;
        }
        case SINK_CAPTURE:
            sbuf_add(&s->cap[r.stream - 1], r.data, r.len);
            break;
        case SINK_JSON:
            json_record(s->j, &r, s->lines);
            break;
        }
    }
    if (s->mode == SINK_JSON) {
        int w = json_flush(s->j, STDOUT_FILENO);
        if (w < 0) {
            errmsg("writing output: %s", strerror(-w));
            return ALREADY_REPORTED;
        }
    }
    return 0;
}

static void warn_gap(const char *id, uint64_t from, uint64_t to)
{
    if (to > from)
        errmsg("warning: run %s: records %" PRIu64 " to %" PRIu64
               " were dropped by the agent's log retention",
               id, from, to - 1);
}

/* ---- End of a run -------------------------------------------------------------------------- */

struct end_info {
    struct bytes id, status, reason, stage, errno_name, result, out, err;
    bool has_exit, has_signal, has_errno, has_duration;
    bool truncated; /* output_truncated */
    bool with_output; /* a code run: the JSON also has `output` (the stdout, as the SDK names it) */
    int64_t exit_code, sig, err_no, duration_ms;
};

static void end_parse(const msgpack_object *m, struct end_info *e)
{
    memset(e, 0, sizeof *e);
    get_bytes(m, "id", &e->id);
    get_bytes(m, "status", &e->status);
    get_bytes(m, "reason", &e->reason);
    get_bytes(m, "stage", &e->stage);
    get_bytes(m, "errno_name", &e->errno_name);
    get_bytes(m, "result", &e->result);
    get_bytes(m, "stdout", &e->out);
    get_bytes(m, "stderr", &e->err);
    e->has_exit = msg_get_i64(m, "exit_code", &e->exit_code) == 0;
    e->has_signal = msg_get_i64(m, "signal", &e->sig) == 0;
    e->has_errno = msg_get_i64(m, "errno", &e->err_no) == 0;
    e->has_duration = msg_get_i64(m, "duration_ms", &e->duration_ms) == 0;
    bool t = false;
    e->truncated = msg_get_bool(m, "output_truncated", &t) == 0 && t;
}

/* The exit code for a run that could not be started: 127 "not found", 126 anything else. */
static int spawn_exit_code(bool has_errno, int64_t err_no, struct bytes name)
{
    if (bytes_is(name, "ENOENT") || (name.p == NULL && has_errno && err_no == ENOENT))
        return 127;
    return 126;
}

static int end_exit_code(const struct end_info *e)
{
    if (e->has_exit && e->exit_code >= 0 && e->exit_code <= 255)
        return (int)e->exit_code;
    if (e->has_signal && e->sig > 0 && e->sig < 128)
        return 128 + (int)e->sig;
    if (bytes_is(e->reason, "spawn"))
        return spawn_exit_code(e->has_errno, e->err_no, e->errno_name);
    if (bytes_is(e->status, "completed"))
        return 0;
    return 1;
}

static void report_spawn_end(const struct end_info *e)
{
    char id[RUN_ID_MAX + 1], en[32], st[32];
    bytes_cstr(e->id, id, sizeof id);
    bytes_cstr(e->errno_name, en, sizeof en);
    bytes_cstr(e->stage, st, sizeof st);
    sanitize(id, strlen(id));
    sanitize(en, strlen(en));
    sanitize(st, strlen(st));
    errmsg("run %s could not be started: %s at stage %s", id, en[0] ? en : "error",
           st[0] ? st : "?");
}

static void json_bytes_or_null(struct json *j, struct bytes b)
{
    if (b.p != NULL)
        json_string(j, b.p, b.n);
    else
        json_null(j);
}

/* Prints the JSON object of a finished run on stdout. cap, when not NULL, holds the output
 * records received while following: it replaces the agent's stdout/stderr/result when those
 * are truncated or absent. Returns 0 or ALREADY_REPORTED. */
static int end_print_json(const struct end_info *e, const struct sink *cap)
{
    struct bytes out = e->out, err = e->err, result = e->result;
    bool truncated = e->truncated;

    if (cap != NULL && cap->mode == SINK_CAPTURE && (e->truncated || e->out.p == NULL)) {
        out = (struct bytes){cap->cap[0].p ? cap->cap[0].p : "", cap->cap[0].len};
        err = (struct bytes){cap->cap[1].p ? cap->cap[1].p : "", cap->cap[1].len};
        result = bytes_is(e->status, "completed") ? out : err;
        if (result.n > 0 && result.p[result.n - 1] == '\n')
            result.n--;
        truncated = cap->cap[0].over || cap->cap[1].over || cap->gap;
    }
    if (out.p == NULL)
        out = (struct bytes){"", 0};
    if (err.p == NULL)
        err = (struct bytes){"", 0};
    if (result.p == NULL)
        result = (struct bytes){"", 0};

    struct json j;
    json_init(&j, JSON_BUF_MAX);
    json_object_begin(&j);
    json_key(&j, "id");
    json_bytes_or_null(&j, e->id);
    json_key(&j, "status");
    json_bytes_or_null(&j, e->status);
    json_key(&j, "exit_code");
    if (e->has_exit)
        json_int(&j, e->exit_code);
    else
        json_null(&j);
    json_key(&j, "signal");
    if (e->has_signal)
        json_int(&j, e->sig);
    else
        json_null(&j);
    json_key(&j, "reason");
    json_bytes_or_null(&j, e->reason);
    json_key(&j, "result");
    json_string(&j, result.p, result.n);
    json_key(&j, "stdout");
    json_string(&j, out.p, out.n);
    json_key(&j, "stderr");
    json_string(&j, err.p, err.n);
    if (e->with_output) {
        json_key(&j, "output");
        json_string(&j, out.p, out.n);
    }
    json_key(&j, "duration_ms");
    if (e->has_duration)
        json_int(&j, e->duration_ms);
    else
        json_null(&j);
    if (e->has_errno) {
        json_key(&j, "errno");
        json_int(&j, e->err_no);
    }
    if (e->stage.p != NULL) {
        json_key(&j, "stage");
        json_string(&j, e->stage.p, e->stage.n);
    }
    if (truncated) {
        json_key(&j, "output_truncated");
        json_bool(&j, true);
    }
    json_object_end(&j);
    json_newline(&j);
    int r = json_flush(&j, STDOUT_FILENO);
    json_destroy(&j);
    if (r < 0) {
        errmsg("writing output: %s", strerror(-r));
        return ALREADY_REPORTED;
    }
    return 0;
}

/* ---- Following a run ----------------------------------------------------------------------- */

enum follow_result {
    F_CONTINUE,
    F_END,      /* the run's `end` is in x->m */
    F_ERROR,    /* the agent refused the exec/attach: the `error` is in x->m */
    F_DETACHED, /* a second Ctrl-C: stop waiting */
    F_FAILED,   /* connection or output failure, already reported */
};

struct follow {
    struct ctl *x;
    struct sink *sink;
    uint64_t req;               /* the exec or attach whose events these are */
    char id[RUN_ID_MAX + 1];    /* the run; "" until `started` names it */
    bool started;               /* `started` or `attached` has arrived */
    bool cancel_on_sigint;
    unsigned sigints;           /* SIGINTs handled so far */
    bool cancel_wanted;
    bool cancel_sent;
    uint64_t cancel_req;
    /* exec --stdin: fd 0 is copied to the run, one chunk in flight at a time. */
    bool feed;
    bool feed_wait;
    uint64_t feed_req;
    size_t chunk;
    char *feed_buf;
};

static bool is_for_run(const struct follow *f, const struct box_msg *m)
{
    if (f->id[0] == '\0')
        return true;
    struct bytes id = {NULL, 0};
    return !get_bytes(&m->root, "id", &id) || bytes_is(id, f->id);
}

static int send_cancel(struct follow *f)
{
    struct msg_out o;
    int r = req_with_id(f->x, &o, "cancel", f->id, 0, &f->cancel_req);
    if (r == 0)
        r = box_client_send(&f->x->c, &o);
    f->cancel_sent = true;
    if (r < 0) {
        errmsg("cancelling run %s: %s", f->id, io_error(r));
        return r;
    }
    errmsg("cancelling run %s (Ctrl-C again to stop waiting)", f->id);
    return 0;
}

/* fd 0 is readable (or gone): send what it has, or end-of-file. */
static int feed_stdin(struct follow *f, short revents)
{
    ssize_t n = 0;
    if (!(revents & POLLNVAL)) {
        n = read(STDIN_FILENO, f->feed_buf, f->chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                return 0;
            errmsg("reading stdin: %s; closing the run's stdin", strerror(errno));
            n = 0;
        }
    }
    struct msg_out o;
    int r = req_with_id(f->x, &o, "stdin", f->id, 1, &f->feed_req);
    if (r < 0)
        return r;
    if (n == 0) {
        msg_kv_bool(&o, "eof", true);
        f->feed = false; /* the `ok` for the eof needs no waiting */
    } else {
        msg_key(&o, "data");
        msg_data(&o, f->feed_buf, (size_t)n);
        f->feed_wait = true;
    }
    return box_client_send(&f->x->c, &o);
}

static int follow_msg(struct follow *f)
{
    struct box_msg *m = &f->x->m;
    bool ours = m->has_req && m->req == f->req;

    if (ours && (box_msg_is(m, "started") || box_msg_is(m, "attached"))) {
        struct bytes id = {NULL, 0};
        if (f->id[0] == '\0' && get_bytes(&m->root, "id", &id) && id.n <= RUN_ID_MAX)
            bytes_cstr(id, f->id, sizeof f->id);
        f->started = true;
        if (f->cancel_wanted && !f->cancel_sent && f->id[0] != '\0' && send_cancel(f) < 0)
            return F_FAILED;
        return F_CONTINUE;
    }
    if (box_msg_is(m, "error")) {
        if (ours || msg_get(&m->root, "req") == NULL)
            return F_ERROR;
        if (m->has_req && m->req == f->feed_req) {
            /* The run closed its stdin or ended: stop copying, and only mention it when the
             * reason is not simply that the run is done reading. */
            const char *code = "";
            size_t n = 0;
            box_msg_error(m, &code, &n, NULL, NULL);
            if (!bytes_is((struct bytes){code, n}, "run_ended"))
                print_agent_error(m);
            f->feed = false;
            f->feed_wait = false;
        } else if (m->has_req && m->req == f->cancel_req) {
            print_agent_error(m);
        }
        return F_CONTINUE;
    }
    if (box_msg_is(m, "ok")) {
        if (m->has_req && m->req == f->feed_req)
            f->feed_wait = false;
        return F_CONTINUE;
    }
    if (!is_for_run(f, m))
        return F_CONTINUE;
    if (box_msg_is(m, "output")) {
        int r = sink_lines(f->sink, msg_get(&m->root, "lines"));
        if (r == -EBADMSG) {
            errmsg("malformed output record from the agent");
            return F_FAILED;
        }
        return r < 0 ? F_FAILED : F_CONTINUE;
    }
    if (box_msg_is(m, "gap")) {
        uint64_t from = 0, to = 0;
        msg_get_u64(&m->root, "from_seq", &from);
        msg_get_u64(&m->root, "to_seq", &to);
        warn_gap(f->id, from, to);
        f->sink->gap = true;
        return F_CONTINUE;
    }
    if (box_msg_is(m, "end"))
        return F_END;
    return F_CONTINUE; /* a type this boxctl does not know: newer agents may send more */
}

/* Streams events until the run ends. Returns F_END, F_ERROR, F_DETACHED or F_FAILED. */
static int follow_run(struct follow *f)
{
    struct ctl *x = f->x;
    for (;;) {
        while (f->cancel_on_sigint && f->sigints != (unsigned)sigint_count) {
            f->sigints++;
            if (f->sigints > 1) {
                errmsg("stopped waiting for run %s", f->id[0] ? f->id : "(not started)");
                return F_DETACHED;
            }
            f->cancel_wanted = true;
            if (f->started && f->id[0] != '\0' && send_cancel(f) < 0)
                return F_FAILED;
        }

        struct pollfd p[3];
        nfds_t n = 0;
        int isig = -1, ifeed = -1;
        p[n++] = (struct pollfd){.fd = x->c.fd, .events = POLLIN};
        if (sigint_pipe[0] >= 0) {
            isig = (int)n;
            p[n++] = (struct pollfd){.fd = sigint_pipe[0], .events = POLLIN};
        }
        if (f->feed && f->started && !f->feed_wait && f->id[0] != '\0') {
            ifeed = (int)n;
            p[n++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        }
        if (poll(p, n, -1) < 0) {
            if (errno == EINTR)
                continue; /* the SIGINT count is checked at the top */
            errmsg("poll: %s", strerror(errno));
            return F_FAILED;
        }
        if (isig >= 0 && p[isig].revents != 0)
            sigint_drain();
        if (p[0].revents != 0) {
            /* Zero timeout: take what is there; a partial frame is kept for the next round. */
            int r = box_client_recv(&x->c, &x->m, 0);
            if (r == 0) {
                int h = follow_msg(f);
                if (h != F_CONTINUE)
                    return h;
            } else if (r == -EBADMSG) {
                errmsg("warning: ignoring a malformed message from the agent");
            } else if (r != -ETIMEDOUT) {
                errmsg("connection to the agent lost: %s", io_error(r));
                return F_FAILED;
            }
        }
        if (ifeed >= 0 && p[ifeed].revents != 0 && f->feed && !f->feed_wait) {
            int r = feed_stdin(f, p[ifeed].revents);
            if (r < 0) {
                errmsg("sending stdin: %s", io_error(r));
                return F_FAILED;
            }
        }
    }
}

/* Sends `wait` and reads until the run's `end` (any req: a following subscription's end is as
 * good) or the error answering the wait. Returns 0 (end in x->m), -EREMOTEIO (error in x->m),
 * or an I/O error. */
static int wait_end(struct ctl *x, const char *id, bool output)
{
    struct msg_out o;
    uint64_t req;
    int r = req_with_id(x, &o, "wait", id, 1, &req);
    if (r < 0)
        return r;
    msg_kv_bool(&o, "output", output);
    r = box_client_send(&x->c, &o);
    if (r < 0)
        return r;
    for (;;) {
        r = box_client_recv(&x->c, &x->m, -1);
        if (r == -EBADMSG)
            continue;
        if (r < 0)
            return r;
        struct bytes mid = {NULL, 0};
        bool same = get_bytes(&x->m.root, "id", &mid) && bytes_is(mid, id);
        if (box_msg_is(&x->m, "end") && same)
            return 0;
        if (box_msg_is(&x->m, "error") &&
            ((x->m.has_req && x->m.req == req) || msg_get(&x->m.root, "req") == NULL))
            return -EREMOTEIO;
    }
}

/* ---- Usage --------------------------------------------------------------------------------- */

static const char usage_main[] =
    "Usage: boxctl [-s SOCKET] COMMAND [ARGS]...\n"
    "\n"
    "Talk to the boxd agent of this box over its unix socket.\n"
    "\n"
    "Options:\n"
    "  -s, --socket PATH  the agent's socket (default: $BOXD_SOCKET, else " DEFAULT_SOCKET ")\n"
    "  -h, --help         show this help; 'boxctl COMMAND --help' for a command\n"
    "      --version      show boxctl's version and protocol version\n"
    "\n"
    "Commands:\n"
    "  exec     run a command and stream its output\n"
    "  code     run a snippet of code in one of the box's languages\n"
    "  attach   stream a run's output until it ends\n"
    "  wait     wait for a run to end and show its outcome\n"
    "  logs     print a run's retained output\n"
    "  cancel   cancel a run (TERM, then KILL after the grace period)\n"
    "  signal   send a signal to a run's process group\n"
    "  stdin    write to a run's stdin\n"
    "  list     list the agent's runs\n"
    "  info     show the agent's state and limits\n"
    "  ping     measure the round trip to the agent\n"
    "  cp       copy files and directories into or out of the box (':PATH' is in the box)\n"
    "  ls       list a directory in the box\n"
    "  rm       remove files or directory trees in the box\n"
    "  mkdir    make directories in the box\n"
    "  watch    print changes under a directory in the box\n"
    "\n"
    "Exit status: 2 for a usage error; 1 when the agent cannot be reached, the connection\n"
    "breaks or the agent answers with an error; exec, attach and wait exit with the run's\n"
    "exit code unless --json is given.\n";

static const char usage_exec[] =
    "Usage: boxctl exec [OPTIONS] CMD...\n"
    "       boxctl exec [OPTIONS] --argv PROGRAM [ARG]...\n"
    "\n"
    "Run CMD as a shell expression (/bin/sh -c CMD; several words are joined with spaces) and\n"
    "stream the run's stdout and stderr to boxctl's stdout and stderr, byte for byte. Options\n"
    "come before CMD; use -- when CMD starts with '-'.\n"
    "\n"
    "Options:\n"
    "      --argv         the arguments are an argv array, executed directly (PATH searched)\n"
    "      --timeout MS   stop the run after MS milliseconds (TERM, then KILL after the grace)\n"
    "      --grace MS     time between TERM and KILL on timeout and cancel\n"
    "      --cwd DIR      working directory (default: the run user's HOME, else /)\n"
    "  -e, --env K=V      add K=V to the run's environment (repeatable)\n"
    "      --id RUN_ID    choose the run's id; an exec retried with the same id attaches to\n"
    "                     the existing run instead of starting another\n"
    "      --stdin        copy boxctl's stdin to the run's stdin; end-of-file closes it\n"
    "                     (without it, the run's stdin is /dev/null)\n"
    "      --detach       start the run, print its id and return at once\n"
    "      --json         print one JSON object when the run ends, with id, status,\n"
    "                     exit_code, signal, reason, result, stdout, stderr, duration_ms\n"
    "                     (and errno, stage when it could not be started)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Ctrl-C cancels the run and keeps streaming until it has ended; a second Ctrl-C stops\n"
    "waiting (exit 130) and leaves the agent to finish the cancel.\n"
    "\n"
    "Exit status: the run's exit code: 128+N when it was killed by signal N, 127 when the\n"
    "program was not found and 126 when it could not be started otherwise. With --json the\n"
    "exit status is 0 whenever the run's outcome was obtained (the JSON carries its status)\n"
    "and 1 when it was not. With --detach, 0 once the run has started. 2 for a usage error,\n"
    "1 for connection errors and error replies.\n";

static const char usage_code[] =
    "Usage: boxctl code --lang LANG [OPTIONS] (CODE | -f FILE | -)\n"
    "\n"
    "Run a snippet of code with the box's interpreter for LANG (python, js, ts, bash, sh, ruby,\n"
    "perl, php, or what the box's language table adds; 'boxctl info' lists those it has) and\n"
    "stream its output like exec. The snippet is CODE, the contents of FILE, or boxctl's stdin\n"
    "with '-'. The agent writes it to a private file (main.py, main.js...) that is removed\n"
    "when the run ends.\n"
    "\n"
    "Options:\n"
    "  -l, --lang LANG    the language (a name or an alias: py, node, typescript...)\n"
    "  -f, --file FILE    read the snippet from FILE\n"
    "      --timeout MS   stop the run after MS milliseconds (TERM, then KILL after the grace)\n"
    "      --grace MS     time between TERM and KILL on timeout and cancel\n"
    "      --cwd DIR      working directory (default: the run user's HOME, else /)\n"
    "  -e, --env K=V      add K=V to the run's environment (repeatable)\n"
    "      --id RUN_ID    choose the run's id (a retry attaches to the existing run)\n"
    "      --stdin        copy boxctl's stdin to the run's stdin (not with '-')\n"
    "      --detach       start the run, print its id and return at once\n"
    "      --json         print one JSON object when the run ends: exec's fields and output\n"
    "                     (the snippet's stdout)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Exit status: as for exec. A language the box does not have is an error (exit 1) that\n"
    "lists the languages it has.\n";

static const char usage_attach[] =
    "Usage: boxctl attach RUN_ID [--from SEQ]\n"
    "\n"
    "Stream a run's output from record SEQ (default 0) on, live, until it ends, like exec.\n"
    "Records dropped by the agent's log retention are reported on stderr.\n"
    "\n"
    "Options:\n"
    "      --from SEQ   the first record to send\n"
    "  -h, --help       show this help\n"
    "\n"
    "Ctrl-C cancels the run (a second Ctrl-C stops waiting). Exit status: the run's exit code\n"
    "(as for exec); 1 for connection errors and error replies.\n";

static const char usage_wait[] =
    "Usage: boxctl wait RUN_ID [--json]\n"
    "\n"
    "Wait until the run has ended, then print a one-line summary (or with --json the same\n"
    "JSON object as exec --json).\n"
    "\n"
    "Options:\n"
    "      --json       print the outcome as JSON; the exit status is then 0\n"
    "  -h, --help       show this help\n"
    "\n"
    "Exit status: the run's exit code (as for exec); 0 with --json; 1 for connection errors\n"
    "and error replies.\n";

static const char usage_logs[] =
    "Usage: boxctl logs RUN_ID [--json] [--follow] [--from SEQ]\n"
    "\n"
    "Print a run's retained output: the data of each record, to stdout or stderr by stream.\n"
    "\n"
    "Options:\n"
    "      --from SEQ   start at record SEQ (default 0)\n"
    "      --follow     after the retained records, stream new ones until the run ends\n"
    "      --json       print a JSON array of {timestamp, level, message, seq, stream}\n"
    "                   (timestamp RFC 3339 UTC with nanoseconds, level \"info\" for stdout\n"
    "                   and \"error\" for stderr, message without its final newline); with\n"
    "                   --follow, one JSON object per line instead of an array\n"
    "  -h, --help       show this help\n"
    "\n"
    "Exit status: 0, or 1 for connection errors and error replies.\n";

static const char usage_cancel[] =
    "Usage: boxctl cancel RUN_ID [--grace MS]\n"
    "\n"
    "Cancel a run: TERM and CONT to its process group, KILL after the grace period. Returns\n"
    "at once; 'boxctl wait RUN_ID' waits for the end. Cancelling an ended run does nothing.\n"
    "\n"
    "Options:\n"
    "      --grace MS   time between TERM and KILL (default: the agent's)\n"
    "  -h, --help       show this help\n";

static const char usage_signal[] =
    "Usage: boxctl signal RUN_ID SIG\n"
    "\n"
    "Send signal SIG (a number, or a name such as TERM or SIGTERM) to the run's process group.\n"
    "Fails with run_ended once the run has ended.\n";

static const char usage_stdin[] =
    "Usage: boxctl stdin RUN_ID [--eof] [DATA|-]\n"
    "\n"
    "Write DATA (exactly, no newline added) to the stdin of a run started with exec --stdin,\n"
    "or with '-' copy boxctl's own stdin. --eof then closes the run's stdin; with --eof alone\n"
    "it only closes it.\n";

static const char usage_list[] =
    "Usage: boxctl list [--json]\n"
    "\n"
    "List the agent's runs (live and recently finished) as a table:\n"
    "ID STATE STATUS EXIT PID CMD. --json prints the runs as a JSON array.\n";

static const char usage_info[] =
    "Usage: boxctl info [--json]\n"
    "\n"
    "Show the agent's version, boot id, pid, counters and limits.\n";

static const char usage_ping[] =
    "Usage: boxctl ping\n"
    "\n"
    "Send a ping and print the round-trip time.\n";

static int print_usage(const char *text)
{
    return write_all(STDOUT_FILENO, text, strlen(text)) < 0 ? EXIT_FAIL : 0;
}

__attribute__((format(printf, 2, 3))) static int usage_error(const char *cmd, const char *fmt,
                                                              ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (cmd != NULL)
        errmsg("%s: %s (see 'boxctl %s --help')", cmd, buf, cmd);
    else
        errmsg("%s (see 'boxctl --help')", buf);
    return EXIT_USAGE;
}

static int option_error(const char *cmd, int ch, char **argv)
{
    if (ch == ':')
        return usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
    if (optopt != 0)
        return usage_error(cmd, "unknown option '-%c'", optopt);
    return usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
}

static bool valid_run_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RUN_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* The single RUN_ID operand of a command, checked. Returns 0 or EXIT_USAGE (reported). */
static int take_run_id(const char *cmd, int argc, char **argv, int want_more, const char **id)
{
    *id = "";
    if (optind >= argc)
        return usage_error(cmd, "missing RUN_ID");
    if (argc - optind > 1 + want_more)
        return usage_error(cmd, "unexpected argument '%s'", argv[optind + 1 + want_more]);
    *id = argv[optind];
    if (!valid_run_id(*id))
        return usage_error(cmd, "'%s' is not a run id (1-64 of A-Z a-z 0-9 . _ : -)", *id);
    return 0;
}

static int parse_ms(const char *cmd, const char *opt, const char *s, uint64_t *v)
{
    if (parse_u64(s, v) < 0)
        return usage_error(cmd, "%s needs a number of milliseconds, not '%s'", opt, s);
    return 0;
}

/* ---- exec ---------------------------------------------------------------------------------- */

struct exec_opts {
    const char *lang; /* boxctl code: the language (the request is `code`, not `exec`) */
    const char *code; /* its snippet */
    size_t code_len;
    bool use_argv, feed, detach, json;
    bool has_timeout, has_grace;
    uint64_t timeout_ms, grace_ms;
    const char *cwd, *id;
    char **env; /* K=V strings, from argv */
    size_t nenv;
    char **words; /* CMD words or the argv array */
    size_t nwords;
};

/* True when env[i]'s key is given again later (the later one wins, as in a shell). */
static bool env_overridden(const struct exec_opts *e, size_t i)
{
    size_t klen = (size_t)(strchr(e->env[i], '=') - e->env[i]);
    for (size_t k = i + 1; k < e->nenv; k++)
        if (strncmp(e->env[k], e->env[i], klen + 1) == 0)
            return true;
    return false;
}

/* The options exec and code share. Returns 0, or the exit status of a usage error (printed). */
static int run_option(const char *cmd, int ch, struct exec_opts *e)
{
    switch (ch) {
    case 't':
        if (parse_ms(cmd, "--timeout", optarg, &e->timeout_ms) != 0)
            return EXIT_USAGE;
        e->has_timeout = true;
        return 0;
    case 'g':
        if (parse_ms(cmd, "--grace", optarg, &e->grace_ms) != 0)
            return EXIT_USAGE;
        e->has_grace = true;
        return 0;
    case 'c':
        e->cwd = optarg;
        return 0;
    case 'e':
        if (strchr(optarg, '=') == NULL || optarg[0] == '=')
            return usage_error(cmd, "-e needs K=V with a non-empty K, not '%s'", optarg);
        e->env[e->nenv++] = optarg;
        return 0;
    case 'i':
        if (!valid_run_id(optarg))
            return usage_error(cmd, "'%s' is not a run id (1-64 of A-Z a-z 0-9 . _ : -)", optarg);
        e->id = optarg;
        return 0;
    case 'I':
        e->feed = true;
        return 0;
    case 'd':
        e->detach = true;
        return 0;
    default: /* 'j' */
        e->json = true;
        return 0;
    }
}

static int exec_request(struct ctl *x, const struct exec_opts *e, uint64_t *req)
{
    uint32_t nenv = 0;
    for (size_t i = 0; i < e->nenv; i++)
        nenv += !env_overridden(e, i);
    uint32_t nf = 2 /* cmd|argv (lang and code), follow */ + (e->lang != NULL) + (nenv > 0) +
                  (e->cwd != NULL) + e->has_timeout + e->has_grace + e->feed + e->json +
                  (e->id != NULL);
    struct msg_out o;
    int r = box_req_begin(&x->c, &o, e->lang ? "code" : "exec", nf, req);
    if (r < 0)
        return r;
    if (e->lang) {
        msg_kv_str(&o, "lang", e->lang);
        msg_key(&o, "code");
        msg_data(&o, e->code, e->code_len);
    } else if (e->use_argv) {
        msg_key(&o, "argv");
        msg_array(&o, (uint32_t)e->nwords);
        for (size_t i = 0; i < e->nwords; i++)
            msg_str(&o, e->words[i]);
    } else {
        struct sbuf cmd;
        sbuf_init(&cmd, SIZE_MAX);
        for (size_t i = 0; i < e->nwords; i++) {
            if (i > 0)
                sbuf_add(&cmd, " ", 1);
            sbuf_add(&cmd, e->words[i], strlen(e->words[i]));
        }
        msg_key(&o, "cmd");
        msg_strn(&o, cmd.p != NULL ? cmd.p : "", cmd.len);
        if (cmd.nomem)
            o.failed = true;
        sbuf_free(&cmd);
    }
    if (nenv > 0) {
        msg_key(&o, "env");
        msg_map(&o, nenv);
        for (size_t i = 0; i < e->nenv; i++) {
            if (env_overridden(e, i))
                continue;
            const char *eq = strchr(e->env[i], '=');
            msg_strn(&o, e->env[i], (size_t)(eq - e->env[i]));
            msg_str(&o, eq + 1);
        }
    }
    if (e->cwd != NULL)
        msg_kv_str(&o, "cwd", e->cwd);
    if (e->has_timeout)
        msg_kv_u64(&o, "timeout_ms", e->timeout_ms);
    if (e->has_grace)
        msg_kv_u64(&o, "grace_ms", e->grace_ms);
    if (e->feed)
        msg_kv_bool(&o, "stdin", true);
    msg_kv_bool(&o, "follow", !e->detach);
    if (e->json)
        msg_kv_bool(&o, "output", true);
    if (e->id != NULL)
        msg_kv_str(&o, "id", e->id);
    return box_client_send(&x->c, &o);
}

/* The exec was refused with spawn_failed (in x->m). Without --json: the error line and 127/126.
 * With --json: the run is recorded as failed, so its outcome is printed like any other. */
static int exec_spawn_failed(struct ctl *x, const struct exec_opts *e, const char *known_id)
{
    /* Copies of the error's fields: x->m is reused by the wait below. */
    char id[RUN_ID_MAX + 1], ename[32], stage[32];
    struct end_info fake;
    struct bytes b = {NULL, 0};
    memset(&fake, 0, sizeof fake);
    if (get_bytes(&x->m.root, "id", &b) && b.n <= RUN_ID_MAX)
        bytes_cstr(b, id, sizeof id);
    else
        snprintf(id, sizeof id, "%s", known_id);
    get_bytes(&x->m.root, "errno_name", &b);
    bytes_cstr(b, ename, sizeof ename);
    fake.errno_name = b.p != NULL ? (struct bytes){ename, strlen(ename)} : (struct bytes){NULL, 0};
    get_bytes(&x->m.root, "stage", &b);
    bytes_cstr(b, stage, sizeof stage);
    fake.stage = b.p != NULL ? (struct bytes){stage, strlen(stage)} : (struct bytes){NULL, 0};
    fake.has_errno = msg_get_i64(&x->m.root, "errno", &fake.err_no) == 0;
    int code = spawn_exit_code(fake.has_errno, fake.err_no, fake.errno_name);
    if (!e->json) {
        print_agent_error(&x->m);
        return code;
    }

    if (valid_run_id(id)) {
        /* The agent's own record of the failed run is the authority; ask for it. */
        int r = wait_end(x, id, true);
        if (r == 0) {
            struct end_info end;
            end_parse(&x->m.root, &end);
            end.with_output = e->lang != NULL;
            return end_print_json(&end, NULL) < 0 ? EXIT_FAIL : 0;
        }
        if (r != -EREMOTEIO) {
            errmsg("%s: %s", x->sock, io_error(r));
            return EXIT_FAIL;
        }
    }
    /* The agent did not keep the run (4.1 says it should): describe it from the error reply. */
    fake.id = (struct bytes){id, strlen(id)};
    fake.status = (struct bytes){"failed", 6};
    fake.reason = (struct bytes){"spawn", 5};
    fake.has_exit = true;
    fake.exit_code = code;
    fake.with_output = e->lang != NULL;
    return end_print_json(&fake, NULL) < 0 ? EXIT_FAIL : 0;
}

static int exec_run(struct ctl *x, struct exec_opts *e);

static int cmd_exec(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"argv", no_argument, NULL, 'a'},     {"timeout", required_argument, NULL, 't'},
        {"grace", required_argument, NULL, 'g'}, {"cwd", required_argument, NULL, 'c'},
        {"env", required_argument, NULL, 'e'}, {"id", required_argument, NULL, 'i'},
        {"stdin", no_argument, NULL, 'I'},    {"detach", no_argument, NULL, 'd'},
        {"json", no_argument, NULL, 'j'},     {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct exec_opts e;
    memset(&e, 0, sizeof e);
    e.env = calloc((size_t)argc, sizeof *e.env);
    if (e.env == NULL) {
        errmsg("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    int ret = EXIT_USAGE;
    int ch;
    optind = 0;
    opterr = 0;
    /* '+': options end at CMD, so CMD's own options stay its own. */
    while ((ch = getopt_long(argc, argv, "+:e:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': e.use_argv = true; break;
        case 't': case 'g': case 'c': case 'e': case 'i': case 'I': case 'd': case 'j':
            if ((ret = run_option("exec", ch, &e)) != 0)
                goto out;
            break;
        case 'h': ret = print_usage(usage_exec); goto out;
        default: ret = option_error("exec", ch, argv); goto out;
        }
    }
    if (optind >= argc) {
        ret = usage_error("exec", "missing CMD");
        goto out;
    }
    e.words = argv + optind;
    e.nwords = (size_t)(argc - optind);
    ret = exec_run(x, &e);
out:
    free(e.env);
    return ret;
}

/* Sends the exec (or code) request e describes and sees it through: --detach prints the id,
 * otherwise the run is followed to its end. Returns boxctl's exit status. */
static int exec_run(struct ctl *x, struct exec_opts *e_)
{
    struct exec_opts e = *e_;
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    ret = EXIT_FAIL;

    uint64_t req;
    if (e.detach) {
        int r = exec_request(x, &e, &req);
        if (r < 0) {
            request_failed(x, r);
            goto out;
        }
        /* follow:false: the only frame for this request is the reply. */
        for (;;) {
            r = box_client_recv(&x->c, &x->m, REPLY_TIMEOUT_MS);
            if (r == -EBADMSG)
                continue;
            if (r < 0) {
                request_failed(x, r);
                goto out;
            }
            if ((x->m.has_req && x->m.req == req) ||
                (box_msg_is(&x->m, "error") && msg_get(&x->m.root, "req") == NULL))
                break;
        }
        if (box_msg_is(&x->m, "error")) {
            const char *code = "";
            size_t n = 0;
            box_msg_error(&x->m, &code, &n, NULL, NULL);
            if (bytes_is((struct bytes){code, n}, "spawn_failed")) {
                struct exec_opts plain = e;
                plain.json = false;
                ret = exec_spawn_failed(x, &plain, e.id ? e.id : "");
            } else {
                print_agent_error(&x->m);
            }
            goto out;
        }
        struct bytes id = {NULL, 0};
        if (!box_msg_is(&x->m, "started") || !get_bytes(&x->m.root, "id", &id)) {
            errmsg("unexpected reply to exec from the agent");
            goto out;
        }
        if (e.json) {
            struct json j;
            json_init(&j, 4096);
            json_object_begin(&j);
            json_key(&j, "id");
            json_string(&j, id.p, id.n);
            int64_t pid;
            json_key(&j, "pid");
            if (msg_get_i64(&x->m.root, "pid", &pid) == 0)
                json_int(&j, pid);
            else
                json_null(&j);
            bool existing = false;
            msg_get_bool(&x->m.root, "existing", &existing);
            json_key(&j, "existing");
            json_bool(&j, existing);
            json_object_end(&j);
            json_newline(&j);
            r = json_flush(&j, STDOUT_FILENO);
            json_destroy(&j);
        } else {
            char line[RUN_ID_MAX + 2];
            bytes_cstr(id, line, sizeof line - 1);
            sanitize(line, strlen(line));
            size_t n = strlen(line);
            line[n++] = '\n';
            r = write_all(STDOUT_FILENO, line, n);
        }
        if (r < 0)
            errmsg("writing output: %s", strerror(-r));
        else
            ret = 0;
        goto out;
    }

    int r = sigint_install();
    if (r < 0) {
        errmsg("installing the SIGINT handler: %s", strerror(-r));
        goto out;
    }
    struct sink sink;
    sink_init(&sink, e.json ? SINK_CAPTURE : SINK_RAW);
    struct follow f;
    memset(&f, 0, sizeof f);
    f.x = x;
    f.sink = &sink;
    f.cancel_on_sigint = true;
    f.feed = e.feed;
    if (e.id != NULL)
        snprintf(f.id, sizeof f.id, "%s", e.id);
    if (e.feed) {
        /* One chunk per request, and a request must stay under the agent's max_frame. */
        f.chunk = STDIN_CHUNK_MAX;
        if (x->c.max_out < STDIN_CHUNK_MAX + STDIN_FRAME_OVERHEAD)
            f.chunk = x->c.max_out - STDIN_FRAME_OVERHEAD;
        f.feed_buf = malloc(f.chunk);
        if (f.feed_buf == NULL) {
            errmsg("%s", strerror(ENOMEM));
            sink_destroy(&sink);
            goto out;
        }
    }
    r = exec_request(x, &e, &req);
    if (r < 0) {
        request_failed(x, r);
        goto out_follow;
    }
    f.req = req;
    switch (follow_run(&f)) {
    case F_END: {
        struct end_info end;
        end_parse(&x->m.root, &end);
        end.with_output = e.lang != NULL;
        if (e.json) {
            ret = end_print_json(&end, &sink) < 0 ? EXIT_FAIL : 0;
        } else {
            if (bytes_is(end.reason, "spawn"))
                report_spawn_end(&end);
            ret = end_exit_code(&end);
        }
        break;
    }
    case F_ERROR: {
        const char *code = "";
        size_t n = 0;
        box_msg_error(&x->m, &code, &n, NULL, NULL);
        if (bytes_is((struct bytes){code, n}, "spawn_failed"))
            ret = exec_spawn_failed(x, &e, f.id);
        else
            print_agent_error(&x->m);
        break;
    }
    case F_DETACHED: ret = 130; break;
    default: ret = EXIT_FAIL; break;
    }
out_follow:
    free(f.feed_buf);
    sink_destroy(&sink);
out:
    return ret;
}

/* ---- code ---------------------------------------------------------------------------------- */

/* Reads all of fd into *buf (malloc'ed), at most max bytes (more: -EFBIG). */
static int read_all(int fd, size_t max, char **buf, size_t *len)
{
    struct sbuf b;
    sbuf_init(&b, max);
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = -errno;
            sbuf_free(&b);
            return e;
        }
        if (n == 0)
            break;
        if (b.len + (size_t)n > max) {
            sbuf_free(&b);
            return -EFBIG;
        }
        sbuf_add(&b, chunk, (size_t)n);
        if (b.nomem) {
            sbuf_free(&b);
            return -ENOMEM;
        }
    }
    *buf = b.p;
    *len = b.len;
    if (*buf == NULL) {
        *buf = strdup("");
        if (*buf == NULL)
            return -ENOMEM;
    }
    return 0;
}

static int cmd_code(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"lang", required_argument, NULL, 'l'},  {"file", required_argument, NULL, 'f'},
        {"timeout", required_argument, NULL, 't'}, {"grace", required_argument, NULL, 'g'},
        {"cwd", required_argument, NULL, 'c'},   {"env", required_argument, NULL, 'e'},
        {"id", required_argument, NULL, 'i'},    {"stdin", no_argument, NULL, 'I'},
        {"detach", no_argument, NULL, 'd'},      {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    struct exec_opts e;
    memset(&e, 0, sizeof e);
    e.env = calloc((size_t)argc, sizeof *e.env);
    if (e.env == NULL) {
        errmsg("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    const char *file = NULL;
    char *code = NULL;
    int ret = EXIT_USAGE;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":l:f:e:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'l': e.lang = optarg; break;
        case 'f': file = optarg; break;
        case 't': case 'g': case 'c': case 'e': case 'i': case 'I': case 'd': case 'j':
            if ((ret = run_option("code", ch, &e)) != 0)
                goto out;
            break;
        case 'h': ret = print_usage(usage_code); goto out;
        default: ret = option_error("code", ch, argv); goto out;
        }
    }
    if (e.lang == NULL) {
        ret = usage_error("code", "missing --lang LANG");
        goto out;
    }
    int nargs = argc - optind;
    if ((file != NULL) == (nargs == 1) || nargs > 1) {
        ret = usage_error("code", "give the snippet as one CODE argument, -f FILE or -");
        goto out;
    }
    bool from_stdin = file == NULL && strcmp(argv[optind], "-") == 0;
    if (from_stdin && e.feed) {
        ret = usage_error("code", "--stdin cannot be used when the snippet comes from stdin");
        goto out;
    }
    if (file != NULL || from_stdin) {
        int fd = from_stdin ? STDIN_FILENO : open(file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            errmsg("%s: %s", file, strerror(errno));
            ret = EXIT_FAIL;
            goto out;
        }
        /* The agent refuses what is over its max_code; this only bounds boxctl's memory. */
        int r = read_all(fd, CAPTURE_MAX, &code, &e.code_len);
        if (!from_stdin)
            close(fd);
        if (r < 0) {
            errmsg("%s: %s", from_stdin ? "stdin" : file, strerror(-r));
            ret = EXIT_FAIL;
            goto out;
        }
        e.code = code;
    } else {
        e.code = argv[optind];
        e.code_len = strlen(e.code);
    }
    ret = exec_run(x, &e);
out:
    free(code);
    free(e.env);
    return ret;
}

/* ---- attach, wait, logs -------------------------------------------------------------------- */

static int cmd_attach(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"from", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t from = 0;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'f':
            if (parse_u64(optarg, &from) < 0)
                return usage_error("attach", "--from needs a sequence number, not '%s'",
                                   optarg);
            break;
        case 'h': return print_usage(usage_attach);
        default: return option_error("attach", ch, argv);
        }
    }
    const char *id = NULL;
    int ret = take_run_id("attach", argc, argv, 0, &id);
    if (ret != 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    int r = sigint_install();
    if (r < 0) {
        errmsg("installing the SIGINT handler: %s", strerror(-r));
        return EXIT_FAIL;
    }

    struct msg_out o;
    uint64_t req;
    r = req_with_id(x, &o, "attach", id, 1, &req);
    if (r == 0) {
        msg_kv_u64(&o, "from_seq", from);
        r = box_client_send(&x->c, &o);
    }
    if (r < 0)
        return request_failed(x, r);

    struct sink sink;
    sink_init(&sink, SINK_RAW);
    struct follow f;
    memset(&f, 0, sizeof f);
    f.x = x;
    f.sink = &sink;
    f.req = req;
    f.cancel_on_sigint = true;
    snprintf(f.id, sizeof f.id, "%s", id);
    switch (follow_run(&f)) {
    case F_END: {
        struct end_info end;
        end_parse(&x->m.root, &end);
        if (bytes_is(end.reason, "spawn"))
            report_spawn_end(&end);
        ret = end_exit_code(&end);
        break;
    }
    case F_ERROR: print_agent_error(&x->m); ret = EXIT_FAIL; break;
    case F_DETACHED: ret = 130; break;
    default: ret = EXIT_FAIL; break;
    }
    sink_destroy(&sink);
    return ret;
}

/* Pages through `logs` from *from until `more` is false, passing each record to s. On 0, *from
 * is the seq to ask for next. Returns 0, -EREMOTEIO (the error is in x->m), -EBADMSG, an I/O
 * error, or ALREADY_REPORTED. */
static int logs_pages(struct ctl *x, const char *id, uint64_t *from, struct sink *s)
{
    for (;;) {
        struct msg_out o;
        uint64_t req;
        int r = req_with_id(x, &o, "logs", id, 2, &req);
        if (r < 0)
            return r;
        msg_kv_u64(&o, "from_seq", *from);
        msg_kv_u64(&o, "max_records", LOGS_PAGE_RECORDS);
        r = box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
        if (r < 0)
            return r;
        const msgpack_object *root = &x->m.root;
        uint64_t first_seq, next_seq;
        bool more = false;
        if (!box_msg_is(&x->m, "logs") || msg_get_u64(root, "next_seq", &next_seq) != 0)
            return -EBADMSG;
        if (msg_get_u64(root, "first_seq", &first_seq) == 0 && first_seq > *from) {
            warn_gap(id, *from, first_seq);
            s->gap = true;
        }
        r = sink_lines(s, msg_get(root, "lines"));
        if (r < 0)
            return r;
        msg_get_bool(root, "more", &more);
        if (more && next_seq <= *from)
            return -EBADMSG; /* no progress: asking again would loop forever */
        if (next_seq > *from)
            *from = next_seq;
        if (!more)
            return 0;
    }
}

static int cmd_wait(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'j': json = true; break;
        case 'h': return print_usage(usage_wait);
        default: return option_error("wait", ch, argv);
        }
    }
    const char *id = NULL;
    int ret = take_run_id("wait", argc, argv, 0, &id);
    if (ret != 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    int r = wait_end(x, id, json);
    if (r < 0)
        return request_failed(x, r);

    struct end_info end;
    end_parse(&x->m.root, &end);
    if (json) {
        if (!end.truncated)
            return end_print_json(&end, NULL) < 0 ? EXIT_FAIL : 0;
        /* The end event's copy is cut: rebuild stdout and stderr from the retained log. The
         * end event is copied first because the log pages reuse x->m. */
        struct box_msg endmsg = x->m;
        if (box_msg_init(&x->m) < 0) {
            x->m = endmsg;
            errmsg("%s", strerror(ENOMEM));
            return EXIT_FAIL;
        }
        end_parse(&endmsg.root, &end);
        struct sink sink;
        sink_init(&sink, SINK_CAPTURE);
        uint64_t from = 0;
        r = logs_pages(x, id, &from, &sink);
        if (r == 0)
            ret = end_print_json(&end, &sink) < 0 ? EXIT_FAIL : 0;
        else if (r == ALREADY_REPORTED)
            ret = EXIT_FAIL;
        else
            ret = request_failed(x, r);
        sink_destroy(&sink);
        box_msg_destroy(&endmsg);
        return ret;
    }

    struct sbuf line;
    sbuf_init(&line, 1024);
    char sid[RUN_ID_MAX + 1], st[32], rs[32];
    bytes_cstr(end.id.p ? end.id : (struct bytes){id, strlen(id)}, sid, sizeof sid);
    bytes_cstr(end.status, st, sizeof st);
    bytes_cstr(end.reason, rs, sizeof rs);
    sanitize(sid, strlen(sid));
    sanitize(st, strlen(st));
    sanitize(rs, strlen(rs));
    sbuf_printf(&line, "%s: %s", sid, st[0] ? st : "?");
    if (!bytes_is(end.status, "completed"))
        sbuf_printf(&line, " (%s)", rs[0] ? rs : "?");
    if (end.has_exit)
        sbuf_printf(&line, " exit_code=%" PRId64, end.exit_code);
    if (end.has_signal)
        sbuf_printf(&line, " signal=%" PRId64, end.sig);
    if (end.errno_name.p != NULL) {
        char en[32];
        bytes_cstr(end.errno_name, en, sizeof en);
        sanitize(en, strlen(en));
        sbuf_printf(&line, " errno=%s", en);
    }
    if (end.stage.p != NULL) {
        char sg[32];
        bytes_cstr(end.stage, sg, sizeof sg);
        sanitize(sg, strlen(sg));
        sbuf_printf(&line, " stage=%s", sg);
    }
    if (end.has_duration)
        sbuf_printf(&line, " duration_ms=%" PRId64, end.duration_ms);
    sbuf_add(&line, "\n", 1);
    ret = end_exit_code(&end);
    if (write_all(STDOUT_FILENO, line.p, line.len) < 0)
        ret = EXIT_FAIL;
    sbuf_free(&line);
    return ret;
}

static int cmd_logs(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"follow", no_argument, NULL, 'F'},
        {"from", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false, follow = false;
    uint64_t from = 0;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'j': json = true; break;
        case 'F': follow = true; break;
        case 'f':
            if (parse_u64(optarg, &from) < 0)
                return usage_error("logs", "--from needs a sequence number, not '%s'", optarg);
            break;
        case 'h': return print_usage(usage_logs);
        default: return option_error("logs", ch, argv);
        }
    }
    const char *id = NULL;
    int ret = take_run_id("logs", argc, argv, 0, &id);
    if (ret != 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;

    struct json j;
    json_init(&j, JSON_BUF_MAX);
    struct sink sink;
    sink_init(&sink, json ? SINK_JSON : SINK_RAW);
    sink.j = &j;
    sink.lines = follow; /* JSON Lines when following: an array would never be closed in time */
    if (json && !follow)
        json_array_begin(&j);

    ret = EXIT_FAIL;
    int r = logs_pages(x, id, &from, &sink);
    if (r < 0) {
        if (r != ALREADY_REPORTED)
            request_failed(x, r);
        goto out;
    }
    if (!follow) {
        if (json) {
            json_array_end(&j);
            json_newline(&j);
            r = json_flush(&j, STDOUT_FILENO);
            if (r < 0) {
                errmsg("writing output: %s", strerror(-r));
                goto out;
            }
        }
        ret = 0;
        goto out;
    }

    struct msg_out o;
    uint64_t req;
    r = req_with_id(x, &o, "attach", id, 1, &req);
    if (r == 0) {
        msg_kv_u64(&o, "from_seq", from);
        r = box_client_send(&x->c, &o);
    }
    if (r < 0) {
        request_failed(x, r);
        goto out;
    }
    struct follow f;
    memset(&f, 0, sizeof f);
    f.x = x;
    f.sink = &sink;
    f.req = req;
    snprintf(f.id, sizeof f.id, "%s", id);
    switch (follow_run(&f)) {
    case F_END: ret = 0; break;
    case F_ERROR: print_agent_error(&x->m); break;
    default: break;
    }
out:
    sink_destroy(&sink);
    json_destroy(&j);
    return ret;
}

/* ---- cancel, signal, stdin ----------------------------------------------------------------- */

static int cmd_cancel(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"grace", required_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t grace = 0;
    bool has_grace = false;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'g':
            if (parse_ms("cancel", "--grace", optarg, &grace) != 0)
                return EXIT_USAGE;
            has_grace = true;
            break;
        case 'h': return print_usage(usage_cancel);
        default: return option_error("cancel", ch, argv);
        }
    }
    const char *id = NULL;
    int ret = take_run_id("cancel", argc, argv, 0, &id);
    if (ret != 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    struct msg_out o;
    uint64_t req;
    int r = req_with_id(x, &o, "cancel", id, has_grace, &req);
    if (r < 0)
        return request_failed(x, r);
    if (has_grace)
        msg_kv_u64(&o, "grace_ms", grace);
    r = box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
    if (r < 0)
        return request_failed(x, r);
    return 0;
}

static int cmd_signal(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (ch == 'h')
            return print_usage(usage_signal);
        return option_error("signal", ch, argv);
    }
    const char *id = NULL;
    int ret = take_run_id("signal", argc, argv, 1, &id);
    if (ret != 0)
        return ret;
    if (argc - optind < 2)
        return usage_error("signal", "missing SIG");
    const char *sig = argv[optind + 1];
    if (sig[0] == '\0')
        return usage_error("signal", "empty SIG");
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    struct msg_out o;
    uint64_t req;
    int r = req_with_id(x, &o, "signal", id, 1, &req);
    if (r < 0)
        return request_failed(x, r);
    uint64_t num;
    if (parse_u64(sig, &num) == 0)
        msg_kv_u64(&o, "signal", num);
    else
        msg_kv_str(&o, "signal", sig); /* the agent knows the names: "TERM", "SIGTERM" */
    r = box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
    if (r < 0)
        return request_failed(x, r);
    return 0;
}

/* Sends one stdin request and waits for its `ok`. */
static int stdin_send(struct ctl *x, const char *id, const char *data, size_t len, bool eof)
{
    struct msg_out o;
    uint64_t req;
    int r = req_with_id(x, &o, "stdin", id, (len > 0) + eof, &req);
    if (r < 0)
        return r;
    if (len > 0) {
        msg_key(&o, "data");
        msg_data(&o, data, len);
    }
    if (eof)
        msg_kv_bool(&o, "eof", true);
    return box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
}

static int cmd_stdin(struct ctl *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"eof", no_argument, NULL, 'E'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool eof = false;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'E': eof = true; break;
        case 'h': return print_usage(usage_stdin);
        default: return option_error("stdin", ch, argv);
        }
    }
    const char *id = NULL;
    int ret = take_run_id("stdin", argc, argv, 1, &id);
    if (ret != 0)
        return ret;
    const char *data = argc - optind > 1 ? argv[optind + 1] : NULL;
    if (data == NULL && !eof)
        return usage_error("stdin", "give DATA, '-' for boxctl's stdin, or --eof");
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;

    size_t chunk = STDIN_CHUNK_MAX;
    if (x->c.max_out < STDIN_CHUNK_MAX + STDIN_FRAME_OVERHEAD)
        chunk = x->c.max_out - STDIN_FRAME_OVERHEAD;
    int r = 0;
    if (data == NULL) {
        r = stdin_send(x, id, NULL, 0, true);
    } else if (strcmp(data, "-") != 0) {
        size_t len = strlen(data), off = 0;
        do {
            size_t n = len - off < chunk ? len - off : chunk;
            r = stdin_send(x, id, data + off, n, eof && off + n == len);
            off += n;
        } while (r == 0 && off < len);
    } else {
        char *buf = malloc(chunk);
        if (buf == NULL) {
            errmsg("%s", strerror(ENOMEM));
            return EXIT_FAIL;
        }
        for (;;) {
            ssize_t n = read(STDIN_FILENO, buf, chunk);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                errmsg("reading stdin: %s", strerror(errno));
                free(buf);
                return EXIT_FAIL;
            }
            if (n == 0) {
                if (eof)
                    r = stdin_send(x, id, NULL, 0, true);
                break;
            }
            r = stdin_send(x, id, buf, (size_t)n, false);
            if (r < 0)
                break;
        }
        free(buf);
    }
    if (r < 0)
        return request_failed(x, r);
    return 0;
}

/* ---- list, info, ping ---------------------------------------------------------------------- */

/* Any msgpack value as JSON. Keys that are not strings (never sent by boxd) become null-named
 * text so that the output stays valid. */
static void json_mp(struct json *j, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: json_null(j); break;
    case MSGPACK_OBJECT_BOOLEAN: json_bool(j, o->via.boolean); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: json_uint(j, o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: json_int(j, o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: json_double(j, o->via.f64); break;
    case MSGPACK_OBJECT_STR: json_string(j, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN: json_string(j, o->via.bin.ptr, o->via.bin.size); break;
    case MSGPACK_OBJECT_ARRAY:
        json_array_begin(j);
        for (uint32_t i = 0; i < o->via.array.size; i++)
            json_mp(j, &o->via.array.ptr[i]);
        json_array_end(j);
        break;
    case MSGPACK_OBJECT_MAP:
        json_object_begin(j);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type == MSGPACK_OBJECT_STR)
                json_keyn(j, k->via.str.ptr, k->via.str.size);
            else
                json_key(j, "?");
            json_mp(j, &o->via.map.ptr[i].val);
        }
        json_object_end(j);
        break;
    default: json_null(j); break;
    }
}

/* Any msgpack value as one line of text (control characters shown as '?'). */
static void text_mp(struct sbuf *b, const msgpack_object *o)
{
    size_t start = b->len;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: sbuf_add(b, "-", 1); break;
    case MSGPACK_OBJECT_BOOLEAN: sbuf_printf(b, "%s", o->via.boolean ? "true" : "false"); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: sbuf_printf(b, "%" PRIu64, o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: sbuf_printf(b, "%" PRId64, o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: sbuf_printf(b, "%g", o->via.f64); break;
    case MSGPACK_OBJECT_STR: sbuf_add(b, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN: sbuf_printf(b, "<%" PRIu32 " bytes>", o->via.bin.size); break;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i > 0)
                sbuf_add(b, ", ", 2);
            text_mp(b, &o->via.array.ptr[i]);
        }
        break;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (i > 0)
                sbuf_add(b, " ", 1);
            text_mp(b, &o->via.map.ptr[i].key);
            sbuf_add(b, "=", 1);
            text_mp(b, &o->via.map.ptr[i].val);
        }
        break;
    default: sbuf_add(b, "?", 1); break;
    }
    if (b->len > start && b->p != NULL)
        sanitize(b->p + start, b->len - start);
}

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

/* "key: value" lines for a map; nested maps become "outer.inner: value". */
static void text_map(struct sbuf *b, const char *prefix, const msgpack_object *map)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        if (prefix[0] == '\0' && (key_is(k, "type") || key_is(k, "req")))
            continue;
        struct sbuf name;
        sbuf_init(&name, 256);
        sbuf_add(&name, prefix, strlen(prefix));
        text_mp(&name, k);
        if (v->type == MSGPACK_OBJECT_MAP) {
            sbuf_add(&name, ".", 2); /* with the NUL */
            if (name.p != NULL && !name.over)
                text_map(b, name.p, v);
        } else {
            sbuf_add(b, name.p, name.len);
            sbuf_add(b, ": ", 2);
            text_mp(b, v);
            sbuf_add(b, "\n", 1);
        }
        sbuf_free(&name);
    }
}

static int simple_request(struct ctl *x, const char *type)
{
    struct msg_out o;
    uint64_t req;
    int r = box_req_begin(&x->c, &o, type, 0, &req);
    if (r < 0)
        return r;
    return box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
}

/* Parses the --json/--help options of list and info. Returns -1 to go on, else an exit code. */
static int json_only_options(const char *cmd, const char *usage, int argc, char **argv,
                             bool *json)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'j': *json = true; break;
        case 'h': return print_usage(usage);
        default: return option_error(cmd, ch, argv);
        }
    }
    if (optind < argc)
        return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    return -1;
}

static int print_json_value(const msgpack_object *o, bool skip_envelope)
{
    struct json j;
    json_init(&j, JSON_BUF_MAX);
    if (skip_envelope && o->type == MSGPACK_OBJECT_MAP) {
        json_object_begin(&j);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (key_is(k, "type") || key_is(k, "req") || k->type != MSGPACK_OBJECT_STR)
                continue;
            json_keyn(&j, k->via.str.ptr, k->via.str.size);
            json_mp(&j, &o->via.map.ptr[i].val);
        }
        json_object_end(&j);
    } else {
        json_mp(&j, o);
    }
    json_newline(&j);
    int r = json_flush(&j, STDOUT_FILENO);
    json_destroy(&j);
    if (r < 0) {
        errmsg("writing output: %s", strerror(-r));
        return EXIT_FAIL;
    }
    return 0;
}

static int cmd_list(struct ctl *x, int argc, char **argv)
{
    bool json = false;
    int ret = json_only_options("list", usage_list, argc, argv, &json);
    if (ret >= 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    int r = simple_request(x, "list");
    if (r < 0)
        return request_failed(x, r);
    const msgpack_object *runs = msg_get(&x->m.root, "runs");
    if (runs == NULL || runs->type != MSGPACK_OBJECT_ARRAY) {
        errmsg("malformed list reply from the agent");
        return EXIT_FAIL;
    }
    if (json)
        return print_json_value(runs, false);

    /* Two passes: the cells of every row as text, then the table with column widths. */
    enum { NCOL = 6 };
    static const char *const head[NCOL] = {"ID", "STATE", "STATUS", "EXIT", "PID", "CMD"};
    uint32_t nrows = runs->via.array.size;
    struct sbuf *cells = calloc((size_t)nrows + 1, NCOL * sizeof *cells);
    if (cells == NULL) {
        errmsg("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    size_t width[NCOL];
    for (int c = 0; c < NCOL; c++) {
        sbuf_init(&cells[c], 64);
        sbuf_add(&cells[c], head[c], strlen(head[c]));
        width[c] = strlen(head[c]);
    }
    for (uint32_t i = 0; i < nrows; i++) {
        const msgpack_object *run = &runs->via.array.ptr[i];
        struct sbuf *row = &cells[(size_t)(i + 1) * NCOL];
        static const char *const keys[NCOL - 1] = {"id", "state", "status", "exit_code", "pid"};
        for (int c = 0; c < NCOL; c++)
            sbuf_init(&row[c], c == NCOL - 1 ? 4096 : 128);
        for (int c = 0; c < NCOL - 1; c++) {
            const msgpack_object *v = msg_get(run, keys[c]);
            if (v == NULL || v->type == MSGPACK_OBJECT_NIL)
                sbuf_add(&row[c], "-", 1);
            else
                text_mp(&row[c], v);
        }
        const msgpack_object *cmd = msg_get(run, "cmd");
        const msgpack_object *av = msg_get(run, "argv");
        if (cmd != NULL && cmd->type != MSGPACK_OBJECT_NIL)
            text_mp(&row[NCOL - 1], cmd);
        else if (av != NULL && av->type == MSGPACK_OBJECT_ARRAY)
            for (uint32_t k = 0; k < av->via.array.size; k++) {
                if (k > 0)
                    sbuf_add(&row[NCOL - 1], " ", 1);
                text_mp(&row[NCOL - 1], &av->via.array.ptr[k]);
            }
        else if (av != NULL && av->type != MSGPACK_OBJECT_NIL)
            text_mp(&row[NCOL - 1], av); /* tolerate an agent that sends argv as one string */
        for (int c = 0; c < NCOL - 1; c++)
            if (row[c].len > width[c])
                width[c] = row[c].len;
    }
    struct sbuf out;
    sbuf_init(&out, SIZE_MAX);
    for (uint32_t i = 0; i <= nrows; i++) {
        struct sbuf *row = &cells[(size_t)i * NCOL];
        for (int c = 0; c < NCOL; c++) {
            sbuf_add(&out, row[c].p, row[c].len);
            if (c < NCOL - 1)
                sbuf_printf(&out, "%*s", (int)(width[c] - row[c].len + 2), "");
        }
        sbuf_add(&out, "\n", 1);
    }
    ret = 0;
    if (out.nomem) {
        errmsg("%s", strerror(ENOMEM));
        ret = EXIT_FAIL;
    } else if (write_all(STDOUT_FILENO, out.p, out.len) < 0) {
        ret = EXIT_FAIL;
    }
    sbuf_free(&out);
    for (size_t k = 0; k < ((size_t)nrows + 1) * NCOL; k++)
        sbuf_free(&cells[k]);
    free(cells);
    return ret;
}

static int cmd_info(struct ctl *x, int argc, char **argv)
{
    bool json = false;
    int ret = json_only_options("info", usage_info, argc, argv, &json);
    if (ret >= 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    int r = simple_request(x, "info");
    if (r < 0)
        return request_failed(x, r);
    if (json)
        return print_json_value(&x->m.root, true);
    struct sbuf out;
    sbuf_init(&out, SIZE_MAX);
    text_map(&out, "", &x->m.root);
    ret = 0;
    if (out.nomem || (out.len > 0 && write_all(STDOUT_FILENO, out.p, out.len) < 0))
        ret = EXIT_FAIL;
    sbuf_free(&out);
    return ret;
}

static int cmd_ping(struct ctl *x, int argc, char **argv)
{
    bool json = false; /* accepted for symmetry, ignored */
    int ret = json_only_options("ping", usage_ping, argc, argv, &json);
    if (ret >= 0)
        return ret;
    ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = simple_request(x, "ping");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (r < 0)
        return request_failed(x, r);
    if (!box_msg_is(&x->m, "pong")) {
        errmsg("unexpected reply to ping from the agent");
        return EXIT_FAIL;
    }
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    char agent[sizeof x->c.agent], boot[sizeof x->c.boot_id];
    snprintf(agent, sizeof agent, "%s", x->c.agent[0] ? x->c.agent : "boxd");
    snprintf(boot, sizeof boot, "%s", x->c.boot_id);
    sanitize(agent, strlen(agent));
    sanitize(boot, strlen(boot));
    struct sbuf line;
    sbuf_init(&line, 512);
    sbuf_printf(&line, "pong from %s (boot %s): time=%.3f ms\n", agent, boot, ms);
    ret = write_all(STDOUT_FILENO, line.p, line.len) < 0 ? EXIT_FAIL : 0;
    sbuf_free(&line);
    return ret;
}

/* ---- main ---------------------------------------------------------------------------------- */

struct command {
    const char *name;
    int (*run)(struct ctl *x, int argc, char **argv);
    const char *usage;
};

static const struct command commands[] = {
    {"exec", cmd_exec, usage_exec},       {"code", cmd_code, usage_code},
    {"attach", cmd_attach, usage_attach},
    {"wait", cmd_wait, usage_wait},       {"logs", cmd_logs, usage_logs},
    {"cancel", cmd_cancel, usage_cancel}, {"signal", cmd_signal, usage_signal},
    {"stdin", cmd_stdin, usage_stdin},    {"list", cmd_list, usage_list},
    {"info", cmd_info, usage_info},       {"ping", cmd_ping, usage_ping},
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct ctl x;
    memset(&x, 0, sizeof x);
    int ch;
    opterr = 0;
    /* '+': global options stop at the command, whose options are its own. */
    while ((ch = getopt_long(argc, argv, "+:s:h", opts, NULL)) != -1) {
        switch (ch) {
        case 's': x.sock = optarg; break;
        case 'h': return print_usage(usage_main);
        case 'V':
            return print_usage("boxctl " BOXD_VERSION " (boxd protocol version 1)\n");
        default: return option_error(NULL, ch, argv);
        }
    }
    if (optind >= argc)
        return usage_error(NULL, "missing COMMAND");
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        if (optind + 1 >= argc)
            return print_usage(usage_main);
        if (cmd_files_usage(argv[optind + 1]))
            return print_usage(cmd_files_usage(argv[optind + 1]));
        const struct command *cmd = find_command(argv[optind + 1]);
        if (cmd == NULL)
            return usage_error(NULL, "unknown command '%s'", argv[optind + 1]);
        return print_usage(cmd->usage);
    }
    if (x.sock == NULL) {
        const char *env = getenv("BOXD_SOCKET");
        x.sock = env != NULL && env[0] != '\0' ? env : DEFAULT_SOCKET;
    }
    if (cmd_files_has(name)) /* cp, ls, rm, mkdir, watch: cmd_files.c */
        return cmd_files_main(name, argc - optind, argv + optind, x.sock);
    const struct command *cmd = find_command(name);
    if (cmd == NULL)
        return usage_error(NULL, "unknown command '%s'", name);
    int ret = cmd->run(&x, argc - optind, argv + optind);
    ctl_close(&x);
    return ret;
}
