/* Blocking client for the boxd wire protocol (protocol/PROTOCOL.md).
 *
 * One struct box_client is one connection to one agent over a unix stream socket. The library
 * writes whole frames (EINTR and short writes handled), reads one frame at a time with poll() and
 * an optional timeout, refuses a frame whose header announces more than the agent's `max_event`
 * before allocating anything for it, and parses the body with msg_parse() from the codec.
 *
 * Ownership:
 * - struct box_client and struct box_msg are allocated by the caller (on the stack or inside
 *   another object) and set up with box_client_connect()/box_client_init_fd() and
 *   box_msg_init(); box_client_close() and box_msg_destroy() release what they own.
 * - The socket fd belongs to the box_client from connect (or init_fd) until box_client_close().
 * - A received message lives in the caller's struct box_msg: its parsed object (`root`) and every
 *   string inside it point into the msg's own body buffer and zone, and stay valid until the next
 *   box_client_recv() into the same msg, or box_msg_destroy().
 * - box_client_send() takes the frame being built in a struct msg_out and always releases its
 *   buffer, whether or not the send succeeds.
 *
 * Every int function returns 0 or a negative errno. Codes with a protocol meaning:
 *   -ETIMEDOUT    no complete frame arrived within the timeout; bytes already read are kept and
 *                 the next box_client_recv() (with the same msg) resumes where this one stopped
 *   -ECONNRESET   the agent closed the connection (or reset it)
 *   -EMSGSIZE     the agent announced a frame over our limit, or a request is over the agent's
 *                 `max_frame`; in the first case the stream can no longer be trusted
 *   -EBADMSG      a frame that is not a valid message (framing intact unless noted)
 *   -EPROTO       the agent does not speak protocol version 1
 *   -EREMOTEIO    the agent answered with an `error` message (it is in the reply msg)
 *   -ENOTCONN     an earlier error left the connection unusable: only close remains
 *
 * Not thread-safe: one thread uses a given box_client at a time.
 */
#ifndef BOXD_CLIENT_H
#define BOXD_CLIENT_H

#include "codec.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Largest frame body accepted before `hello` has told us the agent's max_event. A hello reply is
 * a few hundred bytes; the protocol's default max_frame is 1 MiB. */
#define BOX_CLIENT_DEFAULT_MAX_IN (1u << 20)
/* Largest request body sent before `hello` has told us the agent's max_frame. */
#define BOX_CLIENT_DEFAULT_MAX_OUT (1u << 20)
/* Whatever the agent reports, never accept or send a frame body above this. */
#define BOX_CLIENT_HARD_MAX (256u << 20)
/* Smallest limit we believe from `hello`: an agent reporting less is misconfigured. */
#define BOX_CLIENT_MIN_LIMIT 4096u
/* Room for the longest boot_id and agent string we keep (longer ones are cut). */
#define BOX_CLIENT_ID_MAX 64

/* The `limits` map of the hello reply; 0 for a limit the agent did not report. */
struct box_limits {
    uint64_t max_frame;
    uint64_t max_event;
    uint64_t max_line;
    uint64_t max_runs;
    uint64_t max_finished;
    uint64_t max_conns;
    uint64_t log_bytes;
    uint64_t stdin_bytes;
    uint64_t max_subs;
};

/* One received message. The caller owns the struct; the msg owns `body` and `zone`. */
struct box_msg {
    uint8_t *body;       /* the frame body, `len` bytes; heap, grown on demand */
    size_t cap;          /* bytes allocated at `body` */
    size_t len;          /* size of the current frame body */
    msgpack_zone zone;   /* allocations of the parsed object */
    msgpack_object root; /* the parsed map; valid after box_client_recv() returned 0 */
    const char *type;    /* the `type` field (not NUL-terminated), inside `body` */
    size_t type_len;
    bool has_req; /* the message carries an integer `req` */
    uint64_t req;
};

/* The longest token a virtio-serial client keeps to say hello again (boxd's AUTH_TOKEN_MAX). */
#define BOX_CLIENT_TOKEN_MAX 256
/* How long a re-hello after need_hello may take when the caller waits forever. */
#define BOX_SERIAL_RESUME_MS 10000

struct box_client {
    int fd;              /* owned; -1 when closed */
    bool broken;         /* framing lost or peer gone: every call but close fails */
    uint32_t max_in;     /* largest frame body accepted from the agent */
    uint32_t max_out;    /* largest frame body sent to the agent */
    uint64_t next_req;   /* the `req` value box_req_begin() hands out next */
    bool rehello;        /* a virtio-serial session: hello is resent until answered */
    bool hello_done;     /* the fields below are filled in */
    char boot_id[BOX_CLIENT_ID_MAX + 1];
    char agent[BOX_CLIENT_ID_MAX + 1];
    int64_t agent_pid;
    struct box_limits limits;
    bool cap_file_tree;  /* hello's capabilities name `file_tree` (PROTOCOL.md 12.8) */

