#include "fsops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

static const struct {
    int err;
    enum box_err code;
} codes[] = {
    {ENOENT, BOX_ERR_NOT_FOUND},
    {ENOTDIR, BOX_ERR_NOT_A_DIRECTORY},
    {EISDIR, BOX_ERR_IS_A_DIRECTORY},
    {EEXIST, BOX_ERR_EXISTS},
    {ENOTEMPTY, BOX_ERR_EXISTS},
    {EACCES, BOX_ERR_PERMISSION_DENIED},
    {EPERM, BOX_ERR_PERMISSION_DENIED},
    {EROFS, BOX_ERR_PERMISSION_DENIED},
    {ENOSPC, BOX_ERR_NO_SPACE},
    {EDQUOT, BOX_ERR_NO_SPACE},
    {EFBIG, BOX_ERR_TOO_LARGE},
    {E2BIG, BOX_ERR_TOO_LARGE},
    {ELOOP, BOX_ERR_REFUSED},
    {EXDEV, BOX_ERR_REFUSED},
    {ENXIO, BOX_ERR_REFUSED},
    {FS_EREFUSED, BOX_ERR_REFUSED},
    {ENOSYS, BOX_ERR_UNSUPPORTED},
    {EINVAL, BOX_ERR_BAD_REQUEST},
    {ENAMETOOLONG, BOX_ERR_BAD_REQUEST},
    {EBADMSG, BOX_ERR_CHECKSUM_MISMATCH},
    {ETIMEDOUT, BOX_ERR_IO_ERROR},
    {EIO, BOX_ERR_IO_ERROR},
};

enum box_err fs_code(int err)
{
    if (err < 0)
        err = -err;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].err == err)
            return codes[i].code;
    return BOX_ERR_IO_ERROR;
}

int fs_open(int dirfd, const char *path, int flags, mode_t mode, uint64_t resolve)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC),
                           .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
                           .resolve = resolve | RESOLVE_NO_MAGICLINKS};
    for (;;) {
        long r = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
        if (r >= 0)
            return (int)r;
        if (errno == EAGAIN && (resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT)))
            continue; /* a rename raced the resolution: the kernel asks to retry */
        if (errno == EINTR)
            continue;
        return -errno;
    }
}

static bool name_ok(const char *s, size_t n)
{
    return n > 0 && n <= NAME_MAX && !(n == 1 && s[0] == '.') &&
           !(n == 2 && s[0] == '.' && s[1] == '.');
}

int fs_parent(const char *path, bool mkdir_p, char base[NAME_MAX + 1], int *dirfd)
{
    size_t len = strlen(path);
    if (path[0] != '/' || len >= PATH_MAX || path[len - 1] == '/')
        return -EINVAL;
    const char *slash = strrchr(path, '/');
    size_t bl = len - (size_t)(slash + 1 - path);
    if (!name_ok(slash + 1, bl))
        return -EINVAL;
    memcpy(base, slash + 1, bl);
    base[bl] = '\0';
    char dir[PATH_MAX];
    size_t dl = (size_t)(slash - path);
    if (dl == 0)
        dl = 1; /* "/" */
    memcpy(dir, path, dl);
    dir[dl] = '\0';
    int fd = fs_open(AT_FDCWD, dir, O_PATH | O_DIRECTORY, 0, 0);
    if (fd != -ENOENT || !mkdir_p) {
        if (fd < 0)
            return fd;
        *dirfd = fd;
        return 0;
    }
    /* mkdir -p, one component at a time below "/", each created as the user and opened
     * without following a magic link. */
    fd = fs_open(AT_FDCWD, "/", O_PATH | O_DIRECTORY, 0, 0);
    if (fd < 0)
        return fd;
    char *save = NULL;
    for (char *c = strtok_r(dir, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        int nfd = fs_open(fd, c, O_PATH | O_DIRECTORY, 0, 0);
        if (nfd == -ENOENT) {
            if (mkdirat(fd, c, 0755) < 0 && errno != EEXIST) {
                int e = -errno;
                close(fd);
                return e;
            }
            nfd = fs_open(fd, c, O_PATH | O_DIRECTORY, 0, 0);
        }
        close(fd);
        if (nfd < 0)
            return nfd;
        fd = nfd;
    }
    *dirfd = fd;
    return 0;
}

int fs_refuse_special(int fd)
{
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0)
        return -errno;
    if (sf.f_type == PROC_SUPER_MAGIC || sf.f_type == SYSFS_MAGIC ||
        sf.f_type == DEBUGFS_MAGIC || sf.f_type == SECURITYFS_MAGIC)
        return -FS_EREFUSED;
    return 0;
}

