/* Blocking boxd client. See client.h for the contract of every function. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "client.h"
#include "schema.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <inttypes.h>

/* ---- Messages ------------------------------------------------------------------------------ */

int box_msg_init(struct box_msg *m)
{
    memset(m, 0, sizeof *m);
    if (!msgpack_zone_init(&m->zone, 4096))
        return -ENOMEM;
    return 0;
}

void box_msg_destroy(struct box_msg *m)
{
    free(m->body);
    m->body = NULL;
    m->cap = m->len = 0;
    m->type = NULL;
    m->type_len = 0;
    msgpack_zone_destroy(&m->zone);
}

bool box_msg_is(const struct box_msg *m, const char *type)
{
    size_t n = strlen(type);
    return m->type != NULL && m->type_len == n && memcmp(m->type, type, n) == 0;
}

int box_msg_error(const struct box_msg *m, const char **code, size_t *code_len,
                  const char **message, size_t *message_len)
{
    if (!box_msg_is(m, box_type_str(BOX_T_ERROR)))
        return -EINVAL;
    if (code != NULL && msg_get_str(&m->root, BOX_KEY(CODE), code, code_len) != 0) {
        *code = "";
        *code_len = 0;
    }
    if (message != NULL && msg_get_str(&m->root, BOX_KEY(MESSAGE), message, message_len) != 0) {
        *message = "";
        *message_len = 0;
    }
    return 0;
}

/* ---- Connection ---------------------------------------------------------------------------- */

static int64_t now_ms(void);
static int remaining(int64_t deadline);
static int wait_fd(int fd, short events, int64_t deadline);
static int send_all(struct box_client *c, const uint8_t *buf, size_t len);

void box_client_init_fd(struct box_client *c, int fd)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->max_in = BOX_CLIENT_DEFAULT_MAX_IN;
    c->max_out = BOX_CLIENT_DEFAULT_MAX_OUT;
    c->next_req = 1;
}

int box_client_connect(struct box_client *c, const char *path)
{
    struct sockaddr_un sa;
    size_t n = strlen(path);

    if (n == 0)
        return -ENOENT;
    if (n >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, n + 1);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* A unix stream connect only sleeps while the listener's backlog is full. If a signal
     * interrupts that sleep the socket is still unconnected (the kernel gives up before changing
     * its state), so trying again is correct - unlike TCP, where the connect would go on in the
     * background and a second call gets EALREADY. */
    int r;
    do
        r = connect(fd, (const struct sockaddr *)&sa, sizeof sa);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    box_client_init_fd(c, fd);
    return 0;
}

/* ---- Endpoints ----------------------------------------------------------------------------- */

/* A decimal uint32 spanning [s, end). */
static bool parse_u32(const char *s, const char *end, uint32_t *v)
{
    if (s == end || end - s > 10)
        return false;
    uint64_t x = 0;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        x = x * 10 + (uint64_t)(*p - '0');
    }
    if (x > UINT32_MAX)
        return false;
    *v = (uint32_t)x;
    return true;
}

static int set_path(struct box_endpoint *ep, const char *s, size_t n, const char **why)
{
    if (n == 0) {
        *why = "the socket path is empty";
        return -EINVAL;
    }
    if (n > BOX_ENDPOINT_PATH_MAX) {
        *why = "the socket path is longer than a unix socket address allows (107 bytes)";
        return -EINVAL;
    }
    memcpy(ep->path, s, n);
    ep->path[n] = '\0';
    return 0;
}

