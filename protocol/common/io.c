/* Small blocking I/O helpers (io.h). */
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int box_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

ssize_t box_read_fd(int fd, char *buf, size_t size)
{
    size_t have = 0;
    while (have < size - 1) {
        ssize_t n = read(fd, buf + have, size - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            buf[0] = '\0';
            return -errno;
        }
        if (n == 0)
            break;
        have += (size_t)n;
    }
    buf[have] = '\0';
    return (ssize_t)have;
}

ssize_t box_read_small(int dirfd, const char *path, char *buf, size_t size)
{
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        buf[0] = '\0';
        return -errno;
    }
    ssize_t n = box_read_fd(fd, buf, size);
    int e = errno;
    close(fd);
    errno = e;
    return n;
}
