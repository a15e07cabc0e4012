/* file_watch: inotify on a directory (recursive on request), events with sequence numbers and
 * an explicit overflow event (PROTOCOL.md 12.7).
 *
 * Each watch has an inotify descriptor of its own, made on the loop (inotify_init1 does no path
 * lookup). Adding watches resolves paths, so it runs on an I/O thread as the acting user: the
 * kernel checks that user's read permission on each directory. The loop reads the descriptor
 * (non-blocking) and sends file_event records; while the connection has more than
 * FILES_WATCH_QUEUE bytes unsent it stops reading, the kernel's queue fills, and the client gets
 * `overflow` instead of an unbounded backlog in boxd. */
#include "fswatch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "conn.h"
#include "events.h"
#include "fsops.h"
#include "list.h"
#include "log.h"
#include "run.h"

#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | \
                    IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

struct wdir {
    int wd;
    char *rel; /* "" for the root */
};

struct fswatch {
    struct fsjob j;
    struct list link;
    struct fswatches *ws;
    uint64_t id, conn_no, seq;
    struct reqtag req;
    char root[PATH_MAX];
    char pending[PATH_MAX]; /* a directory to add (relative), for the job */
    bool recursive, busy, started, closing, paused;
    int fd;
    int add_err;
    struct wdir *dirs;
    unsigned n_dirs, cap_dirs;
    uv_poll_t poll;
    char pend_rel[FILES_WATCH_PENDING][PATH_MAX];
    unsigned n_pend;
};

struct fswatches {
    struct agent *a;
    struct fsworker *w;
    struct list all;
    unsigned n;
    uint64_t next_id;
};

struct fswatches *fswatches_new(struct agent *a, struct fsworker *w)
{
    struct fswatches *ws = calloc(1, sizeof *ws);
    if (ws) {
        ws->a = a;
        ws->w = w;
        list_init(&ws->all);
    }
    return ws;
}

static int add_dir(struct fswatch *x, const char *rel, unsigned depth)
{
    if (x->n_dirs >= FILES_WATCH_DIRS)
        return -E2BIG;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s%s%s", x->root, rel[0] ? "/" : "", rel) >= (int)sizeof path)
        return -ENAMETOOLONG;
    /* inotify_add_watch follows a final symlink unless IN_DONT_FOLLOW: below the root, never. */
    int wd = inotify_add_watch(x->fd, path, WATCH_MASK | (rel[0] ? IN_DONT_FOLLOW : 0));
    if (wd < 0)
        return -errno;
    if (x->n_dirs == x->cap_dirs) {
        unsigned nc = x->cap_dirs ? x->cap_dirs * 2 : 16;
        struct wdir *nd = realloc(x->dirs, nc * sizeof *nd);
        if (nd == NULL)
            return -ENOMEM;
        x->dirs = nd;
        x->cap_dirs = nc;
    }
    x->dirs[x->n_dirs].wd = wd;
    x->dirs[x->n_dirs].rel = strdup(rel);
    x->n_dirs++;
    if (!x->recursive || depth >= FILES_MAX_DEPTH)
        return 0;
    int dfd = fs_open(AT_FDCWD, path, O_RDONLY | O_DIRECTORY, 0, 0);
    if (dfd < 0)
        return 0; /* gone meanwhile */
    DIR *d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return 0;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_type != DT_DIR || strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) >=
            (int)sizeof sub)
            continue;
        if (add_dir(x, sub, depth + 1) == -E2BIG)
            break;
    }
    closedir(d);
    return 0;
}

static void watch_work(struct fsjob *j)
{
    struct fswatch *x = (struct fswatch *)j;
    if (!x->started) {
        x->add_err = add_dir(x, "", 0);
        return;
    }
    for (unsigned i = 0; i < x->n_pend; i++)
        add_dir(x, x->pend_rel[i], 1);
}

static void watch_free(struct fswatch *x)
{
    for (unsigned i = 0; i < x->n_dirs; i++)
        free(x->dirs[i].rel);
    free(x->dirs);
    free(x);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct fswatch *x = h->data;
    close(x->fd);
    watch_free(x);
}

static void watch_close(struct fswatch *x)
{
    if (x->closing)
        return;
    x->closing = true;
    list_del(&x->link);
    x->ws->n--;
    if (x->busy)
        return; /* the job's done callback finishes the close */
    if (x->started) {
        uv_close((uv_handle_t *)&x->poll, on_poll_closed);
    } else {
        close(x->fd);
        watch_free(x);
    }
}

static const char *rel_of(struct fswatch *x, int wd)
{
    for (unsigned i = 0; i < x->n_dirs; i++)
        if (x->dirs[i].wd == wd)
            return x->dirs[i].rel;
    return NULL;
}

static void send_event(struct fswatch *x, struct conn *c, const char *event, const char *rel,
                       const char *name, bool dir)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_FILE_EVENT, &x->req) < 0)
        return;
    msg_kv_u64(&o, BOX_KEY(WATCH), x->id);
    msg_kv_u64(&o, BOX_KEY(SEQ), x->seq++);
    msg_kv_str(&o, BOX_KEY(EVENT), event);
    if (rel) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s%s%s", rel, rel[0] && name && name[0] ? "/" : "", name ? name : "");
        msg_key(&o, BOX_KEY(NAME));
        msg_data(&o, p, strlen(p));
        msg_kv_bool(&o, BOX_KEY(DIR), dir);
    }
    ev_close(&o);
    conn_send(c, &o);
}

static void watch_kick(struct fswatch *x);

