/* Tunnels (tunnel.h): the connect on an I/O thread as the user, then both directions on the
 * loop with a uv_poll on the non-blocking socket, each bounded by its window. */
#include "tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "alloc.h"
#include "conn.h"
#include "events.h"
#include "files.h"
#include "log.h"

enum tstate {
    T_CONNECTING, /* its job is on an I/O thread */
    T_OPEN,       /* tunnel_opened sent; the poll handle is live */
    T_DEAD,       /* closed: freed when its job or its poll handle's close is done */
};

struct tun_conn;

struct tunnel {
    struct agent *a;
    struct tun_conn *tc;    /* NULL once closed, or once its connection is gone */
    struct list conn_link;  /* tc->tunnels, while tc */
    struct list agent_link; /* a->tunnels, until freed */
    uint64_t id;            /* 0 until connected */
    enum tstate state;
    bool job_busy;     /* its connect job is queued or running: not freed before it is done */
    struct reqtag req; /* tunnel_open's: its reply and every event of the tunnel carry it */
    struct fsjob job;

    /* The connect, read by the I/O thread. */
    char host[DECODE_TUNNEL_HOST_MAX + 1];
    char port[8];
    char path[DECODE_TUNNEL_PATH_MAX + 1];
    int fd;
    int conn_err; /* the connect's errno, 0 when connected */
    bool resolve_failed; /* the host is no address nor a name of /etc/hosts (EHOSTUNREACH) */

    uv_poll_t poll;
    int events; /* what poll watches now */

    /* Box to client: bytes sent in tunnel_data and not acknowledged (at most TUNNEL_WINDOW). */
    uint64_t unacked;
    bool rd_eof; /* the box side stopped writing: tunnel_eof sent */

    /* Client to box: what the box socket has not taken yet, out[out_off, out_off + out_len). */
    char *out;
    size_t out_off, out_len, out_cap;
    bool shut_wanted; /* tunnel_close "write": shut down once out is empty */
    bool shut_done;
};

/* A connection's tunnels: its hook in CONN_SLOT_TUNNELS, made on its first tunnel. */
struct tun_conn {
    struct conn *c;
    struct list tunnels;
    uint64_t next_id; /* ids given so far: an id up to it that is not open has closed */
};

static void on_conn_event(struct conn *c, enum conn_event ev, void *arg);

static struct tun_conn *tc_get(struct conn *c)
{
    struct tun_conn *tc = conn_hook_arg(c, CONN_SLOT_TUNNELS);
    if (tc != NULL)
        return tc;
    tc = boxd_calloc(1, sizeof *tc);
    if (tc == NULL)
        return NULL;
    tc->c = c;
    list_init(&tc->tunnels);
    conn_hook_set(c, CONN_SLOT_TUNNELS, on_conn_event, tc);
    return tc;
}

static size_t chunk_max(const struct agent *a)
{
    /* The event's other fields and its req take less than 128 bytes. */
    size_t room = a->cfg.max_event > 256 ? a->cfg.max_event - 128 : 128;
    return TUNNEL_CHUNK < room ? TUNNEL_CHUNK : room;
}

/* ---- Freeing and closing ------------------------------------------------------------------ */

static void tunnel_free(struct tunnel *t)
{
    list_del(&t->agent_link);
    t->a->n_tunnels--;
    free(t->out);
    free(t);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct tunnel *t = h->data;
    close(t->fd);
    tunnel_free(t);
}

static void send_closed(struct tunnel *t, const char *reason, int err)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_TUNNEL_CLOSED, &t->req) < 0)
        return;
    msg_kv_u64(&o, BOX_KEY(TUNNEL), t->id);
    msg_kv_str(&o, BOX_KEY(REASON), reason);
    if (err)
        msg_kv_str(&o, BOX_KEY(ERRNO_NAME), errno_name(err));
    ev_close(&o);
    conn_send(t->tc->c, &o);
}

