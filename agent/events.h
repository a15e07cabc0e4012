/* The one encoder module: the messages the agent sends (PROTOCOL.md sections 3-6). Each ev_*
 * function builds one complete frame in o, opened with ev_begin and closed by the caller's
 * conn_send. It sits above run.h (it reads runs and their logs); runs never call it. */
#ifndef BOXD_EVENTS_H
#define BOXD_EVENTS_H

#include "codec.h"
#include "run.h"
#include "runlog.h"
#include "schema.h"

/* A request's `req` value, kept as its msgpack encoding to be echoed in replies and events. */
struct reqtag {
    uint8_t len; /* 0: no req */
    char buf[80];
};

/* Starts a frame `{type: TYPE, req: REQ, ...`; the map stays open for more fields (named by
 * BOX_KEY, schema.h) and is closed by ev_close. Returns 0 or -ENOMEM. */
int ev_begin(struct msg_out *o, enum box_type type, const struct reqtag *req);
/* The same with the buffer allocated for about size bytes at once. */
int ev_begin_sized(struct msg_out *o, enum box_type type, const struct reqtag *req,
                   size_t size);
/* Closes the map opened by ev_begin. */
void ev_close(struct msg_out *o);

/* The `end` event of r. */
int ev_end(struct msg_out *o, const struct reqtag *req, const struct run *r, bool want_output,
           uint32_t max_event);

/* An `output` event of run id's records from *cur on, as many as fit in limit bytes (at least
 * one). *cur is left at the first record not sent (its seq and cost are the follower's next).
 * Returns 0, or -ENOMEM with *cur unchanged and nothing to destroy. */
int ev_output(struct msg_out *o, const struct reqtag *req, const char *id, const struct runlog *l,
              struct rl_cursor *cur, uint64_t limit);
/* A `gap` event: records [from_seq, to_seq) of run id were dropped by retention. Returns 0, or
 * -ENOMEM with nothing to destroy. */
int ev_gap(struct msg_out *o, const struct reqtag *req, const char *id, uint64_t from_seq,
           uint64_t to_seq);

/* An `error` reply; id may be NULL. */
int ev_error(struct msg_out *o, const struct reqtag *req, enum box_err code, const char *id,
             const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Name of an errno value ("ENOENT"), or "E?" */
const char *errno_name(int err);

#endif
