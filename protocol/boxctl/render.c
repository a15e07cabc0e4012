/* boxctl: output records (raw, captured, JSON), a run's outcome, agent maps as text or JSON. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "io.h"
#include "schema.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/uio.h>

/* ---- Records ------------------------------------------------------------------------------- */

struct record {
    uint64_t seq;
    int64_t ts_ns;
    int stream; /* STREAM_STDOUT, STREAM_STDERR, STREAM_TTY */
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
    if (e[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[2].via.u64 < STREAM_STDOUT ||
        e[2].via.u64 > STREAM_TTY)
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
void sink_init(struct sink *s, enum sink_mode mode)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    sbuf_init(&s->cap[0], CAPTURE_MAX);
    sbuf_init(&s->cap[1], CAPTURE_MAX);
}

void sink_destroy(struct sink *s)
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
    json_cstr(j, r->stream == STREAM_STDERR ? "error" : "info");
    json_key(j, "message");
    json_string(j, r->data, n);
    json_key(j, "seq");
    json_uint(j, r->seq);
    json_key(j, "stream");
    json_cstr(j, r->stream == STREAM_STDERR ? "stderr"
                 : r->stream == STREAM_TTY  ? "tty"
                                            : "stdout");
    json_object_end(j);
    if (lines)
        json_newline(j);
}

/* Records gathered for one writev: consecutive records of one stream. IOV_BATCH bounds the
 * array, not the event: a longer run of records takes several writevs. */
#define IOV_BATCH 1024

struct gather {
    struct iovec iov[IOV_BATCH];
    int n;
    int fd;
};

static int gather_flush(struct gather *g)
{
    if (g->n == 0)
        return 0;
    int w = box_writev_all(g->fd, g->iov, g->n);
    g->n = 0;
    if (w < 0) {
        errmsg("writing output: %s", strerror(-w));
        return ALREADY_REPORTED;
    }
    return 0;
}

/* Adds a record; the gathered ones go out first when the stream changes (so stdout and stderr
 * stay in the run's order) or the batch is full. */
static int gather_add(struct gather *g, int fd, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    if ((g->n > 0 && g->fd != fd) || g->n == IOV_BATCH) {
        int r = gather_flush(g);
        if (r < 0)
            return r;
    }
    g->fd = fd;
    g->iov[g->n++] = (struct iovec){(void *)data, len};
    return 0;
}

/* Takes the `lines` of an output event or a logs page. Returns 0, -EBADMSG for a malformed
 * record, or ALREADY_REPORTED when writing the output failed. */
