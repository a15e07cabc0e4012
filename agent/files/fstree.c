#include "fstree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "files.h"
#include "fsops.h"

/* Below the root nothing is followed (fstree.h). */
#define TREE_RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
/* Elements in one frame at most (empty files and links are a few dozen bytes each). */
#define TREE_FRAME_ENTRIES 8192u

static int64_t mtime_of(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static struct timespec ts_of(int64_t ns)
{
    struct timespec t = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    if (t.tv_nsec < 0) {
        t.tv_sec--;
        t.tv_nsec += 1000000000;
    }
    return t;
}

/* The text of an entry's error: what failed and what to do next. */
static const char *why(int err)
{
    if (err == -FS_EREFUSED)
        return "not a regular file, directory or symbolic link, or on procfs/sysfs: refused";
    if (err == -ELOOP)
        return "a symbolic link is in the way: links inside a tree are never followed";
    if (err == -E2BIG)
        return "deeper than the tree's max_depth (tree_depth): copy that directory on its own";
    if (err == -EOVERFLOW)
        return "made, but without its mode and mtime: the tree has more directories than one "
               "writer keeps (32 MiB of names); copy it in parts";
    if (err == -EACCES || err == -EPERM)
        return "permission denied to the acting user";
    return strerror(-err);
}

/* ---- the reader ------------------------------------------------------------------------------ */

int tread_init(struct tread *t, const char *root, const struct dec_tree_caps *caps,
               const struct reqtag *req, uint32_t max_event)
{
    memset(t, 0, sizeof *t);
    snprintf(t->root, sizeof t->root, "%s", root);
    t->caps = *caps;
    t->req = *req;
    t->max_event = max_event;
    size_t room = max_event - FILES_TREE_HEADER - 256u;
    t->chunk = room < FILES_CHUNK ? (uint32_t)room : FILES_CHUNK;
    t->fd = -1;
    t->limit = -1;
    t->buf = malloc(t->chunk);
    return t->buf ? 0 : -ENOMEM;
}

void tread_free(struct tread *t)
{
    while (t->nlv > 0)
        closedir(t->lv[--t->nlv].dir);
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    free(t->buf);
    t->buf = NULL;
}

/* One frame being filled. */
struct frame {
    struct msg_out *o;
    size_t at;
    uint32_t n;
    uint32_t data;
};

static size_t frame_room(const struct tread *t, const struct frame *fr)
{
    size_t used = msg_out_size(fr->o) + FILES_TREE_HEADER;
    if (used >= t->max_event || fr->data >= t->chunk || fr->n >= TREE_FRAME_ENTRIES)
        return 0;
    size_t r = t->max_event - used;
    return r < t->chunk - fr->data ? r : t->chunk - fr->data;
}

static void put_name(struct msg_out *o, const char *name)
{
    msg_key(o, BOX_KEY(NAME));
    msg_data(o, name, strlen(name));
}

/* An entry that failed: name, kind when known, code and message. */
static void put_error(struct tread *t, struct frame *fr, const char *name, const char *kind,
                      int err)
{
    struct msg_out *o = fr->o;
    msg_map_open(o);
    put_name(o, name);
    if (kind)
        msg_kv_str(o, BOX_KEY(KIND), kind);
    msg_kv_str(o, BOX_KEY(CODE), box_err_str(err == -E2BIG ? BOX_ERR_TOO_LARGE : fs_code(err)));
    msg_kv_str(o, BOX_KEY(MESSAGE), why(err));
    msg_map_close(o);
    fr->n++;
    t->n.failed++;
}

static void put_head(struct msg_out *o, const char *name, const struct stat *st)
{
    put_name(o, name);
    msg_kv_str(o, BOX_KEY(KIND), fs_kind(st->st_mode));
    msg_kv_u64(o, BOX_KEY(MODE), st->st_mode & 07777);
    msg_kv_u64(o, BOX_KEY(SIZE), (uint64_t)st->st_size);
    msg_kv_i64(o, BOX_KEY(MTIME_NS), mtime_of(st));
}

/* The next data of the open file, up to room bytes, as `data` and `more`. */
static int put_data(struct tread *t, struct frame *fr, size_t room)
{
    size_t want = t->left < room ? (size_t)t->left : room;
    ssize_t n = 0;
    while (want > 0) {
        n = read(t->fd, t->buf, want);
        if (n >= 0 || errno != EINTR)
            break;
    }
    if (n < 0)
        return -errno;
    if (n == 0 || (size_t)n < want)
        t->left = (uint64_t)n; /* the file shrank: what is there is sent, and it ends */
    msg_key(fr->o, BOX_KEY(DATA));
    msgpack_pack_bin(&fr->o->pk, (size_t)n);
    msgpack_pack_bin_body(&fr->o->pk, t->buf, (size_t)n);
    t->left -= (uint64_t)n;
    t->n.bytes += (uint64_t)n;
    fr->data += (uint32_t)n;
    msg_kv_bool(fr->o, BOX_KEY(MORE), t->left > 0);
    if (t->left == 0) {
        close(t->fd);
        t->fd = -1;
    }
    return 0;
}

static int open_root(struct tread *t, struct frame *fr)
{
    int fd = fs_open(AT_FDCWD, t->root, O_RDONLY | O_DIRECTORY, 0, 0);
    if (fd < 0)
        return fd;
    struct stat st;
    int e = fstat(fd, &st) < 0 ? -errno : fs_refuse_special(fd);
    DIR *d = e == 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        if (e == 0)
            e = -errno;
        close(fd);
        return e;
    }
    t->lv[0].dir = d;
    t->lv[0].len = 0;
    t->nlv = 1;
    t->rel[0] = '\0';
    msg_map_open(fr->o);
    put_head(fr->o, ".", &st);
    msg_map_close(fr->o);
    fr->n++;
    t->n.dirs++;
    return 0;
}

