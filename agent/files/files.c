#include "files.h"

#include <errno.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent.h"
#include "auth.h"
#include "conn.h"
#include "events.h"
#include "fsops.h"
#include "fstree.h"
#include "decode.h"
#include "fsworker.h"
#include "fswatch.h"
#include "log.h"
#include "run.h"
#include "sha256.h"

/* Bytes of file_chunk events a download may have queued on its connection before it stops
 * reading the disk; it reads again when the queue is under it (checked every
 * FILES_PAUSE_TICK_MS while paused). */
#define FILES_DL_WINDOW (2u * 1024u * 1024u)
#define FILES_DL_STEP (2u * FILES_CHUNK) /* bytes one read job reads at most */
#define FILES_PAUSE_TICK_MS 2u
#define FILES_IDLE_TICK_MS 1000u

struct files {
    struct agent *a;
    struct fsworker *w;
    struct list uploads;
    unsigned n_uploads;
    struct list downloads;
    unsigned n_downloads, n_paused;
    uv_timer_t tick;
    unsigned tick_ms;
    struct fswatches *watches;
    struct list trees;
    unsigned n_trees;
};

/* ---- replies ------------------------------------------------------------------------------- */

static void send_to(struct agent *a, uint64_t conn_no, struct msg_out *o)
{
    struct conn *c = conn_find(a, conn_no);
    if (c == NULL || c->closing) {
        msg_out_destroy(o);
        return;
    }
    conn_send(c, o);
}

static void send_error(struct agent *a, uint64_t conn_no, const struct reqtag *req,
                       enum box_err code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void send_error(struct agent *a, uint64_t conn_no, const struct reqtag *req,
                       enum box_err code, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ERROR, req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(CODE), box_err_str(code));
    msg_kv_str(&o, BOX_KEY(MESSAGE), text);
    ev_close(&o);
    send_to(a, conn_no, &o);
}

/* An error for a failed file system call: the code of err, and what to do next. */
void files_send_errno(struct agent *a, uint64_t conn_no, const struct reqtag *req, int err,
                       const char *what, const char *path)
{
    enum box_err code = fs_code(err);
    const char *hint = "";
    if (err == -ENOSYS)
        hint = " (this kernel has no openat2: Linux 5.6 or later is needed for file requests)";
    else if (err == -FS_EREFUSED || err == -ELOOP || err == -ENXIO)
        hint = " (FIFOs, devices, sockets, /proc, /sys and magic links are refused)";
    else if (err == -ENOSPC || err == -EDQUOT)
        hint = " (free space on that file system; nothing was left behind)";
    else if (err == -EACCES || err == -EPERM)
        hint = " (the acting user lacks permission; name another `user` or change modes)";
    send_error(a, conn_no, req, code, "%s %s: %s%s", what, path,
               err == -FS_EREFUSED ? "not a regular file, or on procfs/sysfs" : strerror(-err), hint);
}

static void limit_error(struct agent *a, uint64_t conn_no, const struct reqtag *req,
                        enum box_limit which, const char *text)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ERROR, req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(CODE), box_err_str(BOX_ERR_LIMIT));
    msg_kv_str(&o, BOX_KEY(MESSAGE), text);
    msg_kv_str(&o, BOX_KEY(LIMIT), box_limit_str(which));
    ev_close(&o);
    send_to(a, conn_no, &o);
}

/* ---- request fields --------------------------------------------------------------------------- */

struct req {
    struct conn *c;
    struct agent *a;
    struct files *f;
    const msgpack_object *m;
    const struct reqtag *req;
};