static void on_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    struct fswatch *x = h->data;
    struct conn *c = conn_find(x->ws->a, x->conn_no);
    if (c == NULL || c->closing || status < 0) {
        watch_close(x);
        return;
    }
    if (c->queued >= FILES_WATCH_QUEUE) {
        /* The reader is behind: leave events in the kernel (overflow, not boxd's memory). */
        uv_poll_stop(&x->poll);
        x->paused = true;
        return;
    }
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n = read(x->fd, buf, sizeof buf);
    if (n <= 0)
        return;
    for (char *p = buf; p < buf + n;) {
        struct inotify_event *ev = (struct inotify_event *)p;
        p += sizeof *ev + ev->len;
        bool dir = (ev->mask & IN_ISDIR) != 0;
        if (ev->mask & IN_Q_OVERFLOW) {
            send_event(x, c, "overflow", NULL, NULL, false);
            continue;
        }
        const char *rel = rel_of(x, ev->wd);
        if (rel == NULL)
            continue; /* a removed directory's last events */
        const char *what = ev->mask & IN_CREATE ? "create" : ev->mask & IN_DELETE ? "delete"
                         : ev->mask & IN_CLOSE_WRITE ? "close_write" : ev->mask & IN_MODIFY ? "modify"
                         : ev->mask & IN_MOVED_FROM ? "moved_from" : ev->mask & IN_MOVED_TO ? "moved_to"
                         : ev->mask & IN_ATTRIB ? "attrib" : ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF) ? "gone"
                         : NULL;
        if (what == NULL)
            continue;
        send_event(x, c, what, rel, ev->len ? ev->name : "", dir);
        if (x->recursive && dir && (ev->mask & (IN_CREATE | IN_MOVED_TO)) &&
            x->n_pend < FILES_WATCH_PENDING) {
            snprintf(x->pend_rel[x->n_pend++], PATH_MAX, "%s%s%s", rel, rel[0] ? "/" : "",
                     ev->name);
        }
    }
    watch_kick(x);
}

static void watch_done(struct fsjob *j)
{
    struct fswatch *x = (struct fswatch *)j;
    x->busy = false;
    if (x->closing) {
        x->closing = false;
        list_init(&x->link);
        list_add_tail(&x->ws->all, &x->link);
        x->ws->n++;
        watch_close(x);
        return;
    }
    if (!x->started) {
        int e = j->cred_err ? j->cred_err : x->add_err;
        if (e < 0) {
            files_send_errno(x->ws->a, x->conn_no, &x->req, e, "watch", x->root);
            list_del(&x->link);
            x->ws->n--;
            close(x->fd);
            watch_free(x);
            return;
        }
        x->started = true;
        uv_poll_init(x->ws->a->loop, &x->poll, x->fd);
        x->poll.data = x;
        uv_poll_start(&x->poll, UV_READABLE, on_readable);
        struct msg_out o;
        if (ev_begin(&o, BOX_T_FILE_WATCHING, &x->req) == 0) {
            msg_kv_u64(&o, BOX_KEY(WATCH), x->id);
            msg_kv_u64(&o, BOX_KEY(DIRS), x->n_dirs);
            ev_close(&o);
            struct conn *c = conn_find(x->ws->a, x->conn_no);
            if (c)
                conn_send(c, &o);
            else
                msg_out_destroy(&o);
        }
        return;
    }
    x->n_pend = 0;
    watch_kick(x);
}

static void watch_kick(struct fswatch *x)
{
    if (x->busy || x->n_pend == 0 || x->closing)
        return;
    x->busy = true;
    fsworker_submit(x->ws->w, &x->j);
}

int fswatch_start(struct fswatches *ws, uint64_t conn_no, const struct reqtag *req,
                  const char *path, bool recursive, const struct fscred *cred, uint64_t *id)
{
    if (ws->n >= FILES_MAX_WATCHES)
        return -ENOSPC;
    struct fswatch *x = calloc(1, sizeof *x);
    if (x == NULL)
        return -ENOMEM;
    x->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (x->fd < 0) {
        int e = -errno;
        free(x);
        return e;
    }
    x->ws = ws;
    x->id = ++ws->next_id;
    x->conn_no = conn_no;
    x->req = *req;
    snprintf(x->root, sizeof x->root, "%s", path);
    x->recursive = recursive;
    x->j.cred = *cred;
    x->j.work = watch_work;
    x->j.done = watch_done;
    list_add_tail(&ws->all, &x->link);
    ws->n++;
    x->busy = true;
    fsworker_submit(ws->w, &x->j);
    *id = x->id;
    return 0;
}

int fswatch_stop(struct fswatches *ws, uint64_t conn_no, uint64_t id)
{
    struct list *pos;
    for (pos = ws->all.next; pos != &ws->all; pos = pos->next) {
        struct fswatch *x = container_of(pos, struct fswatch, link);
        if (x->id == id && x->conn_no == conn_no) {
            watch_close(x);
            return 0;
        }
    }
    return -ENOENT;
}

void fswatches_tick(struct fswatches *ws)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &ws->all)
    {
        struct fswatch *x = container_of(pos, struct fswatch, link);
        struct conn *c = conn_find(ws->a, x->conn_no);
        if (c == NULL || c->closing) {
            watch_close(x);
            continue;
        }
        if (x->paused && c->queued < FILES_WATCH_QUEUE / 2) {
            x->paused = false;
            uv_poll_start(&x->poll, UV_READABLE, on_readable);
        }
    }
}

void fswatches_free(struct fswatches *ws)
{
    if (ws == NULL)
        return;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &ws->all)
    {
        struct fswatch *x = container_of(pos, struct fswatch, link);
        x->busy = false; /* the threads are stopped */
        watch_close(x);
    }
    free(ws);
}
