/* boxctl tunnel, forward: byte streams to a TCP address or a unix socket in the box
 * (PROTOCOL.md 13). One agent connection carries every stream; a poll loop moves bytes both
 * ways, each stream within its credit: local bytes are read only while the agent's window has
 * room, and the agent's bytes are acknowledged once written locally, so a slow local reader
 * stalls its own stream and nothing else.
 *
 * After hello the loop owns the agent socket: frames are read into a buffer and parsed whole,
 * and what is sent waits in an output queue written as the socket takes it (never a blocking
 * write that could keep the loop from reading what the agent sends). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "schema.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Streams forward serves at once: the agent's default max_tunnels. */
#define FWD_MAX_STREAMS 64
/* Bytes one read from a local fd takes at most (one tunnel_data): a quarter of the window, so
 * that several are in flight while the agent writes the first (as the agent does, tunnel.h). */
#define TUN_CHUNK (64u * 1024u)
/* Queued output to the agent past which local fds are not read until it drains. */
#define TUN_OUTQ_HIGH (4u << 20)
/* The window a tunnel_opened that names none stands for (PROTOCOL.md 13). */
#define TUN_WINDOW_DEFAULT 262144u

enum sstate { S_OPENING, S_OPEN, S_DONE };

struct stream {
    enum sstate state;
    int in_fd, out_fd;  /* the local side: stdin/stdout, or one accepted socket for both */
    bool sock;          /* in_fd is a socket (shutdown, MSG_NOSIGNAL) */
    uint64_t req;       /* its tunnel_open's */
    uint64_t id;        /* the agent's tunnel id, once opened */
    uint64_t window;
    uint64_t unacked;   /* bytes sent to the agent it has not acknowledged */
    bool in_eof;        /* local EOF read: tunnel_close "write" sent */
    bool remote_eof;    /* tunnel_eof: the local side's writing is shut once pend is written */
    bool out_shut;
    char *pend;         /* the agent's bytes not yet written locally (at most window) */
    size_t pend_off, pend_len, pend_cap;
    bool closed;        /* tunnel_closed received (or the open failed) */
    bool failed;        /* the reason was not "closed", or the open was refused */
};

struct tun {
    struct ctl *x;
    int fd; /* the agent connection */
    uint8_t *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_off, out_len, out_cap;
    struct stream *s[FWD_MAX_STREAMS];
    unsigned n;
    uint64_t next_req;
    bool agent_gone;
};

/* ---- The agent connection ------------------------------------------------------------------ */

static int outq_add(struct tun *t, struct msg_out *o)
{
    int r = msg_out_finish(o);
    if (r < 0) {
        msg_out_destroy(o);
        return r;
    }
    size_t n = msg_out_size(o);
    if (t->out_off + t->out_len + n > t->out_cap) {
        if (t->out_off > 0) {
            memmove(t->out, t->out + t->out_off, t->out_len);
            t->out_off = 0;
        }
        if (t->out_len + n > t->out_cap) {
            size_t cap = t->out_cap ? t->out_cap : 1u << 20;
            while (cap < t->out_len + n)
                cap *= 2;
            char *b = realloc(t->out, cap);
            if (b == NULL) {
                msg_out_destroy(o);
                return -ENOMEM;
            }
            t->out = b;
            t->out_cap = cap;
        }
    }
    memcpy(t->out + t->out_off + t->out_len, o->sb.data, n);
    t->out_len += n;
    msg_out_destroy(o);
    return 0;
}

/* {type, tunnel, ...}: opened with one more field to come from the caller when extra. */
static int begin(struct msg_out *o, enum box_type type, uint32_t fields)
{
    if (msg_out_init(o, 128) < 0)
        return -ENOMEM;
    msg_map(o, fields);
    msg_kv_str(o, BOX_REQ_KEY(TYPE), box_type_str(type));
    return 0;
}

static int send_ack(struct tun *t, struct stream *s, uint64_t n)
{
    struct msg_out o;
    if (begin(&o, BOX_T_TUNNEL_ACK, 3) < 0)
        return -ENOMEM;
    msg_kv_u64(&o, BOX_REQ_KEY(TUNNEL), s->id);
    msg_kv_u64(&o, BOX_REQ_KEY(BYTES), n);
    return outq_add(t, &o);
}

