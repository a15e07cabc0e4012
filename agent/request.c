/* The request layer's front: one frame body in, parsed, its `req` and `type` read, and handed to
 * the handler of its type (request_agent.c: hello, ping, info, shutdown; request_run.c: exec
 * and code; request_ops.c: the requests on runs). Also the replies every handler may give
 * (request_priv.h) and the retry of requests held for interpreter probes (code_hold). */
#include "request.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "code.h"
#include "conn.h"
#include "events.h"
#include "files.h"
#include "log.h"
#include "request_priv.h"
#include "sub.h"

/* The longest request type shown back in an `unknown_type` message. */
#define SHOWN_TYPE_MAX 32u

void request__reply(struct ctx *x, struct msg_out *o)
{
    conn_send(x->c, o);
}

void request__error(struct ctx *x, enum box_err code, const char *id, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct msg_out o;
    if (ev_error(&o, &x->req, code, id, "%s", text) == 0)
        request__reply(x, &o);
    else
        msg_out_destroy(&o);
}

void request__decode_error(struct ctx *x, const struct decode_err *err, const char *id)
{
    request__error(x, err->code, err->with_id ? id : NULL, "%s", err->message);
}

void request__ok(struct ctx *x, const char *id, int ended)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_OK, &x->req) < 0)
        return;
    if (id)
        msg_kv_str(&o, BOX_KEY(ID), id);
    if (ended >= 0)
        msg_kv_bool(&o, BOX_KEY(ENDED), ended);
    ev_close(&o);
    request__reply(x, &o);
}

void request__limit_error(struct ctx *x, const char *id, enum box_limit which, const char *fmt,
                          ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ERROR, &x->req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(CODE), box_err_str(BOX_ERR_LIMIT));
    msg_kv_str(&o, BOX_KEY(MESSAGE), text);
    if (id)
        msg_kv_str(&o, BOX_KEY(ID), id);
    msg_kv_str(&o, BOX_KEY(LIMIT), box_limit_str(which));
    ev_close(&o);
    request__reply(x, &o);
}

bool request__may_wait(const struct ctx *x)
{
    return x->hold_deadline == 0 || now_mono_ns() < x->hold_deadline;
}

static void dispatch(struct conn *c, const uint8_t *body, size_t len, uint64_t hold_deadline);

/* A request code_hold kept, dispatched again once the probes it waited for ended (or at its
 * deadline: then what is not known counts as failed). Nothing happens if connection conn_no is
 * gone or closing. */
static void retry(struct agent *a, uint64_t conn_no, const uint8_t *body, size_t len,
                  uint64_t deadline_ns)
{
    struct conn *c = conn_find(a, conn_no);
    if (c == NULL || c->closing)
        return; /* gone: nobody to answer */
    dispatch(c, body, len, deadline_ns);
}

void request__hold(struct ctx *x)
{
    /* Dispatched again then, with the deadline of its first arrival. */
    uint64_t deadline = x->hold_deadline ? x->hold_deadline
                                         : now_mono_ns() + (uint64_t)CODE_HOLD_MS * 1000000u;
    int e = code_hold(x->a, x->c->no, x->body, x->len, deadline, retry);
    if (e == -ENOBUFS)
        request__limit_error(x, NULL, BOX_LIM_CODE_WAITING,
                             "%u requests are waiting for interpreter probes", CODE_HELD_MAX);
    else if (e < 0)
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
}

