#include "events.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "alloc.h"

int ev_begin(struct msg_out *o, enum box_type type, const struct reqtag *req)
{
    return ev_begin_sized(o, type, req, 256);
}

int ev_begin_sized(struct msg_out *o, enum box_type type, const struct reqtag *req,
                   size_t size)
{
    if (msg_out_init(o, size) < 0)
        return -ENOMEM;
    msg_map_open(o);
    msg_kv_str(o, BOX_KEY(TYPE), box_type_str(type));
    if (req && req->len) {
        msg_key(o, BOX_KEY(REQ));
        msg_raw(o, req->buf, req->len);
    }
    return 0;
}

void ev_close(struct msg_out *o)
{
    msg_map_close(o);
}

const char *errno_name(int err)
{
    switch (err) {
#define E(x) case x: return #x
        E(EPERM); E(ENOENT); E(ESRCH); E(EINTR); E(EIO); E(ENXIO); E(E2BIG); E(ENOEXEC);
        E(EBADF); E(ECHILD); E(EAGAIN); E(ENOMEM); E(EACCES); E(EFAULT); E(EBUSY); E(EEXIST);
        E(ENOTDIR); E(EISDIR); E(EINVAL); E(ENFILE); E(EMFILE); E(ETXTBSY); E(EFBIG);
        E(ENOSPC); E(EROFS); E(EMLINK); E(EPIPE); E(ENAMETOOLONG); E(ELOOP); E(ENOSYS);
        E(ELIBBAD); E(EOVERFLOW); E(ETIMEDOUT); E(ECANCELED);
#undef E
    default:
        return "E?";
    }
}

/* Appends the bytes of one stream from the retained log, with at most one final '\n' dropped
 * when trim is set. Over cap, the stream's last cap bytes are kept (a failed run's last words,
 * on stderr, are what its caller needs), starting at a UTF-8 character boundary so that text stays
 * a str. Returns false if the cap or retention cut it short. */
static bool put_stream(struct msg_out *o, const struct run *r, int stream, size_t cap, bool trim)
{
    /* Two passes: measure, then copy into the msgpack body directly. */
    struct rl_cursor c;
    struct rl_rec rec;
    size_t total = 0;
    bool truncated = r->log.dropped_records > 0;
    runlog_seek(&r->log, r->log.first_seq, &c);
    while (runlog_next(&r->log, &c, &rec))
        if (rec.stream == stream)
            total += rec.len;
    size_t n = total, skip = 0;
    if (n > cap) {
        n = cap;
        skip = total - cap;
        truncated = true;
    }
    /* Decide on str vs bin over the whole value; gather into a temporary buffer. */
    char *tmp = n ? boxd_malloc(n) : NULL;
    if (n && tmp == NULL) {
        o->failed = true;
        return false;
    }
    size_t at = 0;
    runlog_seek(&r->log, r->log.first_seq, &c);
    while (at < n && runlog_next(&r->log, &c, &rec)) {
        if (rec.stream != stream)
            continue;
        const char *data = rec.data;
        size_t len = rec.len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        data += skip;
        len -= skip;
        skip = 0;
        size_t take = len < n - at ? len : n - at;
        memcpy(tmp + at, data, take);
        at += take;
    }
    size_t from = 0;
    if (total > cap) {
        /* A cut inside a multi-byte character: drop its continuation bytes (at most 3). */
        while (from < at && from < 3 && ((unsigned char)tmp[from] & 0xC0) == 0x80)
            from++;
    }
    if (trim && at > from && tmp[at - 1] == '\n')
        at--;
    msg_data(o, tmp ? tmp + from : "", at - from);
    free(tmp);
    return !truncated;
}

