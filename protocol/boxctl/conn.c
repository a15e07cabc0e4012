/* boxctl: reaching the agent (endpoint, token, hello) and saying what went wrong. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "schema.h"
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *io_error(int r)
{
    switch (r) {
    case -ECONNRESET:
    case -EPIPE:
        return "the agent closed the connection";
    case -EMSGSIZE:
        return "message over the agent's size limit";
    case -EBADMSG:
        return "malformed message from the agent";
    case -ETIMEDOUT:
        return "no answer from the agent in time";
    case -EPROTO:
        return "the agent does not speak protocol version 1";
    case -ENOTCONN:
        return "connection to the agent lost";
    default:
        return strerror(-r);
    }
}

void print_agent_error(const struct box_msg *m)
{
    const char *code = "", *text = "";
    size_t clen = 0, tlen = 0;
    if (box_msg_error(m, &code, &clen, &text, &tlen) != 0) {
        errmsg("unexpected reply from the agent");
        return;
    }
    char c[64], t[512];
    bytes_cstr((struct bytes){code, clen}, c, sizeof c);
    bytes_cstr((struct bytes){text, tlen}, t, sizeof t);
    sanitize(c, strlen(c));
    sanitize(t, strlen(t));

    /* A spawn failure also says which errno and at which stage. */
    char extra[96] = "";
    struct bytes en = {NULL, 0}, st = {NULL, 0};
    get_bytes(&m->root, BOX_KEY(ERRNO_NAME), &en);
    get_bytes(&m->root, BOX_KEY(STAGE), &st);
    if (en.p != NULL || st.p != NULL) {
        char e[32], s[32];
        bytes_cstr(en, e, sizeof e);
        bytes_cstr(st, s, sizeof s);
        sanitize(e, strlen(e));
        sanitize(s, strlen(s));
        snprintf(extra, sizeof extra, " (%s%s%s%s)", e, en.p && st.p ? " " : "",
                 st.p ? "at stage " : "", s);
    }
    /* What to do next, where the agent's own message may not say it. */
    static const struct {
        enum box_err code;
        const char *hint;
    } hints[] = {
        {BOX_ERR_NOT_FOUND, "; 'boxctl list' shows the runs the agent knows (a run another "
                            "boxctl is still starting: --wait-start MS)"},
        {BOX_ERR_DENIED, "; the agent's policy decides this (boxd --allow-request-user, "
                         "--allow-seccomp-none)"},
        {BOX_ERR_SHUTTING_DOWN, "; the agent is stopping: wait for the box to come back"},
        {BOX_ERR_RUN_ENDED, "; 'boxctl wait ID' shows how it ended"},
    };
    const char *hint = "";
    for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++)
        if (strcmp(c, box_err_str(hints[i].code)) == 0)
            hint = hints[i].hint;
    if (t[0] != '\0')
        errmsg("%s: %s%s%s", c[0] ? c : "error", t, extra, hint);
    else
        errmsg("%s%s%s", c[0] ? c : "error", extra, hint);
}

/* Reports a failed request: the agent's error line, or the I/O error. Returns EXIT_FAIL. */
int request_failed(struct ctl *x, int r)
{
    if (r == -EREMOTEIO)
        print_agent_error(&x->m);
    else
        errmsg("%s: %s", x->sock, io_error(r));
    return EXIT_FAIL;
}

/* The token: --token-file or $BOXD_TOKEN_FILE, trailing newlines dropped as boxd does. */
static int read_token(struct ctl *x, char *tok, size_t *len)
{
    char buf[TOKEN_FILE_MAX];
    ssize_t got = box_read_small(AT_FDCWD, x->token_file, buf, sizeof buf);
    int r = got < 0 ? (int)got : (size_t)got >= sizeof buf - 1 ? -EFBIG : 0;
    size_t n = got < 0 ? 0 : (size_t)got;
    if (r < 0) {
        if (r == -EFBIG)
            errmsg("token file %s: over %u bytes; it should hold only the token", x->token_file,
                   TOKEN_FILE_MAX);
        else
            errmsg("token file %s: %s; give the file boxd was started with (--token-file FILE "
                   "or $BOXD_TOKEN_FILE)",
                   x->token_file, strerror(-r));
        return EXIT_FAIL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n == 0 || n > TOKEN_MAX) {
        errmsg("token file %s: %s (a token is 1-%u bytes)", x->token_file,
               n == 0 ? "empty" : "too long", TOKEN_MAX);
        explicit_bzero(buf, sizeof buf);
        return EXIT_FAIL;
    }
    memcpy(tok, buf, n);
    *len = n;
    explicit_bzero(buf, sizeof buf);
    return 0;
}

