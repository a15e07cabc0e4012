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
 *   The token file must be a regular file owned by root or boxd's uid, mode 0600 or tighter.
 * Layer 3, who runs execute as. A token is only worth something if runs cannot read it or drive
 *   boxd themselves: with a token, boxd refuses to start when runs would execute as root or as
 *   boxd's own uid (no --user, or --user naming one of those), unless --allow-root-runs accepts
 *   that risk explicitly. A request may name another user only if that name is on the
 *   --allow-request-user list; a name that resolves to uid 0 is allowed only if the list names
 *   root itself (and boxd warns at start-up when it does).
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
#define AUTH_MAX_USERS 16 /* names on --allow-request-user */
#define AUTH_USER_MAX 64  /* a user name's bytes, with its NUL (struct identity's user) */

struct auth {
    uid_t uids[AUTH_MAX_UIDS];
    unsigned n_uids;
    char users[AUTH_MAX_USERS][AUTH_USER_MAX]; /* users a request may name */
    unsigned n_users;
    char token[AUTH_TOKEN_MAX + 1];
    size_t token_len; /* 0: no token required */
};

/* Loads the token (file, else kernel command line) and defaults the uid allow-list.
 * token_file may be NULL. Returns 0, or a negative errno for a token file that is unusable
 * (missing, empty, too long; -EPERM: not a regular file, owned by someone other than root or
 * boxd's uid, or readable by others): start-up then fails loudly. */
int auth_init(struct agent *a, const char *token_file);

/* Adds the comma-separated user names of list (--allow-request-user box,app) to the users a
 * request may name. Returns 0, -EINVAL for a name that is empty, too long or not a user name,
 * -ENOSPC past AUTH_MAX_USERS. */
int auth_allow_users(struct auth *au, const char *list);

/* The start-up policy (layer 3), once the token and the run identity (a->ident) are known.
 * Warns about risky but explicit choices. Returns 0, or -EPERM with a message for the operator
 * in msg: start-up then fails. */
int auth_check_policy(struct agent *a, char *msg, size_t cap);

/* Whether a request may name user (ul bytes, no NUL): on the list, and not uid 0 unless the list
 * names root. Looks the name up in passwd. */
bool auth_request_user_allowed(const struct auth *au, const char *user, size_t ul);

/* Adds a uid to the allow-list (--allow-uid). Returns 0 or -ENOSPC. */
int auth_allow_uid(struct auth *au, uid_t uid);

/* Checks a unix socket peer's credentials. Returns 0 if allowed, -EACCES if not; *uid is set
 * when it could be read. */
int auth_check_peer(const struct agent *a, int fd, uid_t *uid, pid_t *pid);

/* Checks hello's token. Returns 0 when no token is configured or it matches. */
int auth_check_hello(const struct agent *a, const msgpack_object *hello);

#endif
