/* boxctl cp, ls, rm, mkdir, watch: files in and out of the box over the file requests
 * (PROTOCOL.md section 12). Their rows are in main.c's command table, their options in
 * options.c. */
#include "boxctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "json.h"

#define CP_CHUNK (512u * 1024u)
#define CP_WINDOW (8u * 1024u * 1024u) /* under the agent's file_window */
#define CP_TIMEOUT_MS 120000
#define CP_MAX_ERRORS 1000

__attribute__((format(printf, 1, 2))) static void err(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    fprintf(stderr, "boxctl: %.*s", n, buf);
}

/* ---- the session ------------------------------------------------------------------------ */

struct fx {
    struct box_client c;
    struct box_msg m;
    const char *user;
    bool archive, json, tty;
    mode_t umask;
    uint64_t files, dirs, symlinks, bytes;
    struct ferr {
        char *path, *code, *msg;
    } errs[CP_MAX_ERRORS];
    unsigned n_errs;
    struct timespec t0, last_progress;
    bool progress_shown;
};

static double since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

static void progress(struct fx *x, bool final)
{
    if (!x->tty)
        return;
    double t = since(&x->t0);
    if (!final && (t < 1.0 || since(&x->last_progress) < 0.2))
        return;
    if (final && !x->progress_shown)
        return;
    clock_gettime(CLOCK_MONOTONIC, &x->last_progress);
    fprintf(stderr, "\r%llu files, %llu dirs, %.1f MiB, %.1f MiB/s%s",
            (unsigned long long)x->files, (unsigned long long)x->dirs, (double)x->bytes / 1048576.0,
            t > 0 ? (double)x->bytes / 1048576.0 / t : 0.0, final ? "\n" : "   ");
    x->progress_shown = true;
}

/* Records a failed entry: on stderr, and in the JSON errors. */
static void entry_failed(struct fx *x, const char *path, const char *code, const char *msg)
{
    if (x->tty && x->progress_shown)
        fputc('\n', stderr);
    err("%s: %s: %s", path, code, msg);
    if (x->n_errs < CP_MAX_ERRORS) {
        struct ferr *f = &x->errs[x->n_errs];
        f->path = strdup(path);
        f->code = strdup(code);
        f->msg = strdup(msg);
    }
    x->n_errs++;
}

static int reply_str(const struct box_msg *m, const char *key, char *out, size_t cap)
{
    const char *s;
    size_t n;
    if (msg_get_bytes(&m->root, key, &s, &n) < 0) {
        out[0] = '\0';
        return -1;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static void reply_failed(struct fx *x, const char *path)
{
    char code[64], text[512];
    if (box_msg_is(&x->m, BOX_TYPE(ERROR))) {
        reply_str(&x->m, BOX_KEY(CODE), code, sizeof code);
        reply_str(&x->m, BOX_KEY(MESSAGE), text, sizeof text);
    } else {
        snprintf(code, sizeof code, "protocol");
        snprintf(text, sizeof text, "unexpected reply");
    }
    entry_failed(x, path, code, text);
}

static void put_user(struct fx *x, struct msg_out *o)
{
    if (x->user) {
        msg_key(o, BOX_REQ_KEY(USER));
        msg_str(o, x->user);
    }
}

/* Sends o (with nfields already counted by the caller) and waits for its answer in x->m.
 * Returns 0 (a non-error reply), 1 (an error reply), or -1 (the connection failed). */
static int call(struct fx *x, struct msg_out *o, uint64_t req)
{
    int r = box_client_call(&x->c, o, req, &x->m, CP_TIMEOUT_MS);
    if (r == -EREMOTEIO)
        return 1;
    if (r < 0) {
        err("the connection to the agent failed: %s", strerror(-r));
        return -1;
    }
    return 0;
}

/* file_stat of a box path: 0 with *kind set ('f', 'd', 'l', other), 1 not found/error, -1. */
static int remote_kind(struct fx *x, const char *path, char *kind)
{
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_STAT), 1 + (x->user != NULL), &req) < 0)
        return -1;
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, path);
    put_user(x, &o);
    int r = call(x, &o, req);
    if (r != 0)
        return r;
    const msgpack_object *e = msg_get(&x->m.root, BOX_KEY(ENTRY));
    const char *k;
    size_t kl;
    if (e == NULL || msg_get_str(e, BOX_KEY(KIND), &k, &kl) < 0)
        return 1;
    *kind = kl == 3 && memcmp(k, "dir", 3) == 0 ? 'd' : kl == 4 && memcmp(k, "file", 4) == 0 ? 'f'
            : kl == 7 && memcmp(k, "symlink", 7) == 0 ? 'l' : '?';
    return 0;
}

static int remote_mkdir(struct fx *x, const char *path_in, mode_t mode)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", path_in);
    for (size_t n = strlen(path); n > 1 && path[n - 1] == '/'; n--)
        path[n - 1] = '\0';
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_MKDIR), 3 + (x->user != NULL), &req) < 0)
        return -1;
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, path);
    msg_key(&o, BOX_REQ_KEY(PARENTS));
    msgpack_pack_true(&o.pk);
    msg_key(&o, BOX_REQ_KEY(MODE));
    msg_u64(&o, mode & 07777);
    put_user(x, &o);
    int r = call(x, &o, req);
    if (r == 1)
        reply_failed(x, path);
    else if (r == 0)
        x->dirs++;
    return r;
}

/* ---- into the box ----------------------------------------------------------------------- */

