/* The requests on runs (PROTOCOL.md 4.5, 4.7 and 4.9): stdin, signal, cancel, attach, detach,
 * wait, logs, list and resize. Each names a run by id (request__get_run), is decoded by
 * decode.c, and acts on the run through run.h. */
#include "request.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "events.h"
#include "request_priv.h"
#include "sub.h"

/* Room kept in a `logs` reply, below max_event, for its fields other than the lines. */
#define LOGS_REPLY_ROOM 4096u
/* Room kept in a `list` reply, below max_event, for one more run's entry: past it the list is
 * cut (`truncated`). */
#define LIST_ENTRY_ROOM 1024u

struct stdin_ctx {
    struct agent *a;
    uint64_t conn_no;
    struct reqtag req;
    char id[BOXD_ID_MAX + 1];
};

static void stdin_done(void *arg, int status)
{
    struct stdin_ctx *sc = arg;
    struct conn *c = conn_find(sc->a, sc->conn_no);
    if (c) {
        struct msg_out o;
        int e = status == 0 ? ev_begin(&o, BOX_T_OK, &sc->req)
                            : ev_error(&o, &sc->req, BOX_ERR_RUN_ENDED, sc->id,
                                       "stdin is closed: %s",
                                       uv_strerror(status));
        if (e == 0) {
            if (status == 0) {
                msg_kv_str(&o, BOX_KEY(ID), sc->id);
                ev_close(&o);
            }
            conn_send(c, &o);
        } else {
            msg_out_destroy(&o);
        }
    }
    free(sc);
}