/* Closes t: its tunnel_closed is sent (unless reason is NULL: its connection is gone), nothing
 * of it is sent after, and it is freed once no callback can reach it. */
static void tunnel_end(struct tunnel *t, const char *reason, int err)
{
    if (t->state == T_DEAD)
        return;
    if (t->tc != NULL) {
        if (reason != NULL && t->state == T_OPEN)
            send_closed(t, reason, err);
        list_del(&t->conn_link);
        t->tc = NULL;
    }
    bool was_open = t->state == T_OPEN;
    t->state = T_DEAD;
    if (was_open) {
        uv_close((uv_handle_t *)&t->poll, on_poll_closed);
        return;
    }
    if (!t->job_busy)
        tunnel_free(t); /* a failed connect: no fd, no handle */
}

static const char *reason_of(int err)
{
    return err == ECONNRESET || err == EPIPE || err == ECONNABORTED ? "reset" : "error";
}

/* ---- The socket ----------------------------------------------------------------------------- */

static bool want_read(const struct tunnel *t)
{
    return t->state == T_OPEN && !t->rd_eof && t->unacked < TUNNEL_WINDOW &&
           conn_room(t->tc->c) > 0;
}

static void on_poll(uv_poll_t *p, int status, int events);

/* Watches what t needs now: readable while the client has credit and the connection room,
 * writable while bytes wait for the box socket. */
static void poll_update(struct tunnel *t)
{
    if (t->state != T_OPEN)
        return;
    int ev = (want_read(t) ? UV_READABLE : 0) | (t->out_len > 0 ? UV_WRITABLE : 0);
    if (ev == t->events)
        return;
    t->events = ev;
    int e = ev ? uv_poll_start(&t->poll, ev, on_poll) : uv_poll_stop(&t->poll);
    if (e < 0) {
        log_warn("tunnel %llu: poll: %s", (unsigned long long)t->id, uv_strerror(e));
        tunnel_end(t, "error", -e);
    }
}

static void maybe_done(struct tunnel *t)
{
    if (t->rd_eof && t->shut_done)
        tunnel_end(t, "closed", 0);
}

static void send_ack(struct tunnel *t, uint64_t n)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_TUNNEL_ACK, &t->req) < 0)
        return;
    msg_kv_u64(&o, BOX_KEY(TUNNEL), t->id);
    msg_kv_u64(&o, BOX_KEY(BYTES), n);
    ev_close(&o);
    conn_send(t->tc->c, &o);
}

/* Writes what it can of p to the box socket. Returns the bytes written, or -1 when the tunnel
 * has been closed by the error. */
static ssize_t write_some(struct tunnel *t, const char *p, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = send(t->fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        int err = r < 0 ? errno : EPIPE;
        tunnel_end(t, reason_of(err), err);
        return -1;
    }
    return (ssize_t)done;
}