/* A connect that failed: what it means for this kind of endpoint, and what to do. */
static void connect_failed(struct ctl *x, int r, const char *detail)
{
    const struct box_endpoint *ep = &x->ep;
    const char *how = "choose the agent with -s ENDPOINT or $BOXD_SOCKET ('boxctl --help' lists "
                      "the forms)";
    switch (ep->kind) {
    case BOX_EP_VSOCK:
        if (r == -ENODEV || r == -EAFNOSUPPORT || r == -ENETUNREACH || r == -EADDRNOTAVAIL)
            errmsg("cannot connect to %s: %s: this host has no vsock transport to that CID "
                   "(load vhost_vsock for QEMU guests; Firecracker and Cloud Hypervisor use "
                   "-s fc:UDS:PORT instead)",
                   x->sock, strerror(-r));
        else if (r == -ECONNRESET || r == -ECONNREFUSED)
            errmsg("cannot connect to %s: %s: nothing listens on port %u of guest %u; is boxd "
                   "started with --listen vsock:%u, and is the CID right?",
                   x->sock, strerror(-r), (unsigned)ep->port, (unsigned)ep->cid,
                   (unsigned)ep->port);
        else
            errmsg("cannot connect to %s: %s; %s", x->sock, strerror(-r), how);
        return;
    case BOX_EP_FC:
        if (r == -EPROTO)
            errmsg("%s: the hypervisor answered 'CONNECT %u' with '%s' instead of 'OK ...': is "
                   "%s the VM's vsock socket (uds_path)?",
                   x->sock, (unsigned)ep->port, detail, ep->path);
        else if (r == -ECONNRESET)
            errmsg("%s: the hypervisor closed the connection after 'CONNECT %u': nothing listens "
                   "on guest port %u (start boxd with --listen vsock:%u)",
                   x->sock, (unsigned)ep->port, (unsigned)ep->port, (unsigned)ep->port);
        else if (r == -ETIMEDOUT)
            errmsg("%s: no answer to 'CONNECT %u' from the hypervisor within %d ms", x->sock,
                   (unsigned)ep->port, HELLO_TIMEOUT_MS);
        else
            errmsg("cannot connect to %s: %s: %s is not the hypervisor's vsock socket, or the VM "
                   "is not running; %s",
                   x->sock, strerror(-r), ep->path, how);
        return;
    default:
        break;
    }
    if (r == -ENOENT || r == -ECONNREFUSED)
        errmsg("cannot connect to %s: %s: is boxd running? Start a local box with "
               "scripts/local-box.sh (or boxd --listen unix:PATH), or %s",
               x->sock, strerror(-r), how);
    else if (r == -EACCES || r == -EPERM)
        errmsg("cannot connect to %s: %s: boxd's socket is for root and boxd's own user; run "
               "boxctl as one of them (sudo), or start boxd with --allow-uid UID "
               "(and --socket-mode/--socket-group)",
               x->sock, strerror(-r));
    else if (r == -ENAMETOOLONG)
        errmsg("cannot connect to %s: the path is longer than a unix socket allows (107 bytes)",
               x->sock);
    else
        errmsg("cannot connect to %s: %s; %s", x->sock, strerror(-r), how);
}

/* A virtio-serial port has no connection boundaries: a `hello` can be answered by the session
 * of the client before us, which then ends, and our first request meets `need_hello`
 * (PROTOCOL.md section 1). So confirm the session with a ping. The client library already says
 * hello again and resends once when a request meets need_hello (box_client_recv), for this ping
 * and every later request; here the ping is tried again, after another hello, while sessions
 * keep starting over, at most SERIAL_HELLO_TRIES times. */
#define SERIAL_HELLO_TRIES 5
static int serial_confirm(struct ctl *x, int token_ok)
{
    if (token_ok != 0)
        return token_ok;
    char tok[TOKEN_MAX];
    size_t toklen = 0;
    for (int i = 0; i < SERIAL_HELLO_TRIES; i++) {
        int r = simple_request(x, box_type_str(BOX_T_PING));
        if (r == 0)
            return 0;
        if (r != -EREMOTEIO || !error_is(&x->m, BOX_ERR_NEED_HELLO))
            return request_failed(x, r);
        if (x->token_file != NULL && read_token(x, tok, &toklen) != 0)
            return EXIT_FAIL;
        r = box_client_hello_token(&x->c, CLIENT_NAME, x->token_file != NULL ? tok : NULL,
                                   toklen, HELLO_TIMEOUT_MS, &x->m);
        explicit_bzero(tok, sizeof tok);
        if (r < 0)
            return request_failed(x, r);
    }
    errmsg("%s: the virtio-serial session kept asking for hello (%d tries); is another client "
           "connecting to the port at the same time?",
           x->sock, SERIAL_HELLO_TRIES);
    return EXIT_FAIL;
}