int box_endpoint_parse(const char *s, struct box_endpoint *ep, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    memset(ep, 0, sizeof *ep);
    if (strncmp(s, "unix:", 5) == 0) {
        ep->kind = BOX_EP_UNIX;
        return set_path(ep, s + 5, strlen(s + 5), why);
    }
    if (strncmp(s, "serial:", 7) == 0) {
        ep->kind = BOX_EP_SERIAL;
        return set_path(ep, s + 7, strlen(s + 7), why);
    }
    if (strncmp(s, "vsock:", 6) == 0) {
        ep->kind = BOX_EP_VSOCK;
        const char *cid = s + 6, *colon = strchr(cid, ':');
        if (colon == NULL || !parse_u32(cid, colon, &ep->cid) ||
            !parse_u32(colon + 1, colon + 1 + strlen(colon + 1), &ep->port)) {
            *why = "vsock needs vsock:CID:PORT with two decimal numbers, e.g. vsock:3:5000";
            return -EINVAL;
        }
        if (ep->cid < 2 && ep->cid != 1) {
            *why = "vsock CID 0 is not an address; the guest's CID is 3 or more (2 is the host)";
            return -EINVAL;
        }
        return 0;
    }
    if (strncmp(s, "fc:", 3) == 0) {
        ep->kind = BOX_EP_FC;
        const char *path = s + 3, *colon = strrchr(path, ':');
        if (colon == NULL || !parse_u32(colon + 1, colon + 1 + strlen(colon + 1), &ep->port)) {
            *why = "fc needs fc:UDS:PORT: the hypervisor's vsock unix socket and the guest port, "
                   "e.g. fc:/run/vm/v.sock:5000";
            return -EINVAL;
        }
        return set_path(ep, path, (size_t)(colon - path), why);
    }
    ep->kind = BOX_EP_UNIX;
    return set_path(ep, s, strlen(s), why);
}

void box_endpoint_format(const struct box_endpoint *ep, char *buf, size_t size)
{
    switch (ep->kind) {
    case BOX_EP_VSOCK:
        snprintf(buf, size, "vsock:%" PRIu32 ":%" PRIu32, ep->cid, ep->port);
        break;
    case BOX_EP_FC:
        snprintf(buf, size, "fc:%s:%" PRIu32, ep->path, ep->port);
        break;
    case BOX_EP_SERIAL:
        snprintf(buf, size, "serial:%s", ep->path);
        break;
    default:
        snprintf(buf, size, "%s", ep->path);
        break;
    }
}

/* connect() that survives EINTR. For unix sockets a retry is correct: see box_client_connect.
 * For vsock an interrupted connect goes on in the background, so wait for it instead. */
static int connect_retry(int fd, const struct sockaddr *sa, socklen_t len, int64_t deadline)
{
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINTR && errno != EINPROGRESS)
        return -errno;
    if (sa->sa_family == AF_UNIX) {
        int r;
        do
            r = connect(fd, sa, len);
        while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
    }
    int r = wait_fd(fd, POLLOUT, deadline);
    if (r < 0)
        return r;
    int err = 0;
    socklen_t elen = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        return -errno;
    return err != 0 ? -err : 0;
}

/* Reads the hypervisor's one-line answer to CONNECT, a byte at a time so that nothing of the
 * boxd stream after it is taken. Returns the line's length (without the newline) or -errno. */
static int read_line(int fd, char *line, size_t cap, int64_t deadline)
{
    size_t n = 0;
    for (;;) {
        int r = wait_fd(fd, POLLIN, deadline);
        if (r < 0)
            return r;
        char ch;
        ssize_t got = read(fd, &ch, 1);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (got == 0)
            return n == 0 ? -ECONNRESET : -EPROTO;
        if (ch == '\n')
            return (int)n;
        if (n + 1 >= cap)
            return -EPROTO; /* no hypervisor answers with a line this long */
        line[n++] = ch;
        line[n] = '\0';
    }
}

static void copy_detail(char *detail, size_t size, const char *s)
{
    if (detail == NULL || size == 0)
        return;
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < size; i++)
        detail[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    detail[i] = '\0';
}