int fs_open_read(const char *path, int *fdp, struct stat *st)
{
    if (path[0] != '/')
        return -EINVAL;
    int pfd = fs_open(AT_FDCWD, path, O_PATH, 0, 0);
    if (pfd < 0)
        return pfd;
    struct stat ps;
    int e = 0;
    if (fstatat(pfd, "", &ps, AT_EMPTY_PATH) < 0)
        e = -errno;
    else if (S_ISDIR(ps.st_mode))
        e = -EISDIR;
    else if (!S_ISREG(ps.st_mode))
        e = -FS_EREFUSED; /* a FIFO, device or socket is never opened */
    else
        e = fs_refuse_special(pfd);
    close(pfd);
    if (e < 0)
        return e;
    int fd = fs_open(AT_FDCWD, path, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0, 0);
    if (fd < 0)
        return fd;
    if (fstat(fd, st) < 0)
        e = -errno;
    else if (!S_ISREG(st->st_mode) || st->st_ino != ps.st_ino || st->st_dev != ps.st_dev)
        e = -FS_EREFUSED; /* replaced between the two opens */
    else
        e = fs_refuse_special(fd);
    if (e < 0) {
        close(fd);
        return e;
    }
    *fdp = fd;
    return 0;
}

const char *fs_kind(mode_t m)
{
    switch (m & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "dir";
    case S_IFLNK: return "symlink";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    default: return "other";
    }
}

void fs_put_entry(struct msg_out *o, const char *name, const struct stat *st, const char *target)
{
    msg_map_open(o);
    msg_key(o, BOX_KEY(NAME));
    msg_data(o, name, strlen(name));
    msg_kv_str(o, BOX_KEY(KIND), fs_kind(st->st_mode));
    msg_kv_u64(o, BOX_KEY(MODE), st->st_mode & 07777);
    msg_kv_u64(o, BOX_KEY(SIZE), (uint64_t)st->st_size);
    msg_kv_i64(o, BOX_KEY(MTIME_NS),
               (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec);
    msg_kv_u64(o, BOX_KEY(UID), st->st_uid);
    msg_kv_u64(o, BOX_KEY(GID), st->st_gid);
    if (target) {
        msg_key(o, BOX_KEY(TARGET));
        msg_data(o, target, strlen(target));
    }
    msg_map_close(o);
}

/* The link's target, at most PATH_MAX - 1 bytes, into buf. */
static int read_link(int dirfd, const char *name, char buf[PATH_MAX])
{
    ssize_t n = readlinkat(dirfd, name, buf, PATH_MAX - 1);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

int fs_stat(struct msg_out *o, const char *path)
{
    char base[NAME_MAX + 1];
    int dfd;
    struct stat st;
    char target[PATH_MAX];
    if (strcmp(path, "/") == 0) {
        if (stat("/", &st) < 0)
            return -errno;
        msg_key(o, BOX_KEY(ENTRY));
        fs_put_entry(o, "/", &st, NULL);
        return 0;
    }
    int e = fs_parent(path, false, base, &dfd);
    if (e < 0)
        return e;
    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        e = -errno;
    else if (S_ISLNK(st.st_mode))
        e = read_link(dfd, base, target);
    close(dfd);
    if (e < 0)
        return e;
    msg_key(o, BOX_KEY(ENTRY));
    fs_put_entry(o, path, &st, S_ISLNK(st.st_mode) ? target : NULL);
    return 0;
}

struct walk {
    struct msg_out *o;
    size_t max_bytes;
    uint32_t max_entries, n;
    bool truncated;
};

/* Lists directory fd (owned: closed here) as prefix/NAME, depth levels more. */
static int list_dir(struct walk *w, int fd, const char *prefix, unsigned depth)
{
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct dirent *de;
    char path[PATH_MAX], target[PATH_MAX];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (w->n >= w->max_entries || msg_out_size(w->o) >= w->max_bytes) {
            w->truncated = true;
            break;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        bool link = S_ISLNK(st.st_mode) && read_link(dirfd(d), de->d_name, target) == 0;
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "/" : "", de->d_name);
        fs_put_entry(w->o, path, &st, link ? target : NULL);
        w->n++;
        if (S_ISDIR(st.st_mode) && depth > 1) {
            int sub = fs_open(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0,
                              RESOLVE_NO_SYMLINKS);
            if (sub >= 0)
                list_dir(w, sub, path, depth - 1);
            if (w->truncated)
                break;
        }
    }
    closedir(d);
    return 0;
}

int fs_list(struct msg_out *o, const char *path, unsigned depth, size_t max_bytes,
            uint32_t max_entries, bool *truncated, uint32_t *n)
{
    if (path[0] != '/')
        return -EINVAL;
    int fd = fs_open(AT_FDCWD, path, O_RDONLY | O_DIRECTORY, 0, 0);
    if (fd < 0)
        return fd;
    struct walk w = {.o = o, .max_bytes = max_bytes, .max_entries = max_entries};
    msg_key(o, BOX_KEY(ENTRIES));
    size_t at = msg_array_open(o);
    int e = list_dir(&w, fd, "", depth ? depth : 1);
    msg_array_close(o, at, w.n);
    *truncated = w.truncated;
    *n = w.n;
    return e;
}

int fs_mkdir(const char *path, mode_t mode, bool parents)
{
    char base[NAME_MAX + 1];
    int dfd;
    int e = fs_parent(path, parents, base, &dfd);
    if (e < 0)
        return e;
    if (mkdirat(dfd, base, mode) < 0) {
        e = -errno;
        struct stat st;
        if (e == -EEXIST && parents && fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            e = S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
        }
    }
    close(dfd);
    return e;
}

/* Removes name in dirfd, a directory tree with everything in it; never follows a symlink. */
static int remove_tree(int pfd, const char *name, unsigned depth, uint32_t *budget)
{
    if (depth > FILES_MAX_DEPTH || *budget == 0)
        return -E2BIG;
    (*budget)--;
    if (unlinkat(pfd, name, 0) == 0)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -errno;
    int fd = fs_open(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0, RESOLVE_NO_SYMLINKS);
    if (fd < 0)
        return fd;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return -ENOMEM;
    }
    int e = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        e = remove_tree(dirfd(d), de->d_name, depth + 1, budget);
        if (e < 0)
            break;
        rewinddir(d); /* the directory changed under readdir: start over */
    }
    closedir(d);
    if (e == 0 && unlinkat(pfd, name, AT_REMOVEDIR) < 0)
        e = -errno;
    return e;
}