static int upload_file(struct fx *x, const char *local, const char *remote, const struct stat *st,
                       bool in_tree)
{
    int fd = open(local, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        entry_failed(x, local, "local", strerror(errno));
        return 1;
    }
    struct msg_out o;
    uint64_t req;
    mode_t mode = x->archive ? st->st_mode & 07777 : st->st_mode & 0777 & ~x->umask;
    /* The upload's id is a hash of what is copied where: a boxctl killed mid-upload and run
     * again gets the same id, and the agent says how much of the file it already holds. */
    char uid[20];
    uint64_t h = 1469598103934665603ull;
    char key[PATH_MAX + 128];
    int kl = snprintf(key, sizeof key, "%s|%llu|%lld|%llu|%s", remote,
                      (unsigned long long)st->st_size,
                      (long long)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
                      (unsigned long long)st->st_ino, x->user ? x->user : "");
    for (int i = 0; i < kl && i < (int)sizeof key; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    snprintf(uid, sizeof uid, "cp-%016llx", (unsigned long long)h);
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_WRITE), 4 + (x->user != NULL) + x->archive + in_tree,
                      &req) < 0)
        goto oom;
    /* The connection's own integrity is boxctl's check. */
    msg_kv_bool(&o, BOX_REQ_KEY(HASH), false);
    if (in_tree)
        msg_kv_bool(&o, BOX_REQ_KEY(FSYNC), false); /* not one by one: --help says so */
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, remote);
    msg_key(&o, BOX_REQ_KEY(UPLOAD_ID));
    msg_str(&o, uid);
    msg_key(&o, BOX_REQ_KEY(MODE));
    msg_u64(&o, mode);
    if (x->archive) {
        msg_key(&o, BOX_REQ_KEY(MTIME_NS));
        msg_i64(&o, (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec);
    }
    put_user(x, &o);
    int r = call(x, &o, req);
    if (r != 0) {
        if (r == 1)
            reply_failed(x, local);
        close(fd);
        return r;
    }
    char id[40];
    reply_str(&x->m, BOX_KEY(UPLOAD_ID), id, sizeof id);
    char *buf = malloc(CP_CHUNK);
    if (buf == NULL)
        goto oom;
    uint64_t off = 0, acked = 0, final_req = 0;
    if (msg_get_u64(&x->m.root, BOX_KEY(OFFSET), &off) == 0 && off > 0) {
        /* Resumed: go on from what the agent holds. */
        if (lseek(fd, (off_t)off, SEEK_SET) < 0) {
            entry_failed(x, local, "local", strerror(errno));
            free(buf);
            close(fd);
            return 1;
        }
        acked = off;
    }
    bool eof = false, failed = false;
    unsigned inflight = 0;
    int ret = 0;
    while (!eof || inflight > 0) {
        /* Send while the window has room; else read one answer. */
        if (!eof && off - acked + CP_CHUNK <= CP_WINDOW) {
            ssize_t n = read(fd, buf, CP_CHUNK);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                entry_failed(x, local, "local", strerror(errno));
                failed = true;
                eof = true;
                continue;
            }
            struct stat now;
            bool last = n == 0 || (fstat(fd, &now) == 0 && off + (uint64_t)n >= (uint64_t)now.st_size);
            if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_DATA), 4, &req) < 0)
                goto oom2;
            msg_key(&o, BOX_REQ_KEY(UPLOAD_ID));
            msg_str(&o, id);
            msg_key(&o, BOX_REQ_KEY(OFFSET));
            msg_u64(&o, off);
            msg_key(&o, BOX_REQ_KEY(DATA));
            msgpack_pack_bin(&o.pk, (size_t)n);
            msgpack_pack_bin_body(&o.pk, buf, (size_t)n);
            msg_kv_bool(&o, BOX_REQ_KEY(EOF_), last);
            int e = box_client_send(&x->c, &o);
            if (e < 0) {
                err("the connection to the agent failed: %s", strerror(-e));
                ret = -1;
                break;
            }
            off += (uint64_t)n;
            inflight++;
            if (last) {
                eof = true;
                final_req = req;
            }
            progress(x, false);
            continue;
        }
        int e = box_client_recv(&x->c, &x->m, CP_TIMEOUT_MS);
        if (e < 0) {
            err("the connection to the agent failed: %s", strerror(-e));
            ret = -1;
            break;
        }
        if (!x->m.has_req)
            continue;
        inflight--;
        if (box_msg_is(&x->m, BOX_TYPE(ERROR))) {
            if (!failed)
                reply_failed(x, local);
            failed = true;
        } else if (box_msg_is(&x->m, BOX_TYPE(FILE_ACK))) {
            uint64_t a;
            if (msg_get_u64(&x->m.root, BOX_KEY(OFFSET), &a) == 0 && a > acked) {
                x->bytes += a - acked;
                acked = a;
            }
        } else if (x->m.req == final_req && box_msg_is(&x->m, BOX_TYPE(FILE_WRITTEN))) {
            x->bytes += off - acked;
            acked = off;
        }
    }
    free(buf);
    close(fd);
    if (ret < 0)
        return -1;
    if (failed)
        return 1;
    x->files++;
    return 0;
oom2:
    free(buf);
oom:
    close(fd);
    err("out of memory");
    return -1;
}

static int upload_path(struct fx *x, const char *local, const char *remote, unsigned depth)
{
    struct stat st;
    if (lstat(local, &st) < 0) {
        entry_failed(x, local, "local", strerror(errno));
        return 1;
    }
    if (S_ISREG(st.st_mode))
        return upload_file(x, local, remote, &st, depth > 0);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(local, target, sizeof target - 1);
        if (n < 0) {
            entry_failed(x, local, "local", strerror(errno));
            return 1;
        }
        target[n] = '\0';
        struct msg_out o;
        uint64_t req;
        if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_SYMLINK), 2 + (x->user != NULL), &req) < 0)
            return -1;
        msg_key(&o, BOX_REQ_KEY(PATH));
        msg_str(&o, remote);
        msg_key(&o, BOX_REQ_KEY(TARGET));
        msg_str(&o, target);
        put_user(x, &o);
        int r = call(x, &o, req);
        if (r == 1)
            reply_failed(x, local);
        else if (r == 0)
            x->symlinks++;
        return r;
    }
    if (!S_ISDIR(st.st_mode)) {
        entry_failed(x, local, box_err_str(BOX_ERR_REFUSED),
                     "not a regular file, directory or symbolic link");
        return 1;
    }
    if (depth > 64) {
        entry_failed(x, local, box_err_str(BOX_ERR_TOO_LARGE), "deeper than 64 levels");
        return 1;
    }
    int r = remote_mkdir(x, remote, x->archive ? st.st_mode : 0755);
    if (r != 0)
        return r;
    DIR *d = opendir(local);
    if (d == NULL) {
        entry_failed(x, local, "local", strerror(errno));
        return 1;
    }
    int ret = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char l[PATH_MAX], rp[PATH_MAX];
        if (snprintf(l, sizeof l, "%s/%s", local, de->d_name) >= (int)sizeof l ||
            snprintf(rp, sizeof rp, "%s/%s", remote, de->d_name) >= (int)sizeof rp) {
            entry_failed(x, local, box_err_str(BOX_ERR_TOO_LARGE), "path too long");
            ret = 1;
            continue;
        }
        int e = upload_path(x, l, rp, depth + 1);
        if (e < 0) {
            ret = -1;
            break;
        }
        if (e > 0)
            ret = 1;
    }
    closedir(d);
    if (ret == 0 && x->archive) {
        struct msg_out o;
        uint64_t req;
        if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_CHMOD), 3 + (x->user != NULL), &req) == 0) {
            msg_key(&o, BOX_REQ_KEY(PATH));
            msg_str(&o, remote);
            msg_key(&o, BOX_REQ_KEY(MODE));
            msg_u64(&o, st.st_mode & 07777);
            msg_key(&o, BOX_REQ_KEY(MTIME_NS));
            msg_i64(&o, (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
            put_user(x, &o);
            if (call(x, &o, req) == 1)
                reply_failed(x, remote);
        }
    }
    return ret;
}

/* ---- out of the box ---------------------------------------------------------------------- */

