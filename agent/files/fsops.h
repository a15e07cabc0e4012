/* File operations, run on the I/O threads (fsworker.h) as the acting user. Every function
 * returns 0 or a negative errno; none touches the event loop or agent state.
 *
 * Paths are resolved with openat2(2) and RESOLVE_NO_MAGICLINKS: /proc/PID/fd/N, /proc/self/root
 * and their kind are never followed. Ordinary symbolic links are followed as the user would
 * follow them (the user's own permissions apply), except where a function says otherwise.
 * Without openat2 (Linux < 5.6) every path operation fails with -ENOSYS (code `unsupported`):
 * there is no silent fallback to a weaker open. */
#ifndef BOXD_FILES_FSOPS_H
#define BOXD_FILES_FSOPS_H

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "codec.h"
#include "schema.h"

/* Deepest recursion of list and recursive remove. */
#define FILES_MAX_DEPTH 64u
/* Entries a recursive remove visits at most (then it stops with too_large). */
#define FILES_REMOVE_MAX 1000000u

/* The errno these functions use for what boxd refuses (a FIFO, device or socket, a file on
 * procfs or sysfs): code `refused`. The kernel does not return it from these calls. */
#define FS_EREFUSED EMEDIUMTYPE

/* The stable error code of an errno (PROTOCOL.md 12.6). */
enum box_err fs_code(int err);

/* openat2 with RESOLVE_NO_MAGICLINKS plus extra resolve flags, O_CLOEXEC added. */
int fs_open(int dirfd, const char *path, int flags, mode_t mode, uint64_t resolve);

/* Opens the directory that holds path's last component (O_PATH), creating missing parents
 * (mode 0755, as the user) when mkdir_p. Copies the last component to base. -EINVAL for a path
 * that is not absolute, ends in '/' or names "." or "..". */
int fs_parent(const char *path, bool mkdir_p, char base[NAME_MAX + 1], int *dirfd);

/* Opens a regular file for reading. It is looked at through an O_PATH descriptor first, so a
 * FIFO, device or socket is never opened (-FS_EREFUSED, code `refused`); a file on procfs or
 * sysfs is refused too, so no symbolic link can make a download read /proc or /sys. The real
 * open is O_NONBLOCK and checked again to be the same regular file. */
int fs_open_read(const char *path, int *fd, struct stat *st);
/* -FS_EREFUSED for a descriptor on procfs, sysfs, debugfs or securityfs, else 0. */
int fs_refuse_special(int fd);

/* The `entry` map of a file (PROTOCOL.md 12.3): name, kind, mode, size, mtime_ns, uid, gid,
 * and target for a symbolic link. */
void fs_put_entry(struct msg_out *o, const char *name, const struct stat *st, const char *target);
const char *fs_kind(mode_t m);

/* stat (lstat semantics) of path into an open reply. */
int fs_stat(struct msg_out *o, const char *path);
/* The entries under directory path, depth levels deep (1: its children), into an open reply's
 * `entries` array; stops (truncated) once the reply reaches max_bytes or max_entries. */
int fs_list(struct msg_out *o, const char *path, unsigned depth, size_t max_bytes,
            uint32_t max_entries, bool *truncated, uint32_t *n);
int fs_mkdir(const char *path, mode_t mode, bool parents);
int fs_remove(const char *path, bool recursive);
int fs_rename(const char *from, const char *to, bool overwrite);
/* Sets the mode, and the mtime when mtime_ns is not NULL. */
int fs_chmod(const char *path, mode_t mode, const int64_t *mtime_ns);
/* Makes a symbolic link at path to target (stored as given, never resolved); with overwrite
 * an existing file or link there is replaced atomically. */
int fs_symlink(const char *target, const char *path, bool overwrite);

#endif
