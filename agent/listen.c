#include "listen.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"

struct listener {
    struct agent *a;
    struct list link;
    uv_pipe_t h;
    char *path;
};

static void on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    if (status < 0) {
        /* EMFILE and friends: the pending connection stays queued; libuv retries. Log it. */
        log_warn("listen %s: %s", l->path, uv_strerror(status));
        return;
    }
    conn_accept(l->a, server);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    free(l->path);
    free(l);
}

int listen_start(struct agent *a, const char *spec)
{
    if (strncmp(spec, "unix:", 5) != 0 || spec[5] == '\0') {
        log_err("listen %s: unknown transport (use unix:PATH)", spec);
        return -EINVAL;
    }
    const char *path = spec + 5;
    struct listener *l = calloc(1, sizeof *l);
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        free(l);
        return -ENOMEM;
    }
    l->a = a;
    uv_pipe_init(a->loop, &l->h, 0);
    l->h.data = l;
    /* A socket left by an earlier boxd would make bind fail: remove it, but only a socket. */
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    /* Created 0600: only the owner (root) may connect until access control says otherwise. */
    mode_t old = umask(0177);
    int e = uv_pipe_bind(&l->h, path);
    umask(old);
    if (e == 0)
        e = uv_listen((uv_stream_t *)&l->h, 512, on_connection);
    if (e < 0) {
        log_err("listen %s: %s", spec, uv_strerror(e));
        uv_close((uv_handle_t *)&l->h, on_listener_closed);
        return e;
    }
    list_add_tail(&a->listeners, &l->link);
    log_info("listening on %s", spec);
    return 0;
}

void listen_close_all(struct agent *a)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &a->listeners)
    {
        struct listener *l = container_of(pos, struct listener, link);
        list_del(&l->link);
        unlink(l->path);
        uv_close((uv_handle_t *)&l->h, on_listener_closed);
    }
}