static int download_file(struct fx *x, const char *remote, const char *local)
{
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_READ), 2 + (x->user != NULL), &req) < 0)
        return -1;
    msg_kv_bool(&o, BOX_REQ_KEY(SHA256), false);
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, remote);
    put_user(x, &o);
    int r = call(x, &o, req);
    if (r == 1) {
        reply_failed(x, remote);
        return 1;
    }
    if (r < 0)
        return -1;
    uint64_t mode = 0644;
    int64_t mtime = 0;
    msg_get_u64(&x->m.root, BOX_KEY(MODE), &mode);
    msg_get_i64(&x->m.root, BOX_KEY(MTIME_NS), &mtime);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.boxctl-%d", local, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        entry_failed(x, local, "local", strerror(errno));
        /* Drain this read's events. */
    }
    bool failed = fd < 0;
    for (;;) {
        int e = box_client_recv(&x->c, &x->m, CP_TIMEOUT_MS);
        if (e < 0) {
            err("the connection to the agent failed: %s", strerror(-e));
            if (fd >= 0) {
                close(fd);
                unlink(tmp);
            }
            return -1;
        }
        if (!x->m.has_req || x->m.req != req)
            continue;
        if (box_msg_is(&x->m, BOX_TYPE(FILE_CHUNK))) {
            const char *d;
            size_t n;
            if (!failed && msg_get_bytes(&x->m.root, BOX_KEY(DATA), &d, &n) == 0) {
                while (n > 0) {
                    ssize_t w = write(fd, d, n);
                    if (w < 0 && errno == EINTR)
                        continue;
                    if (w < 0) {
                        entry_failed(x, local, "local", strerror(errno));
                        failed = true;
                        break;
                    }
                    d += w;
                    n -= (size_t)w;
                    x->bytes += (uint64_t)w;
                }
            }
            progress(x, false);
            continue;
        }
        if (box_msg_is(&x->m, BOX_TYPE(ERROR))) {
            if (!failed)
                reply_failed(x, remote);
            failed = true;
        }
        break; /* file_end or error */
    }
    if (fd >= 0) {
        mode_t m = x->archive ? (mode_t)mode : (mode_t)mode & 0777 & ~x->umask;
        /* No fsync, as cp(1) and tar(1): the rename makes it atomic for readers. */
        if (!failed && fchmod(fd, m) < 0) {
            entry_failed(x, local, "local", strerror(errno));
            failed = true;
        }
        if (!failed && x->archive) {
            struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                     {.tv_sec = mtime / 1000000000, .tv_nsec = mtime % 1000000000}};
            futimens(fd, ts);
        }
        close(fd);
        if (!failed && rename(tmp, local) < 0) {
            entry_failed(x, local, "local", strerror(errno));
            failed = true;
        }
        if (failed)
            unlink(tmp);
    }
    if (failed)
        return 1;
    x->files++;
    return 0;
}

struct rentry {
    char *name; /* relative */
    char kind;
    uint64_t mode;
    int64_t mtime;
    char *target;
};

static char *dupobj(const msgpack_object *m, const char *key)
{
    const char *s;
    size_t n;
    if (msg_get_bytes(m, key, &s, &n) < 0)
        return NULL;
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int download_tree(struct fx *x, const char *remote, const char *local, unsigned depth,
                         const struct rentry *self)
{
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_LIST), 2 + (x->user != NULL), &req) < 0)
        return -1;
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, remote);
    msg_key(&o, BOX_REQ_KEY(DEPTH));
    msg_u64(&o, 1); /* one directory at a time: each listing fits one frame */
    put_user(x, &o);
    if (depth > 64) {
        msg_out_destroy(&o);
        entry_failed(x, remote, box_err_str(BOX_ERR_TOO_LARGE), "deeper than 64 levels");
        return 1;
    }
    int r = call(x, &o, req);
    if (r == 1) {
        reply_failed(x, remote);
        return 1;
    }
    if (r < 0)
        return -1;
    bool truncated = false;
    msg_get_bool(&x->m.root, BOX_KEY(TRUNCATED), &truncated);
    const msgpack_object *ents = msg_get(&x->m.root, BOX_KEY(ENTRIES));
    uint32_t n = ents && ents->type == MSGPACK_OBJECT_ARRAY ? ents->via.array.size : 0;
    struct rentry *es = calloc(n ? n : 1, sizeof *es);
    if (es == NULL)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &ents->via.array.ptr[i];
        es[i].name = dupobj(e, BOX_KEY(NAME));
        char *k = dupobj(e, BOX_KEY(KIND));
        es[i].kind = !k ? '?' : strcmp(k, "dir") == 0 ? 'd' : strcmp(k, "file") == 0 ? 'f'
                     : strcmp(k, "symlink") == 0 ? 'l' : '?';
        free(k);
        msg_get_u64(e, BOX_KEY(MODE), &es[i].mode);
        msg_get_i64(e, BOX_KEY(MTIME_NS), &es[i].mtime);
        es[i].target = dupobj(e, "target");
    }
    int ret = 0;
    if (mkdir(local, 0700) < 0 && errno != EEXIST) {
        entry_failed(x, local, "local", strerror(errno));
        ret = 1;
        goto out;
    }
    x->dirs++;
    for (uint32_t i = 0; i < n && ret >= 0; i++) {
        char l[PATH_MAX], rp[PATH_MAX];
        if (!es[i].name)
            continue;
        if (snprintf(l, sizeof l, "%s/%s", local, es[i].name) >= (int)sizeof l ||
            snprintf(rp, sizeof rp, "%s/%s", remote, es[i].name) >= (int)sizeof rp) {
            entry_failed(x, es[i].name, "too_large", "path too long");
            ret = ret < 0 ? ret : 1;
            continue;
        }
        int e = 0;
        if (es[i].kind == 'd') {
            e = download_tree(x, rp, l, depth + 1, &es[i]);
        } else if (es[i].kind == 'f') {
            e = download_file(x, rp, l);
        } else if (es[i].kind == 'l' && es[i].target) {
            unlink(l);
            if (symlink(es[i].target, l) < 0) {
                entry_failed(x, l, "local", strerror(errno));
                e = 1;
            } else {
                x->symlinks++;
                if (x->archive) {
                    struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                             {.tv_sec = es[i].mtime / 1000000000,
                                              .tv_nsec = es[i].mtime % 1000000000}};
                    utimensat(AT_FDCWD, l, ts, AT_SYMLINK_NOFOLLOW);
                }
            }
        } else {
            entry_failed(x, rp, "refused", "not a regular file, directory or symbolic link");
            e = 1;
        }
        if (e < 0)
            ret = -1;
        else if (e > 0)
            ret = 1;
    }
    /* The directory's own mode and mtime last, once nothing more is written in it (it was
     * made 0700 while it was filled). */
    if (self) {
        chmod(local, x->archive ? (mode_t)self->mode : (mode_t)self->mode & 0777 & ~x->umask);
        if (x->archive) {
            struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                     {.tv_sec = self->mtime / 1000000000,
                                      .tv_nsec = self->mtime % 1000000000}};
            utimensat(AT_FDCWD, local, ts, 0);
        }
    } else {
        chmod(local, 0777 & ~x->umask);
    }
    if (truncated) {
        entry_failed(x, remote, box_err_str(BOX_ERR_TOO_LARGE),
                     "more entries in one directory than one listing holds");
        ret = ret < 0 ? ret : 1;
    }