/* After out emptied: the half-close the client asked for. */
static void shut_if_wanted(struct tunnel *t)
{
    if (!t->shut_wanted || t->shut_done || t->out_len > 0)
        return;
    t->shut_done = true;
    if (shutdown(t->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        int err = errno;
        tunnel_end(t, reason_of(err), err);
        return;
    }
    maybe_done(t);
}

static void flush_out(struct tunnel *t)
{
    ssize_t w = write_some(t, t->out + t->out_off, t->out_len);
    if (w < 0)
        return;
    t->out_off += (size_t)w;
    t->out_len -= (size_t)w;
    if (t->out_len == 0)
        t->out_off = 0;
    if (w > 0)
        send_ack(t, (uint64_t)w);
    shut_if_wanted(t);
}

static void send_eof(struct tunnel *t)
{
    struct msg_out o;
    t->rd_eof = true;
    if (ev_begin(&o, BOX_T_TUNNEL_EOF, &t->req) == 0) {
        msg_kv_u64(&o, BOX_KEY(TUNNEL), t->id);
        ev_close(&o);
        conn_send(t->tc->c, &o);
    }
    maybe_done(t);
}

/* Reads the box socket into tunnel_data events while the client's credit and the connection's
 * room last: each read goes straight into the event's frame, at most the credit left. */
static void pump_in(struct tunnel *t)
{
    size_t max = chunk_max(t->a);
    while (want_read(t)) {
        size_t n = TUNNEL_WINDOW - t->unacked;
        if (n > max)
            n = max;
        struct msg_out o;
        if (ev_begin_sized(&o, BOX_T_TUNNEL_DATA, &t->req, n + 64) < 0) {
            tunnel_end(t, "error", ENOMEM);
            return;
        }
        msg_kv_u64(&o, BOX_KEY(TUNNEL), t->id);
        msg_key(&o, BOX_KEY(DATA));
        char *at = msg_bin_reserve(&o, n);
        ssize_t r = -1;
        int err = ENOMEM;
        if (at != NULL) {
            do
                r = recv(t->fd, at, n, MSG_DONTWAIT);
            while (r < 0 && errno == EINTR);
            err = errno;
        }
        if (r <= 0) {
            msg_out_destroy(&o);
            if (r == 0)
                send_eof(t);
            else if (err != EAGAIN && err != EWOULDBLOCK)
                tunnel_end(t, reason_of(err), err);
            return;
        }
        msg_bin_commit(&o, (size_t)r);
        ev_close(&o);
        if (conn_send(t->tc->c, &o) < 0) {
            tunnel_end(t, "error", ENOMEM);
            return;
        }
        t->unacked += (uint64_t)r;
        if ((size_t)r < n)
            return; /* the socket is drained: the next poll says when there is more */
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct tunnel *t = p->data;
    if (t->state != T_OPEN)
        return;
    if (status < 0) {
        /* libuv reports POLLERR as UV_EBADF: the socket's own error says what happened (a
         * reset, most often). */
        int err = -status, so = 0;
        socklen_t len = sizeof so;
        if (status == UV_EBADF && getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &so, &len) == 0 &&
            so != 0)
            err = so;
        tunnel_end(t, reason_of(err), err);
        return;
    }
    if (events & UV_WRITABLE)
        flush_out(t);
    if (t->state == T_OPEN && (events & UV_READABLE))
        pump_in(t);
    poll_update(t);
}

/* ---- The connect (on an I/O thread, as the user) ------------------------------------------ */

static int connect_fd(int family, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* A blocking connect bounded by the send timeout (TCP and unix both honour it): simple, and
     * it holds this I/O thread, never the loop. */
    struct timeval tv = {.tv_sec = TUNNEL_CONNECT_MS / 1000,
                         .tv_usec = (TUNNEL_CONNECT_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int r;
    do
        r = connect(fd, sa, len);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        int err = errno == EINPROGRESS || errno == EAGAIN ? ETIMEDOUT : errno;
        close(fd);
        return -err;
    }
    struct timeval none = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* One address into *ss: 1 if text is an IPv4 or IPv6 address, else 0. */
static int addr_parse(const char *text, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        return 1;
    }
    if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        return 1;
    }
    return 0;
}

/* The addresses of host: itself when it is an address, else the names of /etc/hosts (read as
 * the user, on this I/O thread). Names go no further: boxd uses no NSS and no DNS (it runs in
 * images without them, the static build included), and what a tunnel reaches is in the box.
 * Returns how many were found, at most max. */
static size_t host_lookup(const char *host, uint16_t port, struct sockaddr_storage *out,
                          size_t max)
{
    if (addr_parse(host, port, &out[0]))
        return 1;
    FILE *f = fopen("/etc/hosts", "re");
    if (f == NULL)
        return strcmp(host, "localhost") == 0 ? (size_t)addr_parse("127.0.0.1", port, out) : 0;
    size_t n = 0;
    char line[1024];
    while (n < max && fgets(line, sizeof line, f) != NULL) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *save = NULL;
        char *addr = strtok_r(line, " \t\r\n", &save);
        if (addr == NULL)
            continue;
        for (char *name = strtok_r(NULL, " \t\r\n", &save); name != NULL;
             name = strtok_r(NULL, " \t\r\n", &save))
            if (strcasecmp(name, host) == 0) {
                n += (size_t)addr_parse(addr, port, &out[n]);
                break;
            }
    }
    fclose(f);
    return n;
}

