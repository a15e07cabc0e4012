#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "auth.h"
#include "events.h"
#include "log.h"

struct wreq {
    uv_write_t w;
    struct conn *c;
    size_t len;
    size_t cost; /* what it holds in memory: the buffer's allocation and this request */
    char *buf;
};

static void prehello_leave(struct conn *c)
{
    if (list_linked(&c->pre_link)) {
        list_del(&c->pre_link);
        c->a->n_prehello--;
    }
}

/* Tells every hook of c about ev. */
static void hooks_call(struct conn *c, enum conn_event ev)
{
    for (int i = 0; i < CONN_SLOTS; i++)
        if (c->hooks[i].cb)
            c->hooks[i].cb(c, ev, c->hooks[i].arg);
}

static void conn_free(struct conn *c)
{
    struct agent *a = c->a;
    /* Who writes to it lets go now that no callback of this conn can run any more. */
    hooks_call(c, CONN_FREED);
    list_del(&c->link);
    a->n_conns--;
    if (c->closing && !c->detached)
        a->n_closing--;
    prehello_leave(c);
    free(c->frame);
    free(c->pend);
    log_debug("conn %llu: closed", (unsigned long long)c->no);
    void (*on_free)(void *) = c->on_free;
    void *arg = c->on_free_arg;
    free(c);
    if (on_free)
        on_free(arg);
}

static void on_closed(uv_handle_t *h)
{
    conn_free(h->data);
}

void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    hooks_call(c, CONN_CLOSING);
    /* A closing conn holds no slot: the accept check counts only the others. */
    prehello_leave(c);
    if (c->detached)
        return; /* freed by conn_detached_free */
    c->a->n_closing++;
    /* Pending writes are cancelled by uv_close (their callbacks run with UV_ECANCELED before
     * on_closed), so no buffer is leaked. */
    uv_close((uv_handle_t *)&c->h, on_closed);
}

struct conn *conn_find(struct agent *a, uint64_t no)
{
    struct list *pos;
    for (pos = a->conns.next; pos != &a->conns; pos = pos->next) {
        struct conn *c = container_of(pos, struct conn, link);
        if (c->no == no)
            return c->closing ? NULL : c;
    }
    return NULL;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = h->data;
    /* One shared buffer: every read is consumed (or what is left of it kept in c->pend)
     * before the next is made. Before hello, a read takes at most one pre-hello frame, so what
     * such a conn can leave unparsed is that small. */
    size_t n = c->a->read_buf_size;
    if (!c->hello && n > AUTH_PRE_FRAME + BOX_FRAME_HDR)
        n = AUTH_PRE_FRAME + BOX_FRAME_HDR;
    *buf = uv_buf_init(c->a->read_buf, (unsigned)n);
}

static uint64_t queue_bound(const struct conn *c)
{
    return c->hello ? c->a->cfg.conn_queue : CONN_PRE_QUEUE;
}

/* True while c may parse another request: its own queue is under its bound and the agent's
 * total is under queue_total. Checked before every frame, so one read of many small requests
 * cannot queue more than one request's replies past the bound. */
static bool may_parse(const struct conn *c)
{
    return c->queued < queue_bound(c) && !c->a->queue_full;
}


static void reading_set(struct conn *c, bool on)
{
    if (c->closing || c->reading == on || c->detached)
        return;
    c->reading = on;
    int e = on ? uv_read_start((uv_stream_t *)&c->h, on_alloc, on_read)
               : uv_read_stop((uv_stream_t *)&c->h);
    if (e < 0) {
        log_warn("conn %llu: %s reading: %s", (unsigned long long)c->no,
                 on ? "starting" : "stopping", uv_strerror(e));
        conn_close(c);
    }
}

static void resume(struct conn *c);
static void resume_all(struct agent *a);