out:
    for (uint32_t i = 0; i < n; i++) {
        free(es[i].name);
        free(es[i].target);
    }
    free(es);
    return ret;
}

/* ---- whole trees in one request (PROTOCOL.md 12.8) ------------------------------------------ */

/* Bytes of entries in one file_tree_data at most, and of one element's data: under the agent's
 * max_frame with room for a header. */
#define CP_TREE_FRAME (768u * 1024u)
#define CP_TREE_HEADER (2u * PATH_MAX + 512u)

struct tup {
    struct fx *x;
    const char *local;  /* the tree's root, for the names of failed entries */
    char id[40];
    struct msg_out o;   /* the file_tree_data being built */
    bool building;
    size_t at;
    uint32_t n;
    uint64_t inflight;  /* bytes sent and not yet acknowledged */
    unsigned waiting;   /* requests not yet answered */
    size_t frame_cap, piece;
    char *buf;
    bool failed;        /* the tree itself failed (an error reply): stop */
    uint64_t final_req;
};

static int tup_begin(struct tup *u)
{
    uint64_t req;
    if (box_req_begin(&u->x->c, &u->o, BOX_TYPE(FILE_TREE_DATA), 3, &req) < 0)
        return -1;
    msg_key(&u->o, BOX_REQ_KEY(TREE_ID));
    msg_str(&u->o, u->id);
    msg_key(&u->o, BOX_REQ_KEY(ENTRIES));
    u->at = msg_array_open(&u->o);
    u->n = 0;
    u->building = true;
    u->final_req = req;
    return 0;
}

/* Reads one answer to a file_tree_data: an ack (progress), the end, or an error. */
static int tup_recv(struct tup *u)
{
    struct fx *x = u->x;
    int e = box_client_recv(&x->c, &x->m, CP_TIMEOUT_MS);
    if (e < 0) {
        err("the connection to the agent failed: %s", strerror(-e));
        return -1;
    }
    if (!x->m.has_req)
        return 0;
    u->waiting--;
    if (box_msg_is(&x->m, BOX_TYPE(ERROR))) {
        if (!u->failed)
            reply_failed(x, u->local);
        u->failed = true;
    } else if (box_msg_is(&x->m, BOX_TYPE(FILE_TREE_ACK))) {
        uint64_t b;
        if (msg_get_u64(&x->m.root, BOX_KEY(BYTES), &b) == 0 && b > x->bytes)
            x->bytes = b;
        u->inflight = u->inflight > CP_TREE_FRAME ? u->inflight - CP_TREE_FRAME : 0;
        progress(x, false);
    }
    return 0;
}

/* Sends the request being built (eof: the last), keeping the window. */
static int tup_send(struct tup *u, bool eof)
{
    struct fx *x = u->x;
    msg_array_close(&u->o, u->at, u->n);
    msg_kv_bool(&u->o, BOX_REQ_KEY(EOF_), eof);
    u->building = false;
    while (u->inflight + CP_TREE_FRAME > CP_WINDOW && u->waiting > 0)
        if (tup_recv(u) < 0)
            return -1;
    int e = box_client_send(&x->c, &u->o);
    if (e < 0) {
        err("the connection to the agent failed: %s", strerror(-e));
        return -1;
    }
    u->inflight += CP_TREE_FRAME;
    u->waiting++;
    return 0;
}

/* Room for an element with n data bytes: sends the current request first if it is full. */
static int tup_room(struct tup *u, size_t n)
{
    if (u->building && msg_out_size(&u->o) + n + CP_TREE_HEADER > u->frame_cap &&
        tup_send(u, false) < 0)
        return -1;
    if (!u->building && tup_begin(u) < 0)
        return -1;
    return u->failed ? -2 : 0;
}

static void tup_head(struct tup *u, const char *rel, const struct stat *st, const char *kind,
                     bool mode)
{
    struct fx *x = u->x;
    msg_map_open(&u->o);
    msg_key(&u->o, BOX_KEY(NAME));
    msg_str(&u->o, rel);
    msg_key(&u->o, BOX_KEY(KIND));
    msg_str(&u->o, kind);
    if (mode) {
        msg_key(&u->o, BOX_KEY(MODE));
        msg_u64(&u->o, x->archive ? st->st_mode & 07777 : st->st_mode & 0777 & ~x->umask);
    }
    if (x->archive) {
        msg_key(&u->o, BOX_KEY(MTIME_NS));
        msg_i64(&u->o, (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec);
    }
}

static void tup_data(struct tup *u, const char *d, size_t n, bool more)
{
    msg_key(&u->o, BOX_KEY(DATA));
    msgpack_pack_bin(&u->o.pk, n);
    msgpack_pack_bin_body(&u->o.pk, d, n);
    msg_key(&u->o, BOX_KEY(MORE));
    if (more)
        msgpack_pack_true(&u->o.pk);
    else
        msgpack_pack_false(&u->o.pk);
    msg_map_close(&u->o);
    u->n++;
}

static int tup_file(struct tup *u, const char *path, const char *rel, const struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0) {
        entry_failed(u->x, path, "local", strerror(errno));
        return 0;
    }
    uint64_t left = (uint64_t)st->st_size;
    bool first = true;
    int ret = 0;
    do {
        size_t want = left < u->piece ? (size_t)left : u->piece;
        ssize_t n = want ? read(fd, u->buf, want) : 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            /* The header went already: end its data here; the copy is reported failed. */
            entry_failed(u->x, path, "local", strerror(errno));
            n = 0;
        }
        if ((size_t)n < want)
            left = (uint64_t)n; /* it shrank: what is there is sent */
        left -= (uint64_t)n;
        if ((ret = tup_room(u, (size_t)n)) < 0)
            break;
        if (first)
            tup_head(u, rel, st, "file", true);
        else
            msg_map_open(&u->o);
        first = false;
        tup_data(u, u->buf, (size_t)n, left > 0);
    } while (left > 0);
    close(fd);
    return ret;
}