static void bad(struct req *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bad(struct req *x, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    send_error(x->a, x->c->no, x->req, BOX_ERR_BAD_REQUEST, "%s", text);
}

/* An absolute path without NUL, shorter than PATH_MAX. Returns 0, or -1 when answered. */
static int get_path(struct req *x, const char *key, char out[PATH_MAX])
{
    const char *s;
    size_t n;
    if (msg_get_str(x->m, key, &s, &n) < 0 || n == 0 || n >= PATH_MAX || s[0] != '/' ||
        memchr(s, '\0', n)) {
        bad(x, "%s must be an absolute path (a string starting with '/', at most %u bytes)", key,
            PATH_MAX - 1);
        return -1;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static int get_bool(struct req *x, const char *key, bool *v, bool dflt)
{
    int e = msg_get_bool(x->m, key, v);
    if (e == -ENOENT) {
        *v = dflt;
        return 0;
    }
    if (e < 0) {
        bad(x, "%s must be a boolean", key);
        return -1;
    }
    return 0;
}

static int get_u64(struct req *x, const char *key, uint64_t *v, uint64_t dflt, uint64_t max)
{
    int e = msg_get_u64(x->m, key, v);
    if (e == -ENOENT) {
        *v = dflt;
        return 0;
    }
    if (e < 0 || *v > max) {
        bad(x, "%s must be an integer from 0 to %llu", key, (unsigned long long)max);
        return -1;
    }
    return 0;
}

/* Who the request acts as: the runs' user, or `user` under exec's policy (PROTOCOL.md 4.1).
 * Returns 0, or -1 when answered. */
static int get_cred(struct req *x, struct fscred *cred)
{
    struct agent *a = x->a;
    const char *u;
    size_t ul;
    int e = msg_get_str(x->m, BOX_REQ_KEY(USER), &u, &ul);
    if (e == -EINVAL ||
        (e == 0 && (ul == 0 || ul >= AUTH_USER_MAX || memchr(u, '\0', ul) || memchr(u, ':', ul)))) {
        bad(x, "user must be a user name");
        return -1;
    }
    if (e == -ENOENT || (strlen(a->ident.user) == ul && memcmp(a->ident.user, u, ul) == 0)) {
        fscred_from_identity(cred, &a->ident);
        return 0;
    }
    if (!auth_request_user_allowed(&a->auth, u, ul)) {
        send_error(a, x->c->no, x->req, BOX_ERR_DENIED,
                   "file requests act as %s; this agent does not let a request name %.*s "
                   "(--allow-request-user)", a->ident.user, (int)ul, u);
        return -1;
    }
    char name[AUTH_USER_MAX];
    memcpy(name, u, ul);
    name[ul] = '\0';
    struct identity id;
    int le = identity_lookup(name, &id);
    if (le < 0) {
        send_error(a, x->c->no, x->req, le == -ENOENT ? BOX_ERR_NOT_FOUND : BOX_ERR_INTERNAL,
                   "user %s: %s", name, le == -ENOENT ? "no such user" : strerror(-le));
        return -1;
    }
    fscred_from_identity(cred, &id);
    return 0;
}

static int get_mode(struct req *x, uint32_t *mode, uint32_t dflt)
{
    uint64_t v;
    if (get_u64(x, BOX_REQ_KEY(MODE), &v, dflt, 07777) < 0)
        return -1;
    *mode = (uint32_t)v;
    return 0;
}

/* ---- one-shot operations: stat, list, mkdir, remove, rename, chmod -------------------------- */

enum op_kind { OP_STAT, OP_LIST, OP_MKDIR, OP_REMOVE, OP_RENAME, OP_CHMOD, OP_SYMLINK };

struct op {
    struct fsjob j;
    struct files *f;
    uint64_t conn_no;
    struct reqtag req;
    enum op_kind kind;
    char path[PATH_MAX], path2[PATH_MAX];
    uint32_t mode;
    bool flag; /* mkdir parents, remove recursive, rename overwrite */
    unsigned depth;
    size_t max_bytes;
    bool has_mtime;
    int64_t mtime_ns;
    int err;
    struct msg_out out; /* the reply, built on the worker */
};

static void op_work(struct fsjob *j)
{
    struct op *op = (struct op *)j;
    struct msg_out *o = &op->out;
    switch (op->kind) {
    case OP_STAT:
        if (ev_begin(o, BOX_T_FILE_STAT, &op->req) < 0) {
            op->err = -ENOMEM;
            return;
        }
        op->err = fs_stat(o, op->path);
        break;
    case OP_LIST: {
        if (ev_begin_sized(o, BOX_T_FILE_LIST, &op->req, 64u * 1024u) < 0) {
            op->err = -ENOMEM;
            return;
        }
        bool trunc = false;
        uint32_t n = 0;
        op->err = fs_list(o, op->path, op->depth, op->max_bytes, FILES_LIST_MAX, &trunc, &n);
        msg_kv_bool(o, BOX_KEY(TRUNCATED), trunc);
        break;
    }
    case OP_MKDIR:
        op->err = fs_mkdir(op->path, op->mode, op->flag);
        break;
    case OP_REMOVE:
        op->err = fs_remove(op->path, op->flag);
        break;
    case OP_RENAME:
        op->err = fs_rename(op->path, op->path2, op->flag);
        break;
    case OP_CHMOD:
        op->err = fs_chmod(op->path, op->mode, op->has_mtime ? &op->mtime_ns : NULL);
        break;
    case OP_SYMLINK:
        op->err = fs_symlink(op->path2, op->path, op->flag);
        break;
    }
    if (op->err == 0 && op->kind >= OP_MKDIR && ev_begin(o, BOX_T_OK, &op->req) < 0)
        op->err = -ENOMEM;
    if (op->err == 0)
        ev_close(o);
}

static void op_done(struct fsjob *j)
{
    struct op *op = (struct op *)j;
    struct agent *a = op->f->a;
    static const char *const what[] = {"stat", "list", "mkdir", "remove", "rename", "chmod",
                                       "symlink"};
    if (j->cred_err)
        files_send_errno(a, op->conn_no, &op->req, j->cred_err, "acting as the user for", op->path);
    else if (op->err == -ENOMEM)
        send_error(a, op->conn_no, &op->req, BOX_ERR_INTERNAL, "out of memory");
    else if (op->err < 0)
        files_send_errno(a, op->conn_no, &op->req, op->err, what[op->kind], op->path);
    else {
        send_to(a, op->conn_no, &op->out);
        free(op);
        return;
    }
    msg_out_destroy(&op->out);
    free(op);
}

static void do_op(struct req *x, enum op_kind kind)
{
    struct op *op = calloc(1, sizeof *op);
    if (op == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    op->f = x->f;
    op->conn_no = x->c->no;
    op->req = *x->req;
    op->kind = kind;
    uint64_t depth = 1;
    if (get_path(x, kind == OP_RENAME ? BOX_REQ_KEY(FROM) : BOX_REQ_KEY(PATH), op->path) < 0)
        goto fail;
    switch (kind) {
    case OP_LIST:
        if (get_u64(x, BOX_REQ_KEY(DEPTH), &depth, 1, FILES_MAX_DEPTH) < 0)
            goto fail;
        op->depth = (unsigned)depth;
        op->max_bytes = x->a->cfg.max_event - 4096u;
        break;
    case OP_MKDIR:
        if (get_bool(x, BOX_REQ_KEY(PARENTS), &op->flag, false) < 0 ||
            get_mode(x, &op->mode, 0755) < 0)
            goto fail;
        break;
    case OP_REMOVE:
        if (get_bool(x, BOX_REQ_KEY(RECURSIVE), &op->flag, false) < 0)
            goto fail;
        break;
    case OP_RENAME:
        if (get_path(x, BOX_REQ_KEY(TO), op->path2) < 0 ||
            get_bool(x, BOX_REQ_KEY(OVERWRITE), &op->flag, false) < 0)
            goto fail;
        break;
    case OP_CHMOD: {
        if (msg_get(x->m, BOX_REQ_KEY(MODE)) == NULL) {
            bad(x, "chmod needs a mode");
            goto fail;
        }
        if (get_mode(x, &op->mode, 0) < 0)
            goto fail;
        int me = msg_get_i64(x->m, BOX_REQ_KEY(MTIME_NS), &op->mtime_ns);
        if (me == -EINVAL) {
            bad(x, "mtime_ns must be an integer");
            goto fail;
        }
        op->has_mtime = me == 0;
        break;
    }
    case OP_SYMLINK: {
        const char *tg;
        size_t tl;
        if (msg_get_bytes(x->m, BOX_REQ_KEY(TARGET), &tg, &tl) < 0 || tl == 0 || tl >= PATH_MAX ||
            memchr(tg, '\0', tl)) {
            bad(x, "target must be a non-empty string without NUL, under %u bytes", PATH_MAX);
            goto fail;
        }
        memcpy(op->path2, tg, tl);
        op->path2[tl] = '\0';
        if (get_bool(x, BOX_REQ_KEY(OVERWRITE), &op->flag, true) < 0)
            goto fail;
        break;
    }
    case OP_STAT:
        break;
    }
    if (get_cred(x, &op->j.cred) < 0)
        goto fail;
    op->j.work = op_work;
    op->j.done = op_done;
    fsworker_submit(x->f->w, &op->j);
    return;
fail:
    free(op);
}

/* ---- uploads -------------------------------------------------------------------------------- */

struct chunk {
    struct chunk *next;
    uint64_t conn_no;
    struct reqtag req;
    uint64_t offset;
    uint32_t len;
    bool eof;
    int res; /* set by the worker: 0 or -errno */
    char data[];
};

enum up_phase { UP_OPEN, UP_WRITE, UP_DISCARD };

struct upload {
    struct fsjob j;
    struct files *f;
    struct list link;
    char id[33];
    char path[PATH_MAX];
    char base[NAME_MAX + 1];
    char tmp[NAME_MAX + 1];
    uint64_t conn_no; /* the connection that last used it */
    struct reqtag open_req;
    enum up_phase phase;
    int dirfd, fd;
    bool atomic, overwrite, mkdir_p, has_sha, has_mtime, sync, hash;
    uint8_t want_sha[32];
    char got_sha[65];
    struct sha256 sha;
    uint32_t mode;
    int64_t mtime_ns;
    uint64_t accepted; /* bytes accepted: the offset the next file_data must carry */
    uint64_t written;  /* bytes in the file (the worker's count) */
    uint64_t queued;   /* bytes accepted and not yet written */
    struct chunk *pend, *pend_tail; /* waiting for the worker */
    struct chunk *batch;            /* with the worker */
    bool busy;
    bool dead;      /* failed or committed: no more data; freed when not busy */
    bool committed;
    int open_err;
    uint64_t last_ms; /* last activity, for FILES_UPLOAD_TTL_MS */
};

static uint64_t now_ms(const struct files *f)
{
    return uv_now(f->a->loop);
}

static struct upload *upload_find(struct files *f, const char *id, size_t n)
{
    struct list *pos;
    for (pos = f->uploads.next; pos != &f->uploads; pos = pos->next) {
        struct upload *u = container_of(pos, struct upload, link);
        if (strlen(u->id) == n && memcmp(u->id, id, n) == 0)
            return u;
    }
    return NULL;
}

static void upload_free(struct upload *u)
{
    struct chunk *c, *n;
    for (c = u->pend; c; c = n) {
        n = c->next;
        free(c);
    }
    for (c = u->batch; c; c = n) {
        n = c->next;
        free(c);
    }
    if (u->fd >= 0)
        close(u->fd); /* never reached with a live fd: discard closes them on the worker */
    if (u->dirfd >= 0)
        close(u->dirfd);
    list_del(&u->link);
    u->f->n_uploads--;
    free(u);
}

/* On the worker: writes each chunk of the batch, and commits at eof. */
static int upload_commit(struct upload *u)
{
    uint8_t d[32];
    struct sha256 s = u->sha;
    if (u->hash) {
        sha256_final(&s, d);
        sha256_hex(d, u->got_sha);
    }
    if (u->has_sha && memcmp(d, u->want_sha, 32) != 0)
        return -EBADMSG; /* checked before the rename: nothing appears at the path */
    if (fchmod(u->fd, u->mode) < 0)
        return -errno;
    if (u->has_mtime) {
        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
                                 {.tv_sec = u->mtime_ns / 1000000000,
                                  .tv_nsec = u->mtime_ns % 1000000000}};
        if (ts[1].tv_nsec < 0) {
            ts[1].tv_sec--;
            ts[1].tv_nsec += 1000000000;
        }
        if (futimens(u->fd, ts) < 0)
            return -errno;
    }
    if (u->sync && fsync(u->fd) < 0)
        return -errno;
    if (!u->atomic)
        return 0;
    /* The rename is the commit: a reader of the path sees the old file or the new one. */
    if (syscall(SYS_renameat2, u->dirfd, u->tmp, u->dirfd, u->base,
                u->overwrite ? 0 : RENAME_NOREPLACE) < 0)
        return -errno;
    u->tmp[0] = '\0';
    return 0;
}

static void upload_discard_files(struct upload *u)
{
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
    }
    if (u->dirfd >= 0) {
        if (u->tmp[0])
            unlinkat(u->dirfd, u->tmp, 0);
        close(u->dirfd);
        u->dirfd = -1;
    }
    u->tmp[0] = '\0';
}

static void upload_work(struct fsjob *j)
{
    struct upload *u = (struct upload *)j;
    if (u->phase == UP_DISCARD) {
        upload_discard_files(u);
        return;
    }
    if (u->phase == UP_OPEN) {
        int e = fs_parent(u->path, u->mkdir_p, u->base, &u->dirfd);
        struct stat st;
        if (e == 0 && fstatat(u->dirfd, u->base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            if (S_ISDIR(st.st_mode))
                e = -EISDIR;
            else if (!u->overwrite)
                e = -EEXIST;
            else if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
                e = -FS_EREFUSED;
        }
        if (e == 0 && u->atomic) {
            snprintf(u->tmp, sizeof u->tmp, ".%.200s.boxd-%s", u->base, u->id);
            e = fs_open(u->dirfd, u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600,
                        RESOLVE_BENEATH);
            if (e >= 0) {
                u->fd = e;
                e = 0;
            } else {
                u->tmp[0] = '\0';
            }
        } else if (e == 0) {
            /* Not atomic: written in place. O_NONBLOCK: a FIFO at the path fails (ENXIO)
             * instead of waiting for a reader; anything not regular is refused. */
            e = fs_open(u->dirfd, u->base, O_WRONLY | O_CREAT | O_NONBLOCK | O_NOCTTY |
                                               (u->overwrite ? O_TRUNC : O_EXCL), u->mode,
                        RESOLVE_BENEATH);
            if (e >= 0) {
                u->fd = e;
                e = fstat(u->fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -FS_EREFUSED;
            }
        }
        u->open_err = e;
        if (e < 0)
            upload_discard_files(u);
        return;
    }
    for (struct chunk *c = u->batch; c; c = c->next) {
        size_t done = 0;
        while (done < c->len) {
            ssize_t n = pwrite(u->fd, c->data + done, c->len - done, (off_t)(c->offset + done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                c->res = n < 0 ? -errno : -EIO;
                break;
            }
            done += (size_t)n;
        }
        if (c->res == 0 && u->sync) {
            /* Start this chunk's writeback now, so the disk works while the rest arrives and
             * the fsync at eof waits only for the last of it. Asynchronous; an error here
             * shows again at that fsync, which decides. */
            sync_file_range(u->fd, (off_t)c->offset, c->len, SYNC_FILE_RANGE_WRITE);
        }
        if (c->res == 0) {
            if (u->hash)
                sha256_update(&u->sha, c->data, c->len);
            u->written += c->len;
            if (c->eof)
                c->res = upload_commit(u);
        }
        if (c->res < 0) {
            upload_discard_files(u); /* nothing partial is left at the path */
            for (struct chunk *r = c->next; r; r = r->next)
                r->res = -ECANCELED;
            break;
        }
    }
}

static void upload_kick(struct upload *u);

static void upload_reply_ack(struct upload *u, uint64_t conn_no, const struct reqtag *req,
                             uint64_t offset)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_FILE_ACK, req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(UPLOAD_ID), u->id);
    msg_kv_u64(&o, BOX_KEY(OFFSET), offset);
    ev_close(&o);
    send_to(u->f->a, conn_no, &o);
}

static void upload_fail_pending(struct upload *u, const char *why)
{
    struct chunk *c, *n;
    for (c = u->pend; c; c = n) {
        n = c->next;
        send_error(u->f->a, c->conn_no, &c->req, BOX_ERR_NOT_FOUND, "upload %s: %s", u->id, why);
        free(c);
    }
    u->pend = u->pend_tail = NULL;
}

static void upload_done(struct fsjob *j)
{
    struct upload *u = (struct upload *)j;
    struct agent *a = u->f->a;
    u->busy = false;
    if (u->phase == UP_DISCARD) {
        upload_fail_pending(u, "the upload was dropped");
        upload_free(u);
        return;
    }
    if (j->cred_err) {
        files_send_errno(a, u->conn_no, &u->open_req, j->cred_err, "acting as the user for",
                   u->path);
        u->dead = true;
    } else if (u->phase == UP_OPEN) {
        if (u->open_err < 0) {
            files_send_errno(a, u->conn_no, &u->open_req, u->open_err, "write", u->path);
            u->dead = true;
        } else {
            u->phase = UP_WRITE;
            upload_reply_ack(u, u->conn_no, &u->open_req, 0);
        }
    } else {
        struct chunk *c, *n;
        for (c = u->batch; c; c = n) {
            n = c->next;
            u->queued -= c->len;
            if (c->res == 0 && !c->eof) {
                upload_reply_ack(u, c->conn_no, &c->req, c->offset + c->len);
            } else if (c->res == 0) {
                struct msg_out o;
                if (ev_begin(&o, BOX_T_FILE_WRITTEN, &c->req) == 0) {
                    msg_kv_str(&o, BOX_KEY(UPLOAD_ID), u->id);
                    msg_kv_str(&o, BOX_KEY(PATH), u->path);
                    msg_kv_u64(&o, BOX_KEY(SIZE), u->written);
                    if (u->hash)
                        msg_kv_str(&o, BOX_KEY(SHA256), u->got_sha);
                    ev_close(&o);
                    send_to(a, c->conn_no, &o);
                }
                u->committed = u->dead = true;
            } else if (c->res == -ECANCELED) {
                send_error(a, c->conn_no, &c->req, BOX_ERR_NOT_FOUND,
                           "upload %s failed at an earlier chunk", u->id);
            } else {
                if (c->res == -EBADMSG)
                    send_error(a, c->conn_no, &c->req, BOX_ERR_CHECKSUM_MISMATCH,
                               "upload %s to %s: the data's sha256 is %s, not the one given; "
                               "nothing was written, upload again", u->id, u->path, u->got_sha);
                else
                    files_send_errno(a, c->conn_no, &c->req, c->res, "write", u->path);
                u->dead = true;
            }
            free(c);
        }
        u->batch = NULL;
    }
    if (u->dead) {
        upload_fail_pending(u, u->committed ? "already written" : "it failed");
        if (u->fd >= 0 || u->dirfd >= 0) {
            /* Close (and unlink a leftover temp file) on the worker, as the user. */
            u->phase = UP_DISCARD;
            u->busy = true;
            fsworker_submit(u->f->w, &u->j);
            return;
        }
        upload_free(u);
        return;
    }
    upload_kick(u);
}

static void upload_kick(struct upload *u)
{
    if (u->busy || u->pend == NULL || u->phase != UP_WRITE)
        return;
    u->batch = u->pend;
    u->pend = u->pend_tail = NULL;
    u->busy = true;
    fsworker_submit(u->f->w, &u->j);
}

static void upload_drop(struct upload *u)
{
    if (u->busy)
        return; /* its job's done callback sees dead */
    u->dead = true;
    u->phase = UP_DISCARD;
    u->busy = true;
    fsworker_submit(u->f->w, &u->j);
}

static bool hex32(const char *s, size_t n, uint8_t out[32])
{
    if (n != 64)
        return false;
    for (size_t i = 0; i < 32; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = s[2 * i + (size_t)k];
            int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                        : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
            if (d < 0)
                return false;
            v = v * 16 + d;
        }
        out[i] = (uint8_t)v;
    }
    return true;
}

static bool id_ok(const char *s, size_t n)
{
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '-' || s[i] == '_'))
            return false;
    return true;
}