int box_client_open(struct box_client *c, const struct box_endpoint *ep, int timeout_ms,
                    char *detail, size_t detail_size)
{
    copy_detail(detail, detail_size, "");
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    int fd, r;
    if (ep->kind == BOX_EP_VSOCK) {
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        struct sockaddr_vm sv;
        memset(&sv, 0, sizeof sv);
        sv.svm_family = AF_VSOCK;
        sv.svm_cid = ep->cid;
        sv.svm_port = ep->port;
        r = connect_retry(fd, (const struct sockaddr *)&sv, sizeof sv, deadline);
    } else {
        struct sockaddr_un sa;
        size_t n = strlen(ep->path);
        if (n == 0)
            return -ENOENT;
        if (n >= sizeof sa.sun_path)
            return -ENAMETOOLONG;
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        memcpy(sa.sun_path, ep->path, n + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        r = connect_retry(fd, (const struct sockaddr *)&sa, sizeof sa, deadline);
    }
    if (r == 0 && ep->kind == BOX_EP_FC) {
        char req[32], line[BOX_FC_REPLY_MAX + 1] = "";
        int len = snprintf(req, sizeof req, "CONNECT %" PRIu32 "\n", ep->port);
        box_client_init_fd(c, fd);
        r = send_all(c, (const uint8_t *)req, (size_t)len);
        if (r == 0) {
            r = read_line(fd, line, sizeof line, deadline);
            if (r >= 0 && strncmp(line, "OK ", 3) != 0 && strcmp(line, "OK") != 0)
                r = -EPROTO;
            if (r == -EPROTO)
                copy_detail(detail, detail_size, line);
            if (r > 0 || (r == 0 && strcmp(line, "OK") == 0))
                r = 0;
        }
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    box_client_init_fd(c, fd);
    c->rehello = ep->kind == BOX_EP_SERIAL;
    return 0;
}

void box_client_close(struct box_client *c)
{
    if (c->fd >= 0)
        close(c->fd); /* the fd is released even when close reports EINTR on Linux */
    c->fd = -1;
    c->broken = true;
    c->filling = NULL;
    free(c->last_frame);
    c->last_frame = NULL;
    c->last_len = c->last_cap = 0;
    explicit_bzero(c->hello_token, sizeof c->hello_token);
    c->hello_token_len = 0;
    c->hello_has_token = false;
}

/* ---- Low-level I/O ------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline for poll(): -1 for none (deadline < 0), at least 0. */
static int remaining(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - now_ms();
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Waits until fd has `events`, or deadline passes. Returns 0, -ETIMEDOUT, or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, remaining(deadline));
        if (n < 0) {
            if (errno == EINTR)
                continue; /* recompute the time left and wait again */
            return -errno;
        }
        if (n == 0)
            return -ETIMEDOUT;
        /* POLLHUP and POLLERR count as ready: the read or write that follows reports them. */
        return 0;
    }
}

/* Not util_write_all (protocol/common): a socket is written with send(MSG_NOSIGNAL), so that an
 * agent gone away is -EPIPE for the caller rather than a SIGPIPE for the whole process, and a
 * partial frame marks the connection broken. */
static int send_all(struct box_client *c, const uint8_t *buf, size_t len)
{
    if (c->broken || c->fd < 0)
        return -ENOTCONN;
    size_t done = 0;
    while (done < len) {
        /* send() with MSG_NOSIGNAL: an agent that went away is an -EPIPE for the caller, not a
         * SIGPIPE that kills the whole process. */
        ssize_t n = send(c->fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            if (e == -EAGAIN || e == -EWOULDBLOCK) {
                /* Only for an adopted non-blocking fd. */
                e = wait_fd(c->fd, POLLOUT, -1);
                if (e == 0)
                    continue;
            }
            /* Part of a frame may be out: the stream cannot be resynchronised. */
            c->broken = true;
            return e;
        }
        done += (size_t)n;
    }
    return 0;
}

int box_client_write(struct box_client *c, const void *buf, size_t len)
{
    return send_all(c, buf, len);
}

/* ---- Requests ------------------------------------------------------------------------------ */