/* The entries below dir path (rel its name in the tree, "" for the root), pre-order. */
static int tup_walk(struct tup *u, const char *path, const char *rel, unsigned depth)
{
    DIR *d = opendir(path);
    if (d == NULL) {
        entry_failed(u->x, path, "local", strerror(errno));
        return 0;
    }
    int ret = 0;
    struct dirent *de;
    while (ret == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char p[PATH_MAX], r[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", path, de->d_name) >= (int)sizeof p ||
            snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) >=
                (int)sizeof r) {
            entry_failed(u->x, path, box_err_str(BOX_ERR_TOO_LARGE), "path too long");
            continue;
        }
        struct stat st;
        if (lstat(p, &st) < 0) {
            entry_failed(u->x, p, "local", strerror(errno));
            continue;
        }
        if (S_ISREG(st.st_mode)) {
            ret = tup_file(u, p, r, &st);
        } else if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlink(p, target, sizeof target - 1);
            if (n < 0) {
                entry_failed(u->x, p, "local", strerror(errno));
                continue;
            }
            target[n] = '\0';
            if ((ret = tup_room(u, 0)) < 0)
                break;
            tup_head(u, r, &st, "symlink", false);
            msg_key(&u->o, BOX_KEY(TARGET));
            msg_str(&u->o, target);
            msg_map_close(&u->o);
            u->n++;
        } else if (S_ISDIR(st.st_mode)) {
            if (depth >= 64) {
                entry_failed(u->x, p, box_err_str(BOX_ERR_TOO_LARGE), "deeper than 64 levels");
                continue;
            }
            if ((ret = tup_room(u, 0)) < 0)
                break;
            tup_head(u, r, &st, "dir", u->x->archive);
            msg_map_close(&u->o);
            u->n++;
            ret = tup_walk(u, p, r, depth + 1);
        } else {
            entry_failed(u->x, p, box_err_str(BOX_ERR_REFUSED),
                         "not a regular file, directory or symbolic link");
        }
    }
    closedir(d);
    return ret;
}

/* local (a directory) to remote, in one file_tree_write. */
static int upload_tree(struct fx *x, const char *local, const char *remote)
{
    struct stat st;
    if (stat(local, &st) < 0) {
        entry_failed(x, local, "local", strerror(errno));
        return 1;
    }
    struct tup u = {.x = x, .local = local};
    u.frame_cap = x->c.max_out > 2 * CP_TREE_HEADER + 65536 ? x->c.max_out - 16384 : 65536;
    if (u.frame_cap > CP_TREE_FRAME + CP_TREE_HEADER)
        u.frame_cap = CP_TREE_FRAME + CP_TREE_HEADER;
    u.piece = u.frame_cap / 2 < CP_CHUNK ? u.frame_cap / 2 : CP_CHUNK;
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_TREE_WRITE), 2 + (x->user != NULL), &req) < 0)
        return -1;
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, remote);
    /* Not one by one, as before trees: --help says so (each file is still atomic). */
    msg_kv_bool(&o, BOX_REQ_KEY(FSYNC), false);
    put_user(x, &o);
    int r = call(x, &o, req);
    if (r != 0) {
        if (r == 1)
            reply_failed(x, local);
        return r;
    }
    reply_str(&x->m, BOX_KEY(TREE_ID), u.id, sizeof u.id);
    u.buf = malloc(u.piece);
    if (u.buf == NULL || tup_begin(&u) < 0) {
        free(u.buf);
        err("out of memory");
        return -1;
    }
    /* The root's own mode and mtime ("."), then everything below it. */
    tup_head(&u, ".", &st, "dir", x->archive);
    msg_map_close(&u.o);
    u.n++;
    int ret = tup_walk(&u, local, "", 0);
    if (ret == -1 || (!u.building && tup_room(&u, 0) == -1) || tup_send(&u, true) < 0) {
        free(u.buf);
        if (u.building)
            msg_out_destroy(&u.o);
        return -1;
    }
    free(u.buf);
    uint64_t final_req = u.final_req;
    while (u.waiting > 0) {
        int e = box_client_recv(&x->c, &x->m, CP_TIMEOUT_MS);
        if (e < 0) {
            err("the connection to the agent failed: %s", strerror(-e));
            return -1;
        }
        if (!x->m.has_req)
            continue;
        u.waiting--;
        if (box_msg_is(&x->m, BOX_TYPE(ERROR))) {
            if (!u.failed)
                reply_failed(x, local);
            u.failed = true;
        } else if (x->m.req == final_req && box_msg_is(&x->m, BOX_TYPE(FILE_TREE_WRITTEN))) {
            msg_get_u64(&x->m.root, BOX_KEY(FILES), &x->files);
            msg_get_u64(&x->m.root, BOX_KEY(DIRS), &x->dirs);
            msg_get_u64(&x->m.root, BOX_KEY(SYMLINKS), &x->symlinks);
            msg_get_u64(&x->m.root, BOX_KEY(BYTES), &x->bytes);
            const msgpack_object *es = msg_get(&x->m.root, BOX_KEY(ERRORS));
            for (uint32_t i = 0; es && es->type == MSGPACK_OBJECT_ARRAY && i < es->via.array.size;
                 i++) {
                const msgpack_object *e1 = &es->via.array.ptr[i];
                char *name = dupobj(e1, BOX_KEY(NAME)), *code = dupobj(e1, BOX_KEY(CODE));
                char *text = dupobj(e1, BOX_KEY(MESSAGE));
                char p[2 * PATH_MAX];
                snprintf(p, sizeof p, "%s/%s", remote, name ? name : "?");
                entry_failed(x, strcmp(name ? name : "", ".") == 0 ? remote : p,
                             code ? code : "?", text ? text : "");
                free(name);
                free(code);
                free(text);
            }
            uint64_t failed = 0;
            msg_get_u64(&x->m.root, BOX_KEY(FAILED), &failed);
            uint32_t listed = es && es->type == MSGPACK_OBJECT_ARRAY ? es->via.array.size : 0;
            if (failed > listed)
                entry_failed(x, remote, "io_error", "more entries failed than the reply lists");
        }
    }
    return u.failed || x->n_errs ? 1 : 0;
}

/* A name the agent sent is a relative path that stays below the destination. */
static bool safe_rel(const char *s)
{
    if (s[0] == '/' || s[0] == '\0')
        return false;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        p += n + (q != NULL);
    }
    return true;
}

struct tdown_dir {
    char *path;
    uint64_t mode;
    int64_t mtime;
};