static void do_write(struct req *x)
{
    struct files *f = x->f;
    char path[PATH_MAX];
    if (get_path(x, BOX_REQ_KEY(PATH), path) < 0)
        return;
    const char *id = NULL;
    size_t idl = 0;
    int e = msg_get_str(x->m, BOX_REQ_KEY(UPLOAD_ID), &id, &idl);
    if (e == -EINVAL || (e == 0 && !id_ok(id, idl))) {
        bad(x, "upload_id must be 1-32 of [A-Za-z0-9_-]");
        return;
    }
    struct fscred cred;
    if (get_cred(x, &cred) < 0)
        return;
    struct upload *u = e == 0 ? upload_find(f, id, idl) : NULL;
    if (u) {
        /* Resume: the same path, the same user. */
        if (strcmp(u->path, path) != 0 || u->j.cred.uid != cred.uid || u->dead) {
            send_error(x->a, x->c->no, x->req, BOX_ERR_EXISTS,
                       "upload %s is for another path or user, or finished; choose another "
                       "upload_id", u->id);
            return;
        }
        u->conn_no = x->c->no;
        u->last_ms = now_ms(f);
        upload_reply_ack(u, x->c->no, x->req, u->accepted);
        return;
    }
    bool atomic, overwrite, mkdir_p, sync, hash;
    uint32_t mode;
    const char *sha = NULL;
    size_t shal = 0;
    int64_t mtime = 0;
    if (get_bool(x, BOX_REQ_KEY(ATOMIC), &atomic, true) < 0 ||
        get_bool(x, BOX_REQ_KEY(OVERWRITE), &overwrite, true) < 0 ||
        get_bool(x, BOX_REQ_KEY(MKDIR), &mkdir_p, false) < 0 ||
        get_bool(x, BOX_REQ_KEY(FSYNC), &sync, true) < 0 ||
        get_bool(x, BOX_REQ_KEY(HASH), &hash, true) < 0 ||
        get_mode(x, &mode, 0644) < 0)
        return;
    int se = msg_get_str(x->m, BOX_REQ_KEY(SHA256), &sha, &shal);
    uint8_t want[32];
    if (se == -EINVAL || (se == 0 && !hex32(sha, shal, want))) {
        bad(x, "sha256 must be 64 hex digits");
        return;
    }
    int me = msg_get_i64(x->m, BOX_REQ_KEY(MTIME_NS), &mtime);
    if (me == -EINVAL) {
        bad(x, "mtime_ns must be an integer");
        return;
    }
    if (f->n_uploads >= FILES_MAX_UPLOADS) {
        limit_error(x->a, x->c->no, x->req, BOX_LIM_MAX_UPLOADS,
                    "too many uploads held (64): finish or file_abort some, or wait for kept "
                    "ones to expire");
        return;
    }
    u = calloc(1, sizeof *u);
    if (u == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    u->f = f;
    u->dirfd = u->fd = -1;
    if (e == 0) {
        memcpy(u->id, id, idl);
    } else {
        uint8_t r[8];
        if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
            uint64_t t = now_mono_ns() ^ (uint64_t)x->c->no << 48;
            memcpy(r, &t, sizeof r);
        }
        for (int i = 0; i < 8; i++)
            snprintf(u->id + 2 * i, 3, "%02x", r[i]);
    }
    snprintf(u->path, sizeof u->path, "%s", path);
    u->conn_no = x->c->no;
    u->open_req = *x->req;
    u->atomic = atomic;
    u->overwrite = overwrite;
    u->mkdir_p = mkdir_p;
    u->sync = sync;
    u->hash = hash || se == 0; /* a given sha256 is always checked */
    u->mode = mode;
    u->has_sha = se == 0;
    memcpy(u->want_sha, want, sizeof want);
    u->has_mtime = me == 0;
    u->mtime_ns = mtime;
    sha256_init(&u->sha);
    u->j.cred = cred;
    u->j.work = upload_work;
    u->j.done = upload_done;
    u->last_ms = now_ms(f);
    list_add_tail(&f->uploads, &u->link);
    f->n_uploads++;
    u->busy = true;
    fsworker_submit(f->w, &u->j);
}