struct run *request__get_run(struct ctx *x)
{
    const char *id;
    size_t len;
    struct decode_err err;
    if (decode_run_id(x->m, &id, &len, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return NULL;
    }
    struct run *r = run_find(x->a, id, len);
    if (r == NULL) {
        char shown[BOXD_ID_MAX + 1];
        size_t n = len < BOXD_ID_MAX ? len : BOXD_ID_MAX;
        for (size_t i = 0; i < n; i++)
            shown[i] = decode_id_char_ok(id[i]) ? id[i] : '?';
        shown[n] = '\0';
        request__error(x, BOX_ERR_NOT_FOUND, NULL, "no run %s", shown);
    }
    return r;
}

struct sub *request__find_sub(struct conn *c, struct run *r)
{
    return sub_find(c, r);
}

void request__put_retention(struct msg_out *o, const struct run *r)
{
    msg_kv_u64(o, BOX_KEY(FIRST_SEQ), r->log.first_seq);
    msg_kv_u64(o, BOX_KEY(DROPPED_RECORDS), r->log.dropped_records);
    msg_kv_u64(o, BOX_KEY(DROPPED_BYTES), r->log.dropped_bytes);
}

/* ---- Dispatch ------------------------------------------------------------------------------- */

static void (*const handlers[BOX_T__COUNT])(struct ctx *) = {
    [BOX_T_HELLO] = request__hello,   [BOX_T_EXEC] = request__exec,
    [BOX_T_CODE] = request__code,     [BOX_T_STDIN] = request__stdin,
    [BOX_T_SIGNAL] = request__signal, [BOX_T_CANCEL] = request__cancel,
    [BOX_T_ATTACH] = request__attach, [BOX_T_DETACH] = request__detach,
    [BOX_T_WAIT] = request__wait,     [BOX_T_LOGS] = request__logs,
    [BOX_T_LIST] = request__list,     [BOX_T_INFO] = request__info,
    [BOX_T_PING] = request__ping,     [BOX_T_SHUTDOWN] = request__shutdown,
    [BOX_T_RESIZE] = request__resize,
};

static void dispatch(struct conn *c, const uint8_t *body, size_t len, uint64_t hold_deadline)
{
    struct ctx x = {.c = c, .a = c->a, .body = body, .len = len, .hold_deadline = hold_deadline};
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 1024)) {
        request__error(&x, BOX_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    msgpack_object m;
    int e = msg_parse(body, len, &zone, &m);
    if (e < 0) {
        request__error(&x, e == -ENOMEM ? BOX_ERR_INTERNAL : BOX_ERR_BAD_REQUEST, NULL,
                       e == -ENOMEM ? "out of memory"
                                    : "the frame body is not one msgpack map with string keys");
        goto out;
    }
    x.m = &m;
    const msgpack_object *req = msg_get(&m, box_field_str(BOX_F_REQ));
    if (req) {
        bool okreq = req->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                     req->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
                     (req->type == MSGPACK_OBJECT_STR && req->via.str.size <= DECODE_REQ_STR_MAX);
        if (!okreq) {
            request__error(&x, BOX_ERR_BAD_REQUEST, NULL,
                           "req must be an integer or a string of at most 64 bytes");
            goto out;
        }
        struct msg_out o;
        if (msg_out_init(&o, 96) == 0) {
            msg_obj(&o, req);
            size_t n = msg_out_size(&o) - BOX_FRAME_HDR;
            if (!o.failed && n <= sizeof x.req.buf) {
                memcpy(x.req.buf, o.sb.data + BOX_FRAME_HDR, n);
                x.req.len = (uint8_t)n;
            }
            msg_out_destroy(&o);
        }
    }
    const char *type;
    size_t tlen;
    if (msg_get_str(&m, box_field_str(BOX_F_TYPE), &type, &tlen) < 0) {
        request__error(&x, BOX_ERR_BAD_REQUEST, NULL, "type must be a string");
        goto out;
    }
    int fr = files_request(c, &m, &x.req, type, tlen); /* files/files.h */
    if (fr < 0)
        request__error(&x, BOX_ERR_NEED_HELLO, NULL, "send hello first");
    if (fr != 0)
        goto out;
    int t = box_type_lookup(type, tlen);
    if (t >= 0 && handlers[t] != NULL) {
        if (!c->hello && t != BOX_T_HELLO)
            request__error(&x, BOX_ERR_NEED_HELLO, NULL, "send hello first");
        else
            handlers[t](&x);
        goto out;
    }
    char shown[SHOWN_TYPE_MAX + 1];
    size_t n = tlen < SHOWN_TYPE_MAX ? tlen : SHOWN_TYPE_MAX;
    for (size_t i = 0; i < n; i++)
        shown[i] = isprint((unsigned char)type[i]) ? type[i] : '?';
    shown[n] = '\0';
    request__error(&x, BOX_ERR_UNKNOWN_TYPE, NULL, "unknown request type '%s'", shown);
out:
    msgpack_zone_destroy(&zone);
}

void request_frame(struct conn *c, const uint8_t *body, size_t len)
{
    dispatch(c, body, len, 0);
}