int box_req_begin(struct box_client *c, struct msg_out *o, const char *type, uint32_t nfields,
                  uint64_t *req)
{
    int r = msg_out_init(o, 256);
    if (r < 0)
        return r;
    uint64_t id = c->next_req++;
    c->begun_req = id;
    msg_map(o, nfields + 2);
    msg_kv_str(o, BOX_REQ_KEY(TYPE), type);
    msg_kv_u64(o, BOX_REQ_KEY(REQ), id);
    if (req != NULL)
        *req = id;
    return 0;
}

/* A virtio-serial session keeps a copy of the last request frame it wrote, to send again if
 * the agent answers it need_hello (box_client_recv). Without memory for the copy nothing is
 * kept, and a need_hello is then returned to the caller as without this. */
static void keep_frame(struct box_client *c, const uint8_t *frame, size_t len)
{
    c->last_len = 0;
    if (c->last_cap < len) {
        uint8_t *p = realloc(c->last_frame, len); /* len <= max_out + header, checked */
        if (p == NULL)
            return;
        c->last_frame = p;
        c->last_cap = len;
    }
    memcpy(c->last_frame, frame, len);
    c->last_len = len;
    c->last_req = c->begun_req;
    c->last_resent = false;
}

int box_client_send(struct box_client *c, struct msg_out *o)
{
    int r = msg_out_finish(o);
    if (r < 0)
        goto out;
    if (msg_out_size(o) - BOX_FRAME_HDR > c->max_out) {
        /* The agent would answer too_large and hang up; refuse it here instead. */
        r = -EMSGSIZE;
        goto out;
    }
    if (c->rehello && c->hello_done && !c->in_resume)
        keep_frame(c, (const uint8_t *)o->sb.data, msg_out_size(o));
    r = send_all(c, (const uint8_t *)o->sb.data, msg_out_size(o));
out:
    msg_out_destroy(o);
    return r;
}

/* ---- Reading ------------------------------------------------------------------------------- */

static void frame_reset(struct box_client *c)
{
    c->hdr_have = 0;
    c->body_len = 0;
    c->body_have = 0;
    c->filling = NULL;
}

/* The header is complete: check the length against our limit, then make room in m. */
static int frame_begin(struct box_client *c, struct box_msg *m)
{
    uint32_t len = 0;
    int r = frame_header_decode(c->hdr, BOX_FRAME_HDR, c->max_in, &len);
    if (r == -EMSGSIZE) {
        /* We will not read that many bytes, so we cannot find the next frame either. */
        c->broken = true;
        return r;
    }
    if (r < 0) {
        /* An empty frame: malformed, but the next header follows at once. */
        frame_reset(c);
        return -EBADMSG;
    }
    if (m->cap < len) {
        /* len <= max_in <= BOX_CLIENT_HARD_MAX, checked above before this allocation. Keep the
         * header on failure so that a retry can allocate and carry on reading. */
        uint8_t *p = realloc(m->body, len);
        if (p == NULL)
            return -ENOMEM;
        m->body = p;
        m->cap = len;
    }
    c->body_len = len;
    c->body_have = 0;
    c->filling = m;
    return 0;
}

static int frame_end(struct box_client *c, struct box_msg *m)
{
    size_t len = c->body_len;
    frame_reset(c);

    m->len = len;
    m->type = NULL;
    m->type_len = 0;
    m->has_req = false;
    m->req = 0;
    msgpack_zone_clear(&m->zone);
    int r = msg_parse(m->body, len, &m->zone, &m->root);
    if (r < 0)
        return r;
    const char *t;
    size_t tlen;
    if (msg_get_str(&m->root, BOX_KEY(TYPE), &t, &tlen) != 0)
        return -EBADMSG;
    m->type = t;
    m->type_len = tlen;
    uint64_t req;
    if (msg_get_u64(&m->root, BOX_KEY(REQ), &req) == 0) {
        m->has_req = true;
        m->req = req;
    }
    return 0;
}

