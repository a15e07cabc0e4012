/* The follower bridge (sub.h): subscriptions, their cursors, flow control on the connection
 * side, and the one max_subs count. It pulls from a run's log and pushes into a connection's
 * queue; runs and connections call it only through the callbacks it registered. */
#include "sub.h"

#include <errno.h>
#include <stdlib.h>

#include "alloc.h"
#include "conn.h"
#include "log.h"

/* What the bridge keeps per connection that follows runs: allocated on its first follow,
 * freed with the connection (CONN_FREED). */
struct sub_conn {
    struct conn *c;
    struct list subs;  /* struct sub.conn_link */
    struct list ready; /* subs with output or an end to send, served round robin */
    uint32_t n;        /* subscriptions and reservations: what max_subs bounds */
    bool pumping;      /* only to check the bridge is never re-entered (see pump) */
};

static void on_conn_event(struct conn *c, enum conn_event ev, void *arg);

static struct sub_conn *sc_get(struct conn *c)
{
    struct sub_conn *sc = conn_hook_arg(c, CONN_SLOT_SUBS);
    if (sc != NULL)
        return sc;
    sc = boxd_calloc(1, sizeof *sc);
    if (sc == NULL)
        return NULL;
    sc->c = c;
    list_init(&sc->subs);
    list_init(&sc->ready);
    conn_hook_set(c, CONN_SLOT_SUBS, on_conn_event, sc);
    return sc;
}

void sub_start_at(const struct runlog *l, uint64_t from_seq, uint64_t *seq, uint64_t *cost)
{
    if (from_seq > l->next_seq)
        from_seq = l->next_seq;
    *seq = from_seq;
    if (from_seq <= l->first_seq) {
        *cost = l->first_cost;
        return;
    }
    struct rl_cursor cur;
    runlog_seek(l, from_seq, &cur);
    *cost = cur.cost;
}

bool sub_gap(const struct runlog *l, uint64_t next_seq, uint64_t *gap_from, uint64_t *gap_to)
{
    if (next_seq >= l->first_seq)
        return false;
    *gap_from = next_seq;
    *gap_to = l->first_seq;
    return true;
}

/* Sends what s is owed, within budget bytes. Returns 1 if more remains, 0 if not, and -1 if s
 * finished (its end sent) and was freed. */
static int sub_send(struct sub *s, uint64_t budget)
{
    struct run *r = s->run;
    struct conn *c = s->sc->c;
    struct msg_out o;
    if (!s->end_only) {
        uint64_t from, to;
        if (sub_gap(&r->log, s->rd.next_seq, &from, &to)) {
            /* Records this follower never got were dropped by retention: say so once. */
            if (ev_gap(&o, &s->req, r->id, from, to) == 0)
                conn_send(c, &o);
            s->rd.next_seq = r->log.first_seq;
            s->rd.next_cost = r->log.first_cost;
        }
        if (s->rd.next_seq < r->log.next_seq) {
            uint64_t max = r->a->cfg.max_event;
            if (!runlog_valid(&r->log, &s->cur, s->rd.next_seq))
                runlog_seek(&r->log, s->rd.next_seq, &s->cur);
            if (ev_output(&o, &s->req, r->id, &r->log, &s->cur, budget < max ? budget : max) < 0)
                return 0;
            /* The cursor is at the first record not sent: the next event goes on from there. */
            s->rd.next_seq = s->cur.seq;
            s->rd.next_cost = s->cur.cost;
            conn_send(c, &o);
            run_reader_moved(r);
            if (s->rd.next_seq < r->log.next_seq)
                return 1;
        }
    }
    if (r->state != RUN_ENDED)
        return 0;
    if (ev_end(&o, &s->req, r, s->want_output, r->a->cfg.max_event) == 0)
        conn_send(c, &o);
    else
        msg_out_destroy(&o);
    sub_free(s);
    return -1;
}

/* Sends from the ready subscriptions while the connection has room. Nothing called from here
 * reports back to the bridge (a run's flow control only starts or stops reading its pipes, and
 * a connection only queues), so the loop is never re-entered; the flag checks that. */
static void pump(struct sub_conn *sc)
{
    if (sc->pumping) {
        log_err("conn %llu: follower bridge re-entered", (unsigned long long)sc->c->no);
        return;
    }
    sc->pumping = true;
    uint64_t room;
    while (!list_empty(&sc->ready) && (room = conn_room(sc->c)) > 0) {
        struct sub *s = container_of(sc->ready.next, struct sub, ready_link);
        list_del(&s->ready_link);
        if (sub_send(s, room) == 1)
            list_add_tail(&sc->ready, &s->ready_link); /* round robin between runs */
    }
    sc->pumping = false;
}