static void connect_work(struct fsjob *j)
{
    struct tunnel *t = container_of(j, struct tunnel, job);
    t->fd = -1;
    if (t->path[0]) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        memcpy(sun.sun_path, t->path, strlen(t->path) + 1);
        int fd = connect_fd(AF_UNIX, (struct sockaddr *)&sun, sizeof sun);
        if (fd < 0)
            t->conn_err = -fd;
        else
            t->fd = fd;
        return;
    }
    struct sockaddr_storage addrs[TUNNEL_HOST_ADDRS];
    size_t n = host_lookup(t->host, (uint16_t)atoi(t->port), addrs, TUNNEL_HOST_ADDRS);
    if (n == 0) {
        t->resolve_failed = true;
        t->conn_err = EHOSTUNREACH;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        int family = addrs[i].ss_family;
        socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in)
                                          : sizeof(struct sockaddr_in6);
        int fd = connect_fd(family, (struct sockaddr *)&addrs[i], len);
        if (fd >= 0) {
            t->fd = fd;
            t->conn_err = 0;
            return;
        }
        t->conn_err = -fd;
    }
}

static void send_connect_failed(struct tunnel *t, int err)
{
    char what[DECODE_TUNNEL_HOST_MAX + 16];
    if (t->path[0])
        snprintf(what, sizeof what, "unix:%s", t->path);
    else
        snprintf(what, sizeof what, "%s:%s", t->host, t->port);
    const char *hint = "";
    if (err == EACCES || err == EPERM)
        hint = " (the acting user may not connect to it: name another `user` or change its mode)";
    else if (err == ECONNREFUSED || err == ENOENT)
        hint = " (nothing listens there: start the server in the box first)";
    else if (err == ETIMEDOUT)
        hint = " (no answer within 10 s)";
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ERROR, &t->req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(CODE), box_err_str(BOX_ERR_CONNECT_FAILED));
    char text[512];
    snprintf(text, sizeof text, "connecting to %s: %s%s", what,
             t->resolve_failed ? "not an address, nor a name in the box's /etc/hosts"
                               : strerror(err), hint);
    msg_kv_str(&o, BOX_KEY(MESSAGE), text);
    msg_kv_i64(&o, BOX_KEY(ERRNO), err);
    msg_kv_str(&o, BOX_KEY(ERRNO_NAME), errno_name(err));
    ev_close(&o);
    conn_send(t->tc->c, &o);
}

static void connect_done(struct fsjob *j)
{
    struct tunnel *t = container_of(j, struct tunnel, job);
    t->job_busy = false;
    int err = j->cred_err ? -j->cred_err : t->conn_err;
    if (t->state == T_DEAD) {
        /* Closed while connecting (its connection went, or shutdown): nobody to answer. */
        if (t->fd >= 0)
            close(t->fd);
        tunnel_free(t);
        return;
    }
    if (err != 0 || t->fd < 0) {
        send_connect_failed(t, err ? err : EIO);
        tunnel_end(t, NULL, 0);
        return;
    }
    int e = uv_poll_init_socket(t->a->loop, &t->poll, t->fd);
    if (e < 0) {
        close(t->fd);
        send_connect_failed(t, -e);
        tunnel_end(t, NULL, 0);
        return;
    }
    t->poll.data = t;
    t->state = T_OPEN;
    t->id = ++t->tc->next_id;
    struct msg_out o;
    if (ev_begin(&o, BOX_T_TUNNEL_OPENED, &t->req) == 0) {
        msg_kv_u64(&o, BOX_KEY(TUNNEL), t->id);
        msg_kv_u64(&o, BOX_KEY(WINDOW), TUNNEL_WINDOW);
        ev_close(&o);
        conn_send(t->tc->c, &o);
    }
    log_debug("conn %llu: tunnel %llu open to %s%s%s", (unsigned long long)t->tc->c->no,
              (unsigned long long)t->id, t->path[0] ? t->path : t->host, t->path[0] ? "" : ":",
              t->path[0] ? "" : t->port);
    poll_update(t);
}