static struct upload *get_upload(struct req *x)
{
    const char *id;
    size_t n;
    if (msg_get_str(x->m, BOX_REQ_KEY(UPLOAD_ID), &id, &n) < 0 || !id_ok(id, n)) {
        bad(x, "upload_id must be 1-32 of [A-Za-z0-9_-]");
        return NULL;
    }
    struct upload *u = upload_find(x->f, id, n);
    if (u == NULL || u->dead) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_NOT_FOUND,
                   "no upload %.*s (finished, failed, expired, or never opened): start again "
                   "with file_write", (int)n, id);
        return NULL;
    }
    return u;
}

static void do_data(struct req *x)
{
    struct upload *u = get_upload(x);
    if (u == NULL)
        return;
    uint64_t off;
    bool eof;
    const char *data = "";
    size_t n = 0;
    if (get_u64(x, BOX_REQ_KEY(OFFSET), &off, UINT64_MAX, UINT64_MAX) < 0 ||
        get_bool(x, BOX_REQ_KEY(EOF_), &eof, false) < 0)
        return;
    int e = msg_get_bytes(x->m, BOX_REQ_KEY(DATA), &data, &n);
    if (e == -EINVAL) {
        bad(x, "data must be a str or bin");
        return;
    }
    if (off != u->accepted) {
        bad(x, "upload %s continues at offset %llu, not %llu (file_write with this upload_id "
               "says where)", u->id, (unsigned long long)u->accepted, (unsigned long long)off);
        return;
    }
    if (u->queued + n > FILES_WINDOW) {
        limit_error(x->a, x->c->no, x->req, BOX_LIM_FILE_WINDOW,
                    "more than file_window bytes of this upload are not yet written: wait for "
                    "file_ack replies before sending more");
        return;
    }
    struct chunk *c = malloc(sizeof *c + n);
    if (c == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    c->next = NULL;
    c->conn_no = x->c->no;
    c->req = *x->req;
    c->offset = off;
    c->len = (uint32_t)n;
    c->eof = eof;
    c->res = 0;
    memcpy(c->data, data, n);
    if (u->pend_tail)
        u->pend_tail->next = c;
    else
        u->pend = c;
    u->pend_tail = c;
    u->accepted += n;
    u->queued += n;
    u->conn_no = x->c->no;
    u->last_ms = now_ms(x->f);
    upload_kick(u);
    if (eof) {
        /* No more data is accepted once the last chunk is in. */
        u->accepted = UINT64_MAX;
    }
}

static void do_abort(struct req *x)
{
    struct upload *u = get_upload(x);
    if (u == NULL)
        return;
    struct msg_out o;
    if (ev_begin(&o, BOX_T_OK, x->req) == 0) {
        ev_close(&o);
        conn_send(x->c, &o);
    }
    upload_fail_pending(u, "aborted");
    upload_drop(u);
}

/* ---- downloads ------------------------------------------------------------------------------ */

#define DL_FRAMES 2u

struct download {
    struct fsjob j;
    struct files *f;
    struct list link;
    uint64_t conn_no;
    struct reqtag req;
    char path[PATH_MAX];
    int fd;
    uint64_t off, end; /* reading [off, end) */
    uint64_t start;
    struct stat st;
    struct sha256 sha;
    bool whole; /* from offset 0 to the end: the sha256 is the file's */
    bool hash;  /* the request wants it (default) */
    bool opened, eof, paused;
    int err;
    uint32_t chunk;
    char *buf;
    struct msg_out frames[DL_FRAMES];
    unsigned nframes;
};

static void dl_work(struct fsjob *j)
{
    struct download *d = (struct download *)j;
    if (!d->opened) {
        d->err = fs_open_read(d->path, &d->fd, &d->st);
        if (d->err < 0)
            return;
        if (d->start > (uint64_t)d->st.st_size)
            d->start = (uint64_t)d->st.st_size;
        d->off = d->start;
        if (d->end == UINT64_MAX || d->end > (uint64_t)d->st.st_size)
            d->end = (uint64_t)d->st.st_size;
        d->whole = d->hash && d->start == 0 && d->end == (uint64_t)d->st.st_size;
        return;
    }
    d->nframes = 0;
    while (d->nframes < DL_FRAMES && d->off < d->end) {
        uint64_t want = d->end - d->off < d->chunk ? d->end - d->off : d->chunk;
        ssize_t n = pread(d->fd, d->buf, (size_t)want, (off_t)d->off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            d->err = -errno;
            return;
        }
        if (n == 0) {
            d->end = d->off; /* the file shrank: what is there is sent */
            break;
        }
        struct msg_out *o = &d->frames[d->nframes];
        if (ev_begin_sized(o, BOX_T_FILE_CHUNK, &d->req, (size_t)n + 128) < 0) {
            d->err = -ENOMEM;
            return;
        }
        msg_kv_u64(o, BOX_KEY(OFFSET), d->off);
        msg_key(o, BOX_KEY(DATA));
        msgpack_pack_bin(&o->pk, (size_t)n);
        msgpack_pack_bin_body(&o->pk, d->buf, (size_t)n);
        ev_close(o);
        d->nframes++;
        if (d->whole)
            sha256_update(&d->sha, d->buf, (size_t)n);
        d->off += (uint64_t)n;
    }
    if (d->off >= d->end)
        d->eof = true;
}

static void dl_free(struct download *d)
{
    for (unsigned i = 0; i < d->nframes; i++)
        msg_out_destroy(&d->frames[i]);
    if (d->fd >= 0)
        close(d->fd); /* read-only regular file: close does not wait on a writer */
    if (d->paused)
        d->f->n_paused--;
    list_del(&d->link);
    d->f->n_downloads--;
    free(d->buf);
    free(d);
}

static void tick_set(struct files *f);

/* Reads more if the connection's queue has room; else pauses (the tick looks again). */
static void dl_next(struct download *d, struct conn *c)
{
    if (c->queued >= FILES_DL_WINDOW) {
        if (!d->paused) {
            d->paused = true;
            d->f->n_paused++;
            tick_set(d->f);
        }
        return;
    }
    if (d->paused) {
        d->paused = false;
        d->f->n_paused--;
    }
    fsworker_submit(d->f->w, &d->j);
}

static void dl_done(struct fsjob *j)
{
    struct download *d = (struct download *)j;
    struct agent *a = d->f->a;
    struct conn *c = conn_find(a, d->conn_no);
    if (c == NULL || c->closing) {
        dl_free(d); /* the reader is gone: stop reading */
        return;
    }
    if (j->cred_err || d->err < 0) {
        int e = j->cred_err ? j->cred_err : d->err;
        if (e == -ENOMEM)
            send_error(a, d->conn_no, &d->req, BOX_ERR_INTERNAL, "out of memory");
        else
            files_send_errno(a, d->conn_no, &d->req, e, "read", d->path);
        dl_free(d);
        return;
    }
    if (!d->opened) {
        d->opened = true;
        struct msg_out o;
        if (ev_begin(&o, BOX_T_FILE_INFO, &d->req) == 0) {
            msg_kv_str(&o, BOX_KEY(PATH), d->path);
            msg_kv_u64(&o, BOX_KEY(SIZE), (uint64_t)d->st.st_size);
            msg_kv_u64(&o, BOX_KEY(MODE), d->st.st_mode & 07777);
            msg_kv_i64(&o, BOX_KEY(MTIME_NS),
                       (int64_t)d->st.st_mtim.tv_sec * 1000000000 + d->st.st_mtim.tv_nsec);
            msg_kv_u64(&o, BOX_KEY(OFFSET), d->start);
            msg_kv_u64(&o, BOX_KEY(LENGTH), d->end - d->start);
            ev_close(&o);
            conn_send(c, &o);
        }
    } else {
        for (unsigned i = 0; i < d->nframes; i++)
            conn_send(c, &d->frames[i]);
        d->nframes = 0;
    }
    if (d->eof) {
        struct msg_out o;
        if (ev_begin(&o, BOX_T_FILE_END, &d->req) == 0) {
            msg_kv_u64(&o, BOX_KEY(BYTES), d->off - d->start);
            if (d->whole) {
                uint8_t dg[32];
                char hex[65];
                sha256_final(&d->sha, dg);
                sha256_hex(dg, hex);
                msg_kv_str(&o, BOX_KEY(SHA256), hex);
            }
            ev_close(&o);
            conn_send(c, &o);
        }
        dl_free(d);
        return;
    }
    dl_next(d, c);
}

static void do_read(struct req *x)
{
    struct files *f = x->f;
    if (f->n_downloads >= FILES_MAX_DOWNLOADS) {
        limit_error(x->a, x->c->no, x->req, BOX_LIM_MAX_DOWNLOADS,
                    "too many file_read streams at once (64): wait for some to end");
        return;
    }
    struct download *d = calloc(1, sizeof *d);
    if (d == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    d->fd = -1;
    uint64_t len;
    if (get_path(x, BOX_REQ_KEY(PATH), d->path) < 0 ||
        get_u64(x, BOX_REQ_KEY(OFFSET), &d->start, 0, INT64_MAX) < 0 ||
        get_u64(x, BOX_REQ_KEY(LENGTH), &len, UINT64_MAX, UINT64_MAX) < 0 ||
        get_bool(x, BOX_REQ_KEY(SHA256), &d->hash, true) < 0 || get_cred(x, &d->j.cred) < 0) {
        free(d);
        return;
    }
    d->end = len == UINT64_MAX || d->start + len < d->start ? UINT64_MAX : d->start + len;
    uint32_t room = x->a->cfg.max_event > 4096 ? x->a->cfg.max_event - 4096u : 4096u;
    d->chunk = room < FILES_CHUNK ? room : FILES_CHUNK;
    d->buf = malloc(d->chunk);
    if (d->buf == NULL) {
        free(d);
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return;
    }
    d->f = f;
    d->conn_no = x->c->no;
    d->req = *x->req;
    sha256_init(&d->sha);
    d->j.work = dl_work;
    d->j.done = dl_done;
    list_add_tail(&f->downloads, &d->link);
    f->n_downloads++;
    fsworker_submit(f->w, &d->j);
}

/* ---- trees (12.8) --------------------------------------------------------------------------- */

enum tree_phase { TREE_READ, TREE_OPEN, TREE_APPLY, TREE_DISCARD };

/* One request's entries, copied out of its frame (whose memory goes with the request) for the
 * I/O thread: the decoded entries, then their names, targets and data in one block. */
struct tbatch {
    struct tbatch *next;
    uint64_t conn_no;
    struct reqtag req;
    bool eof;
    uint32_t n;
    size_t size;                       /* of the whole allocation: what the window counts */
    uint64_t entries_done, bytes_done; /* the tree's counts once this batch was applied */
    struct dec_tree_entry *e;
};

struct tree {
    struct fsjob j;
    struct files *f;
    struct list link;
    uint64_t conn_no;
    struct reqtag req;
    enum tree_phase phase;
    bool busy, dead, paused;
    int err;
    uint32_t max_event;
    /* A read. */
    struct tread *r;
    struct msg_out frames[DL_FRAMES];
    unsigned nframes;
    /* A write. */
    struct twrite *w;
    struct tbatch *pend, *pend_tail, *batch;
    uint64_t queued;         /* bytes of batches taken and not yet applied */
    bool in_file;            /* the entries taken so far leave a file's data open */
    uint64_t headers, bytes; /* taken so far, against the caps */
    bool eof_taken, written;
    struct msg_out result;
};

static void tree_free(struct tree *t)
{
    for (unsigned i = 0; i < t->nframes; i++)
        msg_out_destroy(&t->frames[i]);
    if (t->r) {
        tread_free(t->r);
        free(t->r);
    }
    if (t->w) {
        twrite_discard(t->w, false); /* nothing is left open by then but at boxd's stop */
        twrite_free(t->w);
        free(t->w);
    }
    struct tbatch *b, *n;
    for (b = t->pend; b; b = n) {
        n = b->next;
        free(b);
    }
    for (b = t->batch; b; b = n) {
        n = b->next;
        free(b);
    }
    if (t->written)
        msg_out_destroy(&t->result);
    if (t->paused)
        t->f->n_paused--;
    list_del(&t->link);
    t->f->n_trees--;
    free(t);
}

static struct tree *tree_new(struct req *x)
{
    struct files *f = x->f;
    if (f->n_trees >= FILES_MAX_TREES) {
        limit_error(x->a, x->c->no, x->req, BOX_LIM_MAX_TREES,
                    "16 tree requests are running: wait for one to end");
        return NULL;
    }
    struct tree *t = calloc(1, sizeof *t);
    if (t == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    t->f = f;
    t->conn_no = x->c->no;
    t->req = *x->req;
    t->max_event = x->a->cfg.max_event;
    list_add_tail(&f->trees, &t->link);
    f->n_trees++;
    return t;
}

static const struct dec_tree_caps tree_limits = {
    .entries = FILES_TREE_ENTRIES, .bytes = FILES_TREE_BYTES, .depth = FILES_TREE_DEPTH};

static void send_decode_err(struct req *x, const struct decode_err *e)
{
    send_error(x->a, x->c->no, x->req, e->code, "%s", e->message);
}

/* -- reading -- */

static void tree_read_work(struct fsjob *j)
{
    struct tree *t = (struct tree *)j;
    t->err = tread_step(t->r, t->frames, DL_FRAMES, &t->nframes);
}

/* Reads on if the connection's queue has room, as a download does (12.3); else pauses. */
static void tree_next(struct tree *t, struct conn *c)
{
    if (c->queued >= FILES_DL_WINDOW) {
        if (!t->paused) {
            t->paused = true;
            t->f->n_paused++;
            tick_set(t->f);
        }
        return;
    }
    if (t->paused) {
        t->paused = false;
        t->f->n_paused--;
    }
    t->busy = true;
    fsworker_submit(t->f->w, &t->j);
}

static void tree_read_done(struct fsjob *j)
{
    struct tree *t = (struct tree *)j;
    struct agent *a = t->f->a;
    t->busy = false;
    struct conn *c = conn_find(a, t->conn_no);
    if (c == NULL || c->closing) {
        tree_free(t); /* the reader is gone: stop walking */
        return;
    }
    for (unsigned i = 0; i < t->nframes; i++)
        conn_send(c, &t->frames[i]);
    t->nframes = 0;
    int e = j->cred_err ? j->cred_err : t->err;
    if (e == -ENOMEM) {
        send_error(a, t->conn_no, &t->req, BOX_ERR_INTERNAL, "out of memory");
    } else if (e < 0) {
        files_send_errno(a, t->conn_no, &t->req, e, "read tree", t->r->root);
    } else if (t->r->limit == BOX_LIM_TREE_ENTRIES) {
        limit_error(a, t->conn_no, &t->req, BOX_LIM_TREE_ENTRIES,
                    "the tree has more entries than max_entries (tree_entries): copy its "
                    "directories one by one, or raise max_entries");
    } else if (t->r->limit == BOX_LIM_TREE_BYTES) {
        limit_error(a, t->conn_no, &t->req, BOX_LIM_TREE_BYTES,
                    "the tree's files hold more than max_bytes (tree_bytes): copy its "
                    "directories one by one, or raise max_bytes");
    } else if (t->r->finished) {
        struct msg_out o;
        if (ev_begin(&o, BOX_T_FILE_TREE_END, &t->req) == 0) {
            const struct tree_counts *n = &t->r->n;
            msg_kv_u64(&o, BOX_KEY(FILES), n->files);
            msg_kv_u64(&o, BOX_KEY(DIRS), n->dirs);
            msg_kv_u64(&o, BOX_KEY(SYMLINKS), n->symlinks);
            msg_kv_u64(&o, BOX_KEY(BYTES), n->bytes);
            msg_kv_u64(&o, BOX_KEY(FAILED), n->failed);
            ev_close(&o);
            conn_send(c, &o);
        }
    } else {
        tree_next(t, c);
        return;
    }
    tree_free(t);
}

static void do_tree_read(struct req *x)
{
    char path[PATH_MAX];
    struct dec_tree_caps caps;
    struct decode_err de;
    struct fscred cred;
    if (get_path(x, BOX_REQ_KEY(PATH), path) < 0)
        return;
    if (decode_tree_read(x->m, &tree_limits, &caps, &de) < 0) {
        send_decode_err(x, &de);
        return;
    }
    if (get_cred(x, &cred) < 0)
        return;
    struct tree *t = tree_new(x);
    if (t == NULL)
        return;
    t->phase = TREE_READ;
    t->r = malloc(sizeof *t->r);
    if (t->r == NULL || tread_init(t->r, path, &caps, x->req, x->a->cfg.max_event) < 0) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        tree_free(t);
        return;
    }
    t->j.cred = cred;
    t->j.work = tree_read_work;
    t->j.done = tree_read_done;
    t->busy = true;
    fsworker_submit(x->f->w, &t->j);
}

/* -- writing -- */

static void tree_write_work(struct fsjob *j)
{
    struct tree *t = (struct tree *)j;
    if (t->phase == TREE_DISCARD) {
        twrite_discard(t->w, true);
        return;
    }
    if (t->phase == TREE_OPEN) {
        t->err = twrite_open(t->w);
        if (t->err < 0)
            return;
    }
    for (struct tbatch *b = t->batch; b; b = b->next) {
        for (uint32_t i = 0; i < b->n; i++)
            twrite_apply(t->w, &b->e[i]);
        if (b->next == NULL)
            twrite_flush(t->w); /* the acks say the files are in place */
        b->entries_done = t->w->entries;
        b->bytes_done = t->w->n.bytes;
        if (b->eof) {
            twrite_finish(t->w);
            if (ev_begin(&t->result, BOX_T_FILE_TREE_WRITTEN, &b->req) == 0) {
                twrite_put_result(t->w, &t->result, t->max_event - 4096u);
                ev_close(&t->result);
                t->written = true;
            }
        }
    }
}

static void tree_fail_pending(struct tree *t, const char *why)
{
    struct tbatch *b, *n;
    for (b = t->pend; b; b = n) {
        n = b->next;
        send_error(t->f->a, b->conn_no, &b->req, BOX_ERR_NOT_FOUND, "tree %s: %s", t->w->id, why);
        t->queued -= b->size;
        free(b);
    }
    t->pend = t->pend_tail = NULL;
}

static void tree_discard(struct tree *t)
{
    t->dead = true;
    if (t->busy)
        return; /* its done callback sees dead */
    t->phase = TREE_DISCARD;
    t->busy = true;
    fsworker_submit(t->f->w, &t->j);
}

static void tree_kick(struct tree *t)
{
    if (t->busy || t->pend == NULL || t->phase != TREE_APPLY)
        return;
    t->batch = t->pend;
    t->pend = t->pend_tail = NULL;
    t->busy = true;
    fsworker_submit(t->f->w, &t->j);
}

static void tree_write_done(struct fsjob *j)
{
    struct tree *t = (struct tree *)j;
    struct agent *a = t->f->a;
    t->busy = false;
    if (t->phase == TREE_DISCARD) {
        tree_fail_pending(t, "the tree was dropped");
        tree_free(t);
        return;
    }
    int e = j->cred_err ? j->cred_err : t->phase == TREE_OPEN ? t->err : 0;
    if (e < 0) {
        struct tbatch *b = t->batch;
        files_send_errno(a, b->conn_no, &b->req, e, "write tree", t->w->path);
        tree_fail_pending(t, "it failed");
        tree_free(t);
        return;
    }
    t->phase = TREE_APPLY;
    struct tbatch *b, *n;
    for (b = t->batch; b; b = n) {
        n = b->next;
        t->queued -= b->size;
        if (b->eof && t->written) {
            send_to(a, b->conn_no, &t->result);
            t->written = false;
        } else if (b->eof) {
            send_error(a, b->conn_no, &b->req, BOX_ERR_INTERNAL, "out of memory");
        } else {
            struct msg_out o;
            if (ev_begin(&o, BOX_T_FILE_TREE_ACK, &b->req) == 0) {
                msg_kv_str(&o, BOX_KEY(TREE_ID), t->w->id);
                msg_kv_u64(&o, BOX_KEY(ENTRIES), b->entries_done);
                msg_kv_u64(&o, BOX_KEY(BYTES), b->bytes_done);
                ev_close(&o);
                send_to(a, b->conn_no, &o);
            }
        }
        bool last = b->eof;
        free(b);
        if (last) {
            t->batch = NULL;
            tree_fail_pending(t, "already written");
            tree_free(t);
            return;
        }
    }
    t->batch = NULL;
    if (t->dead) {
        tree_fail_pending(t, "it failed");
        tree_discard(t);
        return;
    }
    tree_kick(t);
}

/* Copies a request's (checked) entries into one batch. in_file: as before the first. */
static struct tbatch *tree_batch(struct req *x, const msgpack_object *entries, bool in_file,
                                 bool eof)
{
    uint32_t n = entries ? entries->via.array.size : 0;
    size_t strings = 0;
    struct decode_err de;
    bool open = in_file;
    for (uint32_t i = 0; i < n; i++) {
        struct dec_tree_entry d;
        if (decode_tree_entry(&entries->via.array.ptr[i], i, &open, &d, &de) < 0)
            return NULL; /* checked before: not reached */
        strings += d.name_len + d.target_len + d.data_len;
    }
    size_t size = sizeof(struct tbatch) + (size_t)n * sizeof(struct dec_tree_entry) + strings;
    struct tbatch *b = malloc(size);
    if (b == NULL)
        return NULL;
    memset(b, 0, sizeof *b);
    b->conn_no = x->c->no;
    b->req = *x->req;
    b->eof = eof;
    b->n = n;
    b->size = size;
    b->e = (struct dec_tree_entry *)(b + 1);
    char *at = (char *)(b->e + n);
    open = in_file;
    for (uint32_t i = 0; i < n; i++) {
        struct dec_tree_entry *d = &b->e[i];
        decode_tree_entry(&entries->via.array.ptr[i], i, &open, d, &de);
        const char **ptrs[] = {&d->name, &d->target, &d->data};
        size_t lens[] = {d->name_len, d->target_len, d->data_len};
        for (int k = 0; k < 3; k++) {
            if (*ptrs[k] == NULL)
                continue;
            memcpy(at, *ptrs[k], lens[k]);
            *ptrs[k] = at;
            at += lens[k];
        }
    }
    return b;
}

/* Checks a request's entries against the tree's state and caps, and takes them. Returns the
 * batch, or NULL when answered (then the tree is dead when *fatal). */
static struct tbatch *tree_take(struct req *x, struct tree *t, const msgpack_object *entries,
                                bool eof, bool *fatal)
{
    struct decode_err de;
    bool in_file = t->in_file;
    uint64_t h = 0, bytes = 0;
    *fatal = false;
    if (decode_tree_entries(entries, UINT32_MAX, &in_file, &h, &bytes, &de) < 0) {
        send_decode_err(x, &de);
        return NULL;
    }
    if (eof && in_file) {
        bad(x, "eof while a file's data goes on (its last element had more: true): end it "
               "with more: false first");
        return NULL;
    }
    const struct dec_tree_caps *caps = &t->w->caps;
    if (t->headers + h > caps->entries || t->bytes + bytes > caps->bytes) {
        bool ent = t->headers + h > caps->entries;
        limit_error(x->a, x->c->no, x->req, ent ? BOX_LIM_TREE_ENTRIES : BOX_LIM_TREE_BYTES,
                    ent ? "the tree has more entries than max_entries (tree_entries); what came "
                          "before is written, the tree is dropped"
                        : "the tree's files hold more than max_bytes (tree_bytes); what came "
                          "before is written, the tree is dropped");
        *fatal = true;
        return NULL;
    }
    struct tbatch *b = tree_batch(x, entries, t->in_file, eof);
    if (b == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if (t->queued + b->size > FILES_WINDOW) {
        free(b);
        limit_error(x->a, x->c->no, x->req, BOX_LIM_FILE_WINDOW,
                    "more than file_window bytes of this tree are not yet written: wait for "
                    "file_tree_ack replies before sending more");
        return NULL;
    }
    t->in_file = in_file;
    t->headers += h;
    t->bytes += bytes;
    t->queued += b->size;
    t->eof_taken = eof;
    return b;
}

static struct tree *tree_find(struct files *f, const char *id, size_t n)
{
    struct list *pos;
    for (pos = f->trees.next; pos != &f->trees; pos = pos->next) {
        struct tree *t = container_of(pos, struct tree, link);
        if (t->w && strlen(t->w->id) == n && memcmp(t->w->id, id, n) == 0)
            return t;
    }
    return NULL;
}

static void do_tree_write(struct req *x)
{
    char path[PATH_MAX];
    struct dec_tree_write d;
    struct decode_err de;
    struct fscred cred;
    if (get_path(x, BOX_REQ_KEY(PATH), path) < 0)
        return;
    if (decode_tree_write(x->m, &tree_limits, &d, &de) < 0) {
        send_decode_err(x, &de);
        return;
    }
    if (get_cred(x, &cred) < 0)
        return;
    if (d.tree_id && tree_find(x->f, d.tree_id, d.tree_id_len)) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_EXISTS,
                   "tree %.*s is being written: choose another tree_id", (int)d.tree_id_len,
                   d.tree_id);
        return;
    }
    struct tree *t = tree_new(x);
    if (t == NULL)
        return;
    t->phase = TREE_OPEN;
    t->w = calloc(1, sizeof *t->w);
    if (t->w == NULL) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_INTERNAL, "out of memory");
        tree_free(t);
        return;
    }
    twrite_init(t->w);
    snprintf(t->w->path, sizeof t->w->path, "%s", path);
    if (d.tree_id) {
        memcpy(t->w->id, d.tree_id, d.tree_id_len);
    } else {
        uint8_t r[8];
        if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
            uint64_t v = now_mono_ns() ^ (uint64_t)x->c->no << 48;
            memcpy(r, &v, sizeof r);
        }
        for (int i = 0; i < 8; i++)
            snprintf(t->w->id + 2 * i, 3, "%02x", r[i]);
    }
    t->w->mkdir_p = d.mkdir;
    t->w->overwrite = d.overwrite;
    t->w->fsync = d.fsync;
    t->w->caps = d.caps;
    bool fatal;
    struct tbatch *b = tree_take(x, t, d.entries, d.eof, &fatal);
    if (b == NULL) {
        tree_free(t); /* nothing was opened yet */
        return;
    }
    t->batch = b;
    t->j.cred = cred;
    t->j.work = tree_write_work;
    t->j.done = tree_write_done;
    t->busy = true;
    fsworker_submit(x->f->w, &t->j);
}