/* Whether the hello reply in m lists capability name. */
static bool has_capability(const struct box_msg *m, const char *name)
{
    const msgpack_object *caps = msg_get(&m->root, BOX_KEY(CAPABILITIES));
    if (caps == NULL || caps->type != MSGPACK_OBJECT_ARRAY)
        return false;
    size_t n = strlen(name);
    for (uint32_t i = 0; i < caps->via.array.size; i++) {
        const msgpack_object *c = &caps->via.array.ptr[i];
        if (c->type == MSGPACK_OBJECT_STR && c->via.str.size == n &&
            memcmp(c->via.str.ptr, name, n) == 0)
            return true;
    }
    return false;
}

int ctl_connect(struct ctl *x)
{
    int r = box_msg_init(&x->m);
    if (r < 0) {
        errmsg("%s", strerror(-r));
        return EXIT_FAIL;
    }
    x->msg_ready = true;
    char tok[TOKEN_MAX];
    size_t toklen = 0;
    if (x->token_file != NULL && (r = read_token(x, tok, &toklen)) != 0)
        return r;
    char detail[BOX_FC_REPLY_MAX + 1];
    r = box_client_open(&x->c, &x->ep, HELLO_TIMEOUT_MS, detail, sizeof detail);
    if (r < 0) {
        explicit_bzero(tok, sizeof tok);
        connect_failed(x, r, detail);
        return EXIT_FAIL;
    }
    x->connected = true;
    r = box_client_hello_token(&x->c, CLIENT_NAME, x->token_file != NULL ? tok : NULL, toklen,
                               HELLO_TIMEOUT_MS, &x->m);
    explicit_bzero(tok, sizeof tok);
    if (r < 0) {
        if (r == -EPROTO)
            errmsg("%s: the agent does not speak protocol version %d", x->sock,
                   BOX_PROTOCOL_VERSION);
        else if (r == -EREMOTEIO && error_is(&x->m, BOX_ERR_UNAUTHORIZED))
            errmsg("%s: the agent refused %s: %s", x->sock,
                   x->token_file != NULL ? "the token" : "a hello without a token",
                   x->token_file != NULL
                       ? "the token file does not hold the token boxd was given (--token-file)"
                       : "this boxd wants one: give it with --token-file FILE or $BOXD_TOKEN_FILE");
        else if (r == -ECONNRESET && x->token_file == NULL)
            errmsg("%s: the agent closed the connection during hello (if it wants a token, "
                   "give it with --token-file FILE or $BOXD_TOKEN_FILE)",
                   x->sock);
        else if (r == -ETIMEDOUT && x->ep.kind == BOX_EP_SERIAL)
            errmsg("%s: no hello reply within %d ms: is the VM up and boxd listening on the "
                   "virtio-serial port (--listen virtio-port:NAME)?",
                   x->sock, HELLO_TIMEOUT_MS);
        else
            request_failed(x, r);
        return EXIT_FAIL;
    }
    x->cap_tty = has_capability(&x->m, CAP_TTY);
    if (x->ep.kind == BOX_EP_SERIAL)
        return serial_confirm(x, 0);
    return 0;
}

bool error_is(const struct box_msg *m, enum box_err code)
{
    const char *c = "";
    size_t n = 0;
    if (box_msg_error(m, &c, &n, NULL, NULL) != 0)
        return false;
    return box_err_is(c, n, code);
}

void ctl_close(struct ctl *x)
{
    if (x->connected)
        box_client_close(&x->c);
    x->connected = false;
    if (x->msg_ready)
        box_msg_destroy(&x->m);
    x->msg_ready = false;
}

/* Starts a request that names a run: type, req, id and nfields more. */
int req_with_id(struct ctl *x, struct msg_out *o, const char *type, const char *id,
                       uint32_t nfields, uint64_t *req)
{
    int r = box_req_begin(&x->c, o, type, nfields + 1, req);
    if (r < 0)
        return r;
    msg_kv_str(o, BOX_REQ_KEY(ID), id);
    return 0;
}

int simple_request(struct ctl *x, const char *type)
{
    struct msg_out o;
    uint64_t req;
    int r = box_req_begin(&x->c, &o, type, 0, &req);
    if (r < 0)
        return r;
    return box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
}

