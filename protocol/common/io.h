/* Small blocking I/O helpers shared by the agent and boxctl, each once: a whole write, and the
 * read of a small file. Both retry EINTR and short counts. Neither allocates; both are
 * async-signal-safe (open, read, write, close only). */
#ifndef BOX_COMMON_IO_H
#define BOX_COMMON_IO_H

#include <stddef.h>
#include <sys/types.h>

/* Writes all n bytes of buf to fd. Returns 0, or a negative errno (-EIO when write returns 0).
 * For blocking descriptors: a non-blocking one that fills returns -EAGAIN with part written. */
int box_write_all(int fd, const void *buf, size_t n);

/* Reads fd until EOF or until size - 1 bytes are in buf, then NUL-terminates it. Returns the
 * bytes read, or a negative errno (nothing useful in buf then). size must be at least 1. */
ssize_t box_read_fd(int fd, char *buf, size_t size);

/* The same for the file at path (relative to dirfd, or AT_FDCWD), opened O_RDONLY|O_CLOEXEC
 * and closed again. Returns the bytes read, or a negative errno (open's included). */
ssize_t box_read_small(int dirfd, const char *path, char *buf, size_t size);

#endif
