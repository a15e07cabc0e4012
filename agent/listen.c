#include "listen.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "conn.h"
#include "log.h"
#include "io.h"

/* Connections the kernel queues on a listener before boxd accepts them: more than max_conns'
 * default, so that a burst of clients is not refused while the loop is busy for a moment. */
#define LISTEN_BACKLOG 512

enum listener_kind { L_UNIX, L_VSOCK, L_VIRTIO };

struct listener {
    struct agent *a;
    struct list link;
    enum listener_kind kind;
    char *spec;
    char *path;         /* unix: the socket path */
    dev_t dev;          /* unix: the socket file we made (unlinked at the end only if it */
    ino_t ino;          /* is still the one at path) */
    uv_pipe_t pipe;     /* unix */
    int fd;             /* vsock: listening socket; virtio: the port */
    uv_poll_t poll;     /* vsock: accept readiness */
    uv_timer_t retry;   /* accept retry after ENOMEM; virtio: slow re-check of the host */
    struct conn *conn;  /* virtio: the host's current session */
    unsigned handles;
    bool closing;
};

static void on_listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    if (--l->handles > 0)
        return;
    if (l->fd >= 0)
        close(l->fd);
    free(l->spec);
    free(l->path);
    free(l);
}

static struct listener *listener_new(struct agent *a, enum listener_kind kind, const char *spec)
{
    struct listener *l = calloc(1, sizeof *l);
    if (l == NULL || (l->spec = strdup(spec)) == NULL) {
        free(l);
        return NULL;
    }
    l->a = a;
    l->kind = kind;
    l->fd = -1;
    uv_timer_init(a->loop, &l->retry);
    l->retry.data = l;
    l->handles = 1;
    return l;
}

static void listener_fail(struct listener *l)
{
    l->closing = true;
    uv_close((uv_handle_t *)&l->retry, on_listener_closed);
}

/* ---- unix ----------------------------------------------------------------------------------- */

static void unix_accept(struct listener *l);

/* Removes the socket file, if it still is ours (not another's that replaced it since). */
static void unlink_ours(const struct listener *l)
{
    struct stat st;
    if (lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        unlink(l->path);
}

static void on_retry_accept(uv_timer_t *t)
{
    unix_accept(t->data);
}

static void unix_accept(struct listener *l)
{
    if (l->closing)
        return;
    if (conn_accept(l->a, (uv_stream_t *)&l->pipe) == -ENOMEM) {
        /* Out of memory: temporize, like s6, rather than fail. The connection waits. */
        log_warn("listen %s: out of memory, retrying", l->spec);
        uv_timer_start(&l->retry, on_retry_accept, 100, 0);
    }
}

static void on_unix_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    if (status < 0) {
        log_warn("listen %s: %s", l->spec, uv_strerror(status));
        return;
    }
    unix_accept(l);
}

/* The socket path must not be swappable under us, nor its name takeable before us. Walked from
 * / (or the working directory, for a relative path) one component at a time with openat and
 * O_NOFOLLOW, so what is checked is what is used:
 *   - a symbolic link anywhere in the path is refused (whoever can write the directory it is in
 *     could point it elsewhere; give the real path instead);
 *   - every directory must be owned by root or by boxd's user;
 *   - no directory may be writable by group or others, except one with the sticky bit (like
 *     /tmp) that is not the socket's own: there only an entry's owner can rename or remove it,
 *     and the next component is checked to be root's or ours;
 *   - the socket's own directory may not be writable by anyone else at all, sticky or not: in a
 *     sticky directory a local user could bind the name first and receive the control plane's
 *     hello.
 * Returns an O_PATH fd of the socket's directory (the caller closes it), or a negative errno
 * with what was wrong written to why. */