static int recv_one(struct box_client *c, struct box_msg *m, int timeout_ms)
{
    if (c->broken || c->fd < 0)
        return -ENOTCONN;
    if (c->filling != NULL && c->filling != m)
        return -EBUSY;
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;

    /* A header kept from an earlier -ENOMEM: try the allocation again. */
    if (c->hdr_have == BOX_FRAME_HDR && c->filling == NULL) {
        int r = frame_begin(c, m);
        if (r < 0)
            return r;
    }
    for (;;) {
        uint8_t *dst;
        size_t want;
        if (c->hdr_have < BOX_FRAME_HDR) {
            dst = c->hdr + c->hdr_have;
            want = BOX_FRAME_HDR - c->hdr_have;
        } else {
            dst = m->body + c->body_have;
            want = c->body_len - c->body_have;
        }
        /* Exactly the bytes of this frame and no more: nothing is buffered past the frame, so
         * poll() on the fd keeps telling the truth about whether another frame is waiting. */
        int r = wait_fd(c->fd, POLLIN, deadline);
        if (r < 0) {
            if (r != -ETIMEDOUT)
                c->broken = true;
            return r;
        }
        ssize_t n = read(c->fd, dst, want);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            c->broken = true;
            return -errno;
        }
        if (n == 0) {
            c->broken = true;
            return -ECONNRESET;
        }
        if (c->hdr_have < BOX_FRAME_HDR) {
            c->hdr_have += (size_t)n;
            if (c->hdr_have == BOX_FRAME_HDR) {
                r = frame_begin(c, m);
                if (r < 0)
                    return r;
            }
        } else {
            c->body_have += (size_t)n;
        }
        if (c->hdr_have == BOX_FRAME_HDR && c->filling == m && c->body_have == c->body_len)
            return frame_end(c, m);
    }
}

static int hello_exchange(struct box_client *c, const char *client_name, const void *token,
                          size_t token_len, int timeout_ms, struct box_msg *reply);

/* m answers the kept frame with need_hello, and the frame may be sent again (box_client_recv). */
static bool wants_resume(const struct box_client *c, const struct box_msg *m)
{
    if (!c->rehello || !c->hello_done || !c->hello_kept || c->in_resume || c->last_len == 0 || c->last_resent)
        return false;
    if (!m->has_req || m->req != c->last_req || !box_msg_is(m, box_type_str(BOX_T_ERROR)))
        return false;
    const char *code = "";
    size_t n = 0;
    box_msg_error(m, &code, &n, NULL, NULL);
    return box_err_is(code, n, BOX_ERR_NEED_HELLO);
}

/* The agent's session on the port started over: hello again, then the kept frame again. The
 * hello gets at least BOX_SERIAL_RESUME_MS even when the caller only polls (timeout 0): a rare
 * wait is better than a session given up. */
static int resume(struct box_client *c, struct box_msg *m, int timeout_ms)
{
    char boot_id[sizeof c->boot_id];
    memcpy(boot_id, c->boot_id, sizeof boot_id);
    c->in_resume = true;
    int r = box_client_hello_token(c, c->hello_has_name ? c->hello_name : NULL,
                                   c->hello_has_token ? c->hello_token : NULL,
                                   c->hello_token_len,
                                   timeout_ms < BOX_SERIAL_RESUME_MS ? BOX_SERIAL_RESUME_MS
                                                                     : timeout_ms,
                                   m);
    c->in_resume = false;
    if (r < 0)
        return r;
    if (boot_id[0] != '\0' && strcmp(boot_id, c->boot_id) != 0)
        return -ECONNRESET; /* another boot: what the frame referred to may be gone */
    c->last_resent = true;
    c->resumes++;
    return send_all(c, c->last_frame, c->last_len);
}

int box_client_recv(struct box_client *c, struct box_msg *m, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = recv_one(c, m, remaining(deadline));
        if (r != 0 || !wants_resume(c, m))
            return r;
        r = resume(c, m, remaining(deadline));
        if (r < 0)
            return r;
    }
}

