/* What the request handlers share (request.c, request_agent.c, request_run.c, request_ops.c):
 * the context of one request being handled, and the replies every handler may give. Internal to
 * the request layer: nothing outside those files includes it. */
#ifndef BOXD_REQUEST_PRIV_H
#define BOXD_REQUEST_PRIV_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decode.h"
#include "run.h"
#include "runstart.h"
#include "runtab.h"
#include "schema.h"

struct conn;
struct agent;

struct ctx {
    struct conn *c;
    struct agent *a;
    const msgpack_object *m;
    struct reqtag req;
    const uint8_t *body; /* the frame body, for hold */
    size_t len;
    uint64_t hold_deadline; /* a held request dispatched again: when it stops waiting; else 0 */
};

/* Sends o (a complete frame) on the request's connection. */
void request__reply(struct ctx *x, struct msg_out *o);
/* An `error` with code; id may be NULL. */
void request__error(struct ctx *x, enum box_err code, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The error a decoder returned, with the run's id (may be NULL) when the error names it. */
void request__decode_error(struct ctx *x, const struct decode_err *err, const char *id);
/* `ok`, with id unless NULL and `ended` unless ended < 0. */
void request__ok(struct ctx *x, const char *id, int ended);
/* An `error` `limit`, with `limit` naming the limit that would be exceeded. */
void request__limit_error(struct ctx *x, const char *id, enum box_limit which, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));
/* Whether this request may still wait for interpreter probes (code.h). */
bool request__may_wait(const struct ctx *x);
/* Holds the request until the probes it needs end (code_hold); answers `limit` when too many
 * requests wait. */
void request__hold(struct ctx *x);
/* The run a request on a run names: required and looked up; NULL when answered. */
struct run *request__get_run(struct ctx *x);
/* This connection's follow of r (not an end-only wait), or NULL. */
struct sub *request__find_sub(struct conn *c, struct run *r);
/* A run's retention fields (first_seq, dropped_records, dropped_bytes). */
void request__put_retention(struct msg_out *o, const struct run *r);

/* The handlers, one per request type. */
void request__hello(struct ctx *x);
void request__ping(struct ctx *x);
void request__info(struct ctx *x);
void request__shutdown(struct ctx *x);
void request__exec(struct ctx *x);
void request__code(struct ctx *x);
void request__stdin(struct ctx *x);
void request__signal(struct ctx *x);
void request__cancel(struct ctx *x);
void request__attach(struct ctx *x);
void request__detach(struct ctx *x);
void request__wait(struct ctx *x);
void request__logs(struct ctx *x);
void request__list(struct ctx *x);
void request__resize(struct ctx *x);

#endif