static int check_path(const char *path, char *why, size_t why_size)
{
    char buf[PATH_MAX], shown[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -ENAMETOOLONG;
    int fd;
    if (buf[0] == '/') {
        fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        snprintf(shown, sizeof shown, "/");
    } else {
        /* Relative: the working directory is checked the same way, as the socket's own. */
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == NULL)
            return -errno;
        char probe[PATH_MAX + 2];
        snprintf(probe, sizeof probe, "%s/x", strcmp(cwd, "/") == 0 ? "" : cwd);
        fd = check_path(probe, why, why_size);
        if (fd < 0)
            return fd;
        snprintf(shown, sizeof shown, "%s", cwd);
    }
    /* The directory part: every component before the last '/'. */
    char *last = strrchr(buf, '/');
    char *p = buf[0] == '/' ? buf + 1 : buf;
    char *end = last ? last : buf;
    *end = '\0';
    for (;;) {
        struct stat st;
        if (fstat(fd, &st) < 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        bool own = p >= end; /* no component left: this is the socket's own directory */
        if (st.st_uid != 0 && st.st_uid != geteuid()) {
            snprintf(why, why_size, "%s is owned by uid %u", shown, (unsigned)st.st_uid);
            close(fd);
            return -EPERM;
        }
        if ((st.st_mode & 0022) && (own || !(st.st_mode & S_ISVTX))) {
            snprintf(why, why_size, "%s is writable by %s (mode %04o%s)", shown,
                     st.st_mode & 0002 ? "others" : "its group", (unsigned)(st.st_mode & 07777),
                     st.st_mode & S_ISVTX ? "; sticky, but the socket's own directory" : "");
            close(fd);
            return -EPERM;
        }
        if (own)
            return fd;
        char *name = p;
        char *slash = strchr(p, '/');
        if (slash)
            *slash = '\0';
        p = slash ? slash + 1 : end;
        if (name[0] == '\0' || strcmp(name, ".") == 0)
            continue; /* "//" or "/./": the same directory */
        size_t sl = strlen(shown), nl = strlen(name);
        if (sl + 1 + nl >= sizeof shown) {
            close(fd);
            return -ENAMETOOLONG;
        }
        if (sl > 1)
            shown[sl++] = '/';
        memcpy(shown + sl, name, nl + 1);
        struct stat lst;
        if (fstatat(fd, name, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode)) {
            snprintf(why, why_size, "%s is a symbolic link (give the path without links)",
                     shown);
            close(fd);
            return -ELOOP;
        }
        /* O_NOFOLLOW: a link put there since the fstatat fails here rather than being used. */
        int nfd = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = -errno;
        close(fd);
        if (nfd < 0) {
            snprintf(why, why_size, "%s: %s", shown, strerror(-e));
            return e;
        }
        fd = nfd;
    }
}

/* What answers on a unix socket path: 1 a live listener (*pid its pid, 0 if unknown), 0
 * nothing there (*stale: a socket file that no one listens on), or a negative errno for
 * something that is not a socket. Never blocks: a listener with a full backlog is live. */
static int probe_unix(const char *path, bool *stale, pid_t *pid)
{
    *stale = false;
    *pid = 0;
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EEXIST;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int r = connect(s, (struct sockaddr *)&sa, sizeof sa);
    int e = r < 0 ? errno : 0;
    int live = 0;
    if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
        live = 1;
        struct ucred cr;
        socklen_t len = sizeof cr;
        if (r == 0 && getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0)
            *pid = cr.pid;
    } else if (e == ECONNREFUSED) {
        *stale = true;
    } else if (e != ENOENT) {
        live = -e;
    }
    close(s);
    return live;
}

