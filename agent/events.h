/* Encoders for the messages the agent sends (PROTOCOL.md sections 3-6). Each ev_* function
 * builds one complete frame in o, opened with ev_begin and closed by the caller's conn_send. */
#ifndef BOXD_EVENTS_H
#define BOXD_EVENTS_H

#include "codec.h"
#include "run.h"

/* Starts a frame `{type: TYPE, req: REQ, ...`; the map stays open for more fields and is
 * closed by ev_close. Returns 0 or -ENOMEM. */
int ev_begin(struct msg_out *o, const char *type, const struct reqtag *req);
/* The same with the buffer allocated for about size bytes at once. */
int ev_begin_sized(struct msg_out *o, const char *type, const struct reqtag *req, size_t size);
/* Closes the map opened by ev_begin. */
void ev_close(struct msg_out *o);

/* The `end` event of r. */
int ev_end(struct msg_out *o, const struct reqtag *req, const struct run *r, bool want_output,
           uint32_t max_event);

/* An `error` reply; id may be NULL. */
int ev_error(struct msg_out *o, const struct reqtag *req, const char *code, const char *id,
             const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Name of an errno value ("ENOENT"), or "E?" */
const char *errno_name(int err);

#endif
