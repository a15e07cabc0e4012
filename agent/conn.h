/* One client connection: frame reassembly, the hello gate, the write queue with its bounds.
 * It knows nothing of requests or runs: each complete frame goes to the handler given to
 * conns_init (request.h), and whoever writes to it as it drains registers a hook in its own slot
 * (conn_hook_set: sub.h for the runs it follows, tunnel.h for its tunnels), called when the
 * queue has room again, when it starts closing and when it is freed (the dqlite
 * gateway_handle_cb pattern).
 *
 * Ownership: the agent lists every conn (a->conns). conn_close() starts closing: the handle is
 * closed, and the conn is freed in the close callback (after CONN_FREED), never from inside a
 * callback that is still using it. Every entry point checks `closing` first. */
#ifndef BOXD_CONN_H
#define BOXD_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "agent.h"
#include "codec.h"
#include "list.h"

struct conn;

/* What a connection's hook is told (conn_hook_set). */
enum conn_event {
    CONN_WRITABLE, /* the queue has room again (conn_room): write more */
    CONN_CLOSING,  /* it is closing: nothing more will be sent; it is freed later */
    CONN_FREED,    /* it is being freed: let go of it (the last event) */
};
typedef void (*conn_hook_cb)(struct conn *c, enum conn_event ev, void *arg);
/* Who may hook a connection: one slot each, called in this order. */
enum conn_slot {
    CONN_SLOT_SUBS,    /* the follower bridge (sub.h) */
    CONN_SLOT_TUNNELS, /* the connection's tunnels (tunnel.h) */
    CONN_SLOTS,
};
/* A complete frame's body (borrowed: freed after the call). */
typedef void (*conn_frame_cb)(struct conn *c, const uint8_t *body, size_t len);

struct conn {
    struct agent *a;
    struct list link;
    uv_pipe_t h;
    uint64_t no; /* connection number, for logs and for finding it again */
    bool closing;
    bool hello;
    bool reading;
    bool close_after_flush;

    uint8_t hdr[BOX_FRAME_HDR];
    uint32_t hdr_have;
    uint8_t *frame; /* body being received, allocated once its length passed the check */
    uint32_t frame_len, frame_have;
    bool discarding; /* skipping the rest of a frame that was refused */
    /* Bytes read but not parsed yet: parsing stops before a frame while the reply queue is
     * over its bound, and the rest of that read waits here (at most one read's worth, since
     * reading stops too) until the queue drains. */
    uint8_t *pend;
    size_t pend_len;

    struct list pre_link; /* on a->prehello until hello passes (or the conn closes) */
    uint64_t accepted_ms; /* uv_now at accept, for the hello deadline */

    uint64_t queued; /* memory held by replies handed to uv_write and not yet written */
    struct {
        conn_hook_cb cb; /* NULL, or who writes to it as it drains */
        void *arg;
    } hooks[CONN_SLOTS];

    char peer[64]; /* who is at the other end, for logs: "uid 0", "cid 2", "virtio box.agent" */
    void (*on_free)(void *arg); /* called when the conn is freed (virtio port: wait again) */
    void *on_free_arg;

    /* A detached conn has no socket: its frames go to sink (the fuzz target drives the real
     * state machine this way, feeding bytes with conn_feed). */
    bool detached;
    void (*sink)(void *arg, const char *frame, size_t len);
    void *sink_arg;
};

/* Accepts one connection from a listening unix stream. Returns 0, or -ENOMEM when the
 * connection could not be taken yet (it stays pending: call again later). */
int conn_accept(struct agent *a, uv_stream_t *server);

/* Makes a connection of an open stream fd (an accepted vsock, a virtio port). Takes the fd
 * (closed on failure). Returns NULL if it was refused (max_conns) or on error. */
struct conn *conn_from_fd(struct agent *a, int fd, const char *peer);

/* Finishes o's frame and queues it; o is consumed (destroyed) whatever happens.
 * Returns 0, -ENOMEM, or -EPIPE if the connection is closing. */
int conn_send(struct conn *c, struct msg_out *o);

/* Sets c's hook in slot (replacing any): cb(c, event, arg) for the events above. */
void conn_hook_set(struct conn *c, enum conn_slot slot, conn_hook_cb cb, void *arg);
/* The arg of the hook in slot, or NULL when that slot has none. */
void *conn_hook_arg(const struct conn *c, enum conn_slot slot);
/* About how many bytes c may queue now before output should wait for CONN_WRITABLE: 0 while it
 * is closing, over CONN_LOW_WATER, or the agent's queue_total is full. */
uint64_t conn_room(const struct conn *c);

void conn_close(struct conn *c);
/* Stops reading and closes once what is queued has been written (after a final error). */
void conn_close_after_flush(struct conn *c);
struct conn *conn_find(struct agent *a, uint64_t no);

/* Detached connections (no socket; for fuzzing and tests of the state machine). conn_feed
 * consumes bytes as if read from the socket; conn_detached_free frees the conn (after
 * conn_close, or instead of it). */
struct conn *conn_new_detached(struct agent *a, void (*sink)(void *, const char *, size_t),
                               void *arg);
void conn_feed(struct conn *c, const uint8_t *p, size_t n);
void conn_detached_free(struct conn *c);

/* Bytes a connection may have queued before output waits (conn_room). */
#define CONN_LOW_WATER (256u * 1024u)
/* What one pull may queue past the low water mark (an output event is at most max_event). */
#define CONN_PULL_SLACK (64u * 1024u)
/* The reply queue bound of a connection that has not passed hello (it gets one reply, hello or
 * an error, and is closed after an error). */
#define CONN_PRE_QUEUE (4u * 1024u)
/* Slots of max_conns that connections which have not passed hello may never take (at most a
 * quarter of max_conns): the rest is theirs, and when it is full the oldest of them is closed
 * to admit a new connection, so a client with the token always gets in. */
#define CONN_AUTH_RESERVE 8u

/* Connections that have not passed hello may hold at most this many slots. */
uint32_t conn_prehello_max(const struct agent *a);

/* The agent-wide part: the frame handler every connection hands its frames to, and the hello
 * deadline timer. conns_init needs a->loop; conns_close closes the timer (with the other
 * handles, at teardown). */
void conns_init(struct agent *a, conn_frame_cb on_frame);
void conns_close(struct agent *a);

/* hello passed on c: it leaves the pre-hello accounting (no deadline, never evicted) and gets
 * the full conn_queue. */
void conn_hello_passed(struct conn *c);

/* c is the one session of its transport (a virtio port, which has no accept and so no flood):
 * it has no hello deadline and is never closed to make room. It must still pass hello. */
void conn_keep(struct conn *c);

#endif