static int start_unix(struct agent *a, const char *spec, const char *path)
{
    char why[PATH_MAX + 128] = "";
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof sa.sun_path) {
        log_err("listen %s: the path is longer than %zu bytes", spec, sizeof sa.sun_path - 1);
        return -ENAMETOOLONG;
    }
    int dfd = check_path(path, why, sizeof why);
    if (dfd < 0) {
        log_err("listen %s: the socket's directories must be owned by root (or boxd's user) and "
                "not writable by others, without symbolic links: %s",
                spec, why[0] ? why : strerror(-dfd));
        return dfd;
    }
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
    /* Someone already serving there keeps the path: refuse to start (a second boxd used to
     * take the socket silently, leaving the first unreachable). */
    bool stale;
    pid_t pid;
    int live = probe_unix(path, &stale, &pid);
    if (live != 0) {
        if (live > 0 && pid > 0)
            log_err("listen %s: another boxd is serving %s (pid %d); stop it first or choose "
                    "another --listen", spec, path, (int)pid);
        else if (live > 0)
            log_err("listen %s: another boxd is serving %s; stop it first or choose another "
                    "--listen", spec, path);
        else
            log_err("listen %s: %s", spec,
                    live == -EEXIST ? "the path exists and is not a socket" : strerror(-live));
        close(dfd);
        return live > 0 ? -EADDRINUSE : live;
    }
    /* Bound under a private name in the same directory, made ready (mode, owner, listening),
     * and only then moved into place: the path never names a half-made socket, and no one else
     * can bind the name (only root and we can write the directory). */
    char tmp[sizeof sa.sun_path], tmpname[64];
    uint64_t rnd = now_mono_ns() ^ ((uint64_t)getpid() << 32);
    snprintf(tmpname, sizeof tmpname, ".boxd-%d-%08llx", (int)getpid(),
             (unsigned long long)(rnd & 0xffffffffu));
    if (dirlen + strlen(tmpname) < sizeof tmp)
        snprintf(tmp, sizeof tmp, "%.*s%s", (int)dirlen, path, tmpname);
    else /* a long path: through the checked directory's fd */
        snprintf(tmp, sizeof tmp, "/proc/self/fd/%d/%s", dfd, tmpname);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int e = fd < 0 ? -errno : 0;
    bool bound = false;
    if (e == 0) {
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", tmp);
        /* Created 0600, so there is no moment when others could connect; then the configured
         * mode and owner (never world-writable: checked with the options). */
        mode_t old = umask(0177);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            e = -errno;
        umask(old);
        bound = e == 0;
    }
    if (e == 0 && (a->cfg.socket_uid >= 0 || a->cfg.socket_gid >= 0) &&
        fchownat(dfd, tmpname, (uid_t)a->cfg.socket_uid, (gid_t)a->cfg.socket_gid,
                 AT_SYMLINK_NOFOLLOW) < 0)
        e = -errno;
    if (e == 0 && a->cfg.socket_mode != 0600 && fchmodat(dfd, tmpname, (mode_t)a->cfg.socket_mode, 0) < 0)
        e = -errno;
    if (e == 0 && listen(fd, LISTEN_BACKLOG) < 0)
        e = -errno;
    struct stat st;
    if (e == 0 && fstatat(dfd, tmpname, &st, AT_SYMLINK_NOFOLLOW) < 0)
        e = -errno;
    if (e == 0 && stale) {
        /* A socket no one listens on (a boxd that died): replaced. */
        if (unlinkat(dfd, base, 0) < 0 && errno != ENOENT)
            e = -errno;
    }
    if (e == 0 && renameat2(dfd, tmpname, dfd, base, RENAME_NOREPLACE) < 0) {
        e = -errno;
        if (e == -EINVAL && linkat(dfd, tmpname, dfd, base, 0) == 0) /* no RENAME_NOREPLACE here */
            e = 0;
        if (e == -EEXIST) {
            /* Another boxd placed its socket since the probe. */
            log_err("listen %s: another boxd is serving %s; stop it first or choose another "
                    "--listen", spec, path);
            e = -EADDRINUSE;
        }
    }
    if (bound)
        unlinkat(dfd, tmpname, 0); /* ENOENT once renamed */
    if (e < 0) {
        if (e != -EADDRINUSE)
            log_err("listen %s: %s", spec, strerror(-e));
        if (fd >= 0)
            close(fd);
        close(dfd);
        return e;
    }
    struct listener *l = listener_new(a, L_UNIX, spec);
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        if (l)
            listener_fail(l);
        unlinkat(dfd, base, 0);
        close(fd);
        close(dfd);
        return -ENOMEM;
    }
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    uv_pipe_init(a->loop, &l->pipe, 0);
    l->pipe.data = l;
    l->handles++;
    e = uv_pipe_open(&l->pipe, fd);
    if (e == 0)
        e = uv_listen((uv_stream_t *)&l->pipe, LISTEN_BACKLOG, on_unix_connection);
    close(dfd);
    if (e < 0) {
        log_err("listen %s: %s", spec, uv_strerror(e));
        unlink_ours(l);
        uv_close((uv_handle_t *)&l->pipe, on_listener_closed); /* closes fd */
        listener_fail(l);
        return e;
    }
    list_add_tail(&a->listeners, &l->link);
    log_info("listening on %s", spec);
    return 0;
}