/* The next entry of the walk into fr. Returns 0, or 1 when the walk is over. */
static int walk_one(struct tread *t, struct frame *fr, size_t room)
{
    struct tread_level *lv = &t->lv[t->nlv - 1];
    DIR *d = lv->dir;
    struct dirent *de = readdir(d);
    if (de == NULL) {
        closedir(d);
        t->nlv--;
        if (t->nlv == 0)
            return 1;
        t->rel[t->lv[t->nlv - 1].len] = '\0';
        return 0;
    }
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
        return 0;
    size_t base = lv->len;
    char name[PATH_MAX];
    if (snprintf(name, sizeof name, "%s%s%s", t->rel, base ? "/" : "", de->d_name) >=
        (int)sizeof name) {
        put_error(t, fr, de->d_name, NULL, -ENAMETOOLONG);
        return 0;
    }
    struct stat st;
    int dfd = dirfd(d);
    if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno != ENOENT) /* gone meanwhile: nothing to say */
            put_error(t, fr, name, NULL, -errno);
        return 0;
    }
    if (++t->entries > t->caps.entries) {
        t->limit = BOX_LIM_TREE_ENTRIES;
        return 1;
    }
    const char *kind = fs_kind(st.st_mode);
    if (S_ISREG(st.st_mode)) {
        if (t->n.bytes + (uint64_t)st.st_size > t->caps.bytes) {
            t->limit = BOX_LIM_TREE_BYTES;
            return 1;
        }
        int fd = fs_open(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0,
                         TREE_RESOLVE);
        struct stat now;
        int e = fd < 0 ? fd : fstat(fd, &now) < 0 ? -errno : 0;
        if (e == 0 && (!S_ISREG(now.st_mode) || now.st_ino != st.st_ino))
            e = -FS_EREFUSED; /* replaced between the lstat and the open */
        if (e < 0) {
            if (fd >= 0)
                close(fd);
            put_error(t, fr, name, kind, e);
            return 0;
        }
        t->fd = fd;
        t->left = (uint64_t)st.st_size;
        memcpy(t->fname, name, sizeof t->fname);
        msg_map_open(fr->o);
        put_head(fr->o, name, &st);
        e = t->left ? put_data(t, fr, room) : 0;
        if (t->left == 0 && t->fd >= 0) {
            close(t->fd);
            t->fd = -1;
        }
        msg_map_close(fr->o);
        fr->n++;
        if (e < 0) {
            /* A read error after the header: the file's data ends here, as an error. */
            if (t->fd >= 0)
                close(t->fd);
            t->fd = -1;
            t->left = 0;
            put_error(t, fr, name, kind, e);
            return 0;
        }
        t->n.files++;
        return 0;
    }
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlinkat(dfd, de->d_name, target, sizeof target - 1);
        if (n < 0) {
            put_error(t, fr, name, kind, -errno);
            return 0;
        }
        target[n] = '\0';
        msg_map_open(fr->o);
        put_head(fr->o, name, &st);
        msg_key(fr->o, BOX_KEY(TARGET));
        msg_data(fr->o, target, (size_t)n);
        msg_map_close(fr->o);
        fr->n++;
        t->n.symlinks++;
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) {
        put_error(t, fr, name, kind, -FS_EREFUSED); /* a FIFO, device or socket */
        return 0;
    }
    if (t->nlv >= t->caps.depth) { /* its entries would be deeper than max_depth */
        put_error(t, fr, name, kind, -E2BIG);
        return 0;
    }
    int fd = fs_open(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, TREE_RESOLVE);
    int e = fd < 0 ? fd : fs_refuse_special(fd);
    DIR *sub = e == 0 ? fdopendir(fd) : NULL;
    if (sub == NULL) {
        if (e == 0)
            e = -errno;
        if (fd >= 0)
            close(fd);
        put_error(t, fr, name, kind, e);
        return 0;
    }
    msg_map_open(fr->o);
    put_head(fr->o, name, &st);
    msg_map_close(fr->o);
    fr->n++;
    t->n.dirs++;
    size_t len = strlen(name);
    memcpy(t->rel, name, len + 1);
    t->lv[t->nlv].dir = sub;
    t->lv[t->nlv].len = len;
    t->nlv++;
    return 0;
}