    /* How a virtio-serial session starts over after `need_hello` (box_client_recv): what the
     * last hello sent, and a copy of the last request frame written with its `req`. */
    char hello_name[BOX_CLIENT_ID_MAX + 1];
    bool hello_has_name;
    uint8_t hello_token[BOX_CLIENT_TOKEN_MAX];
    size_t hello_token_len;
    bool hello_has_token;
    bool hello_kept;     /* the fields above hold the last hello (name and token fitted) */
    uint64_t begun_req;  /* the req box_req_begin() gave the frame being built */
    uint8_t *last_frame; /* owned; NULL or last_len bytes, the whole frame with its header */
    size_t last_len;
    size_t last_cap;
    uint64_t last_req;
    bool last_resent;    /* last_frame was sent again once already */
    bool in_resume;      /* a re-hello is under way: no nested resume, no frame kept */
    unsigned resumes;    /* sessions started over so far */

    /* The frame being read: the header bytes so far, then the body into `filling`. */
    uint8_t hdr[BOX_FRAME_HDR];
    size_t hdr_have;
    uint32_t body_len;
    size_t body_have;
    struct box_msg *filling; /* not owned: the caller's msg receiving the current body */
};

/* ---- Messages ------------------------------------------------------------------------------ */

/* Prepares an empty msg. Returns 0 or -ENOMEM. */
int box_msg_init(struct box_msg *m);
/* Releases the body and zone; the msg may be initialised again. */
void box_msg_destroy(struct box_msg *m);
/* True when the message's `type` is exactly `type`. */
bool box_msg_is(const struct box_msg *m, const char *type);
/* For an `error` message: points *code and *message (either may be NULL to skip) at the
 * fields, with their lengths; absent fields give "" and 0. Returns 0, or -EINVAL when m is not
 * an `error`. */
int box_msg_error(const struct box_msg *m, const char **code, size_t *code_len,
                  const char **message, size_t *message_len);

/* ---- Connection ---------------------------------------------------------------------------- */

/* ---- Endpoints ----------------------------------------------------------------------------- */

/* Every way into a box from its host (or from inside it). The text forms, for -s and
 * $BOXD_SOCKET:
 *   unix:PATH         the agent's unix socket (also a bare PATH with none of these prefixes)
 *   vsock:CID:PORT    AF_VSOCK to the guest CID's PORT (QEMU/vhost-vsock, any vsock host)
 *   fc:UDS:PORT       Firecracker / Cloud Hypervisor hybrid vsock: connect to the unix socket
 *                     UDS, write "CONNECT PORT\n", read the hypervisor's "OK <n>\n"; from then
 *                     on the stream is the boxd protocol (PROTOCOL.md section 1)
 *   serial:PATH       QEMU's unix socket for a virtio-serial port (-chardev socket,path=PATH):
 *                     a unix connect whose session is opened the virtio way, resending `hello`
 *                     until it is answered (PROTOCOL.md section 1)
 */
enum box_endpoint_kind { BOX_EP_UNIX, BOX_EP_VSOCK, BOX_EP_FC, BOX_EP_SERIAL };

/* Longest path a unix endpoint may name (sun_path holds 108 bytes with the NUL). */
#define BOX_ENDPOINT_PATH_MAX 107
/* Longest line a hybrid-vsock hypervisor may answer CONNECT with. */
#define BOX_FC_REPLY_MAX 64
/* How long a virtio-serial session waits for a `hello` reply before sending `hello` again. */
#define BOX_SERIAL_REHELLO_MS 200

struct box_endpoint {
    enum box_endpoint_kind kind;
    char path[BOX_ENDPOINT_PATH_MAX + 1]; /* unix, fc, serial */
    uint32_t cid;                         /* vsock */
    uint32_t port;                        /* vsock, fc */
};

/* Parses one of the forms above into ep. Returns 0, or -EINVAL with *why (when why is not NULL)
 * pointing at a static sentence that says what is wrong and what the form is. */
int box_endpoint_parse(const char *s, struct box_endpoint *ep, const char **why);

/* Writes ep back in its text form ("vsock:3:5000") into buf. */
void box_endpoint_format(const struct box_endpoint *ep, char *buf, size_t size);

/* Connects to ep; for fc: also the CONNECT handshake, bounded by timeout_ms (< 0: no bound).
 * Returns 0 (c is set up as by box_client_init_fd), or a negative errno: the connect's own
 * (-ENOENT, -ECONNREFUSED, -EACCES, for vsock -ENODEV/-EAFNOSUPPORT when the host has no vsock
 * transport, -ETIMEDOUT...), and for the handshake -EPROTO when the hypervisor answered
 * something other than "OK ..." (its line, sanitised, is copied to detail), -ECONNRESET when it
 * closed the connection instead (nothing listens on that guest port), -ETIMEDOUT. detail (may be
 * NULL) is set to "" when there is nothing to add. On failure nothing is left open. */
int box_client_open(struct box_client *c, const struct box_endpoint *ep, int timeout_ms,
                    char *detail, size_t detail_size);