int ev_end(struct msg_out *o, const struct reqtag *req, const struct run *r, bool want_output,
           uint32_t max_event)
{
    if (ev_begin(o, BOX_T_END, req) < 0)
        return -ENOMEM;
    msg_kv_str(o, BOX_KEY(ID), r->id);
    msg_kv_str(o, BOX_KEY(STATUS), run_status_str(r));
    msg_kv_str(o, BOX_KEY(REASON), run_reason_str(r));
    int st = r->wstatus;
    msg_kv_i64(o, BOX_KEY(EXIT_CODE), run_exit_code(r));
    if (r->spawn_stage) {
        msg_kv_nil(o, BOX_KEY(SIGNAL));
        msg_kv_i64(o, BOX_KEY(ERRNO), r->spawn_err);
        msg_kv_str(o, BOX_KEY(ERRNO_NAME), errno_name(r->spawn_err));
        msg_kv_str(o, BOX_KEY(STAGE), r->spawn_stage);
    } else if (WIFSIGNALED(st)) {
        msg_kv_i64(o, BOX_KEY(SIGNAL), WTERMSIG(st));
    } else {
        msg_kv_nil(o, BOX_KEY(SIGNAL));
    }
    msg_kv_u64(o, BOX_KEY(STARTED_NS), r->started_ns);
    msg_kv_u64(o, BOX_KEY(ENDED_NS), r->ended_ns);
    msg_kv_u64(o, BOX_KEY(DURATION_MS), (r->end_mono - r->start_mono) / 1000000u);
    msg_kv_u64(o, BOX_KEY(CPU_USER_US),
               (uint64_t)r->ru.ru_utime.tv_sec * 1000000u + (uint64_t)r->ru.ru_utime.tv_usec);
    msg_kv_u64(o, BOX_KEY(CPU_SYS_US),
               (uint64_t)r->ru.ru_stime.tv_sec * 1000000u + (uint64_t)r->ru.ru_stime.tv_usec);
    msg_kv_u64(o, BOX_KEY(MAX_RSS_KB), (uint64_t)r->ru.ru_maxrss);
    msg_kv_u64(o, BOX_KEY(NEXT_SEQ), r->log.next_seq);
    msg_kv_u64(o, BOX_KEY(FIRST_SEQ), r->log.first_seq);
    msg_kv_u64(o, BOX_KEY(DROPPED_RECORDS), r->log.dropped_records);
    msg_kv_u64(o, BOX_KEY(DROPPED_BYTES), r->log.dropped_bytes);
    if (want_output) {
        size_t cap = max_event / 4;
        bool completed = strcmp(run_status_str(r), "completed") == 0;
        bool ok = true;
        /* A terminal run's output is one stream (4.9): result and stdout carry it, whatever
         * the status, and stderr is empty. */
        int out = r->tty ? RUN_STREAM_TTY : RUN_STREAM_STDOUT;
        msg_key(o, BOX_KEY(RESULT));
        ok &= put_stream(o, r, r->tty || completed ? out : RUN_STREAM_STDERR, cap, true);
        msg_key(o, BOX_KEY(STDOUT));
        ok &= put_stream(o, r, out, cap, false);
        msg_key(o, BOX_KEY(STDERR));
        ok &= put_stream(o, r, RUN_STREAM_STDERR, cap, false);
        msg_kv_bool(o, BOX_KEY(OUTPUT_TRUNCATED), !ok);
    }
    ev_close(o);
    return o->failed ? -ENOMEM : 0;
}

int ev_output(struct msg_out *o, const struct reqtag *req, const char *id, const struct runlog *l,
              struct rl_cursor *cur, uint64_t limit)
{
    /* Sized for what this event may hold, so the buffer is not regrown while packing. */
    uint64_t owed = l->end_cost - cur->cost + 256;
    if (ev_begin_sized(o, BOX_T_OUTPUT, req, (size_t)(owed < limit ? owed : limit)) < 0)
        return -ENOMEM;
    msg_kv_str(o, BOX_KEY(ID), id);
    msg_key(o, BOX_KEY(LINES));
    size_t arr = msg_array_open(o);
    uint32_t n = 0;
    struct rl_cursor c = *cur;
    struct rl_rec rec;
    while (runlog_next(l, &c, &rec)) {
        /* Records are <= max_line, which is well under max_event: one always fits. */
        if (n > 0 && msg_out_size(o) + rec.len + 32 > limit)
            break;
        msg_line(o, rec.seq, rec.ts_ns, (uint64_t)rec.stream, rec.data, rec.len, rec.utf8);
        n++;
        *cur = c;
    }
    msg_array_close(o, arr, n);
    ev_close(o);
    return 0;
}

int ev_gap(struct msg_out *o, const struct reqtag *req, const char *id, uint64_t from_seq,
           uint64_t to_seq)
{
    if (ev_begin(o, BOX_T_GAP, req) < 0)
        return -ENOMEM;
    msg_kv_str(o, BOX_KEY(ID), id);
    msg_kv_u64(o, BOX_KEY(FROM_SEQ), from_seq);
    msg_kv_u64(o, BOX_KEY(TO_SEQ), to_seq);
    ev_close(o);
    return 0;
}

int ev_error(struct msg_out *o, const struct reqtag *req, enum box_err code, const char *id,
             const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (ev_begin(o, BOX_T_ERROR, req) < 0)
        return -ENOMEM;
    msg_kv_str(o, BOX_KEY(CODE), box_err_str(code));
    msg_kv_str(o, BOX_KEY(MESSAGE), text);
    if (id)
        msg_kv_str(o, BOX_KEY(ID), id);
    ev_close(o);
    return o->failed ? -ENOMEM : 0;
}