int tread_step(struct tread *t, struct msg_out *frames, unsigned max, unsigned *n)
{
    *n = 0;
    while (*n < max && !t->finished && t->limit < 0) {
        struct msg_out *o = &frames[*n];
        if (ev_begin_sized(o, BOX_T_FILE_TREE_ENTRIES, &t->req, t->chunk + 64u * 1024u) < 0)
            return -ENOMEM;
        msg_key(o, BOX_KEY(ENTRIES));
        struct frame fr = {.o = o, .at = msg_array_open(o)};
        int e = 0;
        if (!t->started) {
            t->started = true;
            e = open_root(t, &fr);
            if (e < 0) {
                msg_out_destroy(o);
                return e;
            }
        }
        size_t room;
        while ((room = frame_room(t, &fr)) > 0) {
            if (t->fd >= 0) {
                /* A continuation of the file whose header came before. */
                msg_map_open(o);
                e = put_data(t, &fr, room);
                msg_map_close(o);
                fr.n++;
                if (e < 0) {
                    close(t->fd);
                    t->fd = -1;
                    t->left = 0;
                    put_error(t, &fr, t->fname, "file", e);
                }
                continue;
            }
            if (walk_one(t, &fr, room) > 0) {
                t->finished = true;
                break;
            }
            if (t->limit >= 0)
                break;
        }
        msg_array_close(o, fr.at, fr.n);
        ev_close(o);
        if (o->failed) {
            msg_out_destroy(o);
            return -ENOMEM;
        }
        (*n)++;
    }
    return 0;
}

/* ---- the writer ------------------------------------------------------------------------------ */

void twrite_init(struct twrite *w)
{
    w->rootfd = w->curfd = w->fd = w->fdir = -1;
}

int twrite_open(struct twrite *w)
{
    int fd = fs_open(AT_FDCWD, w->path, O_PATH | O_DIRECTORY, 0, 0);
    if (fd == -ENOENT) {
        char base[NAME_MAX + 1];
        int dfd;
        int e = fs_parent(w->path, w->mkdir_p, base, &dfd);
        if (e < 0)
            return e;
        if (mkdirat(dfd, base, 0755) < 0 && errno != EEXIST) {
            e = -errno;
            close(dfd);
            return e;
        }
        fd = fs_open(dfd, base, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0, TREE_RESOLVE);
        close(dfd);
    }
    if (fd < 0)
        return fd;
    struct stat st;
    int e = fstat(fd, &st) < 0 ? -errno : fs_refuse_special(fd);
    if (e < 0) {
        close(fd);
        return e;
    }
    w->rootfd = fd;
    w->rootdev = st.st_dev;
    return 0;
}

static void record(struct twrite *w, const char *name, int err)
{
    w->n.failed++;
    if (w->nerrs >= FILES_TREE_ERRORS)
        return;
    struct twrite_err *r = &w->errs[w->nerrs];
    r->name = strdup(name);
    r->message = strdup(why(err));
    r->code = err == -E2BIG || err == -EOVERFLOW ? BOX_ERR_TOO_LARGE : fs_code(err);
    if (r->name == NULL || r->message == NULL) {
        free(r->name);
        free(r->message);
        return;
    }
    w->nerrs++;
}