int sink_lines(struct sink *s, const msgpack_object *lines)
{
    if (lines == NULL || lines->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (lines->type != MSGPACK_OBJECT_ARRAY)
        return -EBADMSG;
    static struct gather g; /* one writer at a time; static to keep 16 KiB off the stack */
    g.n = 0;
    for (uint32_t i = 0; i < lines->via.array.size; i++) {
        struct record r;
        if (record_parse(&lines->via.array.ptr[i], &r) < 0) {
            int w = gather_flush(&g); /* what came before the bad record is still output */
            return w < 0 ? w : -EBADMSG;
        }
        s->next_seq = r.seq + 1;
        switch (s->mode) {
        case SINK_RAW: {
            /* A terminal's bytes (stream 3) are the screen: stdout. */
            int w = gather_add(&g, r.stream == STREAM_STDERR ? STDERR_FILENO : STDOUT_FILENO,
                               r.data, r.len);
            if (w < 0)
                return w;
            break;
        }
        case SINK_CAPTURE:
            sbuf_add(&s->cap[r.stream == STREAM_STDERR], r.data, r.len);
            break;
        case SINK_JSON:
            json_record(s->j, &r, s->lines);
            break;
        }
    }
    if (s->mode == SINK_RAW) {
        int w = gather_flush(&g);
        if (w < 0)
            return w;
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

void warn_gap(const char *id, uint64_t from, uint64_t to)
{
    if (to > from)
        errmsg("warning: run %s: records %" PRIu64 " to %" PRIu64
               " were dropped by the agent's log retention",
               id, from, to - 1);
}

/* ---- End of a run -------------------------------------------------------------------------- */


void end_parse(const msgpack_object *m, struct end_info *e)
{
    memset(e, 0, sizeof *e);
    get_bytes(m, BOX_KEY(ID), &e->id);
    get_bytes(m, BOX_KEY(STATUS), &e->status);
    get_bytes(m, BOX_KEY(REASON), &e->reason);
    get_bytes(m, BOX_KEY(STAGE), &e->stage);
    get_bytes(m, BOX_KEY(ERRNO_NAME), &e->errno_name);
    get_bytes(m, BOX_KEY(RESULT), &e->result);
    get_bytes(m, BOX_KEY(STDOUT), &e->out);
    get_bytes(m, BOX_KEY(STDERR), &e->err);
    e->has_exit = msg_get_i64(m, BOX_KEY(EXIT_CODE), &e->exit_code) == 0;
    e->has_signal = msg_get_i64(m, BOX_KEY(SIGNAL), &e->sig) == 0;
    e->has_errno = msg_get_i64(m, BOX_KEY(ERRNO), &e->err_no) == 0;
    e->has_duration = msg_get_i64(m, BOX_KEY(DURATION_MS), &e->duration_ms) == 0;
    bool t = false;
    e->truncated = msg_get_bool(m, BOX_KEY(OUTPUT_TRUNCATED), &t) == 0 && t;
}

/* The exit code for a run that could not be started: 127 "not found", 126 anything else. */
int spawn_exit_code(bool has_errno, int64_t err_no, struct bytes name)
{
    if (bytes_is(name, "ENOENT") || (name.p == NULL && has_errno && err_no == ENOENT))
        return 127;
    return 126;
}

int end_exit_code(const struct end_info *e)
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

void report_end(const struct end_info *e, uint64_t timeout_ms)
{
    char id[RUN_ID_MAX + 1];
    bytes_cstr(e->id, id, sizeof id);
    sanitize(id, strlen(id));
    if (bytes_is(e->reason, "spawn")) {
        char en[32], st[32];
        bytes_cstr(e->errno_name, en, sizeof en);
        bytes_cstr(e->stage, st, sizeof st);
        sanitize(en, strlen(en));
        sanitize(st, strlen(st));
        errmsg("run %s could not be started: %s at stage %s", id, en[0] ? en : "error",
               st[0] ? st : "?");
    } else if (bytes_is(e->reason, "timeout")) {
        if (timeout_ms > 0)
            errmsg("run %s timed out after %" PRIu64 " ms and was stopped (TERM, then KILL after "
                   "the grace); exit code %d", id, timeout_ms, end_exit_code(e));
        else
            errmsg("run %s timed out and was stopped (TERM, then KILL after the grace); exit "
                   "code %d", id, end_exit_code(e));
    }
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
int end_print_json(const struct end_info *e, const struct sink *cap)
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

/* ---- list, info, ping ---------------------------------------------------------------------- */

/* Any msgpack value as JSON. Keys that are not strings (never sent by boxd) become null-named
 * text so that the output stays valid. */
void json_mp(struct json *j, const msgpack_object *o)
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
void text_mp(struct sbuf *b, const msgpack_object *o)
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

bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

/* "key: value" lines for a map; nested maps become "outer.inner: value". */
/* One field of a language entry as text, "-" when absent or nil. */
static void lang_field(struct sbuf *b, const msgpack_object *lang, const char *key)
{
    const msgpack_object *v = msg_get(lang, key);
    size_t before = b->len;
    if (v != NULL && v->type != MSGPACK_OBJECT_NIL)
        text_mp(b, v);
    if (b->len == before)
        sbuf_lit(b, "-"); /* absent, nil or empty (a language without aliases) */
}

/* info's `languages`: one line each, "  NAME  PATH  VERSION  (aliases A, B; file F)". */
static void text_languages(struct sbuf *b, const msgpack_object *langs)
{
    sbuf_printf(b, "languages: %" PRIu32 "%s\n", langs->via.array.size,
                langs->via.array.size == 0 ? " (none of the box's interpreters was found)" : "");
    for (uint32_t i = 0; i < langs->via.array.size; i++) {
        const msgpack_object *l = &langs->via.array.ptr[i];
        if (l->type != MSGPACK_OBJECT_MAP)
            continue;
        sbuf_lit(b, "  ");
        lang_field(b, l, BOX_KEY(NAME));
        sbuf_lit(b, ": ");
        lang_field(b, l, BOX_KEY(PATH));
        sbuf_lit(b, " (");
        lang_field(b, l, BOX_KEY(VERSION));
        sbuf_lit(b, "); aliases: ");
        lang_field(b, l, BOX_KEY(ALIASES));
        sbuf_lit(b, "; file: ");
        lang_field(b, l, BOX_KEY(FILE));
        sbuf_lit(b, "\n");
    }
}

void text_map(struct sbuf *b, const char *prefix, const msgpack_object *map)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        if (prefix[0] == '\0' && (key_is(k, BOX_KEY(TYPE)) || key_is(k, BOX_KEY(REQ))))
            continue;
        if (prefix[0] == '\0' && key_is(k, BOX_KEY(LANGUAGES)) && v->type == MSGPACK_OBJECT_ARRAY) {
            text_languages(b, v);
            continue;
        }
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

int print_json_value(const msgpack_object *o, bool skip_envelope)
{
    struct json j;
    json_init(&j, JSON_BUF_MAX);
    if (skip_envelope && o->type == MSGPACK_OBJECT_MAP) {
        json_object_begin(&j);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (key_is(k, BOX_KEY(TYPE)) || key_is(k, BOX_KEY(REQ)) ||
                k->type != MSGPACK_OBJECT_STR)
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