static int send_close(struct tun *t, struct stream *s, bool write_only)
{
    struct msg_out o;
    if (begin(&o, BOX_T_TUNNEL_CLOSE, 3) < 0)
        return -ENOMEM;
    msg_kv_u64(&o, BOX_REQ_KEY(TUNNEL), s->id);
    msg_kv_str(&o, BOX_REQ_KEY(HOW), write_only ? "write" : "both");
    return outq_add(t, &o);
}

struct target {
    const char *host, *path; /* one of them */
    uint16_t port;
    const char *user; /* --user, or NULL */
};

static int send_open(struct tun *t, struct stream *s, const struct target *tg)
{
    struct msg_out o;
    if (begin(&o, BOX_T_TUNNEL_OPEN, (tg->path ? 3 : 4) + (tg->user != NULL)) < 0)
        return -ENOMEM;
    s->req = ++t->next_req;
    msg_kv_u64(&o, BOX_REQ_KEY(REQ), s->req);
    if (tg->path) {
        msg_kv_str(&o, BOX_REQ_KEY(PATH), tg->path);
    } else {
        msg_kv_str(&o, BOX_REQ_KEY(HOST), tg->host);
        msg_kv_u64(&o, BOX_REQ_KEY(PORT), tg->port);
    }
    if (tg->user)
        msg_kv_str(&o, BOX_REQ_KEY(USER), tg->user);
    return outq_add(t, &o);
}

static void flush_agent(struct tun *t)
{
    while (t->out_len > 0) {
        ssize_t w = send(t->fd, t->out + t->out_off, t->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w < 0) {
            errmsg("%s: %s", t->x->sock, strerror(errno));
            t->agent_gone = true;
            return;
        }
        t->out_off += (size_t)w;
        t->out_len -= (size_t)w;
    }
    t->out_off = 0;
}

/* ---- Streams ------------------------------------------------------------------------------- */

static struct stream *stream_new(struct tun *t, int in_fd, int out_fd, bool sock)
{
    if (t->n == FWD_MAX_STREAMS)
        return NULL;
    struct stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->in_fd = in_fd;
    s->out_fd = out_fd;
    s->sock = sock;
    s->window = TUN_WINDOW_DEFAULT;
    t->s[t->n++] = s;
    return s;
}

static void stream_free(struct tun *t, unsigned i)
{
    struct stream *s = t->s[i];
    if (s->sock)
        close(s->in_fd);
    free(s->pend);
    free(s);
    t->s[i] = t->s[--t->n];
}

static struct stream *by_id(struct tun *t, uint64_t id)
{
    for (unsigned i = 0; i < t->n; i++)
        if (t->s[i]->state != S_OPENING && t->s[i]->id == id)
            return t->s[i];
    return NULL;
}

static struct stream *by_req(struct tun *t, uint64_t req)
{
    for (unsigned i = 0; i < t->n; i++)
        if (t->s[i]->state == S_OPENING && t->s[i]->req == req)
            return t->s[i];
    return NULL;
}

static void shut_local_write(struct stream *s)
{
    if (s->out_shut)
        return;
    s->out_shut = true;
    if (s->sock)
        shutdown(s->out_fd, SHUT_WR);
    else
        close(s->out_fd); /* stdout: the reader (ssh) sees EOF */
}

/* Writes what it can of p to the local side and acks it. Returns the bytes written; when the
 * local reader is gone, the tunnel is closed and out_shut set. */