int box_client_call(struct box_client *c, struct msg_out *o, uint64_t req, struct box_msg *reply,
                    int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    int r = box_client_send(c, o);
    if (r < 0)
        return r;
    for (;;) {
        r = box_client_recv(c, reply, remaining(deadline));
        if (r == -EBADMSG)
            continue; /* a frame we cannot read is not the answer; the stream is still framed */
        if (r < 0)
            return r;
        bool err = box_msg_is(reply, box_type_str(BOX_T_ERROR));
        if ((reply->has_req && reply->req == req) ||
            (err && msg_get(&reply->root, BOX_KEY(REQ)) == NULL))
            return err ? -EREMOTEIO : 0;
    }
}

/* ---- Hello --------------------------------------------------------------------------------- */

static void copy_str(const msgpack_object *map, const char *key, char *dst, size_t size)
{
    const char *s;
    size_t n;
    dst[0] = '\0';
    if (msg_get_str(map, key, &s, &n) != 0)
        return;
    if (n >= size)
        n = size - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static uint32_t clamp_limit(uint64_t v, uint32_t fallback)
{
    if (v == 0)
        return fallback;
    if (v < BOX_CLIENT_MIN_LIMIT)
        return BOX_CLIENT_MIN_LIMIT;
    if (v > BOX_CLIENT_HARD_MAX)
        return BOX_CLIENT_HARD_MAX;
    return (uint32_t)v;
}

/* Sends one hello request; *req gets its req. */
static int send_hello(struct box_client *c, const char *client_name, const void *token,
                      size_t token_len, uint64_t *req)
{
    struct msg_out o;
    int r = box_req_begin(c, &o, box_type_str(BOX_T_HELLO),
                          1 + (client_name != NULL) + (token != NULL), req);
    if (r < 0)
        return r;
    msg_kv_u64(&o, BOX_REQ_KEY(VERSION), BOX_PROTOCOL_VERSION);
    if (client_name != NULL)
        msg_kv_str(&o, BOX_REQ_KEY(CLIENT), client_name);
    if (token != NULL) {
        msg_key(&o, BOX_REQ_KEY(TOKEN));
        msg_data_known(&o, token, token_len, false); /* bin: compared byte for byte */
    }
    return box_client_send(c, &o);
}

/* Sends hello (again every BOX_SERIAL_REHELLO_MS on a virtio-serial session) and reads until a
 * reply to one of them, or an error without req, arrives. */
static int hello_exchange(struct box_client *c, const char *client_name, const void *token,
                          size_t token_len, int timeout_ms, struct box_msg *reply)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    uint64_t first, last;
    int r = send_hello(c, client_name, token, token_len, &first);
    if (r < 0)
        return r;
    last = first;
    int64_t resend = c->rehello ? now_ms() + BOX_SERIAL_REHELLO_MS : -1;
    for (;;) {
        int64_t until = deadline;
        if (resend >= 0 && (until < 0 || resend < until))
            until = resend;
        r = box_client_recv(c, reply, remaining(until));
        if (r == -ETIMEDOUT && resend >= 0 && (deadline < 0 || now_ms() < deadline)) {
            if (c->filling != NULL)
                continue; /* a reply is arriving: let it finish */
            r = send_hello(c, client_name, token, token_len, &last);
            if (r < 0)
                return r;
            resend = now_ms() + BOX_SERIAL_REHELLO_MS;
            continue;
        }
        if (r == -EBADMSG)
            continue;
        if (r < 0)
            return r;
        bool err = box_msg_is(reply, BOX_TYPE(ERROR));
        if ((reply->has_req && reply->req >= first && reply->req <= last) ||
            (err && msg_get(&reply->root, BOX_KEY(REQ)) == NULL))
            return err ? -EREMOTEIO : 0;
    }
}

int box_client_hello(struct box_client *c, const char *client_name, int timeout_ms,
                     struct box_msg *reply)
{
    return box_client_hello_token(c, client_name, NULL, 0, timeout_ms, reply);
}

