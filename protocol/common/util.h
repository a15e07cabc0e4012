/* Small I/O helpers shared by the client library, boxctl and the benchmarks.
 *
 * Each one exists once so that EINTR and short counts are handled the same way everywhere.
 * Every int function returns 0 or a negative errno. Nothing here allocates except
 * util_read_fd_all(), whose buffer the caller owns and frees.
 */
#ifndef BOXD_COMMON_UTIL_H
#define BOXD_COMMON_UTIL_H

#include <stddef.h>
#include <sys/uio.h>

/* Writes all len bytes to fd, retrying on EINTR and short writes. A non-blocking fd that
 * reports EAGAIN is waited for with poll(). Returns 0 or -errno (-EPIPE for a reader gone;
 * SIGPIPE is the caller's business). */
int util_write_all(int fd, const void *buf, size_t len);

/* Writes every byte of iov[0..n) to fd with as few writev(2) calls as the kernel allows,
 * resuming after short writes and EINTR. iov is modified (advanced past what was written).
 * Returns 0 or -errno. */
int util_writev_all(int fd, struct iovec *iov, int n);

/* Reads the file at path into buf (at most cap - 1 bytes) and NUL-terminates it; *len (may be
 * NULL) gets the byte count. Returns 0, -EFBIG when the file holds cap bytes or more (nothing
 * useful is in buf then), or the -errno of open()/read(). */
int util_read_small_file(const char *path, char *buf, size_t cap, size_t *len);

/* Reads fd to end-of-file into a malloc'ed buffer (*buf, NUL-terminated, owned by the caller;
 * *len bytes before the NUL), at most max bytes. Returns 0, -EFBIG when there is more, -ENOMEM,
 * or the -errno of read(). */
int util_read_fd_all(int fd, size_t max, char **buf, size_t *len);

#endif