/* remote (a directory) to local, in one file_tree_read. */
static int download_whole_tree(struct fx *x, const char *remote, const char *local)
{
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_TREE_READ), 1 + (x->user != NULL), &req) < 0)
        return -1;
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, remote);
    put_user(x, &o);
    int e = box_client_send(&x->c, &o);
    if (e < 0) {
        err("the connection to the agent failed: %s", strerror(-e));
        return -1;
    }
    struct tdown_dir *dirs = NULL;
    size_t ndirs = 0, capdirs = 0;
    int fd = -1, ret = 0;
    char tmp[PATH_MAX], dst[PATH_MAX];
    uint64_t fmode = 0;
    int64_t fmtime = 0;
    bool fbad = false;
    for (;;) {
        e = box_client_recv(&x->c, &x->m, CP_TIMEOUT_MS);
        if (e < 0) {
            err("the connection to the agent failed: %s", strerror(-e));
            ret = -1;
            break;
        }
        if (!x->m.has_req || x->m.req != req)
            continue;
        if (box_msg_is(&x->m, BOX_TYPE(ERROR))) {
            reply_failed(x, remote);
            ret = 1;
            break;
        }
        if (box_msg_is(&x->m, BOX_TYPE(FILE_TREE_END)))
            break;
        const msgpack_object *es = msg_get(&x->m.root, BOX_KEY(ENTRIES));
        for (uint32_t i = 0; es && es->type == MSGPACK_OBJECT_ARRAY && i < es->via.array.size;
             i++) {
            const msgpack_object *el = &es->via.array.ptr[i];
            const char *d = NULL;
            size_t dn = 0;
            bool more = false;
            msg_get_bytes(el, BOX_KEY(DATA), &d, &dn);
            msg_get_bool(el, BOX_KEY(MORE), &more);
            char *name = dupobj(el, BOX_KEY(NAME));
            if (name == NULL) { /* a continuation of the open file */
                if (fd >= 0 && !fbad) {
                    while (dn > 0) {
                        ssize_t w = write(fd, d, dn);
                        if (w < 0 && errno == EINTR)
                            continue;
                        if (w < 0) {
                            entry_failed(x, dst, "local", strerror(errno));
                            fbad = true;
                            break;
                        }
                        d += w;
                        dn -= (size_t)w;
                        x->bytes += (uint64_t)w;
                    }
                }
                goto file_end;
            }
            char *kind = dupobj(el, BOX_KEY(KIND)), *code = dupobj(el, BOX_KEY(CODE));
            uint64_t mode = 0;
            int64_t mtime = 0;
            msg_get_u64(el, BOX_KEY(MODE), &mode);
            msg_get_i64(el, BOX_KEY(MTIME_NS), &mtime);
            bool root = strcmp(name, ".") == 0;
            if (!root && !safe_rel(name)) {
                entry_failed(x, name, "protocol", "the agent sent a name outside the tree");
                free(name), free(kind), free(code);
                ret = 1;
                goto done;
            }
            if ((root ? snprintf(dst, sizeof dst, "%s", local)
                      : snprintf(dst, sizeof dst, "%s/%s", local, name)) >= (int)sizeof dst - 32) {
                entry_failed(x, name, box_err_str(BOX_ERR_TOO_LARGE), "path too long");
                free(name), free(kind), free(code);
                continue;
            }
            if (code) {
                char rp[PATH_MAX], *text = dupobj(el, BOX_KEY(MESSAGE));
                snprintf(rp, sizeof rp, "%s/%s", remote, name);
                entry_failed(x, rp, code, text ? text : "");
                free(text);
            } else if (kind && strcmp(kind, "dir") == 0) {
                if (mkdir(dst, 0700) < 0 && errno != EEXIST) {
                    entry_failed(x, dst, "local", strerror(errno));
                } else {
                    x->dirs++;
                    if (ndirs == capdirs) {
                        capdirs = capdirs ? 2 * capdirs : 256;
                        struct tdown_dir *nd = realloc(dirs, capdirs * sizeof *nd);
                        if (nd == NULL) {
                            free(name), free(kind), free(code);
                            err("out of memory");
                            ret = -1;
                            goto done;
                        }
                        dirs = nd;
                    }
                    dirs[ndirs].path = strdup(dst);
                    dirs[ndirs].mode = mode;
                    dirs[ndirs].mtime = mtime;
                    ndirs += dirs[ndirs].path != NULL;
                }
            } else if (kind && strcmp(kind, "symlink") == 0) {
                char *target = dupobj(el, BOX_KEY(TARGET));
                unlink(dst);
                if (target == NULL || symlink(target, dst) < 0) {
                    entry_failed(x, dst, "local", strerror(errno));
                } else {
                    x->symlinks++;
                    if (x->archive) {
                        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                                 {.tv_sec = mtime / 1000000000,
                                                  .tv_nsec = mtime % 1000000000}};
                        utimensat(AT_FDCWD, dst, ts, AT_SYMLINK_NOFOLLOW);
                    }
                }
                free(target);
            } else if (kind && strcmp(kind, "file") == 0) {
                if (snprintf(tmp, sizeof tmp, "%s.boxctl-%d", dst, (int)getpid()) >= (int)sizeof tmp)
                    tmp[0] = '\0'; /* not reached: dst is 32 bytes short of PATH_MAX */
                fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
                fbad = fd < 0;
                fmode = mode;
                fmtime = mtime;
                if (fd < 0)
                    entry_failed(x, dst, "local", strerror(errno));
                while (fd >= 0 && dn > 0) {
                    ssize_t w = write(fd, d, dn);
                    if (w < 0 && errno == EINTR)
                        continue;
                    if (w < 0) {
                        entry_failed(x, dst, "local", strerror(errno));
                        fbad = true;
                        break;
                    }
                    d += w;
                    dn -= (size_t)w;
                    x->bytes += (uint64_t)w;
                }
            }
            bool is_file = kind && strcmp(kind, "file") == 0 && !code;
            free(kind), free(code);
            if (!is_file) {
                free(name);
                continue;
            }
        file_end:
            free(name);
            if (more || fd < 0)
                continue;
            mode_t m = x->archive ? (mode_t)fmode : (mode_t)fmode & 0777 & ~x->umask;
            if (!fbad && fchmod(fd, m) < 0) {
                entry_failed(x, dst, "local", strerror(errno));
                fbad = true;
            }
            if (!fbad && x->archive) {
                struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                         {.tv_sec = fmtime / 1000000000,
                                          .tv_nsec = fmtime % 1000000000}};
                futimens(fd, ts);
            }
            close(fd);
            fd = -1;
            if (!fbad && rename(tmp, dst) < 0) {
                entry_failed(x, dst, "local", strerror(errno));
                fbad = true;
            }
            if (fbad)
                unlink(tmp);
            else
                x->files++;
        }
        progress(x, false);
    }
done:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    /* The directories' own modes and mtimes last, deepest first (they were made 0700 while
     * they were filled). */
    for (size_t i = ndirs; i-- > 0;) {
        chmod(dirs[i].path, x->archive ? (mode_t)dirs[i].mode
                                       : (mode_t)dirs[i].mode & 0777 & ~x->umask);
        if (x->archive) {
            struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                     {.tv_sec = dirs[i].mtime / 1000000000,
                                      .tv_nsec = dirs[i].mtime % 1000000000}};
            utimensat(AT_FDCWD, dirs[i].path, ts, 0);
        }
        free(dirs[i].path);
    }
    free(dirs);
    if (ret == 0 && x->n_errs)
        ret = 1;
    return ret;
}

/* ---- the commands ------------------------------------------------------------------------ */

/* Connects and says hello as every boxctl command does (ctl_connect: every -s form, the token,
 * errors that say what to do), then takes the connection over from ctl. */