static void do_tree_data(struct req *x)
{
    struct dec_tree_data d;
    struct decode_err de;
    if (decode_tree_data(x->m, &d, &de) < 0) {
        send_decode_err(x, &de);
        return;
    }
    struct tree *t = tree_find(x->f, d.tree_id, d.tree_id_len);
    if (t == NULL || t->dead || t->eof_taken || t->conn_no != x->c->no) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_NOT_FOUND,
                   "no tree %.*s being written on this connection (finished, failed, or never "
                   "opened): start again with file_tree_write", (int)d.tree_id_len, d.tree_id);
        return;
    }
    bool fatal;
    struct tbatch *b = tree_take(x, t, d.entries, d.eof, &fatal);
    if (b == NULL) {
        if (fatal) {
            tree_fail_pending(t, "it was dropped at a limit");
            tree_discard(t);
        }
        return;
    }
    if (t->pend_tail)
        t->pend_tail->next = b;
    else
        t->pend = b;
    t->pend_tail = b;
    tree_kick(t);
}

/* Trees whose connection is gone: a read stops (at its next step), a write is dropped with
 * the temp files of what it had not finished. Paused reads look at their queue again. */
static void trees_tick(struct files *f)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &f->trees)
    {
        struct tree *t = container_of(pos, struct tree, link);
        struct conn *c = conn_find(f->a, t->conn_no);
        bool gone = c == NULL || c->closing;
        if (t->r && t->paused) {
            if (gone)
                tree_free(t);
            else
                tree_next(t, c);
        } else if (t->w && gone && !t->busy && !t->dead) {
            log_info("files: tree %s to %s: its connection closed, dropped", t->w->id,
                     t->w->path);
            tree_fail_pending(t, "its connection closed");
            tree_discard(t);
        }
    }
}