/* ---- vsock ---------------------------------------------------------------------------------- */

static void on_vsock_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    struct listener *l = h->data;
    if (l->closing || status < 0)
        return;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_vm peer;
        socklen_t len = sizeof peer;
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                log_limited(LOG_RL_ACCEPT, LOG_WARN, "listen %s: accept: %s", l->spec, strerror(errno));
            return;
        }
        if (!listen_vsock_peer_allowed(l->a, peer.svm_cid)) {
            log_limited(LOG_RL_CID, LOG_WARN, "listen %s: refused connection from cid %u", l->spec, peer.svm_cid);
            close(fd);
            continue;
        }
        char who[64];
        snprintf(who, sizeof who, "vsock cid %u port %u", peer.svm_cid, peer.svm_port);
        conn_from_fd(l->a, fd, who);
    }
}

bool listen_vsock_peer_allowed(const struct agent *a, unsigned cid)
{
    if (a->cfg.vsock_any_cid)
        return true;
    /* vsock_allow_cid 0 means none: CID 0 is the hypervisor, never allowed by default. */
    return cid == VMADDR_CID_HOST || (a->cfg.vsock_allow_cid != 0 && cid == a->cfg.vsock_allow_cid);
}

static int start_vsock(struct agent *a, const char *spec, const char *port_s)
{
    char *end;
    errno = 0;
    unsigned long port = strtoul(port_s, &end, 10);
    if (errno || *end || port_s[0] == '\0' || port > 0xffffffffu) {
        log_err("listen %s: bad port", spec);
        return -EINVAL;
    }
    struct listener *l = listener_new(a, L_VSOCK, spec);
    if (l == NULL)
        return -ENOMEM;
    l->fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int e = 0;
    if (l->fd < 0) {
        e = -errno;
    } else {
        struct sockaddr_vm sa;
        memset(&sa, 0, sizeof sa);
        sa.svm_family = AF_VSOCK;
        sa.svm_cid = VMADDR_CID_ANY;
        sa.svm_port = (unsigned)port;
        if (bind(l->fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l->fd, LISTEN_BACKLOG) < 0)
            e = -errno;
    }
    if (e < 0) {
        log_err("listen %s: %s", spec, strerror(-e));
        listener_fail(l);
        return e;
    }
    if ((e = uv_poll_init(a->loop, &l->poll, l->fd)) < 0) {
        log_err("listen %s: %s", spec, uv_strerror(e));
        listener_fail(l);
        return e;
    }
    l->poll.data = l;
    l->handles++;
    if ((e = uv_poll_start(&l->poll, UV_READABLE, on_vsock_readable)) < 0) {
        log_err("listen %s: %s", spec, uv_strerror(e));
        uv_close((uv_handle_t *)&l->poll, on_listener_closed);
        listener_fail(l);
        return e;
    }
    list_add_tail(&a->listeners, &l->link);
    log_info("listening on %s", spec);
    return 0;
}

/* ---- virtio-serial port --------------------------------------------------------------------
 * One byte stream to the host, no accept: each time the host side connects is a session. With
 * no host connected, poll() reports POLLHUP at once and read() returns 0, so a naive loop
 * spins. We keep the port open, and wait: the port is opened O_ASYNC, so the kernel sends SIGIO
 * (read through our signalfd) when the host connects; a slow timer re-checks in case a signal
 * is missed. A session is a conn over a dup of the port fd; when the host hangs up the conn
 * sees EOF and closes its dup, and we go back to waiting on the same port. */

static void virtio_check(struct listener *l);

static void on_virtio_session_end(void *arg)
{
    struct listener *l = arg;
    l->conn = NULL;
    log_info("listen %s: host disconnected", l->spec);
    if (!l->closing)
        virtio_check(l);
}

static void on_virtio_timer(uv_timer_t *t)
{
    virtio_check(t->data);
}

