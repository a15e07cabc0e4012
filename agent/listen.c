#include "listen.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "conn.h"
#include "log.h"

enum listener_kind { L_UNIX, L_VSOCK, L_VIRTIO };

struct listener {
    struct agent *a;
    struct list link;
    enum listener_kind kind;
    char *spec;
    char *path;         /* unix: the socket path */
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

/* The socket's directory must not be swappable under us: owned by root or by boxd's user, and
 * not writable by others unless sticky (then only its owner can replace our entry). */
static int check_dir(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dir, &st) < 0)
        return -errno;
    if (st.st_uid != 0 && st.st_uid != geteuid())
        return -EPERM;
    if ((st.st_mode & 0022) && !(st.st_mode & S_ISVTX))
        return -EPERM;
    return 0;
}

static int start_unix(struct agent *a, const char *spec, const char *path)
{
    int de = check_dir(path);
    if (de < 0) {
        log_err("listen %s: the socket's directory %s", spec,
                de == -EPERM ? "must be owned by root (or boxd's user) and not writable by others"
                             : strerror(-de));
        return de;
    }
    struct listener *l = listener_new(a, L_UNIX, spec);
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        if (l)
            listener_fail(l);
        return -ENOMEM;
    }
    uv_pipe_init(a->loop, &l->pipe, 0);
    l->pipe.data = l;
    l->handles++;
    /* A socket left by an earlier boxd would make bind fail: remove it, but only a socket of
     * ours. */
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_uid == 0 || st.st_uid == geteuid()))
        unlink(path);
    /* Created 0600, so there is no moment when others could connect; then the configured
     * mode and owner (never world-writable: checked with the options). */
    mode_t old = umask(0177);
    int e = uv_pipe_bind(&l->pipe, path);
    umask(old);
    if (e == 0 && (a->cfg.socket_uid >= 0 || a->cfg.socket_gid >= 0) &&
        chown(path, (uid_t)a->cfg.socket_uid, (gid_t)a->cfg.socket_gid) < 0)
        e = -errno;
    if (e == 0 && a->cfg.socket_mode != 0600 && chmod(path, (mode_t)a->cfg.socket_mode) < 0)
        e = -errno;
    if (e == 0)
        e = uv_listen((uv_stream_t *)&l->pipe, 512, on_unix_connection);
    if (e < 0) {
        log_err("listen %s: %s", spec, uv_strerror(e));
        uv_close((uv_handle_t *)&l->pipe, on_listener_closed);
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
        if (bind(l->fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l->fd, 512) < 0)
            e = -errno;
    }
    if (e < 0) {
        log_err("listen %s: %s", spec, strerror(-e));
        listener_fail(l);
        return e;
    }
    uv_poll_init(a->loop, &l->poll, l->fd);
    l->poll.data = l;
    l->handles++;
    uv_poll_start(&l->poll, UV_READABLE, on_vsock_readable);
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
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
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
            unlink(l->path);
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