/* ---- the tick: paused downloads, expired uploads -------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
    struct files *f = t->data;
    struct list *pos, *tmp;
    if (f->n_paused) {
        list_for_each_safe(pos, tmp, &f->downloads)
        {
            struct download *d = container_of(pos, struct download, link);
            if (!d->paused)
                continue;
            struct conn *c = conn_find(f->a, d->conn_no);
            if (c == NULL || c->closing)
                dl_free(d);
            else
                dl_next(d, c);
        }
    }
    uint64_t now = now_ms(f);
    list_for_each_safe(pos, tmp, &f->uploads)
    {
        struct upload *u = container_of(pos, struct upload, link);
        if (!u->busy && !u->dead && now - u->last_ms >= FILES_UPLOAD_TTL_MS) {
            log_info("files: upload %s to %s: nobody wrote to it for %u s, dropped", u->id,
                     u->path, FILES_UPLOAD_TTL_MS / 1000u);
            upload_drop(u);
        }
    }
    trees_tick(f);
    fswatches_tick(f->watches);
    tick_set(f);
}

static void tick_set(struct files *f)
{
    unsigned want = f->n_paused ? FILES_PAUSE_TICK_MS : FILES_IDLE_TICK_MS;
    if (want != f->tick_ms) {
        f->tick_ms = want;
        uv_timer_start(&f->tick, on_tick, want, want);
    }
}

/* ---- hooks ---------------------------------------------------------------------------------- */