/* The directory holding name (relative) and name's last component. Returns a descriptor
 * owned by w (do not close), or a negative errno. */
static int parent_of(struct twrite *w, const char *name, char base[NAME_MAX + 1])
{
    const char *slash = strrchr(name, '/');
    const char *last = slash ? slash + 1 : name;
    size_t bl = strlen(last); /* decode_tree_name held each component to NAME_MAX */
    memcpy(base, last, bl > NAME_MAX ? NAME_MAX : bl);
    base[bl > NAME_MAX ? NAME_MAX : bl] = '\0';
    if (slash == NULL)
        return w->rootfd;
    size_t dl = (size_t)(slash - name);
    if (w->curfd >= 0 && strlen(w->cur) == dl && memcmp(w->cur, name, dl) == 0)
        return w->curfd;
    if (w->curfd >= 0)
        close(w->curfd);
    w->curfd = -1;
    memcpy(w->cur, name, dl);
    w->cur[dl] = '\0';
    int fd = fs_open(w->rootfd, w->cur, O_PATH | O_DIRECTORY, 0, TREE_RESOLVE);
    if (fd < 0)
        return fd;
    w->curfd = fd;
    return fd;
}

/* What is at base in dfd may be replaced by a file or link: 0, or why not. */
static int replaceable(struct twrite *w, int dfd, const char *base)
{
    struct stat st;
    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if (!w->overwrite)
        return -EEXIST;
    if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
        return -FS_EREFUSED;
    return 0;
}

static void tmp_name(struct twrite *w, char out[NAME_MAX + 1], const char *base)
{
    snprintf(out, NAME_MAX + 1, ".%.180s.boxd-%s-%u", base, w->id, w->seq++);
}

/* The files held: durable (one syncfs of the first one's file system, and an fsync each for
 * those on another), then renamed into place. Each is a whole file or nothing at its path. */
static void flush(struct twrite *w)
{
    int sync_err = 0;
    if (w->fsync && w->npend > 0 && syncfs(w->pend[0].fd) < 0)
        sync_err = -errno;
    for (unsigned i = 0; i < w->npend; i++) {
        struct twrite_pend *p = &w->pend[i];
        int e = sync_err;
        if (e == 0 && w->fsync && p->dev != w->pend[0].dev && fsync(p->fd) < 0)
            e = -errno;
        close(p->fd);
        if (e == 0 && syscall(SYS_renameat2, p->dirfd, p->tmp, p->dirfd, p->base,
                              w->overwrite ? 0 : RENAME_NOREPLACE) < 0)
            e = -errno;
        if (e < 0) {
            unlinkat(p->dirfd, p->tmp, 0);
            record(w, p->name, e);
        } else {
            w->n.files++;
        }
        close(p->dirfd);
        free(p->name);
    }
    w->npend = 0;
}

void twrite_flush(struct twrite *w)
{
    flush(w);
}

static void file_fail(struct twrite *w, int err)
{
    if (w->fd >= 0) {
        close(w->fd);
        unlinkat(w->fdir, w->tmp, 0);
        close(w->fdir);
    }
    w->fd = w->fdir = -1;
    record(w, w->name, err);
}

static void file_write(struct twrite *w, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(w->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            file_fail(w, n < 0 ? -errno : -EIO);
            return;
        }
        data += n;
        len -= (size_t)n;
        w->n.bytes += (uint64_t)n;
    }
}

/* The file's data is complete: its mode and mtime, then it waits for the batch's rename. */
static void file_end(struct twrite *w)
{
    if (fchmod(w->fd, w->mode) < 0) {
        file_fail(w, -errno);
        return;
    }
    if (w->has_mtime) {
        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, ts_of(w->mtime_ns)};
        if (futimens(w->fd, ts) < 0) {
            file_fail(w, -errno);
            return;
        }
    }
    struct stat st;
    struct twrite_pend *p = &w->pend[w->npend];
    p->name = strdup(w->name);
    if (p->name == NULL) {
        file_fail(w, -ENOMEM);
        return;
    }
    p->dev = fstat(w->fd, &st) == 0 ? st.st_dev : w->rootdev;
    p->fd = w->fd;
    p->dirfd = w->fdir;
    memcpy(p->tmp, w->tmp, sizeof p->tmp);
    memcpy(p->base, w->base, sizeof p->base);
    w->fd = w->fdir = -1;
    if (++w->npend == FILES_TREE_BATCH)
        flush(w);
}

