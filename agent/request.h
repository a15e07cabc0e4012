/* Request handlers: one frame body in, replies and subscriptions out (PROTOCOL.md 3-5).
 * Every malformed or refused request gets an `error` with a stable code; nothing here exits. */
#ifndef BOXD_REQUEST_H
#define BOXD_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conn;

/* Handles one complete frame body (borrowed; the caller frees it afterwards). */
void request_frame(struct conn *c, const uint8_t *body, size_t len);

/* Dispatches again a request that code_hold kept while it waited for interpreter probes
 * (code.h): body is its frame body (borrowed), deadline_ns when it stops waiting (after it, what
 * is not known counts as failed). Nothing happens if connection conn_no is gone or closing. */
struct agent;
void request_retry(struct agent *a, uint64_t conn_no, const uint8_t *body, size_t len,
                   uint64_t deadline_ns);

/* Fills the agent's `limits` map into an open message (used by hello and info). */
struct msg_out;
struct agent;
void request_put_limits(struct msg_out *o, const struct agent *a);

/* The reply to an exec or code request once its run has started (`started`, then the
 * connection follows the run with follow) or failed to (`spawn_failed`): from the run's on_started,
 * perhaps after the request. Nothing is sent if connection conn_no is gone. */
struct run;
struct reqtag;
void request_run_started(struct agent *a, struct run *r, uint64_t conn_no,
                         const struct reqtag *req, bool follow, bool want_output);

#endif