void files_put_limits(struct msg_out *o)
{
    msg_kv_u64(o, box_limit_str(BOX_LIM_FILE_CHUNK), FILES_CHUNK);
    msg_kv_u64(o, box_limit_str(BOX_LIM_FILE_WINDOW), FILES_WINDOW);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_UPLOADS), FILES_MAX_UPLOADS);
    msg_kv_u64(o, box_limit_str(BOX_LIM_UPLOAD_TTL_MS), FILES_UPLOAD_TTL_MS);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_DOWNLOADS), FILES_MAX_DOWNLOADS);
    msg_kv_u64(o, box_limit_str(BOX_LIM_LIST_MAX), FILES_LIST_MAX);
    msg_kv_u64(o, box_limit_str(BOX_LIM_FILE_DEPTH), FILES_MAX_DEPTH);
    msg_kv_u64(o, box_limit_str(BOX_LIM_FILE_WORKERS), FILES_WORKERS);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_WATCHES), FILES_MAX_WATCHES);
    msg_kv_u64(o, box_limit_str(BOX_LIM_WATCH_DIRS), FILES_WATCH_DIRS);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_TREES), FILES_MAX_TREES);
    msg_kv_u64(o, box_limit_str(BOX_LIM_TREE_ENTRIES), FILES_TREE_ENTRIES);
    msg_kv_u64(o, box_limit_str(BOX_LIM_TREE_BYTES), FILES_TREE_BYTES);
    msg_kv_u64(o, box_limit_str(BOX_LIM_TREE_DEPTH), FILES_TREE_DEPTH);
}