static void ready(struct sub *s)
{
    if (s->sc->c->closing)
        return;
    if (!list_linked(&s->ready_link))
        list_add_tail(&s->sc->ready, &s->ready_link);
    pump(s->sc);
}

/* The run's callback: more to read, the end, or (at teardown) the run goes. */
static void on_run_event(struct run_reader *rd, enum run_event ev)
{
    struct sub *s = container_of(rd, struct sub, rd);
    if (ev == RUN_GONE)
        sub_free(s);
    else
        ready(s);
}

/* The connection's callback. */
static void on_conn_event(struct conn *c, enum conn_event ev, void *arg)
{
    (void)c;
    struct sub_conn *sc = arg;
    struct list *pos, *tmp;
    switch (ev) {
    case CONN_WRITABLE:
        pump(sc);
        break;
    case CONN_CLOSING:
        /* Nothing more goes to it: its followers hold no run back from now on. */
        list_for_each_safe(pos, tmp, &sc->subs)
        {
            struct sub *s = container_of(pos, struct sub, conn_link);
            s->rd.idle = true;
            run_reader_moved(s->run);
        }
        break;
    case CONN_FREED:
        list_for_each_safe(pos, tmp, &sc->subs) sub_free(container_of(pos, struct sub, conn_link));
        free(sc);
        break;
    }
}

struct sub *sub_new(struct run *r, struct conn *c, const struct reqtag *req, uint64_t from_seq,
                    bool end_only, bool want_output)
{
    struct sub_conn *sc = sc_get(c);
    if (sc == NULL)
        return NULL;
    struct sub *s = boxd_calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->run = r;
    s->sc = sc;
    if (req)
        s->req = *req;
    s->end_only = end_only;
    s->want_output = want_output;
    sub_start_at(&r->log, from_seq, &s->rd.next_seq, &s->rd.next_cost);
    s->rd.end_only = end_only;
    s->rd.idle = c->closing;
    s->rd.notify = on_run_event;
    list_add_tail(&sc->subs, &s->conn_link);
    list_init(&s->ready_link);
    sc->n++;
    run_reader_add(r, &s->rd); /* the log learns what s is owed before anything is appended */
    if (!end_only || r->state == RUN_ENDED)
        ready(s);
    return s;
}

void sub_free(struct sub *s)
{
    struct run *r = s->run;
    list_del(&s->conn_link);
    if (list_linked(&s->ready_link))
        list_del(&s->ready_link);
    s->sc->n--;
    run_reader_remove(r, &s->rd); /* r may be forgotten: not used after this */
    free(s);
}

struct sub *sub_replace(struct sub *old, const struct reqtag *req, uint64_t from_seq,
                        bool want_output)
{
    /* Out of the ready list first, so the pump that sub_new starts skips it. */
    if (list_linked(&old->ready_link))
        list_del(&old->ready_link);
    list_init(&old->ready_link);
    struct sub *s = sub_new(old->run, old->sc->c, req, from_seq, false, want_output);
    sub_free(old);
    return s;
}

struct sub *sub_find(struct conn *c, const struct run *r)
{
    const struct sub_conn *sc = conn_hook_arg(c, CONN_SLOT_SUBS);
    if (sc == NULL)
        return NULL;
    const struct list *pos;
    for (pos = sc->subs.next; pos != &sc->subs; pos = pos->next) {
        struct sub *s = container_of(pos, struct sub, conn_link);
        if (s->run == r && !s->end_only)
            return s;
    }
    return NULL;
}

bool sub_owed(const struct conn *c)
{
    const struct sub_conn *sc = conn_hook_arg(c, CONN_SLOT_SUBS);
    return sc != NULL && !list_empty(&sc->ready);
}

bool sub_full(const struct conn *c)
{
    const struct sub_conn *sc = conn_hook_arg(c, CONN_SLOT_SUBS);
    return sc != NULL && sc->n >= c->a->cfg.max_subs;
}

int sub_reserve(struct conn *c)
{
    if (sub_full(c))
        return -EAGAIN;
    struct sub_conn *sc = sc_get(c);
    if (sc == NULL)
        return -ENOMEM;
    sc->n++;
    return 0;
}

void sub_unreserve(struct conn *c)
{
    struct sub_conn *sc = conn_hook_arg(c, CONN_SLOT_SUBS);
    if (sc != NULL && sc->n > 0)
        sc->n--;
}