static void apply_file(struct twrite *w, const struct dec_tree_entry *e, int dfd)
{
    int err = replaceable(w, dfd, w->base);
    if (err == 0) {
        tmp_name(w, w->tmp, w->base);
        int fd = fs_open(dfd, w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600,
                         RESOLVE_BENEATH);
        int dup_fd = fd >= 0 ? fcntl(dfd, F_DUPFD_CLOEXEC, 0) : -1;
        if (fd >= 0 && dup_fd < 0) {
            err = -errno;
            unlinkat(dfd, w->tmp, 0);
            close(fd);
        } else if (fd < 0) {
            err = fd;
        } else {
            w->fd = fd;
            w->fdir = dup_fd;
        }
    }
    if (err < 0) {
        record(w, w->name, err);
        w->skip = e->more;
        return;
    }
    w->mode = e->has_mode ? e->mode : 0644;
    w->has_mtime = e->has_mtime;
    w->mtime_ns = e->mtime_ns;
    file_write(w, e->data, e->data_len);
    if (w->fd < 0)
        w->skip = e->more;
    else if (!e->more)
        file_end(w);
}

static int add_dir(struct twrite *w, const char *name, const struct dec_tree_entry *e,
                   bool made)
{
    if (!made && !e->has_mode && !e->has_mtime)
        return 0;
    size_t need = strlen(name) + 1 + sizeof(struct twrite_dir);
    if (w->dir_bytes + need > FILES_TREE_DIR_BYTES)
        return -EOVERFLOW; /* made, but its mode and mtime are not kept: reported */
    if (w->ndirs == w->capdirs) {
        size_t cap = w->capdirs ? w->capdirs * 2 : 256;
        struct twrite_dir *d = realloc(w->dirs, cap * sizeof *d);
        if (d == NULL)
            return -ENOMEM;
        w->dirs = d;
        w->capdirs = cap;
    }
    struct twrite_dir *d = &w->dirs[w->ndirs];
    d->name = strdup(name);
    if (d->name == NULL)
        return -ENOMEM;
    d->has_mode = true;
    d->mode = e->has_mode ? e->mode : 0755;
    if (!e->has_mode && !made)
        d->has_mode = false;
    d->has_mtime = e->has_mtime;
    d->mtime_ns = e->mtime_ns;
    w->ndirs++;
    w->dir_bytes += need;
    return 0;
}

void twrite_apply(struct twrite *w, const struct dec_tree_entry *e)
{
    if (e->continuation) {
        if (w->skip) {
            w->skip = e->more;
            return;
        }
        file_write(w, e->data, e->data_len);
        if (w->fd < 0)
            w->skip = e->more;
        else if (!e->more)
            file_end(w);
        return;
    }
    w->entries++;
    snprintf(w->name, sizeof w->name, "%.*s", (int)e->name_len, e->name);
    w->skip = false;
    if (e->depth > w->caps.depth || (e->kind == 'd' && e->depth >= w->caps.depth)) {
        record(w, w->name, -E2BIG);
        w->skip = e->more;
        return;
    }
    if (e->depth == 0) { /* ".": the root's own mode and mtime, at the end */
        int err = add_dir(w, ".", e, false);
        if (err < 0)
            record(w, w->name, err);
        return;
    }
    int dfd = parent_of(w, w->name, w->base);
    if (dfd < 0) {
        record(w, w->name, dfd);
        w->skip = e->more;
        return;
    }
    int err = 0;
    switch (e->kind) {
    case 'f':
        apply_file(w, e, dfd);
        return;
    case 'd': {
        bool made = mkdirat(dfd, w->base, 0700) == 0;
        struct stat st;
        if (!made && errno != EEXIST)
            err = -errno;
        else if (!made && (fstatat(dfd, w->base, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                           !S_ISDIR(st.st_mode)))
            err = -EEXIST; /* a file or a link is in the way: never followed */
        if (err == 0)
            err = add_dir(w, w->name, e, made);
        if (err == 0 || err == -EOVERFLOW)
            w->n.dirs++;
        break;
    }
    case 'l': {
        char target[PATH_MAX], tmp[NAME_MAX + 1];
        snprintf(target, sizeof target, "%.*s", (int)e->target_len, e->target);
        err = replaceable(w, dfd, w->base);
        if (err == -EISDIR)
            err = -EEXIST;
        if (err == 0) {
            tmp_name(w, tmp, w->base);
            if (symlinkat(target, dfd, tmp) < 0)
                err = -errno;
            else if (syscall(SYS_renameat2, dfd, tmp, dfd, w->base,
                             w->overwrite ? 0 : RENAME_NOREPLACE) < 0) {
                err = -errno;
                unlinkat(dfd, tmp, 0);
            }
        }
        if (err == 0 && e->has_mtime) {
            struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, ts_of(e->mtime_ns)};
            utimensat(dfd, w->base, ts, AT_SYMLINK_NOFOLLOW);
        }
        if (err == 0)
            w->n.symlinks++;
        break;
    }
    default:
        err = -FS_EREFUSED;
        break;
    }
    if (err < 0)
        record(w, w->name, err);
}