static int connect_agent(struct fx *x, struct ctl *ctl)
{
    if (ctl_connect(ctl) != 0)
        return -1;
    if (box_msg_init(&x->m) < 0) {
        err("out of memory");
        return -1;
    }
    x->c = ctl->c;
    ctl->connected = false; /* closed by this file (box_client_close(&x->c)), not by ctl_close */
    return 0;
}

static const char *base_name(const char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    const char *s = p + n;
    while (s > p && s[-1] != '/')
        s--;
    return s;
}

static void join(char *out, size_t cap, const char *dir, const char *name)
{
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/')
        n--;
    snprintf(out, cap, "%s%s%.*s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", (int)n, name);
}

static int do_cp(struct fx *x, int argc, char **argv, struct ctl *sock)
{
    int nsrc = argc - 1;
    if (nsrc < 1) {
        err("cp: needs SRC... DST ('boxctl cp --help')");
        return 2;
    }
    char **src = argv;
    const char *dst = argv[argc - 1];
    bool up = dst[0] == ':';
    for (int i = 0; i < nsrc; i++)
        if ((src[i][0] == ':') == up) {
            err("cp: either every SRC is local and DST is in the box (':PATH'), or the reverse");
            return 2;
        }
    if ((up ? dst[1] : src[0][1]) == '\0') {
        err("cp: a box path is ':' followed by an absolute path");
        return 2;
    }
    if (connect_agent(x, sock) < 0)
        return 1;
    clock_gettime(CLOCK_MONOTONIC, &x->t0);
    x->last_progress = x->t0;
    int ret = 0;
    if (up) {
        const char *d = dst + 1;
        char kind = 0;
        int k = remote_kind(x, d, &kind);
        if (k < 0)
            return 1;
        bool dst_dir = k == 0 && kind == 'd';
        bool want_dir = nsrc > 1 || d[strlen(d) - 1] == '/';
        if (want_dir && !dst_dir) {
            if (remote_mkdir(x, d, 0755) != 0)
                ret = 1;
            dst_dir = true;
        }
        for (int i = 0; i < nsrc && ret >= 0; i++) {
            char rp[PATH_MAX];
            if (dst_dir)
                join(rp, sizeof rp, d, base_name(src[i]));
            else
                snprintf(rp, sizeof rp, "%s", d);
            struct stat lst;
            int e = x->c.cap_file_tree && lstat(src[i], &lst) == 0 && S_ISDIR(lst.st_mode)
                        ? upload_tree(x, src[i], rp)
                        : upload_path(x, src[i], rp, 0);
            if (e != 0)
                ret = e < 0 ? -1 : 1;
        }
    } else {
        struct stat st;
        bool dst_dir = stat(dst, &st) == 0 && S_ISDIR(st.st_mode);
        if ((nsrc > 1 || dst[strlen(dst) - 1] == '/') && !dst_dir) {
            if (mkdir(dst, 0777) < 0 && errno != EEXIST) {
                entry_failed(x, dst, "local", strerror(errno));
                ret = 1;
            }
            dst_dir = true;
        }
        for (int i = 0; i < nsrc && ret >= 0; i++) {
            const char *rp = src[i] + 1;
            char l[PATH_MAX];
            if (dst_dir)
                join(l, sizeof l, dst, base_name(rp));
            else
                snprintf(l, sizeof l, "%s", dst);
            char kind = 0;
            int k = remote_kind(x, rp, &kind);
            int e;
            if (k < 0)
                e = -1;
            else if (k == 1) {
                reply_failed(x, rp);
                e = 1;
            } else if (kind == 'd' && x->c.cap_file_tree)
                e = download_whole_tree(x, rp, l);
            else if (kind == 'd')
                e = download_tree(x, rp, l, 0, NULL);
            else if (kind == 'l') {
                /* A link named on the command line is followed, as cp and docker cp do. */
                e = download_file(x, rp, l);
            } else
                e = download_file(x, rp, l);
            if (e != 0)
                ret = e < 0 ? -1 : 1;
        }
    }
    progress(x, true);
    double secs = since(&x->t0);
    if (x->json) {
        struct json j;
        json_init(&j, 2u << 20);
        json_object_begin(&j);
        json_key(&j, "files");
        json_uint(&j, x->files);
        json_key(&j, "dirs");
        json_uint(&j, x->dirs);
        json_key(&j, "symlinks");
        json_uint(&j, x->symlinks);
        json_key(&j, "bytes");
        json_uint(&j, x->bytes);
        json_key(&j, "seconds");
        json_double(&j, secs);
        json_key(&j, "errors");
        json_array_begin(&j);
        for (unsigned i = 0; i < x->n_errs && i < CP_MAX_ERRORS; i++) {
            const struct ferr *f = &x->errs[i];
            json_object_begin(&j);
            json_key(&j, "path");
            json_cstr(&j, f->path ? f->path : "");
            json_key(&j, "code");
            json_cstr(&j, f->code ? f->code : "");
            json_key(&j, "message");
            json_cstr(&j, f->msg ? f->msg : "");
            json_object_end(&j);
        }
        json_array_end(&j);
        json_object_end(&j);
        json_newline(&j);
        json_flush(&j, STDOUT_FILENO);
        json_destroy(&j);
    }
    box_client_close(&x->c);
    box_msg_destroy(&x->m);
    return ret == 0 && x->n_errs == 0 ? 0 : 1;
}

static int simple(struct fx *x, const char *type, const char *path, const char *flag, bool on,
                  int mode)
{
    struct msg_out o;
    uint64_t req;
    if (box_req_begin(&x->c, &o, type, 1 + (flag != NULL) + (mode >= 0) + (x->user != NULL),
                      &req) < 0)
        return -1;
    msg_key(&o, BOX_REQ_KEY(PATH));
    msg_str(&o, path);
    if (flag)
        msg_kv_bool(&o, flag, on);
    if (mode >= 0)
        msg_kv_u64(&o, BOX_REQ_KEY(MODE), (uint64_t)mode);
    put_user(x, &o);
    int r = call(x, &o, req);
    if (r == 1)
        reply_failed(x, path);
    return r;
}