/* Connects to the unix stream socket at path. Returns 0, -ENAMETOOLONG for a path that does not
 * fit sockaddr_un, -ENOMEM, or the errno of socket()/connect() (-ENOENT, -ECONNREFUSED, ...).
 * On failure nothing is left open and c must not be closed. */
int box_client_connect(struct box_client *c, const char *path);
/* Adopts an already connected stream socket (a socketpair in tests); c owns fd from now on. */
void box_client_init_fd(struct box_client *c, int fd);
/* Closes the socket. Safe to call twice. A msg that was receiving a frame keeps its memory. */
void box_client_close(struct box_client *c);

/* Sends `hello` and reads the reply (into reply, owned by the caller), waiting at most
 * timeout_ms (< 0: forever). On 0 the agent speaks version 1 and c->boot_id, c->agent,
 * c->agent_pid and c->limits are filled in; max_in and max_out follow the agent's max_event and
 * max_frame (clamped to [BOX_CLIENT_MIN_LIMIT, BOX_CLIENT_HARD_MAX]). client_name may be NULL.
 * Returns -EPROTO for another version or a `bad_version` error, -EREMOTEIO for another error
 * reply, -EBADMSG for a reply that is not a well-formed hello, or an I/O error. */
int box_client_hello(struct box_client *c, const char *client_name, int timeout_ms,
                     struct box_msg *reply);

/* As box_client_hello, with the agent's token (token_len bytes, sent as `bin`; NULL for none).
 * A refused token is -EREMOTEIO with the `unauthorized` error in reply (the agent then closes
 * the connection). On a virtio-serial endpoint (c->rehello) `hello` is sent again every
 * BOX_SERIAL_REHELLO_MS until one is answered, and a reply to any of them is taken. */
int box_client_hello_token(struct box_client *c, const char *client_name, const void *token,
                           size_t token_len, int timeout_ms, struct box_msg *reply);

/* ---- Requests ------------------------------------------------------------------------------ */

/* Starts a request in o: a map of nfields + 2 entries whose first two are `type` and a fresh
 * integer `req` (stored in *req when req is not NULL). The caller then packs exactly nfields
 * key/value pairs with the msg_* helpers and passes o to box_client_send(). Returns 0 or
 * -ENOMEM (o then holds nothing to release). */
int box_req_begin(struct box_client *c, struct msg_out *o, const char *type, uint32_t nfields,
                  uint64_t *req);

/* Finishes the frame in o and writes it whole. o's buffer is always released. Returns 0,
 * -ENOMEM (packing failed), -EMSGSIZE (the body exceeds the agent's max_frame: nothing was
 * written, the connection stays usable), -EPIPE/-ECONNRESET (the agent is gone), -ENOTCONN. */
int box_client_send(struct box_client *c, struct msg_out *o);

/* Writes len raw bytes (for tests that need malformed frames). Same errors as send. */
int box_client_write(struct box_client *c, const void *buf, size_t len);

/* Reads one frame into m and parses it. timeout_ms < 0 waits forever, 0 takes only what is
 * already readable, > 0 bounds the whole call. A frame is read straight into m->body: the
 * header is checked against c->max_in before m->body grows. Returns 0 (m holds the message),
 * -ETIMEDOUT (partial frame kept: call again with the same m; another msg gets -EBUSY),
 * -ECONNRESET, -EMSGSIZE (connection now broken), -EBADMSG (the body is not a map with str keys
 * and a str `type`; the frame was consumed and the connection stays usable), -ENOMEM, -ENOTCONN,
 * or another errno from poll()/read().
 *
 * On a virtio-serial session (c->rehello) after hello has passed, an `error` `need_hello` that
 * answers the last request frame sent (its `req`) is not returned: the port's agent session
 * started over under us (PROTOCOL.md section 1), and need_hello proves the request was read by
 * a session without hello, which did nothing with it. So the client says hello again with what
 * the last hello sent (BOX_SERIAL_REHELLO_MS resends; within timeout_ms, but never
 * less than BOX_SERIAL_RESUME_MS, so a caller that polls with 0 may wait that long once), sends that frame again once (c->resumes counts these)
 * and reads on. A need_hello for any other frame, or for the same frame a second time, is
 * returned as usual; so is -ECONNRESET when the new hello shows another boot_id (the box
 * restarted: its runs are gone). A request that was never answered is never sent again. */
int box_client_recv(struct box_client *c, struct box_msg *m, int timeout_ms);

/* Sends o (see box_client_send) and reads frames into reply until the answer to `req` arrives:
 * a message carrying the same `req`, or an `error` with no `req` (the agent could not read ours).
 * Other frames (events of runs this connection follows) are discarded, so use this on a
 * connection that follows nothing, or handle events yourself with send + recv. timeout_ms bounds
 * the wait for the answer (< 0: forever). Returns 0 with the reply in reply, -EREMOTEIO when the reply is an
 * `error` (also in reply), or a send/recv error. */
int box_client_call(struct box_client *c, struct msg_out *o, uint64_t req, struct box_msg *reply,
                    int timeout_ms);

#endif
