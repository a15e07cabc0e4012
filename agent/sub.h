/* The follower bridge: the subscriptions through which a connection follows runs (attach, exec
 * with follow, wait). It stands between the two layers and neither knows of it by name: each
 * subscription is a reader of its run's log (run.h: struct run_reader, woken through its notify
 * callback), and the bridge is its connection's hook in CONN_SLOT_SUBS (conn.h: conn_hook_set, called as
 * the connection drains, starts closing and is freed). The bridge keeps the cursor, the
 * connection's ready list (round robin between runs) and the max_subs count, pulls records from
 * the run's log and encodes them through events.h into the connection's queue, only while the
 * connection has room (conn_room).
 *
 * Ownership: a subscription belongs to its connection (freed at the latest when the connection
 * is) and points at its run; a run with readers is never forgotten, except at teardown, when it
 * tells its readers first (RUN_READER_GONE) and they are freed. */
#ifndef BOXD_SUB_H
#define BOXD_SUB_H

#include <stdbool.h>
#include <stdint.h>

#include "events.h"
#include "list.h"
#include "run.h"
#include "runlog.h"

struct conn;
struct sub_conn;

struct sub {
    struct run_reader rd;         /* its place in the run's log (next_seq, next_cost) */
    struct list conn_link;        /* sub_conn.subs */
    struct list ready_link;       /* sub_conn.ready, while it has output or an end to send */
    struct sub_conn *sc;
    struct run *run;
    struct reqtag req;
    struct rl_cursor cur; /* where rd.next_seq is in the log, while the log's gen allows */
    bool end_only;        /* wait: send only the end */
    bool want_output;     /* the end carries result/stdout/stderr */
};

/* Attaches connection c to r from from_seq (clamped to the log's end); the sub is made ready at
 * once unless it waits for the end of a live run. Returns NULL when out of memory. The caller
 * checks max_subs first (sub_full). */
struct sub *sub_new(struct run *r, struct conn *c, const struct reqtag *req, uint64_t from_seq,
                    bool end_only, bool want_output);
/* Unlinks and frees; may resume a paused run, or let an ended one be forgotten. */
void sub_free(struct sub *s);
/* Replaces old (the same connection following the same run again: attach, a retried exec) by a
 * new subscription from from_seq; old sends nothing more. The new one exists before old goes,
 * so the run cannot be forgotten in between. Returns the new sub, or NULL (out of memory: old is
 * gone all the same, and the run may have been forgotten with it). */
struct sub *sub_replace(struct sub *old, const struct reqtag *req, uint64_t from_seq,
                        bool want_output);
/* c's subscription to r that is not a wait, or NULL. */
struct sub *sub_find(struct conn *c, const struct run *r);

/* max_subs, counted in one place: c's subscriptions plus its reservations. True when c may
 * follow no more runs. */
bool sub_full(const struct conn *c);
/* Holds one of c's max_subs slots for a follow that begins later (an exec whose run is still
 * starting): 0, -EAGAIN (sub_full) or -ENOMEM. sub_unreserve gives it back (before sub_new
 * takes a slot of its own, or when the follow will not happen). A connection's reservations
 * go with it. */
int sub_reserve(struct conn *c);
void sub_unreserve(struct conn *c);

/* True while c has subscriptions with output or an end still to send (shutdown waits). */
bool sub_owed(const struct conn *c);

/* The pure part of the bridge's cursor arithmetic (unit-tested): where a follower asking for
 * from_seq starts in l (clamped to the end), and the cost of the log before it. */
void sub_start_at(const struct runlog *l, uint64_t from_seq, uint64_t *seq, uint64_t *cost);
/* What a follower at next_seq is owed before anything else: the records it never got that
 * retention dropped, [*gap_from, *gap_to). False if nothing was dropped under it. */
bool sub_gap(const struct runlog *l, uint64_t next_seq, uint64_t *gap_from, uint64_t *gap_to);

#endif
