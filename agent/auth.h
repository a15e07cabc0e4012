/* Who may talk to boxd.
 *
 * Layer 1, the transport: a unix socket is created 0600 (or the configured mode, never
 *   world-writable) in a directory that only root (or boxd's user) can write, and every
 *   connection's SO_PEERCRED uid must be on the allow-list (root and boxd's own uid by default).
 *   vsock accepts the host's CID only (listen.c).
 * Layer 2, an optional shared token (--token-file PATH, or boxd.token= on the kernel command
 *   line): `hello` must carry it. It is compared in constant time, never logged, never put in a
 *   run's environment. A wrong or missing token gets `unauthorized` and the connection closed.
 *   Until hello passes, a connection may send only hello, in frames of at most AUTH_PRE_FRAME.
 */
#ifndef BOXD_AUTH_H
#define BOXD_AUTH_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct agent;

#define AUTH_MAX_UIDS 16
#define AUTH_PRE_FRAME 4096u /* largest frame before hello has passed */
#define AUTH_TOKEN_MAX 256

struct auth {
    uid_t uids[AUTH_MAX_UIDS];
    unsigned n_uids;
    char token[AUTH_TOKEN_MAX + 1];
    size_t token_len; /* 0: no token required */
};

/* Loads the token (file, else kernel command line) and defaults the uid allow-list.
 * token_file may be NULL. Returns 0, or a negative errno for a token file that is unusable
 * (missing, empty, too long, readable by others): start-up then fails loudly. */
int auth_init(struct agent *a, const char *token_file);

/* Adds a uid to the allow-list (--allow-uid). Returns 0 or -ENOSPC. */
int auth_allow_uid(struct auth *au, uid_t uid);

/* Checks a unix socket peer's credentials. Returns 0 if allowed, -EACCES if not; *uid is set
 * when it could be read. */
int auth_check_peer(const struct agent *a, int fd, uid_t *uid, pid_t *pid);

/* Checks hello's token. Returns 0 when no token is configured or it matches. */
int auth_check_hello(const struct agent *a, const msgpack_object *hello);

#endif