int fs_remove(const char *path, bool recursive)
{
    char base[NAME_MAX + 1];
    int dfd;
    int e = fs_parent(path, false, base, &dfd);
    if (e < 0)
        return e;
    struct stat st;
    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        e = -errno;
    else if (!S_ISDIR(st.st_mode))
        e = unlinkat(dfd, base, 0) < 0 ? -errno : 0;
    else if (!recursive)
        e = unlinkat(dfd, base, AT_REMOVEDIR) < 0 ? -errno : 0;
    else {
        uint32_t budget = FILES_REMOVE_MAX;
        e = remove_tree(dfd, base, 0, &budget);
    }
    close(dfd);
    return e;
}

int fs_rename(const char *from, const char *to, bool overwrite)
{
    char b1[NAME_MAX + 1], b2[NAME_MAX + 1];
    int d1, d2;
    int e = fs_parent(from, false, b1, &d1);
    if (e < 0)
        return e;
    e = fs_parent(to, false, b2, &d2);
    if (e < 0) {
        close(d1);
        return e;
    }
    if (syscall(SYS_renameat2, d1, b1, d2, b2, overwrite ? 0 : RENAME_NOREPLACE) < 0)
        e = -errno;
    close(d1);
    close(d2);
    return e;
}

int fs_chmod(const char *path, mode_t mode, const int64_t *mtime_ns)
{
    struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
    if (mtime_ns) {
        ts[1].tv_sec = *mtime_ns / 1000000000;
        ts[1].tv_nsec = *mtime_ns % 1000000000;
        if (ts[1].tv_nsec < 0) {
            ts[1].tv_sec--;
            ts[1].tv_nsec += 1000000000;
        }
    }
    /* Through an O_PATH descriptor of the file itself: chmod follows a final symlink (as
     * chmod(1) does) but never a magic one. fchmodat on "" needs Linux 6.6's AT_EMPTY_PATH
     * support, so the change goes through the parent directory and the resolved name. */
    int fd = fs_open(AT_FDCWD, path, O_PATH, 0, 0);
    if (fd < 0)
        return fd;
    struct stat st;
    int e = 0;
    if (fstatat(fd, "", &st, AT_EMPTY_PATH) < 0)
        e = -errno;
    else if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        e = -FS_EREFUSED;
    else {
        int rfd = fs_open(AT_FDCWD, path, (S_ISDIR(st.st_mode) ? O_DIRECTORY : 0) | O_RDONLY |
                                              O_NONBLOCK | O_NOCTTY, 0, 0);
        if (rfd == -EACCES) {
            /* Unreadable but owned (a 0200 file): fall back to the path, one component. */
            char base[NAME_MAX + 1];
            int dfd;
            e = fs_parent(path, false, base, &dfd);
            if (e == 0) {
                e = fchmodat(dfd, base, mode, 0) < 0 ? -errno : 0;
                if (e == 0 && mtime_ns && utimensat(dfd, base, ts, 0) < 0)
                    e = -errno;
                close(dfd);
            }
        } else if (rfd < 0) {
            e = rfd;
        } else {
            e = fchmod(rfd, mode) < 0 ? -errno : 0;
            if (e == 0 && mtime_ns && futimens(rfd, ts) < 0)
                e = -errno;
            close(rfd);
        }
    }
    close(fd);
    return e;
}

int fs_symlink(const char *target, const char *path, bool overwrite)
{
    char base[NAME_MAX + 1];
    int dfd;
    int e = fs_parent(path, false, base, &dfd);
    if (e < 0)
        return e;
    if (symlinkat(target, dfd, base) < 0) {
        e = -errno;
        struct stat st;
        /* Replace an existing file or link (never a directory), as an upload replaces. */
        if (e == -EEXIST && overwrite && fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            !S_ISDIR(st.st_mode)) {
            char tmp[NAME_MAX + 1];
            snprintf(tmp, sizeof tmp, ".%.200s.boxd-link", base);
            unlinkat(dfd, tmp, 0);
            e = 0;
            if (symlinkat(target, dfd, tmp) < 0 || renameat(dfd, tmp, dfd, base) < 0) {
                e = -errno;
                unlinkat(dfd, tmp, 0);
            }
        }
    }
    close(dfd);
    return e;
}