static void virtio_check(struct listener *l)
{
    if (l->closing || l->conn)
        return;
    struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
    int n = poll(&pfd, 1, 0);
    if (n >= 0 && !(pfd.revents & POLLHUP)) {
        int fd = fcntl(l->fd, F_DUPFD_CLOEXEC, 3);
        if (fd >= 0) {
            char who[64];
            snprintf(who, sizeof who, "virtio %s", l->path);
            l->conn = conn_from_fd(l->a, fd, who);
            if (l->conn) {
                conn_keep(l->conn);
                l->conn->on_free = on_virtio_session_end;
                l->conn->on_free_arg = l;
                log_info("listen %s: host connected", l->spec);
                uv_timer_stop(&l->retry);
                return;
            }
        }
    }
    /* Not connected (or could not serve it yet): wait for SIGIO, re-check now and then. */
    uv_timer_start(&l->retry, on_virtio_timer, 1000, 0);
}

void listen_on_sigio(struct agent *a)
{
    struct list *pos;
    for (pos = a->listeners.next; pos != &a->listeners; pos = pos->next) {
        struct listener *l = container_of(pos, struct listener, link);
        if (l->kind == L_VIRTIO)
            virtio_check(l);
    }
}

/* Finds /dev/vportNpM whose /sys/class/virtio-ports/<dev>/name is name. */
static int find_port(const char *name, char *dev, size_t size)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (d == NULL)
        return -ENOENT;
    struct dirent *de;
    int found = -ENOENT;
    while (found < 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char p[512], buf[256];
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", de->d_name);
        if (box_read_small(AT_FDCWD, p, buf, sizeof buf) <= 0)
            continue;
        buf[strcspn(buf, "\n")] = '\0';
        if (strcmp(buf, name) == 0) {
            snprintf(dev, size, "/dev/%s", de->d_name);
            found = 0;
        }
    }
    closedir(d);
    return found;
}

static int start_virtio(struct agent *a, const char *spec, const char *name)
{
    char dev[300];
    int e = find_port(name, dev, sizeof dev);
    if (e < 0) {
        log_err("listen %s: no virtio port named %s", spec, name);
        return e;
    }
    struct listener *l = listener_new(a, L_VIRTIO, spec);
    if (l == NULL || (l->path = strdup(dev)) == NULL) {
        if (l)
            listener_fail(l);
        return -ENOMEM;
    }
    l->fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (l->fd < 0 || fcntl(l->fd, F_SETOWN, getpid()) < 0 ||
        fcntl(l->fd, F_SETFL, fcntl(l->fd, F_GETFL) | O_ASYNC) < 0) {
        e = -errno;
        log_err("listen %s: %s: %s", spec, dev, strerror(-e));
        listener_fail(l);
        return e;
    }
    list_add_tail(&a->listeners, &l->link);
    log_info("listening on %s (%s)", spec, dev);
    virtio_check(l);
    return 0;
}

/* ---- Common --------------------------------------------------------------------------------- */

int listen_start(struct agent *a, const char *spec)
{
    if (strncmp(spec, "unix:", 5) == 0 && spec[5] != '\0')
        return start_unix(a, spec, spec + 5);
    if (strncmp(spec, "vsock:", 6) == 0)
        return start_vsock(a, spec, spec + 6);
    if (strncmp(spec, "virtio-port:", 12) == 0 && spec[12] != '\0')
        return start_virtio(a, spec, spec + 12);
    log_err("listen %s: unknown transport (unix:PATH, vsock:PORT, virtio-port:NAME)", spec);
    return -EINVAL;
}

void listen_close_all(struct agent *a)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &a->listeners)
    {
        struct listener *l = container_of(pos, struct listener, link);
        list_del(&l->link);
        l->closing = true;
        if (l->conn) {
            /* A virtio session is a connection like any other; it is not cut here (final
             * events still go out), only forgotten by the listener. */
            l->conn->on_free = NULL;
            l->conn = NULL;
        }
        switch (l->kind) {
        case L_UNIX:
            unlink_ours(l);
            uv_close((uv_handle_t *)&l->pipe, on_listener_closed);
            break;
        case L_VSOCK:
            uv_close((uv_handle_t *)&l->poll, on_listener_closed);
            break;
        case L_VIRTIO:
            break;
        }
        uv_close((uv_handle_t *)&l->retry, on_listener_closed);
    }
}