static int do_simple(struct fx *x, const char *cmd, const struct opts *op, int argc, char **argv,
                     struct ctl *sock)
{
    bool rec = op->recursive, parents = op->parents, lng = op->long_list;
    int mode = op->has_mode ? (int)op->mode : 0755;
    if (argc < 1) {
        err("%s: needs :PATH", cmd);
        return 2;
    }
    for (int i = 0; i < argc; i++)
        if (argv[i][0] != ':' || argv[i][1] != '/') {
            err("%s: %s: a box path is ':' followed by an absolute path", cmd, argv[i]);
            return 2;
        }
    if (connect_agent(x, sock) < 0)
        return 1;
    int ret = 0;
    for (int i = 0; i < argc && ret >= 0; i++) {
        const char *p = argv[i] + 1;
        int r;
        if (strcmp(cmd, "watch") == 0) {
            struct msg_out o;
            uint64_t req;
            if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_WATCH), 2 + (x->user != NULL), &req) < 0)
                return 1;
            msg_key(&o, BOX_REQ_KEY(PATH));
            msg_str(&o, p);
            msg_kv_bool(&o, BOX_REQ_KEY(RECURSIVE), rec);
            put_user(x, &o);
            r = call(x, &o, req);
            if (r == 1) {
                reply_failed(x, p);
                break;
            }
            setvbuf(stdout, NULL, _IOLBF, 0);
            while (r == 0) {
                int e = box_client_recv(&x->c, &x->m, -1);
                if (e < 0) {
                    err("the connection to the agent failed: %s", strerror(-e));
                    r = -1;
                    break;
                }
                if (!box_msg_is(&x->m, BOX_TYPE(FILE_EVENT)))
                    continue;
                char ev[32], name[PATH_MAX];
                uint64_t seq = 0;
                bool dir = false;
                reply_str(&x->m, BOX_KEY(EVENT), ev, sizeof ev);
                reply_str(&x->m, BOX_KEY(NAME), name, sizeof name);
                msg_get_u64(&x->m.root, BOX_KEY(SEQ), &seq);
                msg_get_bool(&x->m.root, BOX_KEY(DIR), &dir);
                if (x->json) {
                    struct json j;
                    json_init(&j, 1u << 16);
                    json_object_begin(&j);
                    json_key(&j, "seq");
                    json_uint(&j, seq);
                    json_key(&j, "event");
                    json_cstr(&j, ev);
                    json_key(&j, "name");
                    json_cstr(&j, name);
                    json_key(&j, "dir");
                    json_bool(&j, dir);
                    json_object_end(&j);
                    json_newline(&j);
                    json_flush(&j, STDOUT_FILENO);
                    json_destroy(&j);
                } else {
                    printf("%llu %s %s%s\n", (unsigned long long)seq, ev, name,
                           dir ? "/" : "");
                }
            }
        } else if (strcmp(cmd, "rm") == 0)
            r = simple(x, BOX_TYPE(FILE_REMOVE), p, BOX_REQ_KEY(RECURSIVE), rec, -1);
        else if (strcmp(cmd, "mkdir") == 0)
            r = simple(x, BOX_TYPE(FILE_MKDIR), p, BOX_REQ_KEY(PARENTS), parents, mode);
        else {
            char kind = 0;
            r = remote_kind(x, p, &kind);
            if (r == 1)
                reply_failed(x, p);
            else if (r == 0 && kind == 'd') {
                struct msg_out o;
                uint64_t req;
                if (box_req_begin(&x->c, &o, BOX_TYPE(FILE_LIST), 2 + (x->user != NULL), &req) < 0)
                    return 1;
                msg_key(&o, BOX_REQ_KEY(PATH));
                msg_str(&o, p);
                msg_kv_u64(&o, BOX_REQ_KEY(DEPTH), rec ? 64 : 1);
                put_user(x, &o);
                r = call(x, &o, req);
                if (r == 1)
                    reply_failed(x, p);
            }
            if (r == 0) {
                const msgpack_object *ents = msg_get(&x->m.root, BOX_KEY(ENTRIES));
                const msgpack_object *one = msg_get(&x->m.root, BOX_KEY(ENTRY));
                uint32_t n = ents ? ents->via.array.size : one ? 1 : 0;
                for (uint32_t k = 0; k < n; k++) {
                    const msgpack_object *e = ents ? &ents->via.array.ptr[k] : one;
                    char name[PATH_MAX], kd[16], target[PATH_MAX];
                    const char *s;
                    size_t sl;
                    name[0] = kd[0] = target[0] = '\0';
                    if (msg_get_bytes(e, BOX_KEY(NAME), &s, &sl) == 0)
                        snprintf(name, sizeof name, "%.*s", (int)sl, s);
                    if (msg_get_str(e, BOX_KEY(KIND), &s, &sl) == 0)
                        snprintf(kd, sizeof kd, "%.*s", (int)sl, s);
                    if (msg_get_bytes(e, BOX_KEY(TARGET), &s, &sl) == 0)
                        snprintf(target, sizeof target, " -> %.*s", (int)sl, s);
                    uint64_t md = 0, sz = 0;
                    int64_t mt = 0;
                    msg_get_u64(e, BOX_KEY(MODE), &md);
                    msg_get_u64(e, BOX_KEY(SIZE), &sz);
                    msg_get_i64(e, BOX_KEY(MTIME_NS), &mt);
                    if (x->json) {
                        printf("{\"name\":\"%s\",\"kind\":\"%s\",\"mode\":%llu,\"size\":%llu,"
                               "\"mtime_ns\":%lld}\n", name, kd, (unsigned long long)md,
                               (unsigned long long)sz, (long long)mt);
                    } else if (lng) {
                        time_t t = (time_t)(mt / 1000000000);
                        struct tm tm;
                        char when[32];
                        localtime_r(&t, &tm);
                        strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
                        printf("%-7s %04llo %12llu %s %s%s%s\n", kd, (unsigned long long)md,
                               (unsigned long long)sz, when, name,
                               strcmp(kd, "dir") == 0 ? "/" : "", target);
                    } else {
                        printf("%s%s\n", name, strcmp(kd, "dir") == 0 ? "/" : "");
                    }
                }
            }
        }
        if (r != 0)
            ret = r < 0 ? -1 : 1;
    }
    box_client_close(&x->c);
    box_msg_destroy(&x->m);
    return ret == 0 && x->n_errs == 0 ? 0 : 1;
}

/* The session of one command: large (the error list), so not on the stack. */
static struct fx *session(const struct opts *o)
{
    static struct fx x;
    memset(&x, 0, sizeof x);
    x.tty = isatty(STDERR_FILENO);
    x.umask = umask(022);
    umask(x.umask);
    x.user = o->user;
    x.archive = o->archive;
    x.json = o->json;
    return &x;
}

int cmd_cp(struct ctl *x, struct opts *o, int argc, char **argv)
{
    return do_cp(session(o), argc, argv, x);
}

int cmd_ls(struct ctl *x, struct opts *o, int argc, char **argv)
{
    return do_simple(session(o), "ls", o, argc, argv, x);
}

int cmd_rm(struct ctl *x, struct opts *o, int argc, char **argv)
{
    return do_simple(session(o), "rm", o, argc, argv, x);
}

int cmd_mkdir(struct ctl *x, struct opts *o, int argc, char **argv)
{
    return do_simple(session(o), "mkdir", o, argc, argv, x);
}

int cmd_watch(struct ctl *x, struct opts *o, int argc, char **argv)
{
    return do_simple(session(o), "watch", o, argc, argv, x);
}
