/* Tunnels (PROTOCOL.md 13): byte streams between a client and a TCP address or a unix socket
 * inside the box, many on one connection, each with its own credit in each direction so that a
 * stalled stream stalls no other stream and no run output.
 *
 * The connect is made by a file I/O thread (fsworker.h) holding the acting user's fsuid, fsgid
 * and groups, so a unix socket the user may not write to is refused as it would be to the user,
 * and the socket is the user's (its owner is the user's uid for the kernel's owner checks). The
 * loop never blocks: once connected the socket is non-blocking and watched with a uv_poll.
 *
 * Memory: per tunnel at most TUNNEL_WINDOW bytes from the client waiting to be written to the box
 * socket (a client that sends more is refused with `limit` and the tunnel closes), and nothing
 * kept the other way: the box socket is read only while the client's credit (TUNNEL_WINDOW minus
 * the bytes it has not acknowledged) and the connection's queue (conn_room) allow, straight into
 * a `tunnel_data` event.
 *
 * Ownership: a tunnel belongs to its connection (closed when the connection starts closing) and
 * is on the agent's list (a->tunnels) until freed; it is freed in its poll handle's close
 * callback, or when its connect job comes back after it was closed. */
#ifndef BOXD_TUNNEL_H
#define BOXD_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decode.h"
#include "fsworker.h"

struct agent;
struct conn;
struct msg_out;
struct reqtag;

/* Named limits, reported in hello.limits. */
#define TUNNEL_WINDOW (256u * 1024u) /* unacknowledged bytes a sender may have, each way */
#define TUNNEL_MAX 64u               /* tunnels open or connecting at once, per agent */
/* The most data bytes one tunnel_data event carries (and at most max_event minus its fields):
 * a quarter of the window, so that four events of a fast stream are in flight while the client
 * delivers and acks the first (one event per window measured slower, tests/bench). */
#define TUNNEL_CHUNK (64u * 1024u)
/* The addresses of one /etc/hosts name tried in turn at most. */
#define TUNNEL_HOST_ADDRS 8
/* How long a connect may take before it fails with ETIMEDOUT (it holds an I/O thread). */
#define TUNNEL_CONNECT_MS 10000u

/* tunnel_open: starts connecting as cred; the reply (tunnel_opened, or an error
 * connect_failed) is sent when the I/O thread is done. Returns 0, -ENOSPC (max_tunnels),
 * -ENOMEM, or -ENOSYS (no I/O thread). Nothing has been sent when it fails. */
int tunnel_open(struct conn *c, const struct reqtag *req, const struct dec_tunnel_open *d,
                const struct fscred *cred);

/* What the requests on an open tunnel come to. */
enum tunnel_res {
    TUNNEL_OK,        /* done (or ignored: the tunnel has closed, its tunnel_closed is sent) */
    TUNNEL_UNKNOWN,   /* this connection never opened that tunnel */
    TUNNEL_OVER,      /* tunnel_data over the window: the tunnel is closed (reason "limit") */
    TUNNEL_SHUT,      /* tunnel_data after tunnel_close how "write" */
    TUNNEL_BAD_ACK,   /* tunnel_ack of more bytes than were sent and not acknowledged */
};
/* tunnel_data: the bytes are written to the box socket (or kept until it takes them). */
enum tunnel_res tunnel_data(struct conn *c, uint64_t id, const char *p, size_t n);
/* tunnel_ack: the client has delivered bytes more; the box socket is read again. */
enum tunnel_res tunnel_ack(struct conn *c, uint64_t id, uint64_t bytes);
/* tunnel_close: "write" shuts the box socket's writing down after what is kept; "both" closes. */
enum tunnel_res tunnel_close(struct conn *c, uint64_t id, bool write_only);

/* Shutdown: closes every tunnel (each gets its tunnel_closed). */
void tunnel_close_all(struct agent *a);

/* The tunnels' limits, into an open `limits` map. */
void tunnel_put_limits(struct msg_out *o);

#endif