/* ---- Requests ----------------------------------------------------------------------------- */

int tunnel_open(struct conn *c, const struct reqtag *req, const struct dec_tunnel_open *d,
                const struct fscred *cred)
{
    struct agent *a = c->a;
    struct fsworker *w = files_worker(a);
    if (w == NULL)
        return -ENOSYS;
    if (a->n_tunnels >= TUNNEL_MAX)
        return -ENOSPC;
    struct tun_conn *tc = tc_get(c);
    if (tc == NULL)
        return -ENOMEM;
    struct tunnel *t = boxd_calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    t->a = a;
    t->tc = tc;
    t->fd = -1;
    t->req = *req;
    if (d->path) {
        memcpy(t->path, d->path, d->path_len);
    } else {
        memcpy(t->host, d->host, d->host_len);
        snprintf(t->port, sizeof t->port, "%u", (unsigned)d->port);
    }
    list_add_tail(&tc->tunnels, &t->conn_link);
    list_add_tail(&a->tunnels, &t->agent_link);
    a->n_tunnels++;
    t->state = T_CONNECTING;
    t->job_busy = true;
    t->job.cred = *cred;
    t->job.work = connect_work;
    t->job.done = connect_done;
    fsworker_submit(w, &t->job);
    return 0;
}

/* c's open tunnel id; NULL with *known set when it was c's and has closed. */
static struct tunnel *find(struct conn *c, uint64_t id, bool *known)
{
    struct tun_conn *tc = conn_hook_arg(c, CONN_SLOT_TUNNELS);
    *known = false;
    if (tc == NULL || id == 0)
        return NULL;
    struct list *pos;
    for (pos = tc->tunnels.next; pos != &tc->tunnels; pos = pos->next) {
        struct tunnel *t = container_of(pos, struct tunnel, conn_link);
        if (t->state == T_OPEN && t->id == id)
            return t;
    }
    *known = id <= tc->next_id;
    return NULL;
}

/* Keeps n bytes at the end of t->out (the caller checked the window). */
static int keep(struct tunnel *t, const char *p, size_t n)
{
    if (t->out_off + t->out_len + n > t->out_cap && t->out_off > 0) {
        memmove(t->out, t->out + t->out_off, t->out_len);
        t->out_off = 0;
    }
    if (t->out_len + n > t->out_cap) {
        size_t cap = t->out_cap ? t->out_cap : TUNNEL_CHUNK;
        while (cap < t->out_len + n)
            cap *= 2;
        if (cap > TUNNEL_WINDOW)
            cap = TUNNEL_WINDOW;
        char *b = boxd_realloc(t->out, cap);
        if (b == NULL)
            return -ENOMEM;
        t->out = b;
        t->out_cap = cap;
    }
    memcpy(t->out + t->out_off + t->out_len, p, n);
    t->out_len += n;
    return 0;
}