int files_start(struct agent *a)
{
    struct files *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -ENOMEM;
    f->a = a;
    list_init(&f->uploads);
    list_init(&f->downloads);
    list_init(&f->trees);
    f->w = fsworker_start(a->loop);
    if (f->w == NULL) {
        free(f);
        return -ENOMEM;
    }
    f->watches = fswatches_new(a, f->w);
    if (f->watches == NULL) {
        fsworker_stop(f->w);
        free(f);
        return -ENOMEM;
    }
    uv_timer_init(a->loop, &f->tick);
    f->tick.data = f;
    uv_unref((uv_handle_t *)&f->tick);
    tick_set(f);
    a->files = f;
    return 0;
}

static void on_tick_closed(uv_handle_t *h)
{
    free(h->data);
}

size_t files_tids(const struct agent *a, pid_t *out, size_t max)
{
    return a->files != NULL ? fsworker_tids(a->files->w, out, max) : 0;
}

void files_stop(struct agent *a)
{
    struct files *f = a->files;
    if (f == NULL)
        return;
    fsworker_stop(f->w);
    fswatches_free(f->watches);
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &f->downloads) dl_free(container_of(pos, struct download, link));
    list_for_each_safe(pos, tmp, &f->uploads) upload_free(container_of(pos, struct upload, link));
    list_for_each_safe(pos, tmp, &f->trees) tree_free(container_of(pos, struct tree, link));
    a->files = NULL;
    /* f itself is freed once the loop has closed the timer that lives in it. */
    uv_close((uv_handle_t *)&f->tick, on_tick_closed);
}

static void do_watch(struct req *x)
{
    char path[PATH_MAX];
    bool rec;
    struct fscred cred;
    if (get_path(x, BOX_REQ_KEY(PATH), path) < 0 ||
        get_bool(x, BOX_REQ_KEY(RECURSIVE), &rec, false) < 0 ||
        get_cred(x, &cred) < 0)
        return;
    uint64_t id;
    int e = fswatch_start(x->f->watches, x->c->no, x->req, path, rec, &cred, &id);
    if (e == -ENOSPC)
        limit_error(x->a, x->c->no, x->req, BOX_LIM_MAX_WATCHES,
                    "64 watches are open: file_unwatch some first");
    else if (e < 0)
        files_send_errno(x->a, x->c->no, x->req, e, "watch", path);
}

static void do_unwatch(struct req *x)
{
    uint64_t id;
    if (get_u64(x, BOX_REQ_KEY(WATCH), &id, 0, UINT64_MAX) < 0)
        return;
    if (fswatch_stop(x->f->watches, x->c->no, id) < 0) {
        send_error(x->a, x->c->no, x->req, BOX_ERR_NOT_FOUND, "this connection has no watch %llu",
                   (unsigned long long)id);
        return;
    }
    struct msg_out o;
    if (ev_begin(&o, BOX_T_OK, x->req) == 0) {
        ev_close(&o);
        conn_send(x->c, &o);
    }
}

static const struct {
    const char *type;
    void (*fn)(struct req *);
} handlers[] = {
    {"file_watch", do_watch}, {"file_unwatch", do_unwatch},
    {"file_write", do_write}, {"file_data", do_data}, {"file_abort", do_abort},
    {"file_read", do_read},
    {"file_tree_read", do_tree_read}, {"file_tree_write", do_tree_write},
    {"file_tree_data", do_tree_data},
};

static const struct {
    const char *type;
    enum op_kind kind;
} ops[] = {
    {"file_stat", OP_STAT},     {"file_list", OP_LIST},     {"file_mkdir", OP_MKDIR},
    {"file_remove", OP_REMOVE}, {"file_rename", OP_RENAME}, {"file_chmod", OP_CHMOD},
    {"file_symlink", OP_SYMLINK},
};

struct fsworker *files_worker(const struct agent *a)
{
    return a->files ? a->files->w : NULL;
}

int files_request(struct conn *c, const msgpack_object *m, const struct reqtag *req,
                  const char *type, size_t tlen)
{
    void (*fn)(struct req *) = NULL;
    int kind = -1;
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if (strlen(handlers[i].type) == tlen && memcmp(handlers[i].type, type, tlen) == 0)
            fn = handlers[i].fn;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strlen(ops[i].type) == tlen && memcmp(ops[i].type, type, tlen) == 0)
            kind = (int)ops[i].kind;
    if (fn == NULL && kind < 0)
        return 0;
    struct req x = {.c = c, .a = c->a, .f = c->a->files, .m = m, .req = req};
    if (!c->hello)
        return -1; /* the caller answers need_hello, as for every request before hello */
    if (x.f == NULL) {
        send_error(x.a, c->no, req, BOX_ERR_INTERNAL,
                   "file requests are not available (no I/O thread)");
        return 1;
    }
    if (fn)
        fn(&x);
    else
        do_op(&x, (enum op_kind)kind);
    return 1;
}