int box_client_hello_token(struct box_client *c, const char *client_name, const void *token,
                           size_t token_len, int timeout_ms, struct box_msg *reply)
{
    int r = hello_exchange(c, client_name, token, token_len, timeout_ms, reply);
    if (r == -EREMOTEIO) {
        const char *code = "";
        size_t n = 0;
        box_msg_error(reply, &code, &n, NULL, NULL);
        if (box_err_is(code, n, BOX_ERR_BAD_VERSION))
            return -EPROTO;
        return r;
    }
    if (r < 0)
        return r;
    if (!box_msg_is(reply, box_type_str(BOX_T_HELLO)))
        return -EBADMSG;
    uint64_t version;
    if (msg_get_u64(&reply->root, BOX_KEY(VERSION), &version) != 0)
        return -EBADMSG;
    if (version != BOX_PROTOCOL_VERSION)
        return -EPROTO;

    copy_str(&reply->root, BOX_KEY(BOOT_ID), c->boot_id, sizeof c->boot_id);
    copy_str(&reply->root, BOX_KEY(AGENT), c->agent, sizeof c->agent);
    if (msg_get_i64(&reply->root, BOX_KEY(PID), &c->agent_pid) != 0)
        c->agent_pid = 0;
    memset(&c->limits, 0, sizeof c->limits);
    c->cap_file_tree = false;
    const msgpack_object *caps = msg_get(&reply->root, BOX_KEY(CAPABILITIES));
    for (uint32_t i = 0; caps && caps->type == MSGPACK_OBJECT_ARRAY && i < caps->via.array.size;
         i++) {
        const msgpack_object *v = &caps->via.array.ptr[i];
        if (v->type == MSGPACK_OBJECT_STR && v->via.str.size == 9 &&
            memcmp(v->via.str.ptr, "file_tree", 9) == 0)
            c->cap_file_tree = true;
    }
    const msgpack_object *lim = msg_get(&reply->root, BOX_KEY(LIMITS));
    static const struct {
        enum box_limit key;
        size_t off;
    } fields[] = {
        {BOX_LIM_MAX_FRAME, offsetof(struct box_limits, max_frame)},
        {BOX_LIM_MAX_EVENT, offsetof(struct box_limits, max_event)},
        {BOX_LIM_MAX_LINE, offsetof(struct box_limits, max_line)},
        {BOX_LIM_MAX_RUNS, offsetof(struct box_limits, max_runs)},
        {BOX_LIM_MAX_FINISHED, offsetof(struct box_limits, max_finished)},
        {BOX_LIM_MAX_CONNS, offsetof(struct box_limits, max_conns)},
        {BOX_LIM_LOG_BYTES, offsetof(struct box_limits, log_bytes)},
        {BOX_LIM_STDIN_BYTES, offsetof(struct box_limits, stdin_bytes)},
        {BOX_LIM_MAX_SUBS, offsetof(struct box_limits, max_subs)},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        uint64_t v;
        if (msg_get_u64(lim, box_limit_str(fields[i].key), &v) == 0)
            memcpy((char *)&c->limits + fields[i].off, &v, sizeof v);
    }
    c->max_in = clamp_limit(c->limits.max_event, BOX_CLIENT_DEFAULT_MAX_IN);
    c->max_out = clamp_limit(c->limits.max_frame, BOX_CLIENT_DEFAULT_MAX_OUT);
    if (c->rehello && !c->in_resume) {
        /* What a later re-hello sends (box_client_recv); a longer name or token is not kept,
         * and that session is then not resumed. */
        size_t nl = client_name != NULL ? strlen(client_name) : 0;
        bool keep = nl < sizeof c->hello_name && token_len <= sizeof c->hello_token;
        c->hello_has_name = client_name != NULL;
        if (client_name != NULL && keep)
            memcpy(c->hello_name, client_name, nl + 1);
        c->hello_has_token = token != NULL;
        c->hello_token_len = token != NULL && keep ? token_len : 0;
        if (token != NULL && keep)
            memcpy(c->hello_token, token, token_len);
        c->hello_kept = keep;
    }
    c->hello_done = true;
    return 0;
}