static size_t write_local(struct tun *t, struct stream *s, const char *p, size_t n)
{
    size_t done = 0;
    while (done < n && !s->out_shut) {
        ssize_t w = s->sock ? send(s->out_fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                            : write(s->out_fd, p + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w < 0) {
            /* The local reader is gone: nothing more can be delivered. */
            s->pend_len = 0;
            s->out_shut = true;
            if (s->state == S_OPEN)
                send_close(t, s, false);
            break;
        }
        done += (size_t)w;
    }
    if (done > 0 && s->state == S_OPEN)
        send_ack(t, s, done);
    return done;
}

/* Writes what the agent sent and is kept to the local side. */
static void flush_local(struct tun *t, struct stream *s)
{
    if (s->pend_len > 0) {
        size_t w = write_local(t, s, s->pend + s->pend_off, s->pend_len);
        if (!s->out_shut) {
            s->pend_off += w;
            s->pend_len -= w;
        }
    }
    if (s->pend_len == 0)
        s->pend_off = 0;
    if (s->pend_len == 0 && (s->remote_eof || s->closed))
        shut_local_write(s);
}

static void read_local(struct tun *t, struct stream *s)
{
    static char buf[TUN_CHUNK];
    size_t n = s->window - s->unacked;
    if (n > sizeof buf)
        n = sizeof buf;
    ssize_t r = s->sock ? recv(s->in_fd, buf, n, MSG_DONTWAIT) : read(s->in_fd, buf, n);
    if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (r <= 0) {
        /* EOF (or a reset, which ends this side the same way): half-close the tunnel. */
        s->in_eof = true;
        send_close(t, s, r == 0);
        return;
    }
    struct msg_out o;
    if (begin(&o, BOX_T_TUNNEL_DATA, 3) < 0)
        return;
    msg_kv_u64(&o, BOX_REQ_KEY(TUNNEL), s->id);
    msg_key(&o, BOX_REQ_KEY(DATA));
    msg_data_known(&o, buf, (size_t)r, false);
    if (outq_add(t, &o) == 0)
        s->unacked += (uint64_t)r;
}

/* ---- What the agent sends ------------------------------------------------------------------ */

/* An error from the agent, as boxctl prints them (CODE: message), with the errno name. */
static void agent_error(const msgpack_object *m)
{
    const char *code = "", *text = "", *en = "";
    size_t cl = 0, tl = 0, el = 0;
    msg_get_str(m, BOX_KEY(CODE), &code, &cl);
    msg_get_str(m, BOX_KEY(MESSAGE), &text, &tl);
    msg_get_str(m, BOX_KEY(ERRNO_NAME), &en, &el);
    char c[64], tx[512], e[32];
    bytes_cstr((struct bytes){code, cl}, c, sizeof c);
    bytes_cstr((struct bytes){text, tl}, tx, sizeof tx);
    bytes_cstr((struct bytes){en, el}, e, sizeof e);
    sanitize(c, strlen(c));
    sanitize(tx, strlen(tx));
    sanitize(e, strlen(e));
    errmsg("%s: %s%s%s%s", c, tx, el ? " (" : "", e, el ? ")" : "");
}

static void on_message(struct tun *t, const msgpack_object *m, const char *target)
{
    const char *type;
    size_t tl;
    if (msg_get_str(m, BOX_KEY(TYPE), &type, &tl) < 0)
        return;
    int ty = box_type_lookup(type, tl);
    uint64_t req = 0, id = 0;
    bool has_req = msg_get_u64(m, BOX_KEY(REQ), &req) == 0;
    bool has_id = msg_get_u64(m, BOX_KEY(TUNNEL), &id) == 0;
    struct stream *s = NULL;
    if (ty == BOX_T_TUNNEL_OPENED || (ty == BOX_T_ERROR && has_req))
        s = has_req ? by_req(t, req) : NULL;
    else if (has_id)
        s = by_id(t, id);
    if (ty == BOX_T_ERROR) {
        agent_error(m);
        if (s && s->state == S_OPENING) {
            s->closed = s->failed = true;
            s->state = S_DONE;
            shut_local_write(s);
        }
        return;
    }
    if (s == NULL)
        return;
    switch (ty) {
    case BOX_T_TUNNEL_OPENED:
        s->id = id;
        msg_get_u64(m, BOX_KEY(WINDOW), &s->window);
        if (s->window == 0)
            s->window = TUN_WINDOW_DEFAULT;
        s->state = S_OPEN;
        break;
    case BOX_T_TUNNEL_ACK: {
        uint64_t b = 0;
        msg_get_u64(m, BOX_KEY(BYTES), &b);
        s->unacked = b > s->unacked ? 0 : s->unacked - b;
        break;
    }
    case BOX_T_TUNNEL_DATA: {
        const char *d;
        size_t n;
        if (msg_get_bytes(m, BOX_KEY(DATA), &d, &n) < 0 || s->out_shut)
            break;
        if (s->pend_len == 0) {
            /* Straight from the frame when nothing waits before it. */
            size_t w = write_local(t, s, d, n);
            d += w;
            n -= w;
            if (n == 0 || s->out_shut)
                break;
        }
        if (s->pend_off + s->pend_len + n > s->pend_cap) {
            memmove(s->pend, s->pend + s->pend_off, s->pend_len);
            s->pend_off = 0;
            if (s->pend_len + n > s->pend_cap) {
                size_t cap = s->pend_len + n;
                char *b = realloc(s->pend, cap);
                if (b == NULL)
                    break;
                s->pend = b;
                s->pend_cap = cap;
            }
        }
        memcpy(s->pend + s->pend_off + s->pend_len, d, n);
        s->pend_len += n;
        flush_local(t, s);
        break;
    }
    case BOX_T_TUNNEL_EOF:
        s->remote_eof = true;
        flush_local(t, s);
        break;
    case BOX_T_TUNNEL_CLOSED: {
        const char *why = "closed", *en = "";
        size_t wl = 6, el = 0;
        msg_get_str(m, BOX_KEY(REASON), &why, &wl);
        msg_get_str(m, BOX_KEY(ERRNO_NAME), &en, &el);
        s->closed = true;
        s->state = S_DONE;
        if (!(wl == 6 && memcmp(why, "closed", 6) == 0)) {
            s->failed = true;
            errmsg("%s: the tunnel was closed in the box: %.*s%s%.*s", target, (int)wl, why,
                   el ? " " : "", (int)el, en);
        }
        flush_local(t, s);
        break;
    }
    default:
        break;
    }
}

/* Parses the complete frames read from the agent. */
static int parse_in(struct tun *t, const char *target)
{
    size_t at = 0;
    while (t->in_len - at >= BOX_FRAME_HDR) {
        uint32_t len;
        int e = frame_header_decode(t->in + at, t->in_len - at, t->x->c.max_in, &len);
        if (e == -EMSGSIZE || e == -EBADMSG) {
            errmsg("%s: the agent sent a frame boxctl cannot read", t->x->sock);
            return -1;
        }
        if (t->in_len - at < BOX_FRAME_HDR + (size_t)len)
            break;
        msgpack_zone zone;
        if (!msgpack_zone_init(&zone, 1024))
            return -1;
        msgpack_object m;
        if (msg_parse(t->in + at + BOX_FRAME_HDR, len, &zone, &m) == 0)
            on_message(t, &m, target);
        msgpack_zone_destroy(&zone);
        at += BOX_FRAME_HDR + len;
    }
    memmove(t->in, t->in + at, t->in_len - at);
    t->in_len -= at;
    return 0;
}

static int read_agent(struct tun *t, const char *target)
{
    size_t want = BOX_FRAME_HDR + (size_t)t->x->c.max_in;
    if (t->in_cap < want) {
        uint8_t *b = realloc(t->in, want);
        if (b == NULL)
            return -1;
        t->in = b;
        t->in_cap = want;
    }
    ssize_t r = read(t->fd, t->in + t->in_len, t->in_cap - t->in_len);
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return 0;
    if (r <= 0) {
        errmsg("%s: the agent closed the connection", t->x->sock);
        t->agent_gone = true;
        return -1;
    }
    t->in_len += (size_t)r;
    return parse_in(t, target);
}

/* ---- The loop ------------------------------------------------------------------------------- */

static bool wants_local_read(const struct tun *t, const struct stream *s)
{
    return s->state == S_OPEN && !s->in_eof && s->unacked < s->window &&
           t->out_len < TUN_OUTQ_HIGH;
}

/* One round of poll over the agent, the listener (-1: none) and every stream; *accept_ready
 * says whether the listener has a connection waiting. Returns 0, or -1 when the agent
 * connection is gone (reported). */
static int loop_once(struct tun *t, int listen_fd, bool *accept_ready, const char *target)
{
    struct pollfd p[2 + 2 * FWD_MAX_STREAMS];
    int np = 0;
    p[np++] = (struct pollfd){.fd = t->fd, .events = POLLIN | (t->out_len ? POLLOUT : 0)};
    int li = -1;
    if (listen_fd >= 0 && t->n < FWD_MAX_STREAMS) {
        li = np;
        p[np++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
    }
    int idx_in[FWD_MAX_STREAMS], idx_out[FWD_MAX_STREAMS];
    for (unsigned i = 0; i < t->n; i++) {
        struct stream *s = t->s[i];
        idx_in[i] = idx_out[i] = -1;
        if (wants_local_read(t, s)) {
            idx_in[i] = np;
            p[np++] = (struct pollfd){.fd = s->in_fd, .events = POLLIN};
        }
        if (s->pend_len > 0 && !s->out_shut) {
            idx_out[i] = np;
            p[np++] = (struct pollfd){.fd = s->out_fd, .events = POLLOUT};
        }
    }
    int r = poll(p, (nfds_t)np, -1);
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
        if (read_agent(t, target) < 0)
            return -1;
    for (unsigned i = 0; i < t->n; i++) {
        struct stream *s = t->s[i];
        if (idx_out[i] >= 0 && p[idx_out[i]].revents)
            flush_local(t, s);
        if (idx_in[i] >= 0 && p[idx_in[i]].revents && wants_local_read(t, s))
            read_local(t, s);
    }
    flush_agent(t);
    *accept_ready = li >= 0 && (p[li].revents & POLLIN);
    return t->agent_gone ? -1 : 0;
}

static int tun_start(struct tun *t, struct ctl *x)
{
    memset(t, 0, sizeof *t);
    t->x = x;
    t->fd = x->c.fd;
    t->next_req = 1000;
    signal(SIGPIPE, SIG_IGN);
    int fl = fcntl(t->fd, F_GETFL);
    if (fl < 0 || fcntl(t->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        errmsg("%s: %s", x->sock, strerror(errno));
        return -1;
    }
    return 0;
}

static void tun_free(struct tun *t)
{
    while (t->n > 0)
        stream_free(t, 0);
    free(t->in);
    free(t->out);
}

/* HOST:PORT or unix:PATH (an IPv6 address in brackets: [::1]:22). Returns 0 or -1. */
static int parse_target(char *s, struct target *tg)
{
    memset(tg, 0, sizeof *tg);
    if (strncmp(s, "unix:", 5) == 0) {
        tg->path = s + 5;
        return tg->path[0] == '/' ? 0 : -1;
    }
    char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return -1;
    *colon = '\0';
    uint64_t port;
    if (parse_u64(colon + 1, &port) < 0 || port == 0 || port > 65535)
        return -1;
    tg->port = (uint16_t)port;
    tg->host = s;
    size_t n = strlen(s);
    if (s[0] == '[' && n > 2 && s[n - 1] == ']') {
        s[n - 1] = '\0';
        tg->host = s + 1;
    }
    return 0;
}

static void target_text(const struct target *tg, char *buf, size_t n)
{
    if (tg->path)
        snprintf(buf, n, "unix:%s", tg->path);
    else
        snprintf(buf, n, "%s:%u", tg->host, (unsigned)tg->port);
}

int cmd_tunnel(struct ctl *x, struct opts *o, int argc, char **argv)
{
    if (argc != 1)
        return usage_error("tunnel", argc ? "one target only" : "give HOST:PORT or unix:PATH");
    struct target tg;
    if (parse_target(argv[0], &tg) < 0)
        return usage_error("tunnel", "'%s' is not HOST:PORT (port 1-65535) or unix:/PATH",
                           argv[0]);
    tg.user = o->user;
    char what[400];
    target_text(&tg, what, sizeof what);
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    struct tun t;
    if (tun_start(&t, x) < 0)
        return EXIT_FAIL;
    struct stream *s = stream_new(&t, STDIN_FILENO, STDOUT_FILENO, false);
    if (s == NULL || send_open(&t, s, &tg) < 0) {
        errmsg("%s", strerror(ENOMEM));
        tun_free(&t);
        return EXIT_FAIL;
    }
    flush_agent(&t);
    bool dummy;
    int rc = 0;
    /* Until the tunnel has closed and what it brought is written out. */
    while (!(s->closed && (s->pend_len == 0 || s->out_shut))) {
        if (loop_once(&t, -1, &dummy, what) < 0) {
            rc = -1;
            break;
        }
    }
    bool failed = rc < 0 || s->failed;
    tun_free(&t);
    return failed ? EXIT_FAIL : 0;
}

/* [BIND:]LPORT:HOST:PORT (or [BIND:]LPORT:unix:PATH). */
static int parse_forward(char *s, const char **bind_addr, uint16_t *lport, struct target *tg)
{
    *bind_addr = "127.0.0.1";
    char *first = strchr(s, ':');
    if (first == NULL)
        return -1;
    *first = '\0';
    char *rest = first + 1;
    uint64_t v;
    if (parse_u64(s, &v) < 0) {
        /* BIND first */
        *bind_addr = s;
        char *second = strchr(rest, ':');
        if (second == NULL)
            return -1;
        *second = '\0';
        if (parse_u64(rest, &v) < 0)
            return -1;
        rest = second + 1;
    }
    if (v > 65535)
        return -1;
    *lport = (uint16_t)v;
    return parse_target(rest, tg);
}

static int listen_on(const char *bind_addr, uint16_t port, char *shown, size_t n)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, bind_addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        len = sizeof *a4;
    } else if (inet_pton(AF_INET6, bind_addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        len = sizeof *a6;
    } else {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    char a[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET)
        snprintf(shown, n, "%s:%u", inet_ntop(AF_INET, &a4->sin_addr, a, sizeof a),
                 ntohs(a4->sin_port));
    else
        snprintf(shown, n, "[%s]:%u", inet_ntop(AF_INET6, &a6->sin6_addr, a, sizeof a),
                 ntohs(a6->sin6_port));
    return fd;
}

int cmd_forward(struct ctl *x, struct opts *o, int argc, char **argv)
{
    if (argc != 1)
        return usage_error("forward", "give [BIND:]LPORT:HOST:PORT");
    const char *bind_addr;
    uint16_t lport;
    struct target tg;
    char spec[512];
    snprintf(spec, sizeof spec, "%s", argv[0]);
    if (parse_forward(spec, &bind_addr, &lport, &tg) < 0)
        return usage_error("forward", "'%s' is not [BIND:]LPORT:HOST:PORT", argv[0]);
    tg.user = o->user;
    char what[400], shown[96];
    target_text(&tg, what, sizeof what);
    int lfd = listen_on(bind_addr, lport, shown, sizeof shown);
    if (lfd < 0) {
        errmsg("forward: cannot listen on %s:%u: %s%s", bind_addr, (unsigned)lport,
               strerror(errno),
               errno == EADDRINUSE ? " (pick another LPORT, or 0 for any free one)" : "");
        return EXIT_FAIL;
    }
    int ret = ctl_connect(x);
    if (ret != 0) {
        close(lfd);
        return ret;
    }
    struct tun t;
    if (tun_start(&t, x) < 0) {
        close(lfd);
        return EXIT_FAIL;
    }
    printf("boxctl: listening on %s, forwarding to %s in the box\n", shown, what);
    fflush(stdout);
    int rc = 0;
    for (;;) {
        bool acc = false;
        if (loop_once(&t, lfd, &acc, what) < 0) {
            rc = EXIT_FAIL;
            break;
        }
        /* Streams that are done and delivered go. */
        for (unsigned i = 0; i < t.n;) {
            struct stream *s = t.s[i];
            if (s->closed && (s->pend_len == 0 || s->out_shut))
                stream_free(&t, i);
            else
                i++;
        }
        if (!acc)
            continue;
        int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd < 0)
            continue;
        struct stream *s = stream_new(&t, cfd, cfd, true);
        if (s == NULL) {
            close(cfd);
            continue;
        }
        if (send_open(&t, s, &tg) < 0)
            s->closed = s->failed = true; /* out of memory: the connection is closed */
        flush_agent(&t);
    }
    close(lfd);
    tun_free(&t);
    return rc;
}
