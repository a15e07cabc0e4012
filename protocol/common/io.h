/* Small blocking I/O helpers shared by the agent, the client library, boxctl and the benchmarks,
 * each once: whole writes, the read of a small file or of a descriptor to its end. Every one
 * retries EINTR and short counts. Only box_read_fd_alloc allocates; box_write_all, box_read_fd
 * and box_read_small are async-signal-safe (open, read, write, poll, close only). */
#ifndef BOX_COMMON_IO_H
#define BOX_COMMON_IO_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Writes all n bytes of buf to fd. Returns 0, or a negative errno (-EIO when write returns 0,
 * -EPIPE for a reader gone: SIGPIPE is the caller's business). A descriptor that reports EAGAIN
 * (a terminal or pipe whose description another process made non-blocking) is waited for with
 * poll(): never use it on the agent's loop for a descriptor a client or run controls. */
int box_write_all(int fd, const void *buf, size_t n);

/* Writes every byte of iov[0..n) to fd with as few writev(2) calls as the kernel allows,
 * resuming after short writes, EINTR and EAGAIN (as box_write_all). iov is modified (advanced
 * past what was written). Returns 0 or -errno. */
int box_writev_all(int fd, struct iovec *iov, int n);

/* Reads fd until EOF or until size - 1 bytes are in buf, then NUL-terminates it. Returns the
 * bytes read, or a negative errno (nothing useful in buf then). size must be at least 1. */
ssize_t box_read_fd(int fd, char *buf, size_t size);

/* The same for the file at path (relative to dirfd, or AT_FDCWD), opened O_RDONLY|O_CLOEXEC
 * and closed again. Returns the bytes read, or a negative errno (open's included). */
ssize_t box_read_small(int dirfd, const char *path, char *buf, size_t size);

/* Reads fd to end-of-file into a malloc'ed buffer (*buf, NUL-terminated, owned by the caller;
 * *len bytes before the NUL), at most max bytes. Returns 0, -EFBIG when there is more, -ENOMEM,
 * or the -errno of read(). */
int box_read_fd_alloc(int fd, size_t max, char **buf, size_t *len);

#endif