void twrite_finish(struct twrite *w)
{
    flush(w);
    if (w->curfd >= 0)
        close(w->curfd);
    w->curfd = -1;
    /* Deepest first: entries came parents before children, so backwards. A directory's mtime
     * is set once nothing more is made in it. */
    for (size_t i = w->ndirs; i-- > 0;) {
        struct twrite_dir *d = &w->dirs[i];
        int fd = fs_open(w->rootfd, d->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0,
                         TREE_RESOLVE);
        int e = fd < 0 ? fd : 0;
        if (e == 0 && d->has_mode && fchmod(fd, d->mode) < 0)
            e = -errno;
        if (e == 0 && d->has_mtime) {
            struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, ts_of(d->mtime_ns)};
            if (futimens(fd, ts) < 0)
                e = -errno;
        }
        if (fd >= 0)
            close(fd);
        if (e < 0)
            record(w, d->name, e);
    }
    if (w->rootfd >= 0)
        close(w->rootfd);
    w->rootfd = -1;
}

void twrite_discard(struct twrite *w, bool unlink_temps)
{
    if (w->fd >= 0) {
        close(w->fd);
        if (unlink_temps)
            unlinkat(w->fdir, w->tmp, 0);
        close(w->fdir);
        w->fd = w->fdir = -1;
    }
    for (unsigned i = 0; i < w->npend; i++) {
        close(w->pend[i].fd);
        if (unlink_temps)
            unlinkat(w->pend[i].dirfd, w->pend[i].tmp, 0);
        close(w->pend[i].dirfd);
        free(w->pend[i].name);
    }
    w->npend = 0;
    if (w->curfd >= 0)
        close(w->curfd);
    if (w->rootfd >= 0)
        close(w->rootfd);
    w->curfd = w->rootfd = -1;
}

void twrite_free(struct twrite *w)
{
    for (size_t i = 0; i < w->ndirs; i++)
        free(w->dirs[i].name);
    free(w->dirs);
    w->dirs = NULL;
    w->ndirs = w->capdirs = 0;
    for (unsigned i = 0; i < w->nerrs; i++) {
        free(w->errs[i].name);
        free(w->errs[i].message);
    }
    w->nerrs = 0;
}

void twrite_put_result(const struct twrite *w, struct msg_out *o, size_t max_bytes)
{
    msg_kv_str(o, BOX_KEY(TREE_ID), w->id);
    msg_kv_str(o, BOX_KEY(PATH), w->path);
    msg_kv_u64(o, BOX_KEY(FILES), w->n.files);
    msg_kv_u64(o, BOX_KEY(DIRS), w->n.dirs);
    msg_kv_u64(o, BOX_KEY(SYMLINKS), w->n.symlinks);
    msg_kv_u64(o, BOX_KEY(BYTES), w->n.bytes);
    msg_kv_u64(o, BOX_KEY(FAILED), w->n.failed);
    msg_key(o, BOX_KEY(ERRORS));
    size_t at = msg_array_open(o);
    uint32_t n = 0;
    for (unsigned i = 0; i < w->nerrs && msg_out_size(o) + FILES_TREE_HEADER < max_bytes; i++) {
        msg_map_open(o);
        put_name(o, w->errs[i].name);
        msg_kv_str(o, BOX_KEY(CODE), box_err_str(w->errs[i].code));
        msg_kv_str(o, BOX_KEY(MESSAGE), w->errs[i].message);
        msg_map_close(o);
        n++;
    }
    msg_array_close(o, at, n);
}