enum tunnel_res tunnel_data(struct conn *c, uint64_t id, const char *p, size_t n)
{
    bool known;
    struct tunnel *t = find(c, id, &known);
    if (t == NULL)
        return known ? TUNNEL_OK : TUNNEL_UNKNOWN;
    if (t->shut_wanted)
        return TUNNEL_SHUT;
    if (t->out_len + n > TUNNEL_WINDOW) {
        tunnel_end(t, "limit", 0);
        return TUNNEL_OVER;
    }
    if (n == 0)
        return TUNNEL_OK;
    if (t->out_len == 0) {
        /* Straight to the socket when nothing waits before it: most data is never copied. */
        ssize_t w = write_some(t, p, n);
        if (w < 0)
            return TUNNEL_OK; /* closed by the error: its tunnel_closed says why */
        if (w > 0)
            send_ack(t, (uint64_t)w);
        p += w;
        n -= (size_t)w;
    }
    if (n > 0 && keep(t, p, n) < 0) {
        tunnel_end(t, "error", ENOMEM);
        return TUNNEL_OK;
    }
    poll_update(t);
    return TUNNEL_OK;
}

enum tunnel_res tunnel_ack(struct conn *c, uint64_t id, uint64_t bytes)
{
    bool known;
    struct tunnel *t = find(c, id, &known);
    if (t == NULL)
        return known ? TUNNEL_OK : TUNNEL_UNKNOWN;
    if (bytes > t->unacked)
        return TUNNEL_BAD_ACK;
    bool was_full = t->unacked >= TUNNEL_WINDOW;
    t->unacked -= bytes;
    /* A stream that waited for credit reads at once: a fast stream's next read then costs no
     * trip through the poll (when the socket is empty, the read says so and the poll waits). */
    if (was_full)
        pump_in(t);
    poll_update(t);
    return TUNNEL_OK;
}

enum tunnel_res tunnel_close(struct conn *c, uint64_t id, bool write_only)
{
    bool known;
    struct tunnel *t = find(c, id, &known);
    if (t == NULL)
        return known ? TUNNEL_OK : TUNNEL_UNKNOWN;
    if (!write_only) {
        tunnel_end(t, "closed", 0);
        return TUNNEL_OK;
    }
    t->shut_wanted = true;
    shut_if_wanted(t);
    return TUNNEL_OK;
}

void tunnel_close_all(struct agent *a)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &a->tunnels)
    {
        struct tunnel *t = container_of(pos, struct tunnel, agent_link);
        if (t->state == T_CONNECTING && t->tc != NULL) {
            /* Its tunnel_open is answered: it will not open. */
            struct msg_out o;
            if (ev_error(&o, &t->req, BOX_ERR_SHUTTING_DOWN, NULL,
                         "the agent is shutting down") == 0)
                conn_send(t->tc->c, &o);
            else
                msg_out_destroy(&o);
        }
        tunnel_end(t, "closed", 0);
    }
}

void tunnel_put_limits(struct msg_out *o)
{
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_TUNNELS), TUNNEL_MAX);
    msg_kv_u64(o, box_limit_str(BOX_LIM_TUNNEL_WINDOW), TUNNEL_WINDOW);
}

/* The connection's callback: its room came back, it is closing, it is being freed. */
static void on_conn_event(struct conn *c, enum conn_event ev, void *arg)
{
    (void)c;
    struct tun_conn *tc = arg;
    struct list *pos, *tmp;
    switch (ev) {
    case CONN_WRITABLE:
        list_for_each_safe(pos, tmp, &tc->tunnels)
        {
            struct tunnel *t = container_of(pos, struct tunnel, conn_link);
            poll_update(t);
        }
        break;
    case CONN_CLOSING:
        /* A dropped connection closes its tunnels; one still connecting is freed when its
         * job comes back. */
        list_for_each_safe(pos, tmp, &tc->tunnels)
            tunnel_end(container_of(pos, struct tunnel, conn_link), NULL, 0);
        break;
    case CONN_FREED:
        list_for_each_safe(pos, tmp, &tc->tunnels)
            tunnel_end(container_of(pos, struct tunnel, conn_link), NULL, 0);
        free(tc);
        break;
    }
}