void request__stdin(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    struct dec_stdin d;
    struct decode_err err;
    if (decode_stdin(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    struct stdin_ctx *sc = malloc(sizeof *sc);
    if (sc == NULL) {
        request__error(x, BOX_ERR_INTERNAL, r->id, "out of memory");
        return;
    }
    sc->a = x->a;
    sc->conn_no = x->c->no;
    sc->req = x->req;
    memcpy(sc->id, r->id, sizeof sc->id);
    int e = run_stdin_write(r, d.data, d.len, d.eof, stdin_done, sc);
    if (e == 0)
        return; /* answered when written */
    free(sc);
    if (e == 1)
        request__ok(x, r->id, -1);
    else if (e == -ENOBUFS)
        request__limit_error(x, r->id, BOX_LIM_STDIN_BYTES, "more than %u bytes of stdin queued",
                             x->a->cfg.stdin_bytes);
    else if (e == -EPIPE)
        request__error(x, BOX_ERR_RUN_ENDED, r->id, "the run has no open stdin");
    else
        request__error(x, BOX_ERR_INTERNAL, r->id, "out of memory");
}

/* A terminal run's size, in list entries and the attached reply (4.9). */
static void put_tty(struct msg_out *o, const struct run *r)
{
    if (!r->tty)
        return;
    msg_key(o, BOX_KEY(TTY));
    msg_map_open(o);
    msg_kv_u64(o, BOX_KEY(ROWS), r->tty_rows);
    msg_kv_u64(o, BOX_KEY(COLS), r->tty_cols);
    msg_map_close(o);
}

void request__resize(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    struct dec_tty d;
    struct decode_err err;
    if (decode_resize(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    int e = run_resize(r, d.rows, d.cols);
    if (e == -ENOTTY)
        request__error(x, BOX_ERR_BAD_REQUEST, r->id,
                       "run %s has no terminal: only a run started with tty can be resized",
                       r->id);
    else if (e == -ESRCH)
        request__error(x, BOX_ERR_RUN_ENDED, r->id, "the run's main process has exited");
    else if (e < 0)
        request__error(x, BOX_ERR_INTERNAL, r->id, "TIOCSWINSZ: %s", strerror(-e));
    else
        request__ok(x, r->id, -1);
}

void request__signal(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    int sig;
    struct decode_err err;
    if (decode_signal(x->m, &sig, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    int e = run_signal(r, sig);
    if (e == -ESRCH)
        request__error(x, BOX_ERR_RUN_ENDED, r->id, "the run has ended: nothing was signalled");
    else if (e < 0)
        request__error(x, BOX_ERR_INTERNAL, r->id, "kill: %s", strerror(-e));
    else
        request__ok(x, r->id, -1);
}

void request__cancel(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    uint64_t grace;
    struct decode_err err;
    if (decode_cancel(x->m, r->grace_ms, &grace, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    bool live = run_cancel(r, (uint32_t)grace);
    request__ok(x, r->id, !live);
}

void request__attach(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    struct dec_attach d;
    struct decode_err err;
    if (decode_attach(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    uint64_t from = d.from_seq;
    bool want_output = d.output;
    struct sub *old = request__find_sub(x->c, r); /* attaching again replaces it (sub_replace) */
    if (!old && sub_full(x->c)) {
        request__limit_error(x, r->id, BOX_LIM_MAX_SUBS, "this connection already follows %u runs",
                             x->a->cfg.max_subs);
        return;
    }
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ATTACHED, &x->req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(ID), r->id);
    request__put_retention(&o, r);
    msg_kv_u64(&o, BOX_KEY(NEXT_SEQ), r->log.next_seq);
    msg_kv_bool(&o, BOX_KEY(ENDED), r->state == RUN_ENDED);
    put_tty(&o, r);
    ev_close(&o);
    request__reply(x, &o);
    struct sub *s = old ? sub_replace(old, &x->req, from, want_output)
                        : sub_new(r, x->c, &x->req, from, false, want_output);
    if (s == NULL)
        request__error(x, BOX_ERR_INTERNAL, r->id, "out of memory");
}

void request__detach(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    struct sub *s = request__find_sub(x->c, r);
    if (s)
        sub_free(s);
    request__ok(x, r->id, -1);
}

void request__wait(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    bool want_output;
    struct decode_err err;
    if (decode_wait(x->m, &want_output, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    if (sub_full(x->c)) {
        request__limit_error(x, r->id, BOX_LIM_MAX_SUBS, "this connection already follows %u runs",
                             x->a->cfg.max_subs);
        return;
    }
    if (sub_new(r, x->c, &x->req, 0, true, want_output) == NULL)
        request__error(x, BOX_ERR_INTERNAL, r->id, "out of memory");
}

void request__logs(struct ctx *x)
{
    struct run *r = request__get_run(x);
    if (r == NULL)
        return;
    /* A page stops this far below max_event, room for the reply's other fields. */
    uint64_t cap = x->a->cfg.max_event - LOGS_REPLY_ROOM;
    struct dec_logs d;
    struct decode_err err;
    if (decode_logs(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, r->id);
        return;
    }
    uint64_t from = d.from_seq, max_records = d.max_records;
    uint64_t max_bytes = d.max_bytes > cap ? cap : d.max_bytes;
    struct msg_out o;
    if (ev_begin(&o, BOX_T_LOGS, &x->req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(ID), r->id);
    msg_key(&o, BOX_KEY(LINES));
    size_t arr = msg_array_open(&o);
    uint32_t n = 0;
    uint64_t next = from < r->log.first_seq ? r->log.first_seq : from;
    struct rl_cursor c;
    struct rl_rec rec;
    runlog_seek(&r->log, next, &c);
    bool more = false;
    size_t base = msg_out_size(&o);
    while (runlog_next(&r->log, &c, &rec)) {
        if (n >= max_records || (n > 0 && msg_out_size(&o) - base + rec.len + 32 > max_bytes)) {
            more = true;
            break;
        }
        msg_array(&o, 4);
        msg_u64(&o, rec.seq);
        msg_u64(&o, rec.ts_ns);
        msg_i64(&o, rec.stream);
        msg_data_known(&o, rec.data, rec.len, rec.utf8);
        n++;
        next = rec.seq + 1;
    }
    if (next < r->log.next_seq && n == 0)
        next = r->log.next_seq > next ? next : r->log.next_seq;
    msg_array_close(&o, arr, n);
    msg_kv_u64(&o, BOX_KEY(NEXT_SEQ), next);
    msg_kv_bool(&o, BOX_KEY(MORE), more);
    msg_kv_bool(&o, BOX_KEY(ENDED), r->state == RUN_ENDED);
    request__put_retention(&o, r);
    ev_close(&o);
    request__reply(x, &o);
}

void request__list(struct ctx *x)
{
    struct agent *a = x->a;
    struct msg_out o;
    if (ev_begin(&o, BOX_T_LIST, &x->req) < 0)
        return;
    msg_key(&o, BOX_KEY(RUNS));
    size_t arr = msg_array_open(&o);
    uint32_t n = 0;
    bool truncated = false;
    struct list *pos;
    for (pos = a->runs.next; pos != &a->runs; pos = pos->next) {
        const struct run *r = container_of(pos, struct run, link);
        if (r->internal)
            continue; /* the agent's own (interpreter probes): not a client's run */
        if (msg_out_size(&o) + LIST_ENTRY_ROOM > a->cfg.max_event) {
            truncated = true;
            break;
        }
        msg_map_open(&o);
        msg_kv_str(&o, BOX_KEY(ID), r->id);
        msg_kv_i64(&o, BOX_KEY(PID), r->pid);
        msg_kv_str(&o, BOX_KEY(STATE), r->state == RUN_ENDED ? "ended" : "running");
        if (r->state == RUN_ENDED) {
            msg_kv_str(&o, BOX_KEY(STATUS), run_status_str(r));
            msg_kv_str(&o, BOX_KEY(REASON), run_reason_str(r));
            msg_kv_i64(&o, BOX_KEY(EXIT_CODE), run_exit_code(r));
            msg_kv_u64(&o, BOX_KEY(ENDED_NS), r->ended_ns);
        }
        if (r->is_argv) {
            msg_key(&o, BOX_KEY(ARGV));
            msg_array(&o, r->desc_argc);
            const char *d = r->desc;
            for (unsigned i = 0; i < r->desc_argc; i++, d += strlen(d) + 1)
                msg_str(&o, d);
        } else {
            msg_kv_str(&o, BOX_KEY(CMD), r->desc);
        }
        msg_kv_u64(&o, BOX_KEY(STARTED_NS), r->started_ns);
        msg_kv_u64(&o, BOX_KEY(NEXT_SEQ), r->log.next_seq);
        request__put_retention(&o, r);
        msg_kv_u64(&o, BOX_KEY(LATE_BYTES), r->late_bytes);
        msg_kv_bool(&o, BOX_KEY(LINGERING), r->lingering);
        if (r->bg_killed)
            msg_kv_str(&o, BOX_KEY(BACKGROUND_KILLED), r->bg_killed);
        if (r->slot_released)
            msg_kv_bool(&o, BOX_KEY(SLOT_RELEASED), true);
        if (r->cg.dir_fd >= 0)
            msg_kv_str(&o, BOX_KEY(CGROUP), r->cg.name);
        put_tty(&o, r);
        msg_map_close(&o);
        n++;
    }
    msg_array_close(&o, arr, n);
    msg_kv_bool(&o, BOX_KEY(TRUNCATED), truncated);
    ev_close(&o);
    request__reply(x, &o);
}

