/* Request handlers: one frame body in, replies and subscriptions out (PROTOCOL.md 3-5).
 * Every malformed or refused request gets an `error` with a stable code; nothing here exits. */
#ifndef BOXD_REQUEST_H
#define BOXD_REQUEST_H

#include <stddef.h>
#include <stdint.h>

struct conn;

/* Handles one complete frame body (borrowed; the caller frees it afterwards). */
void request_frame(struct conn *c, const uint8_t *body, size_t len);

/* Fills the agent's `limits` map into an open message (used by hello and info). */
struct msg_out;
struct agent;
void request_put_limits(struct msg_out *o, const struct agent *a);

#endif
