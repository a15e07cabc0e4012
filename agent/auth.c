#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "codec.h"
#include "schema.h"
#include "log.h"
#include "io.h"
#include "sandbox.h"

int auth_allow_uid(struct auth *au, uid_t uid)
{
    for (unsigned i = 0; i < au->n_uids; i++)
        if (au->uids[i] == uid)
            return 0;
    if (au->n_uids >= AUTH_MAX_UIDS)
        return -ENOSPC;
    au->uids[au->n_uids++] = uid;
    return 0;
}

static int read_token_file(struct auth *au, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 0077) ||
        (st.st_uid != 0 && st.st_uid != geteuid())) {
        /* A token others can read is no secret; nor one whose owner (who can chmod it, and is
         * neither root nor boxd) is someone else, such as the run user. With the group and other
         * bits clear, no ACL entry can grant a read either (the mask is the group bits). */
        close(fd);
        return -EPERM;
    }
    char buf[AUTH_TOKEN_MAX + 3]; /* the token, CR LF, and the NUL box_read_fd adds */
    ssize_t n = box_read_fd(fd, buf, sizeof buf);
    close(fd);
    if (n < 0) {
        explicit_bzero(buf, sizeof buf);
        return (int)n;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n == 0 || n > AUTH_TOKEN_MAX)
        return -EINVAL;
    memcpy(au->token, buf, (size_t)n);
    au->token[n] = '\0';
    au->token_len = (size_t)n;
    explicit_bzero(buf, sizeof buf);
    return 0;
}

static void read_token_cmdline(struct auth *au)
{
    char buf[4096];
    if (box_read_small(AT_FDCWD, "/proc/cmdline", buf, sizeof buf) <= 0)
        return;
    for (char *p = buf; (p = strstr(p, "boxd.token=")) != NULL; p++) {
        if (p != buf && p[-1] != ' ')
            continue;
        p += 11;
        size_t len = strcspn(p, " \n");
        if (len > 0 && len <= AUTH_TOKEN_MAX) {
            memcpy(au->token, p, len);
            au->token[len] = '\0';
            au->token_len = len;
        }
        break;
    }
    explicit_bzero(buf, sizeof buf);
}

int auth_init(struct agent *a, const char *token_file)
{
    struct auth *au = &a->auth;
    auth_allow_uid(au, 0);
    auth_allow_uid(au, geteuid());
    if (token_file) {
        int e = read_token_file(au, token_file);
        if (e < 0)
            return e;
    } else if (a->mode == MODE_VM) {
        /* Only a VM's init reads the kernel command line: in a container it is the host's. */
        read_token_cmdline(au);
    }
    if (au->token_len)
        log_info("auth: hello must present the token (%zu bytes)", au->token_len);
    return 0;
}

/* A portable user name (POSIX's portable filename characters, not starting with '-', with the
 * trailing '$' some directories use), shorter than AUTH_USER_MAX. */
static bool user_name_ok(const char *s, size_t n)
{
    if (n == 0 || n >= AUTH_USER_MAX || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '_' || ch == '.' || ch == '-' || (ch == '$' && i == n - 1);
        if (!ok)
            return false;
    }
    return true;
}

static bool user_listed(const struct auth *au, const char *s, size_t n)
{
    for (unsigned i = 0; i < au->n_users; i++)
        if (strlen(au->users[i]) == n && memcmp(au->users[i], s, n) == 0)
            return true;
    return false;
}

int auth_allow_users(struct auth *au, const char *list)
{
    const char *p = list;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (!user_name_ok(p, n))
            return -EINVAL;
        if (!user_listed(au, p, n)) {
            if (au->n_users >= AUTH_MAX_USERS)
                return -ENOSPC;
            memcpy(au->users[au->n_users], p, n);
            au->users[au->n_users++][n] = '\0';
        }
        if (p[n] == '\0')
            return 0;
        p += n + 1;
    }
}

/* The uid a name has in passwd, or -1 (no such user, or passwd unreadable). */
static int64_t uid_of(const char *name)
{
    struct identity id;
    return identity_lookup(name, &id) == 0 ? (int64_t)id.uid : -1;
}

int auth_check_policy(struct agent *a, char *msg, size_t cap)
{
    const struct auth *au = &a->auth;
    uid_t me = geteuid();
    bool root_listed = user_listed(au, "root", 4);
    for (unsigned i = 0; i < au->n_users; i++) {
        int64_t uid = uid_of(au->users[i]);
        if (strcmp(au->users[i], "root") == 0)
            log_warn("auth: --allow-request-user lists root: a request may run code as root, "
                     "with every power boxd has");
        else if (uid == 0 && !root_listed)
            log_warn("auth: --allow-request-user: %s is uid 0: requests naming it are denied "
                     "(list root to allow uid 0)", au->users[i]);
        else if (uid >= 0 && (uid_t)uid == me && me != 0)
            log_warn("auth: --allow-request-user: %s is boxd's own uid: its runs can drive boxd",
                     au->users[i]);
    }
    bool privileged = a->ident.uid == 0 || a->ident.uid == me;
    if (au->token_len == 0 || !privileged)
        return 0;
    if (a->cfg.allow_root_runs) {
        log_warn("auth: runs execute as %s (uid %u), which can read the token and drive boxd "
                 "(--allow-root-runs)", a->ident.user, (unsigned)a->ident.uid);
        return 0;
    }
    snprintf(msg, cap,
             "a token is configured, but runs would execute as %s (uid %u%s): they could "
             "read the token and connect to boxd, holding the control plane's power. Pass "
             "--user USER to run them as an unprivileged user, or --allow-root-runs to accept "
             "that risk",
             a->ident.user, (unsigned)a->ident.uid, a->ident.uid == 0 ? "" : ", boxd's own");
    return -EPERM;
}

bool auth_request_user_allowed(const struct auth *au, const char *user, size_t ul)
{
    if (!user_listed(au, user, ul))
        return false;
    if (user_listed(au, "root", 4))
        return true;
    /* A listed name that is uid 0 (an alias of root, or passwd changed since start-up). */
    char name[AUTH_USER_MAX];
    memcpy(name, user, ul);
    name[ul] = '\0';
    return uid_of(name) != 0;
}

int auth_check_peer(const struct agent *a, int fd, uid_t *uid, pid_t *pid)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return -EACCES;
    *uid = cr.uid;
    *pid = cr.pid;
    for (unsigned i = 0; i < a->auth.n_uids; i++)
        if (a->auth.uids[i] == cr.uid)
            return 0;
    return -EACCES;
}

/* Constant time in the length of the expected token: no early exit, the length compared in
 * the same pass. */
static bool token_equal(const char *want, size_t want_len, const char *got, size_t got_len)
{
    unsigned char diff = (unsigned char)(want_len != got_len);
    for (size_t i = 0; i < want_len; i++) {
        unsigned char g = i < got_len ? (unsigned char)got[i] : 0;
        diff |= (unsigned char)(want[i] ^ g);
    }
    return diff == 0;
}

int auth_check_hello(const struct agent *a, const msgpack_object *hello)
{
    const struct auth *au = &a->auth;
    if (au->token_len == 0)
        return 0;
    const char *t = "";
    size_t n = 0;
    if (msg_get_bytes(hello, BOX_REQ_KEY(TOKEN), &t, &n) < 0)
        n = 0, t = "";
    return token_equal(au->token, au->token_len, t, n) ? 0 : -EACCES;
}
