/* Trees in one request (PROTOCOL.md 12.8), the I/O threads' side: the reader walks a directory
 * into file_tree_entries frames, a few at a time, so that the loop can send them as the
 * connection drains; the writer applies a client's entries below a destination directory. Both
 * run on the I/O threads as the acting user (fsworker.h) and touch no agent state; the loop side
 * (files.c) owns them and never runs two steps of one tree at once.
 *
 * Inside a tree nothing is followed: every directory below the root is opened relative to its
 * parent with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so a symbolic link (planted or not) is
 * read or made as a link, never gone through. Only the root's own path is resolved as every
 * file request's is (ordinary links followed, never magic ones). */
#ifndef BOXD_FILES_FSTREE_H
#define BOXD_FILES_FSTREE_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "codec.h"
#include "decode.h"
#include "events.h"

/* Named limits, reported in hello.limits. */
#define FILES_TREE_ENTRIES 1000000u       /* entries of one tree, either way */
#define FILES_TREE_BYTES (64ull << 30)    /* file data of one tree, either way */
#define FILES_TREE_DEPTH 64u              /* levels below the root */
#define FILES_MAX_TREES 16u               /* tree requests running at once, all connections */
/* Errors file_tree_written lists (all are counted in `failed`). */
#define FILES_TREE_ERRORS 1000u
/* Files a writer holds written and not yet renamed: one syncfs makes them all durable, then
 * they are renamed into place (instead of an fsync each). */
#define FILES_TREE_BATCH 64u
/* Bytes of directory names a writer keeps to give their modes and mtimes at the end: what
 * bounds its memory (about 100 000 directories of 300-byte paths). */
#define FILES_TREE_DIR_BYTES (32u << 20)
/* Room an entry's header takes in a frame at most: a name and a target, the keys. */
#define FILES_TREE_HEADER (2u * PATH_MAX + 512u)

struct tree_counts {
    uint64_t files, dirs, symlinks, bytes, failed;
};

/* ---- the reader ---- */

struct tread_level {
    void *dir;  /* DIR * */
    size_t len; /* of rel, this directory's own name */
};

struct tread {
    char root[PATH_MAX];
    struct dec_tree_caps caps;
    struct reqtag req;
    uint32_t chunk;   /* data bytes in one frame at most */
    size_t max_event; /* bytes in one frame at most */
    struct tread_level lv[FILES_TREE_DEPTH + 1];
    unsigned nlv;
    char rel[PATH_MAX]; /* the path of the current directory, relative to the root */
    int fd;             /* a file whose data is being sent, or -1 */
    char fname[PATH_MAX]; /* its name */
    uint64_t left;      /* its bytes still to send */
    char *buf;
    uint64_t entries;
    struct tree_counts n;
    bool started, finished;
    int limit; /* a cap that ended the walk (enum box_limit), or -1 */
};

/* Sets t up; 0 or -ENOMEM. */
int tread_init(struct tread *t, const char *root, const struct dec_tree_caps *caps,
               const struct reqtag *req, uint32_t max_event);
/* On an I/O thread: fills frames[0..max) (finished, each one file_tree_entries event), *n of
 * them. Returns 0, or a negative errno when the root itself failed (nothing was sent). Sets
 * t->finished once the walk is over (then, or when t->limit >= 0, nothing more is due). */
int tread_step(struct tread *t, struct msg_out *frames, unsigned max, unsigned *n);
/* Closes what is open and frees the buffer. */
void tread_free(struct tread *t);

/* ---- the writer ---- */

struct twrite_pend {
    int dirfd, fd;
    dev_t dev; /* its file system: one syncfs covers those on the first one's */
    char tmp[NAME_MAX + 1], base[NAME_MAX + 1];
    char *name;
};

struct twrite_dir {
    char *name;
    uint32_t mode;
    bool has_mode, has_mtime;
    int64_t mtime_ns;
};

struct twrite_err {
    char *name;
    enum box_err code;
    char *message;
};

struct twrite {
    char path[PATH_MAX];
    char id[DECODE_TREE_ID_MAX + 1];
    bool mkdir_p, overwrite, fsync;
    struct dec_tree_caps caps;
    int rootfd;
    dev_t rootdev;
    char cur[PATH_MAX]; /* the cached parent directory (relative), and its fd */
    int curfd;
    /* The file being written. */
    int fd, fdir;
    bool skip; /* its entry failed: its continuations are dropped */
    char tmp[NAME_MAX + 1], base[NAME_MAX + 1], name[PATH_MAX];
    uint32_t mode;
    bool has_mtime;
    int64_t mtime_ns;
    unsigned seq;
    struct twrite_pend pend[FILES_TREE_BATCH];
    unsigned npend;
    struct twrite_dir *dirs;
    size_t ndirs, capdirs, dir_bytes;
    struct twrite_err errs[FILES_TREE_ERRORS];
    unsigned nerrs;
    uint64_t entries; /* headers applied */
    struct tree_counts n;
};

void twrite_init(struct twrite *w);
/* On an I/O thread: opens (or makes) the destination. 0 or a negative errno. */
int twrite_open(struct twrite *w);
/* Applies one entry; its failure is recorded (w->errs, w->n.failed), never returned. */
void twrite_apply(struct twrite *w, const struct dec_tree_entry *e);
/* The files written and held are made durable (with fsync) and renamed into place: at the end
 * of each request's entries, so that its ack means they are there. */
void twrite_flush(struct twrite *w);
/* The end: the files held are made durable and renamed, the directories get their modes and
 * mtimes (deepest first). */
void twrite_finish(struct twrite *w);
/* Closes everything and (on an I/O thread, as the user) removes the temp files of what was not
 * finished. At boxd's stop, on the loop, unlink_temps is false: as an upload's, they stay. */
void twrite_discard(struct twrite *w, bool unlink_temps);
/* Frees the lists (after finish or discard). */
void twrite_free(struct twrite *w);
/* The file_tree_written reply into o (opened by the caller), at most max_bytes. */
void twrite_put_result(const struct twrite *w, struct msg_out *o, size_t max_bytes);


#endif