static void on_written(uv_write_t *w, int status)
{
    struct wreq *wr = container_of(w, struct wreq, w);
    struct conn *c = wr->c;
    struct agent *a = c->a;
    c->queued -= wr->cost;
    a->queued_total -= wr->cost;
    free(wr->buf);
    free(wr);
    /* The agent-wide cap: resumed with some hysteresis, so that a full agent does not walk
     * every conn on each completed write. Also when c is closing: its cancelled writes may be
     * what drains the total. */
    if (a->queue_full && a->queued_total < a->cfg.queue_total - a->cfg.queue_total / 4) {
        a->queue_full = false;
        resume_all(a);
    }
    if (c->closing)
        return;
    if (status < 0) {
        log_debug("conn %llu: write: %s", (unsigned long long)c->no, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->close_after_flush && c->queued == 0) {
        conn_close(c);
        return;
    }
    if (conn_room(c) > 0)
        hooks_call(c, CONN_WRITABLE);
    resume(c);
}

int conn_send(struct conn *c, struct msg_out *o)
{
    int e = msg_out_finish(o);
    if (e < 0) {
        msg_out_destroy(o);
        return e;
    }
    if (c->closing) {
        msg_out_destroy(o);
        return -EPIPE;
    }
    if (c->detached) {
        c->sink(c->sink_arg, o->sb.data, o->sb.size);
        msg_out_destroy(o);
        return 0;
    }
    struct wreq *wr = boxd_malloc(sizeof *wr);
    if (wr == NULL) {
        msg_out_destroy(o);
        return -ENOMEM;
    }
    wr->c = c;
    /* Queues are bounded by memory, not by bytes on the wire: many small replies cost their
     * allocations, not their length. */
    wr->cost = o->sb.alloc + sizeof *wr + 32;
    wr->buf = msg_out_steal(o, &wr->len);
    uv_buf_t b = uv_buf_init(wr->buf, (unsigned)wr->len);
    e = uv_write(&wr->w, (uv_stream_t *)&c->h, &b, 1, on_written);
    if (e < 0) {
        free(wr->buf);
        free(wr);
        /* Not closed from here: the caller may be iterating what it sends to this conn. The
         * read side sees the same error and closes it. */
        return -EPIPE;
    }
    c->queued += wr->cost;
    c->a->queued_total += wr->cost;
    if (c->a->queued_total >= c->a->cfg.queue_total && !c->a->queue_full) {
        c->a->queue_full = true;
        log_warn("connections: %llu bytes of replies queued (queue_total), reading paused",
                 (unsigned long long)c->a->queued_total);
    }
    /* Flow control for requests: a client that sends faster than it reads stops being read
     * (and what it sent is parsed no further: consume checks before each frame). */
    if (!may_parse(c))
        reading_set(c, false);
    return 0;
}

void conn_hook_set(struct conn *c, enum conn_slot slot, conn_hook_cb cb, void *arg)
{
    c->hooks[slot].cb = cb;
    c->hooks[slot].arg = arg;
}

void *conn_hook_arg(const struct conn *c, enum conn_slot slot)
{
    return c->hooks[slot].cb ? c->hooks[slot].arg : NULL;
}

uint64_t conn_room(const struct conn *c)
{
    if (c->closing || c->queued >= CONN_LOW_WATER || c->a->queue_full)
        return 0;
    return CONN_LOW_WATER - c->queued + CONN_PULL_SLACK;
}

/* ---- Reading -------------------------------------------------------------------------------- */

void conn_close_after_flush(struct conn *c)
{
    if (c->closing)
        return;
    reading_set(c, false);
    c->close_after_flush = true;
    if (c->queued == 0 || c->detached)
        conn_close(c);
}

static void send_error_close(struct conn *c, enum box_err code, const char *text)
{
    struct msg_out o;
    if (ev_error(&o, NULL, code, NULL, "%s", text) == 0)
        conn_send(c, &o);
    else
        msg_out_destroy(&o);
    conn_close_after_flush(c);
}

static void frame_done(struct conn *c)
{
    uint8_t *body = c->frame;
    uint32_t len = c->frame_len;
    c->frame = NULL;
    c->frame_len = c->frame_have = 0;
    c->hdr_have = 0;
    c->a->on_frame(c, body, len);
    free(body);
    /* Before hello, one frame decides: hello passed, or the error it got is the last. */
    if (!c->hello)
        conn_close_after_flush(c);
}

/* Keeps the n bytes not parsed yet, and stops reading until the queue drains (resume). */
static void stash(struct conn *c, const uint8_t *p, size_t n)
{
    reading_set(c, false);
    if (n == 0)
        return;
    /* c->pend is empty here (resume takes it before parsing it), unless a detached conn was
     * fed while over its bound: then the bytes are appended. */
    if (c->pend_len > SIZE_MAX - n) {
        send_error_close(c, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    uint8_t *b = boxd_malloc(c->pend_len + n);
    if (b == NULL) {
        send_error_close(c, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    if (c->pend_len)
        memcpy(b, c->pend, c->pend_len);
    memcpy(b + c->pend_len, p, n);
    free(c->pend);
    c->pend = b;
    c->pend_len += n;
}

/* Consumes bytes from the socket. A frame's header is checked against max_frame before its
 * body is allocated. */
static void consume(struct conn *c, const uint8_t *p, size_t n)
{
    struct agent *a = c->a;
    while (n > 0 && !c->closing && !c->close_after_flush) {
        if (!may_parse(c)) {
            stash(c, p, n);
            return;
        }
        if (c->frame == NULL) {
            size_t take = BOX_FRAME_HDR - c->hdr_have;
            if (take > n)
                take = n;
            memcpy(c->hdr + c->hdr_have, p, take);
            c->hdr_have += (uint32_t)take;
            p += take;
            n -= take;
            uint32_t len;
            /* Until hello (and its token) has passed, only small frames are taken. */
            uint32_t max = c->hello || a->cfg.max_frame < AUTH_PRE_FRAME ? a->cfg.max_frame
                                                                         : AUTH_PRE_FRAME;
            int e = frame_header_decode(c->hdr, c->hdr_have, max, &len);
            if (e == -EAGAIN)
                continue;
            if (e == -EMSGSIZE) {
                uint32_t want = (uint32_t)c->hdr[0] << 24 | (uint32_t)c->hdr[1] << 16 |
                                (uint32_t)c->hdr[2] << 8 | (uint32_t)c->hdr[3];
                log_limited(LOG_RL_FRAME, LOG_WARN, "conn %llu: frame of %u bytes over the limit of %u, closing",
                         (unsigned long long)c->no, want, max);
                send_error_close(c, BOX_ERR_TOO_LARGE, "frame larger than max_frame");
                return;
            }
            if (e == -EBADMSG) {
                /* An empty frame: answer it, the stream stays in step. */
                c->hdr_have = 0;
                struct msg_out o;
                if (ev_error(&o, NULL, BOX_ERR_BAD_REQUEST, NULL, "empty frame") == 0)
                    conn_send(c, &o);
                if (!c->hello)
                    conn_close_after_flush(c);
                continue;
            }
            c->frame = boxd_malloc(len);
            if (c->frame == NULL) {
                send_error_close(c, BOX_ERR_INTERNAL, "out of memory");
                return;
            }
            c->frame_len = len;
            c->frame_have = 0;
            continue;
        }
        size_t take = c->frame_len - c->frame_have;
        if (take > n)
            take = n;
        memcpy(c->frame + c->frame_have, p, take);
        c->frame_have += (uint32_t)take;
        p += take;
        n -= take;
        if (c->frame_have == c->frame_len)
            frame_done(c);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (c->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("conn %llu: read: %s", (unsigned long long)c->no, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    consume(c, (const uint8_t *)buf->base, (size_t)nread);
}

/* Parses what was kept while the queue was full, then reads again, as far as the bounds allow. */
static void resume(struct conn *c)
{
    while (!c->closing && !c->close_after_flush && c->pend_len > 0 && may_parse(c)) {
        uint8_t *b = c->pend;
        size_t n = c->pend_len;
        c->pend = NULL;
        c->pend_len = 0;
        consume(c, b, n); /* stops before a frame again (and keeps the rest) if need be */
        free(b);
    }
    if (!c->closing && !c->close_after_flush && c->pend_len == 0 && may_parse(c))
        reading_set(c, true);
}

static void resume_all(struct agent *a)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &a->conns)
    {
        struct conn *c = container_of(pos, struct conn, link);
        if (c->closing || c->detached)
            continue;
        resume(c);
        if (!c->closing && conn_room(c) > 0)
            hooks_call(c, CONN_WRITABLE);
    }
}

static struct conn *conn_new(struct agent *a);

struct conn *conn_new_detached(struct agent *a, void (*sink)(void *, const char *, size_t),
                               void *arg)
{
    struct conn *c = conn_new(a);
    if (c == NULL)
        return NULL;
    c->detached = true;
    c->sink = sink;
    c->sink_arg = arg;
    snprintf(c->peer, sizeof c->peer, "detached");
    return c;
}

void conn_feed(struct conn *c, const uint8_t *p, size_t n)
{
    consume(c, p, n);
}

void conn_detached_free(struct conn *c)
{
    c->closing = true;
    conn_free(c);
}

static struct conn *conn_new(struct agent *a)
{
    struct conn *c = boxd_calloc(1, sizeof *c);
    if (c == NULL) {
        log_err("accept: out of memory");
        return NULL;
    }
    c->a = a;
    c->no = ++a->next_conn_no;
    list_init(&c->pre_link);
    c->h.data = c;
    list_add_tail(&a->conns, &c->link);
    a->n_conns++;
    return c;
}

uint32_t conn_prehello_max(const struct agent *a)
{
    uint32_t reserve = a->cfg.max_conns / 4 < CONN_AUTH_RESERVE ? a->cfg.max_conns / 4
                                                                 : CONN_AUTH_RESERVE;
    return a->cfg.max_conns - reserve;
}

/* ---- The hello deadline --------------------------------------------------------------------
 * Every conn that has not passed hello is on a->prehello in accept order, so the oldest is at
 * the head: one timer, armed for the head's deadline, serves them all. */

static void arm_hello_timer(struct agent *a);

static void on_hello_timer(uv_timer_t *t)
{
    struct agent *a = t->data;
    uint64_t now = uv_now(a->loop);
    unsigned closed = 0;
    while (!list_empty(&a->prehello)) {
        struct conn *c = container_of(a->prehello.next, struct conn, pre_link);
        if (c->accepted_ms + a->cfg.hello_timeout_ms > now)
            break;
        log_debug("conn %llu (%s): no hello within %u ms, closing", (unsigned long long)c->no,
                  c->peer, a->cfg.hello_timeout_ms);
        conn_close(c); /* leaves a->prehello */
        closed++;
    }
    if (closed)
        log_limited(LOG_RL_CONNS, LOG_INFO, "connections: closed %u that did not pass hello within %u ms", closed,
                 a->cfg.hello_timeout_ms);
    arm_hello_timer(a);
}

static void arm_hello_timer(struct agent *a)
{
    if (a->cfg.hello_timeout_ms == 0 || list_empty(&a->prehello) ||
        uv_is_active((uv_handle_t *)&a->hello_timer))
        return;
    struct conn *c = container_of(a->prehello.next, struct conn, pre_link);
    uint64_t now = uv_now(a->loop), due = c->accepted_ms + a->cfg.hello_timeout_ms;
    /* At least 50 ms apart: a stream of connections costs a sweep now and then, not one timer
     * run (and log line) per connection. */
    uint64_t wait = due > now ? due - now : 0;
    if (wait < 50)
        wait = 50;
    int e = uv_timer_start(&a->hello_timer, on_hello_timer, wait, 0);
    if (e < 0)
        log_err("connections: hello timer: %s", uv_strerror(e));
}

void conns_init(struct agent *a, conn_frame_cb on_frame)
{
    a->on_frame = on_frame;
    /* uv_timer_init cannot fail on a live loop (it only fills in the handle). */
    uv_timer_init(a->loop, &a->hello_timer);
    a->hello_timer.data = a;
}

void conns_close(struct agent *a)
{
    if (a->hello_timer.data != NULL && !uv_is_closing((uv_handle_t *)&a->hello_timer))
        uv_close((uv_handle_t *)&a->hello_timer, NULL);
}

void conn_hello_passed(struct conn *c)
{
    c->hello = true;
    prehello_leave(c);
}

void conn_keep(struct conn *c)
{
    prehello_leave(c);
}

/* Starts serving c, or refuses it. c holds a slot from now on; when that is one too many
 * (max_conns), or one too many for conns before hello (conn_prehello_max), the oldest conn
 * that has not passed hello is closed to make room. Conns past hello are never closed for
 * room: when they hold every slot, c is refused. Returns false if refused. */
static bool conn_begin(struct conn *c)
{
    struct agent *a = c->a;
    while (a->n_conns - a->n_closing > a->cfg.max_conns ||
           a->n_prehello + 1 > conn_prehello_max(a)) {
        if (list_empty(&a->prehello)) {
            log_limited(LOG_RL_CONNS, LOG_WARN, "conn %llu: refused, %u connections already",
                        (unsigned long long)c->no, a->cfg.max_conns);
            conn_close(c);
            return false;
        }
        struct conn *old = container_of(a->prehello.next, struct conn, pre_link);
        log_debug("conn %llu (%s): closed without hello to make room for conn %llu",
                  (unsigned long long)old->no, old->peer, (unsigned long long)c->no);
        conn_close(old);
    }
    c->accepted_ms = uv_now(a->loop);
    list_add_tail(&a->prehello, &c->pre_link);
    a->n_prehello++;
    arm_hello_timer(a);
    int e = uv_read_start((uv_stream_t *)&c->h, on_alloc, on_read);
    if (e < 0) {
        log_warn("conn %llu: read: %s", (unsigned long long)c->no, uv_strerror(e));
        conn_close(c);
        return false;
    }
    c->reading = true;
    log_debug("conn %llu: accepted (%s)", (unsigned long long)c->no, c->peer);
    return true;
}

int conn_accept(struct agent *a, uv_stream_t *server)
{
    struct conn *c = conn_new(a);
    if (c == NULL)
        return -ENOMEM; /* the connection stays pending; the listener retries */
    uv_pipe_init(a->loop, &c->h, 0);
    int e = uv_accept(server, (uv_stream_t *)&c->h);
    if (e < 0) {
        log_limited(LOG_RL_ACCEPT, LOG_WARN, "accept: %s", uv_strerror(e));
        conn_close(c);
        return 0;
    }
    int fd = -1;
    uid_t uid = (uid_t)-1;
    pid_t pid = 0;
    if (uv_fileno((uv_handle_t *)&c->h, &fd) < 0 || auth_check_peer(a, fd, &uid, &pid) < 0) {
        log_limited(LOG_RL_UID, LOG_WARN, "conn %llu: refused unix peer uid %d pid %d (not allowed)",
                 (unsigned long long)c->no, (int)uid, (int)pid);
        conn_close(c);
        return 0;
    }
    snprintf(c->peer, sizeof c->peer, "unix uid %u pid %d", (unsigned)uid, (int)pid);
    conn_begin(c);
    return 0;
}

struct conn *conn_from_fd(struct agent *a, int fd, const char *peer)
{
    struct conn *c = conn_new(a);
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    uv_pipe_init(a->loop, &c->h, 0);
    int e = uv_pipe_open(&c->h, fd);
    if (e < 0) {
        log_limited(LOG_RL_ACCEPT, LOG_WARN, "conn %llu (%s): %s", (unsigned long long)c->no, peer, uv_strerror(e));
        close(fd);
        conn_close(c);
        return NULL;
    }
    return conn_begin(c) ? c : NULL;
}
