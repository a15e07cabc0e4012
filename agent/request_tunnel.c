/* The tunnel requests (PROTOCOL.md 13): decoded here (decode.c), the policy on `user` applied as
 * for exec (4.1), and handed to tunnel.c, which owns the sockets. */
#include "request.h"

#include <errno.h>
#include <string.h>

#include "auth.h"
#include "conn.h"
#include "events.h"
#include "request_priv.h"
#include "tunnel.h"

/* Who a tunnel_open acts as: the runs' user, or `user` under exec's policy. Returns 0, or -1
 * when answered. */
static int tunnel_cred(struct ctx *x, struct fscred *cred)
{
    struct agent *a = x->a;
    const char *u;
    size_t ul;
    struct decode_err err;
    if (decode_user(x->m, sizeof a->ident.user, &u, &ul, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return -1;
    }
    if (u == NULL || (strlen(a->ident.user) == ul && memcmp(a->ident.user, u, ul) == 0)) {
        fscred_from_identity(cred, &a->ident);
        return 0;
    }
    if (!auth_request_user_allowed(&a->auth, u, ul)) {
        request__error(x, BOX_ERR_DENIED, NULL,
                       "tunnels connect as %s; this agent does not let a request name %.*s "
                       "(--allow-request-user)", a->ident.user, (int)ul, u);
        return -1;
    }
    char name[sizeof a->ident.user];
    memcpy(name, u, ul);
    name[ul] = '\0';
    struct identity id;
    int le = identity_lookup(name, &id);
    if (le < 0) {
        request__error(x, le == -ENOENT ? BOX_ERR_NOT_FOUND : BOX_ERR_INTERNAL, NULL,
                       "user %s: %s", name, le == -ENOENT ? "no such user" : strerror(-le));
        return -1;
    }
    fscred_from_identity(cred, &id);
    return 0;
}

void request__tunnel_open(struct ctx *x)
{
    struct dec_tunnel_open d;
    struct decode_err err;
    struct fscred cred;
    if (decode_tunnel_open(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    if (tunnel_cred(x, &cred) < 0)
        return;
    if (x->a->shutting_down) {
        request__error(x, BOX_ERR_SHUTTING_DOWN, NULL, "the agent is shutting down");
        return;
    }
    int e = tunnel_open(x->c, &x->req, &d, &cred);
    if (e == -ENOSPC)
        request__limit_error(x, NULL, BOX_LIM_MAX_TUNNELS,
                             "%u tunnels are open: close some first (max_tunnels)", TUNNEL_MAX);
    else if (e == -ENOSYS)
        request__error(x, BOX_ERR_INTERNAL, NULL, "tunnels are not available (no I/O thread)");
    else if (e < 0)
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
}

/* The answer to what tunnel.c made of a request on tunnel id. */
static void answer(struct ctx *x, enum tunnel_res r, uint64_t id)
{
    switch (r) {
    case TUNNEL_OK:
        break;
    case TUNNEL_UNKNOWN:
        request__error(x, BOX_ERR_NOT_FOUND, NULL, "this connection has no tunnel %llu",
                       (unsigned long long)id);
        break;
    case TUNNEL_OVER:
        request__limit_error(x, NULL, BOX_LIM_TUNNEL_WINDOW,
                             "tunnel %llu: more than %u bytes not acknowledged (tunnel_window); "
                             "the tunnel is closed", (unsigned long long)id, TUNNEL_WINDOW);
        break;
    case TUNNEL_SHUT:
        request__error(x, BOX_ERR_BAD_REQUEST, NULL,
                       "tunnel %llu was closed for writing (tunnel_close how \"write\")",
                       (unsigned long long)id);
        break;
    case TUNNEL_BAD_ACK:
        request__error(x, BOX_ERR_BAD_REQUEST, NULL,
                       "tunnel %llu: bytes acknowledges more than was sent",
                       (unsigned long long)id);
        break;
    }
}

void request__tunnel_data(struct ctx *x)
{
    struct dec_tunnel_data d;
    struct decode_err err;
    if (decode_tunnel_data(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    answer(x, tunnel_data(x->c, d.tunnel, d.data, d.len), d.tunnel);
}

void request__tunnel_ack(struct ctx *x)
{
    uint64_t id, bytes;
    struct decode_err err;
    if (decode_tunnel_ack(x->m, &id, &bytes, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    answer(x, tunnel_ack(x->c, id, bytes), id);
}

void request__tunnel_close(struct ctx *x)
{
    uint64_t id;
    bool write_only;
    struct decode_err err;
    if (decode_tunnel_close(x->m, &id, &write_only, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    answer(x, tunnel_close(x->c, id, write_only), id);
}
