#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "codec.h"
#include "log.h"

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
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 0077)) {
        /* A token others can read is no secret. */
        close(fd);
        return -EPERM;
    }
    char buf[AUTH_TOKEN_MAX + 2];
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 0)
        return -errno;
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
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
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
    if (msg_get_bytes(hello, "token", &t, &n) < 0)
        n = 0, t = "";
    return token_equal(au->token, au->token_len, t, n) ? 0 : -EACCES;
}
